"""Selected-state commands (RFC 3501 §6.4): FETCH, STORE, SEARCH, COPY, MOVE (RFC 6851),
EXPUNGE, UID EXPUNGE (RFC 4315), CHECK, CLOSE, UNSELECT (RFC 3691), and the untagged updates
every command ends with. The heavy work (file reads, MIME parsing, SQLite) runs in worker
threads in batches, so one big FETCH neither blocks other sessions nor piles up in memory."""

from __future__ import annotations

import datetime as dt
import errno
import logging
import sqlite3

from server.imap import fetch, parsepool, search
from server.imap.encode import astring
from server.imap.responses import Bad, No, ok, untagged
from server.imap.selected import MailboxGone

log = logging.getLogger("mailstead.imap")

BATCH = 500  # messages rendered per worker-thread call...
BATCH_BYTES = 8 * 1024 * 1024  # ...or fewer, once this much response is waiting to be sent
INLINE_MESSAGES = 8  # a FETCH of at most this many messages...
INLINE_BYTES = 256 * 1024  # ...this big in all runs on the event loop, not in a thread
NO_EXPUNGE = ("FETCH", "STORE", "SEARCH")  # RFC 3501 §7.4.1, for the non-UID forms


def compress(numbers) -> str:
    """1,2,3,5 -> "1:3,5" (RFC 3501 sequence-set)."""
    out, start, prev = [], None, None
    for n in sorted(numbers):
        if start is None:
            start = prev = n
        elif n == prev + 1:
            prev = n
        else:
            out.append(f"{start}:{prev}" if start != prev else str(start))
            start = prev = n
    if start is not None:
        out.append(f"{start}:{prev}" if start != prev else str(start))
    return ",".join(out)


class MessageCommands:
    # --- updates for NOOP, IDLE and after each command ---

    async def updates(self, allow_expunge: bool = True) -> list[bytes]:
        if self.selected is None:
            return []
        try:
            if not self.selected.unchanged():
                await self.io(self.selected.refresh)
        except MailboxGone:
            # Dovecot's answer too: the client must reconnect and resynchronise.
            from server.imap.session import LOGOUT

            self.selected = None
            self.state = LOGOUT
            return [untagged("BYE Selected mailbox was deleted or renamed, reconnect please")]
        except Exception as err:
            if not out_of_space(err):
                raise
            # The index cannot record what changed while the disk is full: the news waits,
            # and the command (NOOP, FETCH, ...) still answers from what the session knows.
            log.warning("conn=%s updates skipped: disk full", self.conn_id)
        return self.selected.updates(allow_expunge)

    async def after_command(self, cmd) -> list[bytes]:
        if self.selected is None or cmd.name in ("SELECT", "EXAMINE", "LOGOUT"):
            return []
        return await self.updates(allow_expunge=cmd.uid or cmd.name not in NO_EXPUNGE)

    def idle_refusal(self):
        from server.imap.session import AUTHED

        return None if self.state in AUTHED else Bad("IDLE is only allowed after login")

    def watch(self):
        sel = self.selected
        folder = sel.name if sel is not None else ""
        directory = sel.folder.directory if sel is not None else None
        self.watching = (folder, self.ctx.hub.subscribe(self.user.address, folder, directory))
        return self.watching[1]

    def unwatch(self) -> None:
        if self.watching is not None:
            self.ctx.hub.unsubscribe(self.user.address, self.watching[0], self.watching[1])
            self.watching = None

    def _condstore(self) -> None:
        """RFC 7162 §3.1: using MODSEQ, CHANGEDSINCE or UNCHANGEDSINCE turns CONDSTORE on."""
        self.enabled.add("CONDSTORE")
        if self.selected is not None:
            self.selected.condstore = True

    def _writable(self) -> None:
        if self.selected.readonly:
            raise No("The mailbox is open read-only (EXAMINE)", "READ-ONLY")

    # --- CHECK, CLOSE, UNSELECT ---

    async def do_check(self, cmd):
        return
        yield

    async def do_close(self, cmd):
        # RFC 3501 §6.4.2: expunge silently, then leave the selected state.
        if not self.selected.readonly:
            sel = self.selected
            gone = await self.io(sel.folder.expunge, list(sel.uids), True)
            if gone:
                self.notify(sel.name)
        self._deselect()
        return
        yield

    async def do_unselect(self, cmd):
        self._deselect()
        return
        yield

    def _deselect(self) -> None:
        from server.imap.session import AUTHENTICATED

        self.selected = None
        self.state = AUTHENTICATED

    # --- EXPUNGE ---

    async def do_expunge(self, cmd):
        self._writable()
        sel = self.selected
        candidates = list(sel.uids)
        if cmd.uid:  # UID EXPUNGE (RFC 4315 §2.1): only those named
            largest = sel.uids[-1] if sel.uids else 0
            candidates = [u for u in candidates if cmd.args.seqset.contains(u, largest)]
        # The index decides what is \Deleted now: this session's view may be behind.
        gone = await self.io(sel.folder.expunge, candidates, True)
        if gone:
            sel.pending_expunge.update(u for u in gone if u in sel.flags)
            self.notify(sel.name)
        for line in sel.updates(allow_expunge=True):
            yield line

    # --- FETCH ---

    async def do_fetch(self, cmd):
        sel = self.selected
        args = cmd.args
        items = list(args.items)
        names = {i.name for i in items}
        if "MODSEQ" in names or args.changedsince is not None:
            self._condstore()
        if cmd.uid and "UID" not in names:
            items.insert(0, _item("UID"))
        if args.changedsince is not None and "MODSEQ" not in names:
            items.append(_item("MODSEQ"))  # RFC 7162 §3.3: CHANGEDSINCE implies MODSEQ
        targets = sel.select(args.seqset, cmd.uid)
        if not targets:
            return
        seen_uids = []
        if not sel.readonly and any(fetch.sets_seen(i) for i in items):
            seen_uids = [u for _, u in targets if "\\Seen" not in sel.flags.get(u, ())]
        if seen_uids:
            changed, _ = await self.io(sel.folder.store_flags, seen_uids, {"\\Seen"}, "add")
            for info in changed:
                sel.flags[info.uid] = info.flags
            self.notify(sel.name)
        seen = set(seen_uids)
        if names <= {"UID", "FLAGS"} and args.changedsince is None and not seen:
            # The sync every client runs on the whole folder: the view has all it needs.
            order = tuple(i.name for i in items)
            # One chunk per batch, not per line: each yield climbs three async generators.
            for start in range(0, len(targets), BATCH * 4):
                yield b"".join(sel.uid_flags_lines(targets[start:start + BATCH * 4], order))
            return
        # The index rows are read in the first batch's thread call: a FETCH of one message
        # (the commonest) then costs one trip to a worker thread, not two.
        want_infos = args.changedsince is not None or bool(names & INFO_ITEMS) or \
            any(fetch.needs_file(i) or fetch.cached_kind(i) for i in items)
        infos = None
        if want_infos and len(targets) <= INLINE_MESSAGES and \
                not any(fetch.cached_kind(i) for i in items):
            # A client opening a message or two: on the event loop when the files are
            # small, as a trip to a worker thread costs more than reading them (page cache).
            # Not with ENVELOPE and the like, whose first computation writes to the index.
            infos = _infos(sel.folder, [u for _, u in targets])
            if sum(info.size for info in infos.values()) <= INLINE_BYTES:
                lines, missing, _, _ = self._fetch_batch(
                    targets, items, args.changedsince, seen, infos, None)
                if lines:
                    yield b"".join(lines)
                if missing:
                    raise No("Some messages were expunged meanwhile", "EXPUNGEISSUED")
                return
        gone = False
        start = 0
        ahead: dict = {}
        while start < len(targets):
            batch = targets[start:start + BATCH]
            upcoming = [u for _, u in targets[start + BATCH:start + 2 * BATCH]]
            lines, missing, done, infos = await self.io(
                self._fetch_batch, batch, items, args.changedsince, seen, infos,
                targets if want_infos and infos is None else None, ahead, upcoming)
            start += done
            gone = gone or missing
            if lines:
                yield b"".join(lines)
        if gone:
            raise No("Some messages were expunged meanwhile", "EXPUNGEISSUED")

    def _fetch_batch(self, batch, items, changedsince, seen, infos, info_targets,
                     ahead=None, upcoming=()) -> tuple[list[bytes], bool, int, dict | None]:
        """Runs in a worker thread (a few small messages: on the event loop): cache, file
        reads, MIME. ``infos`` is None when only
        flags and UIDs are asked for: the session's view has those; ``info_targets``: read
        the index rows of these first (the first batch), and hand them back for the rest;
        ``ahead`` and ``upcoming``: see ``_pooled``."""
        sel = self.selected
        folder = sel.folder
        if info_targets is not None:
            infos = _infos(folder, [u for _, u in info_targets])
        uids = [u for _, u in batch]
        kinds = {fetch.cached_kind(i) for i in items} - {None}
        cache = {k: folder.get_cached_many(uids, k) for k in kinds}
        new_cache: dict[str, list] = {k: [] for k in kinds}
        wants_file = any(fetch.needs_file(i) for i in items)
        # ENVELOPE alone (a client's first sync of a folder) needs only the header.
        header_only = not wants_file and kinds <= {"envelope"}
        paths = None
        lines, missing, done, size = [], False, 0, 0
        pool = self.ctx.parse_pool
        if kinds and not wants_file and pool is not None and ahead is not None:
            _pooled(folder, pool, kinds, uids, cache, new_cache, ahead, upcoming)
        for seq, uid in batch:
            if size > BATCH_BYTES:
                break
            done += 1
            info = infos.get(uid) if infos is not None else None
            if infos is not None and info is None:
                missing = True
                continue
            if uid not in sel.flags:
                missing = True
                continue
            if changedsince is not None and info.modseq <= changedsince:
                continue
            message = None
            if wants_file or any(k not in cache or uid not in cache[k] for k in kinds):
                if paths is None:
                    paths = folder.paths(uids)
                try:
                    message = fetch.crlf(_read(folder, uid, paths.get(uid), header_only))
                except (OSError, LookupError):
                    missing = True
                    continue
            pairs = []
            flags_sent = False
            for item in items:
                name = item.name
                if name == "UID":
                    pairs.append((b"UID", str(uid).encode()))
                elif name == "FLAGS":
                    pairs.append(fetch.flags_item(sel.flag_names(uid)))
                    flags_sent = True
                elif name == "INTERNALDATE":
                    pairs.append((b"INTERNALDATE", fetch.internal_date(info.internal_date)))
                elif name == "RFC822.SIZE":
                    pairs.append((b"RFC822.SIZE", str(info.size).encode()))
                elif name == "MODSEQ":
                    pairs.append((b"MODSEQ", f"({info.modseq})".encode()))
                elif fetch.cached_kind(item):
                    kind = fetch.cached_kind(item)
                    value = cache[kind].get(uid)
                    if value is None:
                        value = fetch.compute_cached(kind, message)
                        cache[kind][uid] = value
                        new_cache[kind].append((uid, value))
                    value = value if isinstance(value, bytes) else value.encode()
                    pairs.append((name.encode(), value))
                else:
                    rendered = fetch.content_item(item, message)
                    if rendered is None:
                        raise No("Unknown content transfer encoding", "UNKNOWN-CTE")
                    pairs.append(rendered)
            if uid in seen and not flags_sent:
                pairs.append(fetch.flags_item(sel.flag_names(uid)))
            lines.append(fetch.render(seq, pairs))
            size += len(lines[-1])
        for kind, values in new_cache.items():
            if values:
                folder.put_cached_many(kind, values)
        return lines, missing, done, infos

    # --- STORE ---

    async def do_store(self, cmd):
        from server.imap.session import _Code

        self._writable()
        sel = self.selected
        args = cmd.args
        targets = sel.select(args.seqset, cmd.uid)
        if args.unchangedsince is not None:
            self._condstore()
        mode = {"+": "add", "-": "remove", "": "replace"}[args.mode]
        try:
            changed, failed = await self.io(sel.folder.store_flags, [u for _, u in targets],
                                            set(args.flags), mode, args.unchangedsince)
        except ValueError as err:
            raise Bad(str(err)) from None
        sel.stored(changed)
        if changed:
            self.notify(sel.name)
        if not args.silent and not sel.condstore and not failed:
            # RFC 3501 §6.4.6: the new flags of every message named, changed or not; from
            # the view (which has them all now), a batch of lines per chunk.
            names = ("UID", "FLAGS") if cmd.uid else ("FLAGS",)
            for start in range(0, len(targets), BATCH * 4):
                yield b"".join(sel.uid_flags_lines(targets[start:start + BATCH * 4], names))
        elif not args.silent:
            modseqs = {i.uid: i.modseq for i in changed}
            if sel.condstore:
                unchanged = [u for _, u in targets if u not in modseqs]
                if unchanged:
                    infos = await self.io(sel.folder.get_many, unchanged)
                    modseqs.update({u: i.modseq for u, i in infos.items()})
            failed_set = set(failed)
            for seq, uid in targets:
                if uid not in failed_set and uid in sel.flags:
                    yield sel.flags_line(seq, uid, cmd.uid, modseqs.get(uid))
        elif sel.condstore:
            # RFC 7162 §3.2: .SILENT still reports the new MODSEQ of what changed.
            for info in changed:
                seq = sel.seq_of(info.uid)
                if seq is not None:
                    uid_item = f"UID {info.uid} " if cmd.uid else ""
                    yield f"* {seq} FETCH ({uid_item}MODSEQ ({info.modseq}))\r\n".encode()
        if failed:
            numbers = failed if cmd.uid else [sel.seq_of(u) for u in failed]
            yield _Code(f"MODIFIED {compress(n for n in numbers if n)}")

    # --- SEARCH ---

    async def do_search(self, cmd):
        sel = self.selected
        args = cmd.args
        if _uses_modseq(args.key):
            self._condstore()
        found = await self.io(_search, sel, args.key)
        numbers = [c.uid if cmd.uid else c.seq for c in found]
        modseq = max((c.modseq for c in found), default=None) if _uses_modseq(args.key) \
            else None
        if args.returns is None:
            line = "SEARCH" + "".join(f" {n}" for n in numbers)
            if modseq is not None:
                line += f" (MODSEQ {modseq})"
            yield f"* {line}\r\n".encode()
            return
        returns = set(args.returns) or {"ALL"}
        parts = [f'(TAG "{cmd.tag}")'] + (["UID"] if cmd.uid else [])
        if numbers:
            if "MIN" in returns:
                parts.append(f"MIN {min(numbers)}")
            if "MAX" in returns:
                parts.append(f"MAX {max(numbers)}")
            if "ALL" in returns:
                parts.append(f"ALL {compress(numbers)}")
        if "COUNT" in returns:
            parts.append(f"COUNT {len(numbers)}")
        if modseq is not None and numbers:
            parts.append(f"MODSEQ {modseq}")
        yield ("* ESEARCH " + " ".join(parts) + "\r\n").encode()

    # --- COPY / MOVE ---

    async def do_copy(self, cmd):
        async for chunk in self._copy_or_move(cmd, move=False):
            yield chunk

    async def do_move(self, cmd):
        async for chunk in self._copy_or_move(cmd, move=True):
            yield chunk

    async def _copy_or_move(self, cmd, move: bool):
        from server.imap.session import _Code

        sel = self.selected
        if move:
            self._writable()
        try:
            dest_name = self.existing_folder(cmd.args.mailbox)
        except No:
            raise No(f"No mailbox {cmd.args.mailbox}", "TRYCREATE") from None
        if move and dest_name == sel.name:
            raise No("Source and destination are the same mailbox", "CANNOT")
        targets = sel.select(cmd.args.seqset, cmd.uid)
        if not targets:
            return
        dest = await self.io(self.mailbox_index.folder, dest_name)
        uids = [u for _, u in targets]
        if not move and self.user.quota_bytes:
            infos = await self.io(sel.folder.get_many, uids)
            await self._check_quota(sum(i.size for i in infos.values()))
        pairs = await self.io(dest_folder_op(sel.folder, move), uids, dest)
        status = await self.io(dest.status)
        self.notify(dest_name)
        if pairs and self.ctx.on_junk_move is not None:  # spam training, off the reply path
            self.ctx.on_junk_move(self.user.address, sel.name, dest_name, dest,
                                  [p[1] for p in pairs])
        code = None
        if pairs:
            code = (f"COPYUID {status.uidvalidity} {compress(p[0] for p in pairs)} "
                    f"{compress(p[1] for p in pairs)}")
        if move:
            if code:
                yield ok("Moved", code)
            sel.pending_expunge.update(p[0] for p in pairs if p[0] in sel.flags)
            self.notify(sel.name)
            for line in sel.updates(allow_expunge=True):
                yield line
        elif code:
            yield _Code(code)


INFO_ITEMS = {"INTERNALDATE", "RFC822.SIZE", "MODSEQ"}


def _read(folder, uid: int, path: str | None, header_only: bool) -> bytes:
    """The message (or as much as holds its header) from ``path``, looked up for the whole
    batch in one query; a file renamed since by another program is found by ``read``."""
    if path is not None:
        try:
            return fetch.read_file(path, header_only)
        except FileNotFoundError:
            pass
    return folder.read(uid)


def _pooled(folder, pool, kinds, uids, cache, new_cache, ahead: dict, upcoming) -> None:
    """Values of ``kinds`` for this batch's ``uids`` from the parse helpers: those the
    previous batch asked for (``ahead``), the rest now if there are many; then ask for the
    next batch's (``upcoming``), so that the helpers parse while this batch is rendered and
    written.  What they cannot give, the caller computes itself."""
    for kind in kinds:
        got: dict[int, bytes | None] = {}
        prior = ahead.pop(kind, None)
        if prior is not None:
            asked, pending = prior
            got = dict(zip(asked, pending.result() or (), strict=False))
        todo = [u for u in uids if u not in cache[kind] and got.get(u) is None]
        if len(todo) >= parsepool.MIN_BATCH:
            paths = folder.paths(todo)
            todo = [u for u in todo if u in paths]
            got.update(zip(todo, pool.compute(kind, [paths[u] for u in todo]) or (),
                           strict=False))
        for uid in uids:
            value = got.get(uid)
            if value is not None and uid not in cache[kind]:
                cache[kind][uid] = value
                new_cache[kind].append((uid, value))
        if len(upcoming) >= parsepool.MIN_BATCH:
            have = folder.get_cached_many(upcoming, kind)
            todo = [u for u in upcoming if u not in have]
            if len(todo) >= parsepool.MIN_BATCH:
                paths = folder.paths(todo)
                todo = [u for u in todo if u in paths]
                pending = pool.submit(kind, [paths[u] for u in todo])
                if pending is not None:
                    ahead[kind] = (todo, pending)


def _infos(folder, uids: list[int]) -> dict:
    return folder.get_many(uids)


def dest_folder_op(folder, move: bool):
    return folder.move if move else folder.copy


def _search(sel, key) -> list:
    """Runs in a worker thread, so a big folder's SEARCH does not stall other sessions.

    Candidates are made from the view; the index's message rows are read only for keys
    that compare size, dates or MODSEQ, and header fields come from the index's field store
    where an earlier search left them (what this one reads from files is stored for the next).
    """
    folder = sel.folder
    with_info = search.needs_info(key) or _uses_modseq(key)
    infos = {m.uid: m for m in folder.messages()} if with_info else None
    if not with_info:
        found = _search_known(sel, key)
        if found is not None:
            return found
    names = search.header_fields(key)
    known = {name: folder.field_values(name) for name in names}

    def loader(uid):
        def load() -> bytes:
            try:
                return fetch.crlf(folder.read(uid))
            except (OSError, LookupError):
                return b""  # expunged meanwhile by another program: matches no content key
        return load

    split: dict[int, tuple[frozenset, frozenset]] = {}
    candidates = []
    for seq, (uid, fid) in enumerate(zip(sel.uids, sel.flag_sets.ids, strict=True), 1):
        info = None
        if infos is not None:
            info = infos.get(uid)
            if info is None:
                continue
        flags = split.get(fid)
        if flags is None:
            every = sel.flag_sets_table(fid)
            flags = split[fid] = (frozenset(f for f in every if f.startswith("\\")),
                                  frozenset(f for f in every if not f.startswith("\\")))
        candidates.append(_Candidate(seq, uid, flags, uid in sel.recent, loader(uid), info,
                                     _KnownFields(known, uid) if names else None))
    largest_uid = sel.uids[-1] if sel.uids else 0
    learned: dict[str, dict[int, list[str]]] = {}
    found = search.search(key, candidates, largest_seq=len(sel.uids), largest_uid=largest_uid,
                          learned=learned)
    for name, values in learned.items():
        if name in names:
            folder.put_field_values(name, [(u, _pack(v)) for u, v in values.items()])
    return found


def _search_known(sel, key) -> list | None:
    """The matches, if ``key`` can be answered from the view and the field values the index
    keeps for every message of it (``search.known_matches``); else None."""
    folder = sel.folder
    every = set(sel.uids)
    covered: dict[str, bool] = {}

    def field_match(name: str, needle: str) -> set[int] | None:
        if name not in covered:
            covered[name] = folder.field_uids(name).issuperset(every)
        if not covered[name]:
            return None
        return folder.field_matches(name, needle.encode("utf-8", "surrogatepass")) & every

    ids = sel.flag_sets.ids

    def flag_match(test) -> set[int]:
        passing = {fid for fid in set(ids)
                   if test(frozenset(f.lower() for f in sel.flag_sets_table(fid)))}
        return {uid for uid, fid in zip(sel.uids, ids, strict=True) if fid in passing}

    matched = search.known_matches(key, every, field_match, flag_match)
    if matched is None:
        return None
    return [_Candidate(i + 1, uid, (frozenset(), frozenset()), uid in sel.recent, None, None,
                       None)
            for i, uid in enumerate(sel.uids) if uid in matched]


class _Candidate:
    """``search.Candidate`` made cheaply: 100,000 of them per SEARCH of a big folder, so the
    index row's date is turned into a datetime only for a key that compares it."""

    __slots__ = ("seq", "uid", "flags", "keywords", "recent", "load", "info", "fields")

    def __init__(self, seq, uid, flags, recent, load, info, fields):
        self.seq, self.uid, (self.flags, self.keywords) = seq, uid, flags
        self.recent, self.load, self.info, self.fields = recent, load, info, fields

    @property
    def size(self) -> int:
        return self.info.size

    @property
    def modseq(self) -> int:
        return self.info.modseq

    @property
    def internal_date(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.info.internal_date, dt.UTC)


class _KnownFields:
    """One message's field values from the index's field store (``Candidate.fields``)."""

    __slots__ = ("known", "uid")

    def __init__(self, known: dict[str, dict[int, bytes]], uid: int):
        self.known, self.uid = known, uid

    def get(self, name: str) -> list[str] | None:
        packed = self.known.get(name, {}).get(self.uid)
        return None if packed is None else packed.decode("utf-8", "surrogatepass").split("\0")[1:]


def _pack(values: list[str]) -> bytes:
    """A field's values as one UTF-8 string, each preceded by NUL (b"": field absent). A
    search string never holds NUL, so a substring test of the whole cannot match across two
    values (``field_matches`` tests the bytes)."""
    return "".join("\0" + v for v in values).encode("utf-8", "surrogatepass")


def _uses_modseq(key) -> bool:
    if key.name == "MODSEQ":
        return True
    return any(_uses_modseq(a) for a in key.args if hasattr(a, "name") and hasattr(a, "args"))


def _item(name: str):
    from server.imap.parser import FetchItem

    return FetchItem(name)


__all__ = ["MessageCommands", "astring", "compress"]


def out_of_space(err: BaseException | None) -> bool:
    """A full disk or quota, however it surfaced: OSError, or SQLite's own error."""
    for _ in range(10):  # the cause chain, bounded
        if err is None:
            return False
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(err, sqlite3.OperationalError) and "disk is full" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False
