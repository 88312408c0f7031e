"""The outbound queue: a durable on-disk spool (``spool``), the retry schedule
(``schedule``) and delivery status notifications (``dsn``).

Pure storage and message building: no sockets, no asyncio, no config.  The delivery
workers and the ``mailstead queue`` commands are built on this API; the SMTP server calls
``Spool.add`` (in a worker thread) and answers 250 only after it returns.
"""

from server.queue.dsn import build_dsn, should_bounce, status_of
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
    "DELIVERED",
    "FAILED",
    "PENDING",
    "CorruptEnvelopeError",
    "QueuedMessage",
    "Recipient",
    "Spool",
    "build_dsn",
    "check_id",
    "should_bounce",
    "status_of",
]
