"""Submission: password guessing (AUTH), the allow-list, hourly sending limits per user, and the
MX's per-IP connection cap."""

from __future__ import annotations

import smtplib

import pytest

from tests.support.abuse import (
    ALLOWED,
    BAN_AFTER,
    PASSWORD,
    WRONG,
    assert_growing,
    first_line,
    source,
    timed,
)

# in tests.support.abuse.USERS
USER = "sam@example.test"
SENDER = "sally@example.test"
WIDE = "wanda@example.test"


@pytest.fixture
def inst(abuse_instance):
    return abuse_instance


def submission(inst, ip: str) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", inst.submission_port, timeout=10,
                          local_hostname="laptop.example.test", source_address=(ip, 0))
    client.starttls(context=inst.tls_context())
    return client


def auth_plain(client: smtplib.SMTP, user: str, password: str):
    """One AUTH PLAIN: smtplib's login() would try LOGIN after it, two failures a call."""
    client.ehlo_or_helo_if_needed()
    client.user, client.password = user, password
    return client.auth("PLAIN", client.auth_plain)


def message(sender: str, n: int) -> bytes:
    return (f"From: {sender}\r\nTo: {sender}\r\nSubject: {n}\r\n\r\nbody {n}\r\n").encode()


def test_guessing_slows_down_then_bans_the_client(inst):
    ip = source(31)
    waits = []
    with submission(inst, ip) as client:
        for _ in range(BAN_AFTER):
            took, result = timed(auth_plain, client, USER, WRONG)
            assert isinstance(result, smtplib.SMTPAuthenticationError), result
            assert result.smtp_code == 535
            waits.append(took)
        assert_growing(waits)
        # The connection it holds gets no further guess (421, and it is closed)...
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            auth_plain(client, USER, PASSWORD)
        assert refused.value.smtp_code == 421
        assert refused.value.smtp_error.startswith(b"4.7.0 Too many failed logins")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()
    # ...nor does a new one, on any service.
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        submission(inst, ip)
    assert refused.value.smtp_code == 421
    assert refused.value.smtp_error.startswith(b"4.7.0 Too many failed logins")
    with pytest.raises(smtplib.SMTPConnectError, match="4.7.0"):
        smtplib.SMTP_SSL("127.0.0.1", inst.submissions_port, timeout=10,
                         context=inst.tls_context(), source_address=(ip, 0))
    assert first_line(inst, "pop3", ip).startswith(b"-ERR [SYS/TEMP] Too many failed logins")
    log = inst.wait_for_log(f"ban rhost={ip} ")
    assert f'auth failure service=submission rhost={ip} user="{USER}"' in log
    with submission(inst, source(32)) as other:  # another client
        other.login(USER, PASSWORD)


def test_the_allowed_network_is_never_banned(inst):
    with submission(inst, ALLOWED) as client:
        for i in range(BAN_AFTER + 1):
            with pytest.raises(smtplib.SMTPAuthenticationError):
                auth_plain(client, f"nobody{i}@example.test", WRONG)
    for service in ("submission", "mx", "imap", "pop3"):
        assert not first_line(inst, service, ALLOWED).startswith((b"421", b"* BYE", b"-ERR"))
    assert f"ban rhost={ALLOWED}" not in inst.log()


def test_hourly_message_limit(inst):
    with submission(inst, source(33)) as client:
        client.login(SENDER, PASSWORD)
        for n in range(3):  # [abuse] max_messages_per_hour
            assert client.sendmail(SENDER, [SENDER], message(SENDER, n)) == {}
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.sendmail(SENDER, [SENDER], message(SENDER, 3))
    assert refused.value.smtp_code == 451
    assert refused.value.smtp_error.startswith(b"4.7.1 Hourly sending limit")
    assert len(inst.messages(SENDER)) == 3
    assert f"user={SENDER} hourly message limit (3) reached" in inst.log()
    with submission(inst, source(34)) as client:  # per user, not per connection or client
        client.login(SENDER, PASSWORD)
        with pytest.raises(smtplib.SMTPSenderRefused):
            client.sendmail(SENDER, [SENDER], message(SENDER, 4))


def test_hourly_recipient_limit(inst):
    rcpts = [f"wanda+{i}@example.test" for i in range(3)]
    with submission(inst, source(35)) as client:
        client.login(WIDE, PASSWORD)
        assert client.sendmail(WIDE, rcpts, message(WIDE, 1)) == {}
        # 3 sent; 5 an hour ([abuse] max_recipients_per_hour): two more, not three.
        refused = client.sendmail(WIDE, rcpts, message(WIDE, 2))
    assert list(refused) == [rcpts[2]]
    assert refused[rcpts[2]][0] == 452 and refused[rcpts[2]][1].startswith(b"4.5.3 Hourly")


def test_mx_concurrent_connections(inst):
    ip = source(36)
    held = [smtplib.SMTP("127.0.0.1", inst.mx_port, timeout=10, source_address=(ip, 0))
            for _ in range(3)]  # [abuse] max_connections_per_ip
    try:
        assert first_line(inst, "mx", ip) == b"421 4.7.0 Too many connections, try again later"
    finally:
        for client in held:
            client.quit()
