"""When to try a queued message again, when to give up, when to warn the sender.

Pure functions of the envelope and the clock; the delivery workers own the clock and the
configured limits and pass them in.

RFC 5321 §4.5.4.1: "the retry interval SHOULD be at least 30 minutes" and "give-up time
generally needs to be at least 4-5 days".  We start faster than 30 minutes because most
temporary failures (greylisting, a restarting server) clear within minutes, and greylisting
in particular wants a retry after a few minutes; the intervals then grow so a long outage
costs the remote little.
"""

from __future__ import annotations

from server.queue.dsn import should_bounce
from server.queue.spool import QueuedMessage, Recipient

# Seconds to wait after the 1st, 2nd, ... failed attempt; LATER_DELAY after every later one.
RETRY_DELAYS = (60, 300, 900, 1800, 3600)
LATER_DELAY = 7200

DEFAULT_EXPIRY = 5 * 24 * 3600  # RFC 5321 §4.5.4.1: at least 4-5 days
DEFAULT_DELAY_WARNING = 4 * 3600  # as Postfix's delay_warning_time, when enabled


def next_delay(attempts: int) -> float:
    """Seconds from now until the next try, after ``attempts`` failed attempts.

    0 attempts means "not tried yet": due now.  1 -> 60, 2 -> 300, 3 -> 900, 4 -> 1800,
    5 -> 3600, 6 and more -> 7200.
    """
    if attempts <= 0:
        return 0.0
    if attempts <= len(RETRY_DELAYS):
        return float(RETRY_DELAYS[attempts - 1])
    return float(LATER_DELAY)


def is_expired(msg: QueuedMessage, now: float, expiry_seconds: float = DEFAULT_EXPIRY) -> bool:
    """True once the message has been queued ``expiry_seconds``: fail what is left pending."""
    return now - msg.created >= expiry_seconds


def needs_delay_warning(
    msg: QueuedMessage, now: float, after_seconds: float | None = DEFAULT_DELAY_WARNING
) -> list[Recipient]:
    """The recipients a "delayed" DSN (RFC 3464 §2.3.3, Action: delayed) should report now.

    Pending recipients not yet warned about, once the message is ``after_seconds`` old;
    none when warnings are off (``after_seconds`` None) or when the message may not be
    bounced at all (null sender or our own DSN, RFC 5321 §6.1).  The caller
    sets ``dsn_sent`` on them and saves the envelope once the warning is queued.
    """
    if after_seconds is None or not should_bounce(msg) or now - msg.created < after_seconds:
        return []
    return [r for r in msg.pending() if not r.dsn_sent]
