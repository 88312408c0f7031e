"""An MX never relays, whatever the address trick (RFC 5321 §3.6, §7.1)."""

from __future__ import annotations

import pytest

from tests.support.rawsmtp import RawSMTP

# (RCPT argument, expected reply): 554 5.7.1 where the server understands the trick,
# 553 5.1.3 where the address is not even well-formed. Never 250.
TRICKS = [
    ("<victim@remote.test>", "554 5.7.1"),
    ("victim@remote.test", "554 5.7.1"),
    ("<Victim@REMOTE.test>", "554 5.7.1"),
    ("<victim%remote.test@example.test>", "554 5.7.1"),  # percent hack
    ("<victim%remote.test@EXAMPLE.TEST>", "554 5.7.1"),
    ("<remote.test!victim@example.test>", "554 5.7.1"),  # bang path
    ('<"victim@remote.test"@example.test>', "554 5.7.1"),  # quoted local part
    ('<"victim%remote.test"@example.test>', "554 5.7.1"),
    ('<"remote.test!victim"@example.test>', "554 5.7.1"),
    ("<@example.test:victim@remote.test>", "554 5.7.1"),  # source route
    ("<@example.test,@mx.example.test:victim@remote.test>", "554 5.7.1"),
    ("<victim@[127.0.0.1]>", "554 5.7.1"),  # IP literals
    ("<victim@[IPv6:::1]>", "554 5.7.1"),
    ("<postmaster@[127.0.0.1]>", "554 5.7.1"),
    ("<victim@sub.example.test>", "554 5.7.1"),  # only the exact domain is local
    ("<victim@example.test.remote.test>", "554 5.7.1"),
    ("<victim@localhost>", "554 5.7.1"),
    ("<postmaster@remote.test>", "554 5.7.1"),
    ("<victim@remote.test@example.test>", "553 5.1.3"),
    ("<victim@example.test@remote.test>", "553 5.1.3"),
    ("<victim@remote.test.>", "554 5.7.1"),
    ("<victim@>", "553 5.1.3"),
]


@pytest.mark.parametrize(("rcpt", "expected"), TRICKS, ids=[t[0] for t in TRICKS])
def test_relay_trick_refused(mx, rcpt, expected):
    with RawSMTP(mx.mx_port) as c:
        c.reply()
        assert c.cmd("EHLO attacker.remote.test")[0] == 250
        assert c.cmd("MAIL FROM:<spammer@remote.test>")[0] == 250
        code, text = c.cmd(f"RCPT TO:{rcpt}")
        assert f"{code} {text[0][:5]}" == expected
        # No recipient was accepted, so there is no transaction to send.
        assert c.cmd("DATA")[0] == 503


def test_tricks_refused_even_with_catch_all(fresh):
    """A catch-all must not swallow relay tricks addressed to its domain."""
    fresh.add_user("all@example.test")
    fresh.add_alias("@example.test", "all@example.test")
    fresh.append_config("[smtp]\nmax_errors = 100")
    fresh.start()
    with RawSMTP(fresh.mx_port) as c:
        c.reply()
        c.cmd("EHLO attacker.remote.test")
        c.cmd("MAIL FROM:<spammer@remote.test>")
        for rcpt, _ in TRICKS:
            code, text = c.cmd(f"RCPT TO:{rcpt}")
            assert code >= 500, (rcpt, code, text)
        assert c.cmd("RCPT TO:<someone@example.test>")[0] == 250
    assert fresh.messages("all@example.test") == []
