"""The durable outbound spool: one message file and one envelope file per queued message.

Layout under ``root`` (directories 0700, files 0600)::

    msg/<id>        the message exactly as accepted (CRLF); never rewritten after add()
    env/<id>.json   envelope and delivery status; replaced atomically after every attempt
    tmp/            files being written; anything here after a crash is garbage
    corrupt/        unreadable envelopes (with their message), set aside for a human

The envelope is the commit point.  ``add`` makes the message durable (write, fsync, rename
into msg/, fsync msg/) *before* it writes the envelope (write in tmp/, fsync, rename into
env/, fsync env/), and ``remove`` unlinks the envelope before the message.  So a crash at
any moment leaves either a complete entry or a message without envelope (an orphan that
``load_all`` removes, and that nobody got a 250 for), never an envelope without a message.

Locking: each message file carries an flock(2) for as long as someone writes its entry
(``add`` from creation until the envelope is in place, ``save``, ``remove``).  flock locks
belong to an open file description, so the one mechanism serialises threads of this
process and other processes (``mailstead queue delete`` while the server runs) without any
shared state, and lets the orphan sweep tell an entry being added from a crash leftover.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from maildir.safeio import (
    fsync_dir,
    make_private_dir,
    unlink_quiet,
    write_all,
    write_file_atomic,
)

log = logging.getLogger("mailstead.queue")

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
_STATUSES = frozenset({PENDING, DELIVERED, FAILED})

FILE_MODE = 0o600
FORMAT = 1  # envelope format version, written into every envelope for future migrations

# Ids are a nanosecond timestamp and 40 random bits, in RFC 4648 §7 "base32hex" lower case:
# its alphabet sorts like the numbers it encodes, so ids sort by arrival time, and it has
# nothing a shell or a path would interpret.  13 digits hold any 64-bit time_ns.
_ALPHABET = "0123456789abcdefghijklmnopqrstuv"
_ID = re.compile(r"[0-9a-v]{21}")
_ID_ATTEMPTS = 3


class CorruptEnvelopeError(ValueError):
    """An envelope file exists but cannot be understood (disk damage, hand editing)."""


def _base32hex(number: int, digits: int) -> str:
    return "".join(_ALPHABET[(number >> (5 * i)) & 31] for i in reversed(range(digits)))


def new_id() -> str:
    return _base32hex(time.time_ns(), 13) + _base32hex(secrets.randbits(40), 8)


def check_id(qid: object) -> str:
    """Return ``qid`` if it is a well-formed queue id, else raise ValueError.

    Every public method calls this first: ids come from the command line and the admin
    panel, and ``queue show ../../etc/passwd`` must not become a path.
    """
    if not isinstance(qid, str) or not _ID.fullmatch(qid):
        raise ValueError(f"invalid queue id {qid!r:.60}")
    return qid


@dataclass
class Recipient:
    address: str
    status: str = PENDING  # PENDING | DELIVERED | FAILED
    attempts: int = 0
    last_error: str = ""  # the remote reply, verbatim, or the connection error text
    last_code: int = 0  # the reply code of last_error; 0 for a connection error
    delivered_at: float | None = None
    dsn_sent: bool = False  # the delay warning went out; never send it twice
    remote_mta: str = ""  # host that gave last_error, for the DSN's Remote-MTA field
    last_attempt: float | None = None  # for the DSN's Last-Attempt-Date field
    # Failed for good, and the sender's failure report is not queued yet: kept until it is,
    # so a crash between recording the failure and queueing the report cannot lose the report.
    bounce_owed: bool = False


def domain_of(address: str) -> str:
    # rpartition: a quoted local part may itself contain "@".
    return address.rpartition("@")[2].lower()


@dataclass
class QueuedMessage:
    id: str
    sender: str  # "" is the null reverse-path (RFC 5321 §4.5.5): a bounce
    recipients: list[Recipient]
    created: float
    next_attempt: float
    attempts: int = 0
    size: int = 0
    origin: str = ""  # free text for the admin: "submission alice@example.test", "mx forward"
    is_dsn: bool = False  # a report we generated: never bounce it again

    def pending(self) -> list[Recipient]:
        return [r for r in self.recipients if r.status == PENDING]

    def domains(self) -> dict[str, list[Recipient]]:
        """Pending recipients by lower-cased domain: one SMTP transaction per domain."""
        groups: dict[str, list[Recipient]] = {}
        for rcpt in self.pending():
            groups.setdefault(domain_of(rcpt.address), []).append(rcpt)
        return groups

    def done(self) -> bool:
        return not self.pending() and not any(r.bounce_owed for r in self.recipients)


def _build(cls, doc: dict):
    # Unknown keys are ignored so that a downgrade reads a newer envelope instead of
    # setting the whole queue aside as corrupt.
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in doc.items() if k in names})


def _encode(msg: QueuedMessage) -> bytes:
    # ensure_ascii: lone surrogates (undecodable bytes kept by surrogateescape) round-trip.
    return json.dumps({"format": FORMAT, **asdict(msg)}, indent=1).encode("ascii") + b"\n"


def _decode(data: bytes, qid: str) -> QueuedMessage:
    try:
        doc = json.loads(data)
        msg = _build(QueuedMessage, doc)
        msg.recipients = [_build(Recipient, r) for r in doc["recipients"]]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptEnvelopeError(f"queue {qid}: unreadable envelope: {exc}") from exc
    ok = (
        msg.id == qid
        and isinstance(msg.sender, str)
        and isinstance(msg.attempts, int)
        and all(isinstance(v, int | float) for v in (msg.created, msg.next_attempt))
        and msg.recipients
        and all(isinstance(r.address, str) and r.status in _STATUSES for r in msg.recipients)
    )
    if not ok:
        raise CorruptEnvelopeError(f"queue {qid}: envelope fields are invalid")
    return msg




def _lock(path: Path, *, wait: bool) -> int | None:
    """Open and flock ``path``; return the fd, or None if ``wait`` is false and it is busy.

    Raises FileNotFoundError if the file is gone, also when it was unlinked while we
    waited for the lock (by ``remove`` or the orphan sweep).
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_nlink == 0:
            raise FileNotFoundError(path)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


class Spool:
    """The queue directory.  Safe for concurrent use by threads and processes (see above)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._msg, self._env = self.root / "msg", self.root / "env"
        self._tmp, self._corrupt = self.root / "tmp", self.root / "corrupt"
        for directory in (self._msg, self._env, self._tmp, self._corrupt):
            make_private_dir(directory)

    def message_path(self, qid: str) -> Path:
        return self._msg / check_id(qid)

    def _envelope_path(self, qid: str) -> Path:
        return self._env / f"{qid}.json"

    def _create_locked_tmp(self) -> tuple[str, Path, int]:
        for _ in range(_ID_ATTEMPTS):
            qid = new_id()
            tmp = self._tmp / qid
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            try:
                fd = os.open(tmp, flags, FILE_MODE)
            except FileExistsError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                # Another process's sweep may have taken the new file for a leftover
                # between open and flock, and unlinked it; start again with another id.
                if os.fstat(fd).st_nlink:
                    return qid, tmp, fd
            except BaseException:
                unlink_quiet(tmp)
                os.close(fd)
                raise
            os.close(fd)
        raise FileExistsError(f"no free queue id after {_ID_ATTEMPTS} attempts")

    def _write_envelope(self, msg: QueuedMessage) -> None:
        tmp = self._tmp / f"{msg.id}.json.{secrets.token_hex(4)}"
        write_file_atomic(self._envelope_path(msg.id), _encode(msg), tmp)

    def add(
        self,
        sender: str,
        recipients: list[str],
        chunks: Sequence[bytes],
        *,
        origin: str = "",
        is_dsn: bool = False,
        now: float | None = None,
    ) -> QueuedMessage:
        """Queue a message durably; only after this returns may the SMTP layer answer 250.

        On an exception nothing is left queued (the caller answers 451 and the client
        retries, so a half-queued copy would become a duplicate).
        """
        if not recipients:
            raise ValueError("a queued message needs at least one recipient")
        now = time.time() if now is None else now
        qid, tmp, fd = self._create_locked_tmp()
        final = self._msg / qid
        try:
            try:
                size = write_all(fd, chunks)
                os.fsync(fd)
                # The 64-bit timestamp plus 40 random bits never repeat in practice, so
                # rename cannot replace an existing message.
                os.rename(tmp, final)
            except BaseException:
                unlink_quiet(tmp)
                raise
            fsync_dir(self._msg)  # the message's name is durable before the envelope exists
            msg = QueuedMessage(
                id=qid,
                sender=sender,
                # A repeated RCPT names one mailbox: deliver to it once.
                recipients=[Recipient(a) for a in dict.fromkeys(recipients)],
                created=now,
                next_attempt=now,
                size=size,
                origin=origin,
                is_dsn=is_dsn,
            )
            self._write_envelope(msg)
        except BaseException:
            unlink_quiet(self._envelope_path(qid))  # envelope first: never one without message
            unlink_quiet(final)
            raise
        finally:
            with contextlib.suppress(OSError):  # the data is fsynced; close cannot lose it
                os.close(fd)
        return msg

    def save(self, msg: QueuedMessage) -> None:
        """Replace the envelope of ``msg`` atomically and durably.

        Called after every delivery attempt, before the next one, so a crash (even
        kill -9 or power loss) never re-sends to a recipient recorded as delivered.  The one
        window left is inherent to SMTP (RFC 1047): between the remote's 250 and the end of
        this call, a crash loses the record and the recipients of that transaction get the
        message once more on restart.  Raises KeyError if the message was removed meanwhile.
        """
        path = self.message_path(msg.id)
        try:
            fd = _lock(path, wait=True)
        except FileNotFoundError:
            raise KeyError(msg.id) from None
        assert fd is not None
        try:
            self._write_envelope(msg)
        finally:
            os.close(fd)

    def remove(self, qid: str) -> bool:
        """Delete an entry, envelope first; return False if there was nothing to delete."""
        path = self.message_path(qid)
        try:
            fd = _lock(path, wait=True)
        except FileNotFoundError:
            fd = None
        try:
            try:
                os.unlink(self._envelope_path(qid))
                fsync_dir(self._env)  # gone for good before its message goes
                found = True
            except FileNotFoundError:
                found = False
            if fd is not None:
                os.unlink(path)
                fsync_dir(self._msg)
            return found or fd is not None
        finally:
            if fd is not None:
                os.close(fd)

    def get(self, qid: str) -> QueuedMessage:
        """The entry ``qid``; KeyError if absent, CorruptEnvelopeError if unreadable."""
        try:
            data = self._envelope_path(check_id(qid)).read_bytes()
        except FileNotFoundError:
            raise KeyError(qid) from None
        return _decode(data, qid)

    def read_message(self, qid: str) -> bytes:
        try:
            return self.message_path(qid).read_bytes()
        except FileNotFoundError:
            raise KeyError(qid) from None

    def _envelope_ids(self) -> list[str]:
        names = (n.removesuffix(".json") for n in os.listdir(self._env) if n.endswith(".json"))
        return sorted(n for n in names if _ID.fullmatch(n))

    def list(self) -> list[QueuedMessage]:
        """Every complete entry, sorted by id.  Read-only: safe from the CLI while the
        server runs (it skips, but does not move, what ``load_all`` would set aside)."""
        out = []
        for qid in self._envelope_ids():
            try:
                out.append(self.get(qid))
            except KeyError:
                continue  # removed while we listed
            except CorruptEnvelopeError as exc:
                log.warning("%s", exc)
        return out

    def __iter__(self) -> Iterator[QueuedMessage]:
        return iter(self.list())

    def load_all(self) -> list[QueuedMessage]:
        """Recover at start: sweep tmp/, remove orphans, set corrupt entries aside, and
        return every complete entry, sorted by id."""
        self._sweep_tmp()
        envelope_ids = self._envelope_ids()
        messages = []
        for qid in envelope_ids:
            try:
                msg = self.get(qid)
            except KeyError:
                continue
            except CorruptEnvelopeError as exc:
                log.error("%s; moved to %s", exc, self._corrupt)
                self._set_aside(qid)
                continue
            if not self.message_path(qid).exists():
                log.error("queue %s: envelope without message; moved to %s", qid, self._corrupt)
                self._set_aside(qid)
                continue
            messages.append(msg)
        known = set(envelope_ids)
        for name in os.listdir(self._msg):
            if _ID.fullmatch(name) and name not in known:
                self._remove_orphan(name)
        return messages

    def _remove_orphan(self, qid: str) -> None:
        try:
            fd = _lock(self._msg / qid, wait=False)
        except FileNotFoundError:
            return
        if fd is None:
            return  # locked: an add() in progress, not a crash leftover
        try:
            if not self._envelope_path(qid).exists():  # it may have completed meanwhile
                log.warning("queue %s: removing message without envelope (crash during add)", qid)
                os.unlink(self._msg / qid)
                fsync_dir(self._msg)
        finally:
            os.close(fd)

    def _sweep_tmp(self) -> None:
        for name in os.listdir(self._tmp):
            path = self._tmp / name
            qid, dot, _ = name.partition(".")
            # A message being added is locked by its writer; an envelope being written is
            # covered by the lock on its message.  Anything else here is a crash's leftover.
            owner = self._msg / qid if dot and _ID.fullmatch(qid) else path
            try:
                fd = _lock(owner, wait=False)
            except FileNotFoundError:
                fd = -1
            if fd is None:
                continue
            try:
                unlink_quiet(path)
            finally:
                if fd >= 0:
                    os.close(fd)

    def _set_aside(self, qid: str) -> None:
        # Message first: a crash in between leaves an envelope without message (set aside
        # again next start), never a message without envelope (an orphan, deleted).
        with contextlib.suppress(FileNotFoundError):
            os.rename(self._msg / qid, self._corrupt / qid)
        os.rename(self._envelope_path(qid), self._corrupt / f"{qid}.json")
        fsync_dir(self._corrupt)
        fsync_dir(self._msg)
        fsync_dir(self._env)
