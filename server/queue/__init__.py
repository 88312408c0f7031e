"""The outbound queue: a durable on-disk spool (``spool``), the retry schedule
(``schedule``) and delivery status notifications (``dsn``).

Pure storage and message building: no sockets, no asyncio, no config.  The delivery
workers and the ``mailstead queue`` commands are built on this API; the SMTP server calls
``Spool.add`` (in a worker thread) and answers 250 only after it returns.
"""

from server.queue.dsn import build_dsn, should_bounce, status_of
from server.queue.schedule import (
    DEFAULT_DELAY_WARNING,
    DEFAULT_EXPIRY,
    RETRY_DELAYS,
    is_expired,
    needs_delay_warning,
    next_delay,
)
from server.queue.spool import (
    DELIVERED,
    FAILED,
    PENDING,
    CorruptEnvelopeError,
    QueuedMessage,
    Recipient,
    Spool,
    check_id,
)

__all__ = [
    "DEFAULT_DELAY_WARNING",
    "DEFAULT_EXPIRY",
    "DELIVERED",
    "FAILED",
    "PENDING",
    "RETRY_DELAYS",
    "CorruptEnvelopeError",
    "QueuedMessage",
    "Recipient",
    "Spool",
    "build_dsn",
    "check_id",
    "is_expired",
    "needs_delay_warning",
    "next_delay",
    "should_bounce",
    "status_of",
]
