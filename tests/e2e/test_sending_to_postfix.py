"""Issue 3 end to end: mail from a real client (swaks) through submission, signed, queued and
delivered to a real MTA (a private Postfix on loopback, the MX of remote.test), with the
failure paths ending in delivery or a report the sender can read."""

from __future__ import annotations

import email
import email.policy
import signal
import subprocess
import time

import dkim
import pytest

from tests.conftest import require_tool
from tests.support.instance import PASSWORD, Instance, cli
from tests.support.postfix import PostfixPeer, require_postfix

pytestmark = pytest.mark.e2e


@pytest.fixture
def setup(tmp_path, dns_server):
    require_postfix()
    peer = PostfixPeer(tmp_path / "postfix", reject=["gone@remote.test"])
    inst = Instance(tmp_path / "mailstead", dns_server.nameserver,
                    extra_config=f"[outbound]\nmx_port = {peer.port}\n")
    inst.add_user("sam@example.test")
    for key in _keys(inst):
        dns_server.set(key.record_name, "TXT", key.txt_value())
    yield inst, peer, dns_server
    inst.stop()
    peer.stop()


def _keys(inst):
    from server import dkimkeys

    return dkimkeys.keys_for(inst.data_dir / "dkim", "example.test")


def swaks(inst: Instance, to: str, subject: str) -> None:
    proc = subprocess.run(
        [require_tool("swaks"), "--server", "127.0.0.1", "--port", str(inst.submission_port),
         "--tls", "--tls-verify", "--tls-ca-path", str(inst.data_dir / "tls" / "cert.pem"),
         "--tls-sni", "mail.example.test", "--auth", "PLAIN", "--auth-user", "sam@example.test",
         "--auth-password", PASSWORD, "--from", "sam@example.test", "--to", to,
         "--header", f"Subject: {subject}", "--body", f"Body of {subject}."],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "250 2.0.0 Ok: queued as" in proc.stdout


def verify(message: bytes, dns_server) -> bool:
    resolver = dns_server.resolver()

    def dnsfunc(name, timeout=5):
        answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        return b"".join(b"".join(rr.strings) for rr in answer)

    return dkim.verify(message, dnsfunc=dnsfunc)


def subject_is(subject: str):
    return lambda m: f"Subject: {subject}\n".encode() in m


def queue(inst: Instance, *args: str) -> str:
    return cli("-c", str(inst.config_path), "queue", *args).stdout


def test_swaks_to_postfix_signed_and_verified(setup):
    inst, peer, dns_server = setup
    peer.start()
    inst.start()
    swaks(inst, "bob@remote.test", "signed for postfix")
    [arrived] = peer.wait_for(subject_is("signed for postfix"))
    # Postfix stored it with LF line ends and its own trace headers; as_sent gives back the
    # bytes mailstead sent, on which the DKIM signature must verify as any receiver's would.
    sent = PostfixPeer.as_sent(arrived)
    assert sent.startswith(b"DKIM-Signature: v=1; a=rsa-sha256")
    assert verify(sent, dns_server)
    assert b"(using TLSv1" in arrived  # Postfix saw STARTTLS (its Received header says so)


def test_remote_down_then_up_after_flush(setup):
    inst, peer, _ = setup
    inst.start()  # Postfix not running: connection refused
    swaks(inst, "bob@remote.test", "waited for postfix")
    deadline = time.monotonic() + 20
    while "attempts 1" not in queue(inst, "list") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "bob@remote.test" in queue(inst, "list")
    peer.start()
    queue(inst, "flush")
    peer.wait_for(subject_is("waited for postfix"))
    deadline = time.monotonic() + 20
    while "0 message(s) queued" not in queue(inst, "list") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "0 message(s) queued" in queue(inst, "list")


def test_postfix_550_bounces_to_the_senders_inbox(setup):
    inst, peer, _ = setup
    peer.start()
    inst.start()
    swaks(inst, "gone@remote.test", "to nobody")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        reports = [email.message_from_bytes(m, policy=email.policy.default)
                   for m in inst.messages("sam@example.test")]
        reports = [r for r in reports if r.get_content_type() == "multipart/report"]
        if reports:
            break
        time.sleep(0.1)
    assert len(reports) == 1, f"reports: {len(reports)}\n{inst.log()[-5000:]}\n{peer.log()[-3000:]}"
    text = reports[0].as_string()
    assert "gone@remote.test" in text and "Action: failed" in text
    assert "550 5.1.1" in text  # Postfix's own words reach the sender
    assert "Subject: to nobody" in text


def test_kill_9_with_queued_mail_delivers_each_once(setup):
    inst, peer, _ = setup
    inst.start()
    for n in range(4):
        swaks(inst, "bob@remote.test", f"survivor {n}")
    deadline = time.monotonic() + 20
    while queue(inst, "list").count("attempts 1") < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    inst.signal(signal.SIGKILL)
    inst.wait(10)
    peer.start()
    inst.start()
    queue(inst, "flush")
    for n in range(4):
        peer.wait_for(subject_is(f"survivor {n}"))
    time.sleep(1)
    subjects = [m.split(b"Subject: ", 1)[1].split(b"\n", 1)[0] for m in peer.messages()]
    assert sorted(subjects) == [f"survivor {n}".encode() for n in range(4)]
