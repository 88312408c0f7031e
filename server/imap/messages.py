"""Selected-state commands (RFC 3501 §6.4) that change the folder or the state: STORE, COPY,
MOVE (RFC 6851), EXPUNGE, UID EXPUNGE (RFC 4315), CHECK, CLOSE, UNSELECT (RFC 3691), and the
untagged updates every command ends with.  FETCH is in ``fetching``, SEARCH in
``searching``.  The heavy work (renames, SQLite) runs in worker threads."""

from __future__ import annotations

import asyncio
import errno
import logging
import sqlite3

from server.imap.encode import astring
from server.imap.fetching import BATCH
from server.imap.responses import Bad, No, ok, untagged
from server.imap.selected import MailboxGone

log = logging.getLogger("mailstead.imap")

NO_EXPUNGE = ("FETCH", "STORE", "SEARCH")  # RFC 3501 §7.4.1, for the non-UID forms
ASKS_FOR_UPDATES = ("NOOP", "CHECK")  # their only job is the news (RFC 3501 §6.1.2, §6.4.1)


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
        if self.writing is not None:
            await self.settle()
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
        if self.writing is not None:
            # A big STORE, or the first SELECT of a big folder, is still writing its rows:
            # the news waits for the next command, which waits for them (settle), rather
            # than the tagged OK.  Its answer is written but for that OK: the rows may go
            # now (index_sync.REPLY_WAIT).
            self.answered.set()
            return []
        if self.selected is None or cmd.name in ("SELECT", "EXAMINE", "LOGOUT"):
            return []
        if self.pipelined and cmd.name not in ASKS_FOR_UPDATES:
            # The client's next command is here already: the news goes with that one's
            # answer (RFC 3501 §5.2 lets a server send it at any time), so a run of
            # pipelined FETCHes (mbsync) looks for changes once, not once a command.
            return []
        return await self.updates(allow_expunge=cmd.uid or cmd.name not in NO_EXPUNGE)

    async def settle(self) -> None:
        """Wait for the rows this session's last STORE writes after its reply: the next
        command must find them (its own changes) whatever it reads."""
        writing, self.writing = self.writing, None
        if writing is not None:
            self.answered.set()  # in case the STORE failed after its early answer
            await asyncio.wait([writing])

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
            changed, failed = await self._store_flags(sel.folder, [u for _, u in targets],
                                                      set(args.flags), mode, args.unchangedsince)
        except ValueError as err:
            raise Bad(str(err)) from None
        sel.stored(changed)
        if changed and self.writing is not None:
            # The other sessions are woken once the rows are in, not to wait for them.
            name = sel.name
            self.writing.add_done_callback(lambda _: self.notify(name))
        elif changed:
            self.notify(sel.name)
        if sel.folder.index.checkpoint_due:
            self.in_background(sel.folder.index.checkpoint)
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
                    infos = await self.io(sel.folder.get_many, unchanged, False)  # MODSEQs
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

    async def _store_flags(self, folder, *args):
        """``folder.store_flags`` in a worker thread, answered as soon as the files are
        renamed: a STORE on thousands writes its rows after that (index_ops.store_flags)."""
        value, _ = await self.io_answering_early("STORE rows", folder.store_flags, *args)
        return value

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
            infos = await self.io(sel.folder.get_many, uids, False)  # sizes only
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


def dest_folder_op(folder, move: bool):
    return folder.move if move else folder.copy


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
