"""From an rspamd answer to what we do with the message, and the headers that say why.

Our thresholds decide, not rspamd's: ``[spam] junk_score`` files into Junk, ``reject_score``
refuses. rspamd's own actions only ever make it stricter: its "reject" refuses, "add header" and
"rewrite subject" file into Junk (we never rewrite a subject). "greylist" and "soft reject" are
accepted: we greylist ourselves (``greylist.py``), and a temporary failure here would only make
the sender retry the same message against the same scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from server.spam.rspamd import ScanReply

ACCEPT, JUNK, REJECT = "accept", "junk", "reject"

_JUNK_ACTIONS = {"add header", "rewrite subject"}
MAX_LINE = 78  # RFC 5322 §2.1.1: lines SHOULD be at most 78 characters
MAX_SYMBOLS = 60  # a header long enough to read, not an amplifier for a hostile rule set
MAX_OPTION = 40


@dataclass(frozen=True, slots=True)
class SpamResult:
    action: str  # ACCEPT, JUNK or REJECT
    headers: list[bytes] = field(default_factory=list)  # each a full "Name: value\r\n" field
    score: float | None = None  # None: not scanned (rspamd off or unreachable)
    reason: str = ""  # for the log line and, on REJECT, the reply text

    @property
    def scanned(self) -> bool:
        return self.score is not None


def decide(reply: ScanReply, junk_score: float, reject_score: float) -> SpamResult:
    if reply.action == "reject" or reply.score >= reject_score:
        action = REJECT
    elif reply.action in _JUNK_ACTIONS or reply.score >= junk_score:
        action = JUNK
    else:
        action = ACCEPT
    reason = f"score {reply.score:.2f}, rspamd action {reply.action!r}"
    return SpamResult(action, headers(reply, action, junk_score), reply.score, reason)


def unscanned(why: str) -> SpamResult:
    """rspamd could not answer: the message is accepted and its header says it was not
    scanned, so nobody mistakes it for a message that scored clean."""
    text = _clean(why, 60) or "not scanned"
    return SpamResult(ACCEPT, [f"X-Spam-Status: unknown ({text})\r\n".encode()], None, why)


def headers(reply: ScanReply, action: str, junk_score: float) -> list[bytes]:
    flag = "No" if action == ACCEPT else "Yes"
    score = f"{reply.score:.2f}"
    out = [
        f"X-Spam-Score: {score}\r\n",
        f"X-Spam-Status: {flag}, score={score} required={junk_score:.2f}\r\n",
        spamd_result(reply, flag),
    ]
    return [h.encode() for h in out]


def spamd_result(reply: ScanReply, flag: str) -> str:
    """rspamd's own X-Spamd-Result layout (its milter_headers module), one symbol per
    continuation line: ``default: False [0.40 / 15.00];`` then ``SYMBOL(score)[options]``."""
    required = f"{reply.required_score:.2f}" if reply.required_score != float("inf") else "-"
    first = f"X-Spamd-Result: default: {'True' if flag == 'Yes' else 'False'} " \
            f"[{reply.score:.2f} / {required}]"
    parts = []
    for sym in reply.symbols[:MAX_SYMBOLS]:
        name = _clean(sym.name, 60) or "?"
        item = f"{name}({sym.score:.2f})"
        opts = ",".join(o for o in (_clean(o, MAX_OPTION) for o in sym.options) if o)
        if opts:
            room = MAX_LINE - 1 - len(item) - 3  # tab, brackets, ";"
            item += f"[{opts[:room]}]" if room > 3 else ""
        parts.append(item)
    lines = [first + (";" if parts else "")]
    lines += [f"\t{p}{';' if i < len(parts) - 1 else ''}" for i, p in enumerate(parts)]
    return "\r\n".join(line[:MAX_LINE] for line in lines) + "\r\n"


def _clean(text: str, limit: int) -> str:
    """Printable ASCII only, no structure characters: a symbol name or option comes from rules
    that look at attacker-controlled mail, and must not end our header or start another."""
    out = "".join(ch if " " <= ch <= "~" and ch not in ";[]()" else "_" for ch in text)
    return out.strip()[:limit]
