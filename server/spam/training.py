"""Junk moves as training: what a user files into Junk is spam, what they take out of it is ham.

The IMAP session calls ``JunkTrainer.observe`` after a COPY, MOVE or APPEND (through
``IMAPContext.on_junk_move``); it decides at once whether the move teaches anything and, if so,
queues the messages. One worker task reads them (in a thread) and sends them to rspamd's
controller one at a time, so the IMAP reply never waits for rspamd and a flood of moves cannot
pile up memory: past ``MAX_QUEUED`` messages further lessons are dropped, with a log line.
Nothing happens unless ``[spam] rspamd_url`` is set and ``[spam] learn`` is on.

Out of Junk into Trash teaches nothing: deleting spam from Junk is not saying it was ham.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor

from server.config import Config
from server.spam.rspamd import RspamdClient, RspamdError, close_later

log = logging.getLogger("mailstead.spam")

JUNK, TRASH = "Junk", "Trash"  # the special-use folders every mailbox has (server/imap/names.py)
MAX_QUEUED = 200
MAX_LEARN_SIZE = 20 * 1024 * 1024  # rspamd's own default limit is 50 MiB; Bayes needs far less


def lesson(source: str | None, dest: str) -> bool | None:
    """True: learn as spam; False: learn as ham; None: nothing to learn.
    ``source`` is None for APPEND (a client saving a message it flagged as junk locally)."""
    if dest == JUNK and source != JUNK:
        return True
    if source == JUNK and dest not in (JUNK, TRASH):
        return False
    return None


class JunkTrainer:
    def __init__(self, client: RspamdClient | None, *, learn: bool = True,
                 executor: Executor | None = None):
        self.client = client
        self.learn = learn
        self.executor = executor
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None
        self.learned = 0  # counters, for tests and the log
        self.failed = 0

    @classmethod
    def from_config(cls, config: Config, executor: Executor | None = None) -> JunkTrainer:
        trainer = cls(None, executor=executor)
        trainer.update_config(config)
        return trainer

    def update_config(self, config: Config) -> None:
        spam = config.spam
        self.learn = spam.learn
        close_later(self.client, spam.rspamd_timeout)
        self.client = RspamdClient(
            spam.rspamd_url, controller_url=spam.rspamd_controller_url,
            password=spam.rspamd_password, timeout=spam.rspamd_timeout,
        ) if spam.rspamd_url else None

    @property
    def enabled(self) -> bool:
        return self.client is not None and self.learn

    def observe(self, user: str, source: str | None, dest: str, folder,
                uids: Sequence[int]) -> None:
        """Called on the event loop right after a COPY/MOVE/APPEND into ``dest`` made
        ``uids`` there (``folder``: the destination's FolderIndex). Never blocks, never raises
        into the IMAP session."""
        spam = lesson(source, dest)
        if spam is None or not uids or not self.enabled:
            return
        try:
            queue = self._start()
            for uid in uids:
                queue.put_nowait((user, spam, _reader(folder, uid), uid))
        except asyncio.QueueFull:
            log.warning("spam training queue full: dropped %s lesson(s) from %s",
                        "spam" if spam else "ham", user)
        except Exception:
            log.exception("spam training: could not queue a lesson from %s", user)

    def _start(self) -> asyncio.Queue:
        if self.queue is None:
            self.queue = asyncio.Queue(MAX_QUEUED)
        if self.worker is None or self.worker.done():
            self.worker = asyncio.get_running_loop().create_task(self._work())
        return self.queue

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            user, spam, read, uid = await self.queue.get()
            kind = "spam" if spam else "ham"
            try:
                client = self.client
                if client is None or not self.learn:
                    continue  # switched off by a reload while this waited
                try:
                    message = await loop.run_in_executor(self.executor, read)
                except (OSError, LookupError):
                    log.info("spam training: uid %d of %s gone before it was read", uid, user)
                    continue
                if len(message) > MAX_LEARN_SIZE:
                    log.info("spam training: %s from %s not sent (%d bytes)", kind, user,
                             len(message))
                    continue
                new = await client.learn(spam, message)
                self.learned += 1
                log.info("spam training: %s learned from %s%s", kind, user,
                         "" if new else " (rspamd already knew it)")
            except RspamdError as err:
                self.failed += 1
                log.warning("spam training: %s from %s not learned: %s", kind, user, err)
            except Exception:
                self.failed += 1
                log.exception("spam training: %s from %s failed", kind, user)
            finally:
                self.queue.task_done()

    async def drain(self) -> None:
        """Wait until every queued lesson was sent (or failed); for tests and shutdown."""
        if self.queue is not None and self.worker is not None and not self.worker.done():
            await self.queue.join()

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            try:
                await self.worker
            except asyncio.CancelledError:
                pass
            self.worker = None
        if self.client is not None:
            await self.client.aclose()


def _reader(folder, uid: int) -> Callable[[], bytes]:
    return lambda: folder.read(uid)

