"""Named SMTP replies and the typed exception that carries one.

Every reply we send has an RFC 3463 enhanced status code (RFC 2034 §3 exempts only the
greeting, HELO/EHLO answers and 3xx intermediate replies). Handlers raise
``SMTPError(reply)``; the ``@smtp_hook`` decorator turns it into the reply string in one
place, and turns any other exception into ``451 4.3.0`` plus a logged traceback, so a bug
never drops a connection or a message.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("mailstead.smtp")

_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    enhanced: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"

    def with_text(self, text: str) -> Reply:
        return Reply(self.code, self.enhanced, text)


class SMTPError(Exception):
    """Raised by handler code to answer the current command with ``reply``."""

    def __init__(self, reply: Reply, text: str | None = None):
        self.reply = reply.with_text(text) if text is not None else reply
        super().__init__(str(self.reply))


# 2xx
SENDER_OK = Reply(250, "2.1.0", "Sender ok")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient ok")
DELIVERED = Reply(250, "2.0.0", "Ok: delivered")

# 4xx: temporary, the client retries
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, try again later")
TIMEOUT = Reply(421, "4.4.2", "Timeout exceeded, closing connection")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
# server/abuse: a client banned for failed logins, or opening connections too fast.
BANNED = Reply(421, "4.7.0", "Too many failed logins from your address, try again later")
CONNECTION_RATE = Reply(421, "4.7.0", "Too many connections per minute, try again later")
# Per signed-in user and hour (submission): a stolen password must not become a spam cannon.
MESSAGE_RATE = Reply(451, "4.7.1", "Hourly sending limit reached, try again later")
RECIPIENT_RATE = Reply(452, "4.5.3", "Hourly recipient limit reached, try again later")
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")
INSUFFICIENT_STORAGE = Reply(452, "4.3.1", "Insufficient system storage, try again later")
MAILBOX_FULL = Reply(452, "4.2.2", "Mailbox full")
# RFC 3463 §3.5 X.4.3 "Directory server failure": DNS. RFC 7489 §6.6.3: a DMARC verdict
# needing a lookup that failed is retried rather than guessed (server/inbound/verdict.py).
DNS_TEMPFAIL = Reply(451, "4.4.3", "Temporary DNS failure checking the sender's domain, "
                                   "try again later")
# server/spam: a first attempt from a new (network, sender, recipient) triple.
GREYLISTED = Reply(451, "4.7.1", "Greylisted, please try again later")
# RFC 5321 §4.5.3.1.10: 452 tells the client to send the remaining recipients in a new transaction.
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")

# 5xx: permanent
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
AUTH_NOT_ENABLED = Reply(503, "5.5.1", "Authentication not enabled on this service")
BAD_SENDER_SYNTAX = Reply(553, "5.1.7", "Sender address malformed")
BAD_RECIPIENT_SYNTAX = Reply(553, "5.1.3", "Recipient address malformed")
UNKNOWN_USER = Reply(550, "5.1.1", "No such user here")
MAILBOX_DISABLED = Reply(550, "5.2.1", "Mailbox disabled")
RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
NOT_YOUR_ADDRESS = Reply(553, "5.7.1", "Sender address not owned by the authenticated user")
NO_ADDRESS_LITERALS = Reply(550, "5.1.2", "Address literals are not accepted for delivery")
NO_FROM_HEADER = Reply(550, "5.6.0", "Message has no From header")
AUTH_BAD_BASE64 = Reply(501, "5.5.2", "Cannot decode base64")
AUTH_BAD_FORMAT = Reply(501, "5.5.2", "Malformed AUTH PLAIN response")
BARE_LINE_END = Reply(
    550, "5.6.0", "Message contains a bare CR or LF; lines must end with CRLF (RFC 5321 §2.3.8)"
)
TOO_MANY_HOPS = Reply(554, "5.4.6", "Too many hops, mail loop suspected")
# RFC 7489 §10.3: refused at the end of DATA; the text names the domain and why it failed.
DMARC_REJECTED = Reply(550, "5.7.1", "Rejected by the sender domain's DMARC policy (p=reject)")
# server/spam: the text names the client and the blocklist (SpamFilter.connect_check).
BLOCKLISTED = Reply(554, "5.7.1", "Service unavailable; client blocked by a DNS blocklist")
SPAM_REJECTED = Reply(550, "5.7.1", "Message rejected as spam")

# aiosmtpd writes some replies itself, without enhanced codes; ``add_enhanced_code`` adds the
# class-appropriate one by reply code (RFC 3463 §3.5 for the 5.5.x protocol family).
_DEFAULT_ENHANCED = {
    211: "2.0.0", 214: "2.0.0", 220: "2.0.0", 221: "2.0.0", 250: "2.0.0", 252: "2.0.0",
    421: "4.3.0", 450: "4.2.0", 451: "4.3.0", 452: "4.3.1", 454: "4.7.0",
    500: "5.5.2", 501: "5.5.4", 502: "5.5.1", 503: "5.5.1", 504: "5.5.4",
    530: "5.7.0", 535: "5.7.8", 538: "5.7.11", 550: "5.0.0", 552: "5.3.4", 553: "5.1.3",
    554: "5.7.0", 555: "5.5.4",
}


_HAS_ENHANCED = re.compile(r"\d{3} [245]\.\d{1,3}\.\d{1,3}(?: |$)")


def has_enhanced_code(status: str) -> bool:
    """True for a one-line reply that has its enhanced code already (every ``Reply``): then
    ``add_enhanced_code`` would return it unchanged."""
    return "\r\n" not in status and _HAS_ENHANCED.match(status) is not None


def add_enhanced_code(line: str) -> str:
    """Return ``line`` with an enhanced status code after the reply code, unless it has one."""
    code, sep, rest = line[:3], line[3:4], line[4:]
    if not code.isdigit() or sep not in (" ", "-") or code[0] == "3":
        return line
    first = rest.split(" ", 1)[0]
    if _ENHANCED.match(first):
        return line
    enhanced = _DEFAULT_ENHANCED.get(int(code), f"{code[0]}.0.0")
    return f"{code}{sep}{enhanced} {rest}" if rest else f"{code}{sep}{enhanced}"


Hook = Callable[..., Awaitable[str]]


def smtp_hook(func: Hook) -> Hook:
    """Turn ``SMTPError`` into its reply and any other exception into ``451 4.3.0``."""

    @functools.wraps(func)
    async def wrapper(self, server, session, envelope, *args):
        try:
            return await func(self, server, session, envelope, *args)
        except SMTPError as err:
            return str(err.reply)
        except Exception:
            log.exception("conn=%s %s failed", getattr(session, "conn_id", "-"), func.__name__)
            return str(LOCAL_ERROR)

    return wrapper
