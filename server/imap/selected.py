"""A session's view of its selected mailbox: sequence numbers, known flags, pending updates.

Every session has its own view (RFC 3501 §5.2: message sequence numbers are per session) of a
``FolderIndex`` that all sessions of the user share. Keeping up costs one
``changes_since(last MODSEQ seen)`` query, never a scan of the folder: new messages become
``EXISTS``, flag changes ``FETCH (FLAGS ...)``, expunges ``EXPUNGE`` — but expunges only when
the command allows them (RFC 3501 §7.4.1: not during FETCH, STORE or SEARCH, which would renumber
messages under the client's feet); until then they wait and the numbers stay.

Memory: a view is two parallel arrays of 4-byte integers (UIDs, and ids of flag sets shared by
every view in the process), and the views of a big folder share one read-only copy of those
(``_Snapshot``) until one of them changes: a thousand clients idling in a 100,000-message
INBOX hold one 800 KB copy, not a thousand.
"""

from __future__ import annotations

import bisect
from array import array

from server.imap.encode import flag_list
from server.imap.responses import untagged
from server.imap.viewcolumns import (
    _FLAG_IDS,
    _FLAG_TABLE,
    _SNAPSHOTS,
    FlagColumn,
    _EncodedFlags,
    _flag_id,
    _Flags,
    _frozen,
    _shared,
    _Snapshot,
    _Snapshots,
    _thawed,
)


class MailboxGone(Exception):
    """The selected folder was deleted or renamed (by another session or program)."""


class Selected:
    def __init__(self, folder, name: str, readonly: bool, condstore: bool, mailbox_index=None):
        self.folder = folder
        self.mailbox_index = mailbox_index
        self.name = name  # the Maildir++ folder name
        self.readonly = readonly
        self.condstore = condstore
        self.uids = array("I")  # sequence number n is uids[n - 1]; "I": 4 bytes ("L" is 8)
        self.flag_sets = FlagColumn()  # parallel to uids
        self.flags = _Flags(self)
        self.modseq = 0  # the HIGHESTMODSEQ this view reflects
        self.uidvalidity = 0
        self.uidnext = 1
        self.pending_expunge: set[int] = set()
        self.pending_flags: dict[int, int] = {}  # uid -> MODSEQ, changed, not yet reported
        self.exists_reported = 0
        # RFC 3501 §2.3.2: \Recent goes to the first session that sees a message. The index
        # hands each new message to exactly one sync() in the process: that session has it.
        self.recent: set[int] = set()
        self.recent_reported = 0

    # --- loading and polling (call from a worker thread: they touch SQLite and the disk) ---

    def load(self) -> None:
        """The whole folder, for SELECT: from the last view any session of this process
        loaded (``_SNAPSHOTS``) plus what changed since, else from every row of the index."""
        self.recent.update(self.folder.sync().added)
        snap = _SNAPSHOTS.get(self.folder)
        if snap is not None:
            changes = self.folder.changes_since(snap.modseq)
            if changes.uidvalidity == snap.uidvalidity:
                self.uids, self.flag_sets.ids = snap.uids, snap.ids
                self.modseq, self.uidnext = snap.modseq, snap.uidnext
                if changes.messages or changes.expunged:
                    self._own()
                    self._catch_up(changes)
                    self._remember(changes.uidvalidity)
                else:
                    self.modseq = max(self.modseq, changes.highestmodseq)
                    self.uidnext = changes.uidnext
                    self.uidvalidity = changes.uidvalidity
                return
        self.load_view(self.folder.view())

    def load_view(self, view) -> None:
        """Load a ``View`` of the whole folder (``load``, or a first sync's early one)."""
        self.uids = view.uids
        # An id per distinct set first (few), then the column in C: not a call per message.
        for flags in set(view.flags):
            _flag_id(flags)
        self.flag_sets.ids = array("I", map(_FLAG_IDS.__getitem__, view.flags))
        self.modseq, self.uidnext = view.highestmodseq, view.uidnext
        self._remember(view.uidvalidity)

    def _catch_up(self, changes) -> None:
        """Apply ``changes`` to a view nobody has been told about yet (at load)."""
        for info in changes.messages:
            i = bisect.bisect_left(self.uids, info.uid)
            if i < len(self.uids) and self.uids[i] == info.uid:
                self.flag_sets[i] = info.flags
            else:
                self.uids.insert(i, info.uid)
                self.flag_sets.ids.insert(i, _flag_id(frozenset(info.flags)))
        for uid in changes.expunged:
            i = self.index_of(uid)
            if i is not None:
                del self.uids[i]
                del self.flag_sets[i]
        self.modseq = max(self.modseq, changes.highestmodseq)
        self.uidnext = changes.uidnext

    @staticmethod
    def flag_sets_table(fid: int) -> frozenset:
        """The flag set behind a ``flag_sets.ids`` entry."""
        return _FLAG_TABLE[fid]

    def keywords(self) -> set[str]:
        """The keywords (flags without a backslash) some message of the view has."""
        table = _FLAG_TABLE
        return {f for fid in set(self.flag_sets.ids) for f in table[fid] if f[:1] != "\\"}

    def _remember(self, uidvalidity: int) -> None:
        self.uidvalidity = uidvalidity
        if len(self.uids) < _Snapshots.MIN_MESSAGES:
            _SNAPSHOTS.drop(self.folder)
            return
        snap = _Snapshot(uidvalidity, self.modseq, self.uidnext, _frozen(self.uids),
                         _frozen(self.flag_sets.ids))
        _SNAPSHOTS[self.folder] = snap
        self.uids, self.flag_sets.ids = snap.uids, snap.ids  # shared until changed

    def _own(self) -> None:
        """Copy the columns before changing them if they are a snapshot's (shared)."""
        if isinstance(self.uids, memoryview):
            self.uids = _thawed(self.uids)
        if isinstance(self.flag_sets.ids, memoryview):
            self.flag_sets.ids = _thawed(self.flag_sets.ids)

    def refresh(self) -> tuple[list[int], list[int]]:
        """Take in what changed since the last look. Returns (new UIDs, UIDs whose flags
        changed); expunges are kept in ``pending_expunge`` until they may be reported."""
        self._check_still_there()
        self.recent.update(self.folder.sync().added)
        changes = self.folder.changes_since(self.modseq)
        new, changed = [], []
        if changes.messages:
            self._own()
        for info in changes.messages:
            i = self.index_of(info.uid)
            if i is not None:
                if self.flag_sets[i] != info.flags:
                    self.flag_sets[i] = _shared(info.flags)
                    changed.append(info.uid)
                    self.pending_flags[info.uid] = info.modseq
            elif not self.uids or info.uid > self.uids[-1]:
                self.uids.append(info.uid)
                self.flag_sets.append(_shared(info.flags))
                new.append(info.uid)
        for uid in changes.expunged:
            if self.index_of(uid) is not None:
                self.pending_expunge.add(uid)
        self.modseq = max(self.modseq, changes.highestmodseq)
        self.uidnext = changes.uidnext
        return new, changed

    def stored(self, changed) -> None:
        """Take in the new flags of this session's STORE (MessageInfos in UID order).

        MODSEQs are handed out one at a time, so when the STORE's is the one right after the
        session's, nothing else changed the folder in between: the view is then current at
        the STORE's MODSEQ, and the poll after the command need not read the changed rows
        back (30,000 of them for STORE 1:* +FLAGS \\Seen on a big folder)."""
        self._own()
        uids, ids, count = self.uids, self.flag_sets.ids, len(self.uids)
        fids: dict[frozenset, int] = {}  # the STORE gave its 30,000 messages a few flag sets
        i = 0
        for info in changed:
            i = bisect.bisect_left(uids, info.uid, i)
            if i < count and uids[i] == info.uid:
                fid = fids.get(info.flags)
                if fid is None:
                    fid = fids[info.flags] = _flag_id(frozenset(info.flags))
                ids[i] = fid
        modseqs = {info.modseq for info in changed}
        if len(modseqs) == 1 and modseqs == {self.modseq + 1}:
            self.modseq += 1

    def unchanged(self) -> bool:
        """True when ``refresh()`` would find nothing; cheap enough for the event loop, so
        the poll after every command costs no trip to a worker thread when nothing changed
        (the common case). False when in doubt: refresh() then finds out, or says why not."""
        try:
            if self.mailbox_index is not None and not self.mailbox_index.is_current(self.folder):
                return False  # refresh() says MailboxGone, or finds the folder again
            return self.folder.unchanged_since(self.modseq)
        except Exception:
            return False

    def _check_still_there(self) -> None:
        """A folder deleted (or renamed, and perhaps recreated) under us must not be served
        from a stale index: its UIDs would be another folder's (RFC 3501 §2.3.1.1)."""
        if self.mailbox_index is None:
            return
        try:
            current = self.mailbox_index.folder(self.name)
        except (FileNotFoundError, ValueError):
            raise MailboxGone(self.name) from None
        if current is not self.folder:
            raise MailboxGone(self.name)

    # --- numbers ---

    def index_of(self, uid: int) -> int | None:
        i = bisect.bisect_left(self.uids, uid)
        return i if i < len(self.uids) and self.uids[i] == uid else None

    def seq_of(self, uid: int) -> int | None:
        i = self.index_of(uid)
        return None if i is None else i + 1

    @property
    def exists(self) -> int:
        return len(self.uids)

    def select(self, seqset, uid: bool) -> list[tuple[int, int]]:
        """(seq, uid) pairs a sequence set names, in order; for UID sets, '*' is the largest UID
        and UIDs that are not here are ignored (RFC 3501 §6.4.8)."""
        if not self.uids:
            return []
        ranges = seqset.ranges
        if len(ranges) == 1:
            first, last = ranges[0]
            if first == last and first is not None and first >= 1:
                return self._select_one(first, uid)
        # The intervals are sorted and disjoint, so the pairs come out in order, unique; each
        # is one slice of the view zipped with its numbers (1:* names 100,000 at once).
        out: list[tuple[int, int]] = []
        if uid:
            for lo, hi in seqset.intervals(self.uids[-1]):
                start = bisect.bisect_left(self.uids, lo)
                stop = bisect.bisect_right(self.uids, hi)
                out += zip(range(start + 1, stop + 1), self.uids[start:stop], strict=True)
            return out
        for lo, hi in seqset.intervals(len(self.uids)):
            out += zip(range(lo, hi + 1), self.uids[lo - 1:hi], strict=True)
        return out

    def _select_one(self, n: int, uid: bool) -> list[tuple[int, int]]:
        """``select`` of a set naming one number (a client opening a message), without
        building, sorting and merging intervals."""
        if uid:
            i = bisect.bisect_left(self.uids, n)
            return [(i + 1, n)] if i < len(self.uids) and self.uids[i] == n else []
        return [(n, self.uids[n - 1])] if n <= len(self.uids) else []

    # --- untagged updates ---

    def updates(self, allow_expunge: bool, with_uid: bool = False) -> list[bytes]:
        """EXPUNGE (if allowed), EXISTS, RECENT and FETCH FLAGS lines for what the client has
        not been told yet; call ``refresh`` first."""
        out = []
        if allow_expunge and self.pending_expunge:
            self._own()
            # Highest sequence number first, so each EXPUNGE's number is still right when
            # the client applies them in order.
            for seq in sorted((self.seq_of(u) for u in self.pending_expunge), reverse=True):
                uid = self.uids.pop(seq - 1)
                del self.flag_sets[seq - 1]
                self.pending_flags.pop(uid, None)
                self.recent.discard(uid)
                out.append(untagged(f"{seq} EXPUNGE"))
                self.exists_reported -= 1  # the client counts down by itself
            self.pending_expunge.clear()
        if self.exists != self.exists_reported:
            out.append(untagged(f"{self.exists} EXISTS"))
            self.exists_reported = self.exists
        if len(self.recent) != self.recent_reported:
            out.append(untagged(f"{len(self.recent)} RECENT"))
            self.recent_reported = len(self.recent)
        for uid in sorted(self.pending_flags):
            seq = self.seq_of(uid)
            if seq is not None:
                out.append(self.flags_line(seq, uid, with_uid, self.pending_flags[uid]))
        self.pending_flags.clear()
        return out

    def uid_flags_lines(self, targets: list[tuple[int, int]],
                        names: tuple[str, ...]) -> list[bytes]:
        """``* n FETCH (UID u FLAGS (...))`` for each (seq, uid), items in ``names`` order
        (UID and/or FLAGS only): what every client asks for the whole folder at each sync,
        rendered from the view alone. Each distinct flag set is encoded once per call."""
        ids = self.flag_sets.ids
        recent = self.recent
        flags = _EncodedFlags()

        def item(name: str, seq: int, uid: int) -> bytes:
            if name == "UID":
                return b"UID %d" % uid
            if uid in recent:
                return b"FLAGS " + flag_list(self.flag_names(uid))
            return flags[ids[seq - 1]]

        if names in (("UID", "FLAGS"), ("FLAGS", "UID")) and not recent:
            # The whole-folder sync of every client: one formatting step per message.
            if names[0] == "UID":
                return [b"* %d FETCH (UID %d %s)\r\n" % (seq, uid, flags[ids[seq - 1]])
                        for seq, uid in targets]
            return [b"* %d FETCH (%s UID %d)\r\n" % (seq, flags[ids[seq - 1]], uid)
                    for seq, uid in targets]
        if names == ("FLAGS",) and not recent:  # the answer to STORE 1:* +FLAGS ...
            return [b"* %d FETCH (%s)\r\n" % (seq, flags[ids[seq - 1]]) for seq, _ in targets]
        return [b"* %d FETCH (%s)\r\n" % (seq, b" ".join(item(n, seq, uid) for n in names))
                for seq, uid in targets]

    def flag_names(self, uid: int) -> list[str]:
        flags = sorted(self.flags.get(uid, ()))
        return [*flags, "\\Recent"] if uid in self.recent else flags

    def flags_line(self, seq: int, uid: int, with_uid: bool = False,
                   modseq: int | None = None) -> bytes:
        items = []
        if with_uid:
            items.append(f"UID {uid}".encode())
        items.append(b"FLAGS " + flag_list(self.flag_names(uid)))
        if self.condstore and modseq is not None:
            items.append(f"MODSEQ ({modseq})".encode())
        return b"* " + str(seq).encode() + b" FETCH (" + b" ".join(items) + b")\r\n"
