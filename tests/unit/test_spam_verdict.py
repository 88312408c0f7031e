"""From rspamd's answer to accept / Junk / reject, and the X-Spam headers that say why."""

from __future__ import annotations

import email
import email.policy

import pytest

from server.spam.rspamd import RspamdError, ScanReply, Symbol
from server.spam.verdict import ACCEPT, JUNK, MAX_LINE, REJECT, decide, unscanned


def reply(score=0.0, action="no action", symbols=(), required=15.0) -> ScanReply:
    return ScanReply(score, required, action, tuple(symbols))


@pytest.mark.parametrize("score, action, expected", [
    (-2.0, "no action", ACCEPT),
    (5.99, "no action", ACCEPT),
    (6.0, "no action", JUNK),        # our junk_score, though rspamd said nothing
    (14.9, "add header", JUNK),
    (15.0, "no action", REJECT),     # our reject_score
    (0.0, "reject", REJECT),         # rspamd's own reject (GTUBE, a forced action) refuses
    (0.0, "add header", JUNK),
    (0.0, "rewrite subject", JUNK),  # filed into Junk; we never rewrite a subject
    (4.5, "greylist", ACCEPT),       # we greylist ourselves, before DATA
    (2.0, "soft reject", ACCEPT),
])
def test_thresholds(score, action, expected):
    assert decide(reply(score, action), junk_score=6.0, reject_score=15.0).action == expected


def test_own_thresholds_win_over_rspamds_when_stricter():
    assert decide(reply(3.0), junk_score=2.5, reject_score=10.0).action == JUNK
    assert decide(reply(11.0, "add header"), junk_score=2.5, reject_score=10.0).action == REJECT


def _parse(headers: list[bytes]):
    raw = b"".join(headers) + b"\r\nbody\r\n"
    return email.message_from_bytes(raw, policy=email.policy.default)


def test_headers_of_a_clean_message():
    symbols = [Symbol("MISSING_DATE", 1.0), Symbol("R_SPF_ALLOW", -0.2, ("+ip4:192.0.2.0/24",))]
    result = decide(reply(1.5, symbols=symbols), 6.0, 15.0)
    msg = _parse(result.headers)
    assert msg["X-Spam-Score"] == "1.50"
    assert msg["X-Spam-Status"] == "No, score=1.50 required=6.00"
    spamd = str(msg["X-Spamd-Result"])
    assert spamd.startswith("default: False [1.50 / 15.00];")
    # Biggest contributions first, each with its options.
    assert spamd.index("MISSING_DATE(1.00)") < spamd.index("R_SPF_ALLOW(-0.20)[+ip4:192.0.2.0/24]")
    assert result.scanned and result.score == 1.5


def test_headers_of_spam_say_yes():
    result = decide(reply(15.0, "reject", [Symbol("GTUBE", 0.0)]), 6.0, 15.0)
    msg = _parse(result.headers)
    assert msg["X-Spam-Status"] == "Yes, score=15.00 required=6.00"
    unfolded = str(msg["X-Spamd-Result"]).replace("\t", " ")
    assert unfolded == "default: True [15.00 / 15.00]; GTUBE(0.00)"


def test_folded_lines_stay_short_and_every_line_ends_crlf():
    symbols = [Symbol(f"SYMBOL_NUMBER_{i}_" + "X" * 50, float(i),
                      tuple(f"option-{j}-" + "y" * 30 for j in range(5))) for i in range(80)]
    result = decide(reply(99.0, "reject", symbols), 6.0, 15.0)
    for header in result.headers:
        assert header.endswith(b"\r\n")
        lines = header[:-2].split(b"\r\n")
        assert all(len(line) <= MAX_LINE for line in lines)
        assert all(line.startswith(b"\t") for line in lines[1:])  # continuation lines
        assert b"\n" not in header.replace(b"\r\n", b"")


@pytest.mark.parametrize("name", [
    "EVIL\r\nX-Spam-Status: No", "EVIL\nBcc: victim@example.test", "EVIL\rX", "ÜBER\x00;[x]",
])
def test_symbol_names_and_options_cannot_inject_headers(name):
    result = decide(reply(20.0, "reject", [Symbol(name, 20.0, (name,))]), 6.0, 15.0)
    msg = _parse(result.headers)
    assert list(msg.keys()) == ["X-Spam-Score", "X-Spam-Status", "X-Spamd-Result"]
    raw = b"".join(result.headers)
    assert all(0x20 <= b < 0x7F or b in b"\t\r\n" for b in raw)
    assert raw.count(b"\r\n") == raw.count(b"\r") == raw.count(b"\n")


def test_unscanned_is_accepted_and_says_so():
    result = unscanned("rspamd unreachable")
    assert result.action == ACCEPT and not result.scanned
    assert result.headers == [b"X-Spam-Status: unknown (rspamd unreachable)\r\n"]


def test_reply_from_rspamd_json():
    parsed = ScanReply.from_json({
        "is_skipped": False, "score": 7.2, "required_score": 15.0, "action": "add header",
        "symbols": {"A": {"name": "A", "score": 0.5, "options": ["x", 1]},
                    "B": {"name": "B", "score": -3.0}, "C": "junk"},
        "messages": {"smtp_message": "go away"},
    })
    assert parsed.action == "add header" and parsed.score == 7.2
    assert parsed.symbols == (Symbol("B", -3.0), Symbol("A", 0.5, ("x", "1")))
    assert parsed.message == "go away"


@pytest.mark.parametrize("data", [
    [], {"error": "bad request"}, {"score": "NaN", "action": "reject"}, {"score": 1.0},
    {"action": "no action"},
])
def test_malformed_replies_raise(data):
    with pytest.raises(RspamdError):
        ScanReply.from_json(data)
