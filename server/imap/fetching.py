"""FETCH (RFC 3501 §6.4.5; RFC 7162 CHANGEDSINCE): the selected-state command that reads.

A FETCH of a few small messages (a client opening one) runs on the event loop; anything
bigger runs in worker threads in batches, each rendered and handed to the connection before
the next is read, so that a FETCH of a whole folder neither blocks other sessions nor piles
up in memory.  The first ENVELOPE/BODYSTRUCTURE of many messages goes to the parse helpers
(``parsepool``), one batch ahead of the one being written.
"""

from __future__ import annotations

from server.imap import fetch, parsepool
from server.imap.fetchplan import plan as fetch_plan
from server.imap.responses import No

BATCH = 500  # messages rendered per worker-thread call...
BATCH_BYTES = 8 * 1024 * 1024  # ...or fewer, once this much response is waiting to be sent
INLINE_MESSAGES = 8  # a FETCH of at most this many messages...
INLINE_BYTES = 256 * 1024  # ...this big in all runs on the event loop, not in a thread


class FetchCommands:
    # --- FETCH ---

    async def do_fetch(self, cmd):
        sel = self.selected
        args = cmd.args
        plan = fetch_plan(args.items, cmd.uid, args.changedsince is not None)
        if plan.condstore or args.changedsince is not None:
            self._condstore()
        targets = sel.select(args.seqset, cmd.uid)
        if not targets:
            return
        seen_uids = []
        if plan.sets_seen and not sel.readonly:
            seen_uids = [u for _, u in targets if "\\Seen" not in sel.flags.get(u, ())]
        if seen_uids:
            changed, _ = await self.io(sel.folder.store_flags, seen_uids, {"\\Seen"}, "add")
            for info in changed:
                sel.flags[info.uid] = info.flags
            self.notify(sel.name)
        seen = set(seen_uids)
        if plan.view_only and args.changedsince is None and not seen:
            # The sync every client runs on the whole folder: the view has all it needs.
            # One chunk per batch, not per line: each yield climbs three async generators.
            for start in range(0, len(targets), BATCH * 4):
                yield b"".join(sel.uid_flags_lines(targets[start:start + BATCH * 4],
                                                   plan.order))
            return
        # The index rows are read in the first batch's thread call: a FETCH of one message
        # (the commonest) then costs one trip to a worker thread, not two.
        # ENVELOPE and the like need no row: a cached value is there only while its
        # message is, and one that is not is computed from the file, found by its path.
        want_infos = args.changedsince is not None or plan.wants_infos
        infos = None
        if want_infos and len(targets) <= INLINE_MESSAGES and not plan.kinds:
            # A client opening a message or two: on the event loop when the files are
            # small, as a trip to a worker thread costs more than reading them (page cache).
            # Not with ENVELOPE and the like, whose first computation writes to the index.
            infos, paths = sel.folder.located([u for _, u in targets], dates=plan.dates)
            if len(infos) < len(targets):
                infos = None  # a file not where the index says: a thread finds it out
            elif sum(info.size for info in infos.values()) <= INLINE_BYTES:
                try:
                    lines, missing, _, _ = self._fetch_batch(
                        targets, plan, args.changedsince, seen, infos, None, paths=paths,
                        inline=True)
                except _Moved:
                    infos = None  # finding it takes a sync, which may wait for a lock
                else:
                    if lines:
                        yield b"".join(lines)
                    if missing:
                        raise No("Some messages were expunged meanwhile", "EXPUNGEISSUED")
                    return
        gone = False
        start = 0
        pool = self.ctx.parse_pool
        # None: no parse helpers for this FETCH (see parsepool.START_AT).
        ahead: dict | None = {} if pool is not None and pool.worth_it(len(targets)) else None
        while start < len(targets):
            batch = targets[start:start + BATCH]
            upcoming = [u for _, u in targets[start + BATCH:start + 2 * BATCH]]
            lines, missing, done, infos = await self.io(
                self._fetch_batch, batch, plan, args.changedsince, seen, infos,
                targets if want_infos and infos is None else None, ahead, upcoming)
            start += done
            gone = gone or missing
            if lines:
                yield b"".join(lines)
        if gone:
            raise No("Some messages were expunged meanwhile", "EXPUNGEISSUED")

    def _fetch_batch(self, batch, plan, changedsince, seen, infos, info_targets, ahead=None,
                     upcoming=(), paths=None, inline=False,
                     ) -> tuple[list[bytes], bool, int, dict | None]:
        """Runs in a worker thread (a few small messages: on the event loop): cache, file
        reads, MIME.  ``plan``: what the items need (fetchplan).  ``infos`` is None when
        only flags and UIDs are asked for: the session's view has those; ``info_targets``:
        read the index rows of these first (the first batch), and hand them back for the
        rest; ``ahead`` and ``upcoming``: see ``_pooled``.  ``inline`` (on the event loop):
        a file not under its indexed name raises _Moved instead of being looked for."""
        sel = self.selected
        folder = sel.folder
        if info_targets is not None:
            infos = _infos(folder, [u for _, u in info_targets], plan.dates)
        uids = [u for _, u in batch]
        items, kinds, wants_file = plan.items, plan.kinds, plan.wants_file
        cache = {k: folder.get_cached_many(uids, k) for k in kinds}
        new_cache: dict[str, list] = {k: [] for k in kinds}
        header_only = plan.header_only
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
            # The view still has it: where the batch says (no search of 100,000 UIDs per
            # message), or found by search if the view changed since the batch was made.
            if not (seq <= len(sel.uids) and sel.uids[seq - 1] == uid) and uid not in sel.flags:
                missing = True
                continue
            if changedsince is not None and info.modseq <= changedsince:
                continue
            message = None
            if wants_file or any(k not in cache or uid not in cache[k] for k in kinds):
                if paths is None:
                    paths = folder.paths(uids)
                try:
                    path = paths.get(uid)
                    message = fetch.crlf(_read(folder, uid, path, header_only, inline,
                                               info and info.size), path)
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



class _Moved(Exception):
    """A file is not where the index says: another program renamed or deleted it."""


def _read(folder, uid: int, path: str | None, header_only: bool, inline: bool = False,
          size: int | None = None) -> bytes:
    """The message (or as much as holds its header) from ``path``, looked up for the whole
    batch in one query; a file renamed since by another program is found by ``read``
    (not ``inline``: that syncs).  ``size``: the index's, if the batch read the rows."""
    if path is not None:
        try:
            return fetch.read_file(path, header_only, size)
        except FileNotFoundError:
            if inline:
                raise _Moved from None
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


def _infos(folder, uids: list[int], dates: bool) -> dict:
    # Internal dates the index has not read yet are read only for a FETCH that shows them:
    # a client's first FETCH 1:* (RFC822.SIZE) would stat() every file for nothing.
    return folder.get_many(uids, dates=dates)
