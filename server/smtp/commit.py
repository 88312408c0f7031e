"""Making an accepted message durable: local Maildirs and the outbound spool, all or nothing.

Both the MX and submission end a transaction here. ``commit`` runs in a worker thread (so the
fsyncs of concurrent transactions overlap) and returns only when every copy is on disk: the
remote part in the outbound spool first, then the local copies; if the local delivery fails,
the spool entry is taken back, so a retried transaction cannot leave a duplicate behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from maildir import Delivery, deliver, quota
from server.smtp import replies
from server.smtp.handoff import Handoff
from server.smtp.replies import SMTPError

log = logging.getLogger("mailstead.smtp")


@dataclass(frozen=True)
class Outgoing:
    """The part of a message that leaves through the outbound queue."""

    sender: str
    recipients: tuple[str, ...]
    chunks: tuple[bytes, ...]
    origin: str


def deliver_and_count(deliveries: Sequence[Delivery], quota_roots: Sequence[Path | None],
                      hostname: str) -> None:
    """Deliver every copy (all or nothing), then add each to its mailbox's quota usage.

    Once ``deliver`` returns the message is stored, so nothing after it may fail the
    transaction: a 451 now would make the sender retry and duplicate it. ``maildirsize`` is
    only a cache, recalculated when it looks wrong.
    """
    deliver(deliveries, hostname)
    for delivery, root in zip(deliveries, quota_roots, strict=True):
        if root is not None:
            try:
                quota.record(root, sum(len(c) for c in delivery.chunks), 1)
            except OSError as err:
                log.warning("quota usage of %s not updated (%s); invalidating it", root, err)
                with contextlib.suppress(OSError):
                    quota.invalidate(root)


def commit(deliveries: Sequence[Delivery], quota_roots: Sequence[Path | None],
           outgoing: Outgoing | None, spool, hostname: str) -> str | None:
    """Store the message everywhere it goes; return the outbound queue id, if any."""
    queued = None
    if outgoing is not None:
        queued = spool.add(outgoing.sender, list(outgoing.recipients), outgoing.chunks,
                           origin=outgoing.origin)
    try:
        if deliveries:
            deliver_and_count(deliveries, quota_roots, hostname)
    except BaseException:
        if queued is not None:
            spool.remove(queued.id)
        raise
    return queued.id if queued is not None else None


async def commit_or_reply(executor: Executor | Handoff, deliveries: Sequence[Delivery],
                          quota_roots: Sequence[Path | None], outgoing: Outgoing | None,
                          spool, hostname: str, conn_id: str, txn_id: str) -> str | None:
    """``commit`` in a worker thread (``executor``'s, or a ``Handoff``'s: an MX worker's
    cheaper trip), turning storage failures into 451/452 replies."""
    args = (deliveries, quota_roots, outgoing, spool, hostname)
    try:
        if isinstance(executor, Handoff):
            return await executor.run(commit, *args)
        return await asyncio.get_running_loop().run_in_executor(executor, commit, *args)
    except OSError as err:  # DeliveryError is an OSError; so are spool write failures
        code = err.errno or getattr(err.__cause__, "errno", None)
        log.error("conn=%s id=%s storing the message failed: %s", conn_id, txn_id, err)
        if code in (errno.ENOSPC, errno.EDQUOT):
            raise SMTPError(replies.INSUFFICIENT_STORAGE) from None
        raise SMTPError(replies.LOCAL_ERROR) from None

