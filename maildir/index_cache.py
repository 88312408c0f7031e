"""A folder's message files as the index knows them, and what the index keeps for the IMAP
layer besides the messages: encoded ENVELOPE and BODYSTRUCTURE blobs, and the decoded header
fields searches looked at (index_sql's ``cache`` and ``fields`` tables).  A message file
never changes, so an entry stays valid until the message goes; both are dropped with it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from maildir import index_derived
from maildir import index_sql as sql
from maildir.index_types import MessageGone


def lends_connections(index_of, waits: bool = False):
    """Class decorator: every public method and property of the class runs with a connection
    lent from the pool of ``index_of(self)`` (see MailboxIndex.connection).  ``waits``:
    first waits for rows a STORE is writing after its reply (FolderState._wait_for_rows),
    but in the methods marked ``answers_while_writing``."""

    def wrap(func):
        wait = waits and getattr(func, "waits_for_rows", True)

        @functools.wraps(func)
        def wrapper(self, *args, **kwargs):
            if wait:
                self._wait_for_rows()
            index = index_of(self)
            lent = index.lend()  # connection() without its context manager: see lend
            if lent is None:
                return func(self, *args, **kwargs)
            try:
                return func(self, *args, **kwargs)
            finally:
                index.give_back(lent)
        return wrapper

    def decorate(cls):
        for name, member in list(vars(cls).items()):
            if name.startswith("_") or name in ("close", "connection", "lend", "give_back") or \
                    getattr(member, "needs_connection", True) is False:
                continue
            if isinstance(member, property):
                setattr(cls, name, property(wrap(member.fget), doc=member.__doc__))
            elif callable(member):
                setattr(cls, name, wrap(member))
        return cls
    return decorate


def answers_while_writing(func):
    """Marks a method the event loop calls: it must not wait for rows being written behind
    a STORE's reply, and checks ``_rows_pending()`` itself instead."""
    func.waits_for_rows = False
    return func


def without_connection(func):
    """Marks a public method that touches no database: ``lends_connections`` leaves it be
    (lending costs a pool lock and a context manager: too much for a check per command)."""
    func.needs_connection = False
    return func


@lends_connections(lambda folder: folder.index, waits=True)
class FolderCache:
    """FolderIndex's file, blob and field methods (a mixin: it needs ``_conn``, ``_id``,
    ``directory`` and ``_sync_before_change``)."""

    def path(self, uid: int) -> Path:
        query = "SELECT subdir, name FROM messages WHERE folder = ? AND uid = ?"
        row = self._conn().execute(query, (self._id, uid)).fetchone()
        if row is None:
            raise MessageGone(uid)
        return self.directory / row[0] / row[1]

    @answers_while_writing
    def paths(self, uids: Iterable[int]) -> dict[int, str]:
        """The file paths of those of ``uids`` in the folder, from one query: for reading
        many messages.  A path goes stale when another program renames the file; ``open``
        finds it again.  Also on the event loop (POP3 RETR), so it does not wait for a
        STORE's rows: its paths may then be stale in the same way."""
        directory = str(self.directory)
        rows = sql.file_names(self._conn(), self._id, uids)
        return {uid: f"{directory}/{subdir}/{name}" for uid, subdir, name in rows}

    def open(self, uid: int) -> BinaryIO:
        """The message file, opened for reading.  MessageGone if it is not in the folder.

        If another program renamed it since our last sync, one full sync finds it again.
        """
        for attempt in range(2):
            try:
                return open(self.path(uid), "rb")  # noqa: SIM115 -- the caller closes it
            except FileNotFoundError:
                if attempt == 0:
                    self._sync_before_change(full=True)
        raise MessageGone(uid)

    def read(self, uid: int) -> bytes:
        with self.open(uid) as f:
            return f.read()

    def get_cached(self, uid: int, kind: str) -> bytes | str | None:
        return index_derived.get_cache(self._conn(), self._id, [uid], kind).get(uid)

    def get_cached_many(self, uids: Iterable[int], kind: str) -> dict[int, bytes | str]:
        return index_derived.get_cache(self._conn(), self._id, uids, kind)

    def put_cached(self, uid: int, kind: str, value: bytes | str) -> None:
        self.put_cached_many(kind, [(uid, value)])

    def put_cached_many(self, kind: str, items: Iterable[tuple[int, bytes | str]]) -> None:
        """Store derived blobs in one transaction; UIDs no longer in the folder are skipped.

        A message file never changes, so an entry stays valid until the message goes.
        """
        conn = self._conn()
        with sql.write_txn(conn):
            index_derived.put_cache(conn, self._id, kind, items)

    def field_values(self, name: str) -> dict[int, bytes]:
        """What ``put_field_values`` stored for header field ``name``, by UID."""
        return index_derived.get_fields(self._conn(), self._id, name)

    def field_uids(self, name: str) -> set[int]:
        """The UIDs whose value of header field ``name`` is stored."""
        return index_derived.field_uids(self._conn(), self._id, name)

    def field_matches(self, name: str, needle: bytes) -> set[int]:
        """The UIDs whose stored value of field ``name`` contains ``needle``."""
        return index_derived.field_matches(self._conn(), self._id, name, needle)

    def put_field_values(self, name: str, items: Iterable[tuple[int, bytes]]) -> None:
        """Remember a header field's (decoded) value per UID, for later searches."""
        conn = self._conn()
        with sql.write_txn(conn):
            index_derived.put_fields(conn, self._id, name, items)
