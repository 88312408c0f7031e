"""Mailbox-level commands (RFC 3501 §6.3): SELECT/EXAMINE, CREATE, DELETE, RENAME, SUBSCRIBE,
UNSUBSCRIBE, LIST (with LIST-EXTENDED, RFC 5258; SPECIAL-USE, RFC 6154; LIST-STATUS, RFC 5819),
LSUB, STATUS and APPEND (with MULTIAPPEND, RFC 3502, and UIDPLUS's APPENDUID, RFC 4315)."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import threading
import time

from maildir import create_folder, folder_path, list_folders
from server.imap import mutf7, names, responses
from server.imap.encode import astring, encode, flag_list
from server.imap.responses import Bad, No
from server.imap.selected import Selected

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
# Keywords clients rely on (RFC 5788 registry, Thunderbird and Apple Mail junk handling).
WELL_KNOWN_KEYWORDS = ("$Forwarded", "$Junk", "$NotJunk", "$MDNSent", "$Phishing")
log = logging.getLogger("mailstead.imap")
STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE",
                "HIGHESTMODSEQ")


def _resolve(future, result) -> None:
    if not future.done():
        future.set_result(result)


def _pattern(reference: str, pattern: str) -> re.Pattern:
    """RFC 3501 §6.3.8: '*' matches anything, '%' anything but the hierarchy separator."""
    full = pattern if pattern.startswith(names.SEPARATOR) or not reference else \
        reference.rstrip(names.SEPARATOR) + names.SEPARATOR + pattern
    parts = []
    for ch in full:
        parts.append(".*" if ch == "*" else "[^/]*" if ch == "%" else re.escape(ch))
    # INBOX is case-insensitive (RFC 3501 §5.1); everything else is compared as is.
    return re.compile("".join(parts), re.DOTALL)


def _matches(regex: re.Pattern, name: str) -> bool:
    if names.is_inbox(name):
        return bool(regex.fullmatch("INBOX") or regex.fullmatch("inbox")
                    or regex.fullmatch(name))
    return bool(regex.fullmatch(name))


class MailboxCommands:
    # --- helpers ---

    async def io(self, func, *args):
        return await asyncio.get_running_loop().run_in_executor(self.ctx.executor, func, *args)

    async def io_answering_early(self, what: str, func, *args):
        """``func(*args, early)`` in a worker thread, where the work may call ``early(*values)``
        once what the client needs is known and durable, then go on writing the index.
        Returns ``(values, True)`` as soon as it does, ``self.writing`` being the rest of the
        work, which the next command waits for (messages.settle); else ``(func's result,
        False)``.  ``early`` returns an Event, set once the answer is written
        (after_command): the writing waits for it a little (index_sync.REPLY_WAIT).  The
        files are the truth, so a failure or a crash after the answer loses nothing the next
        sync does not read back from them."""
        loop = asyncio.get_running_loop()
        early = loop.create_future()
        answered = threading.Event()

        def hook(*values) -> threading.Event:  # in the worker thread
            loop.call_soon_threadsafe(_resolve, early, values)
            return answered

        work = asyncio.ensure_future(self.io(func, *args, hook))
        await asyncio.wait([early, work], return_when=asyncio.FIRST_COMPLETED)
        if work.done() or not early.done():
            early.cancel()
            return work.result(), False
        conn_id, answered_at = self.conn_id, time.monotonic()

        def written(future) -> None:
            if future.cancelled():
                return
            if future.exception() is not None:
                log.warning("conn=%s %s not written (the next sync reads them back from the "
                            "files): %r", conn_id, what, future.exception())
            else:
                log.info("conn=%s %s written %.0f ms after the answer", conn_id, what,
                         (time.monotonic() - answered_at) * 1000)

        work.add_done_callback(written)
        self.writing, self.answered = work, answered
        return early.result(), True

    def in_background(self, func, *args) -> None:
        """Run ``func`` in a worker thread without waiting: work the reply must not wait for
        (a WAL checkpoint). A failure is logged; the next commit redoes a checkpoint."""
        conn_id = self.conn_id

        def done(future) -> None:
            if not future.cancelled() and future.exception() is not None:
                log.warning("conn=%s background %s failed: %r", conn_id, func.__name__,
                            future.exception())

        try:
            future = self.ctx.executor.submit(func, *args)
        except RuntimeError:  # the executor is shut down: the server is stopping
            return
        future.add_done_callback(done)

    @property
    def root(self):
        return self.user.maildir

    def folder_name(self, name: str) -> str:
        try:
            return names.to_folder(name)
        except names.BadName as err:
            raise No(str(err), "CANNOT") from None

    def existing_folder(self, name: str) -> str:
        folder = self.folder_name(name)
        if folder != "INBOX" and not (self.root / f".{folder}").is_dir():
            raise No(f"No mailbox {name}", "NONEXISTENT")
        return folder

    def all_folders(self) -> list[str]:
        return ["INBOX", *list_folders(self.root)]

    def wire_name(self, name: str) -> bytes:
        """A mailbox name as IMAP4rev1 clients expect it: modified UTF-7 (RFC 3501 §5.1.3)."""
        return astring(mutf7.encode(name))

    def notify(self, folder: str) -> None:
        self.ctx.hub.changed(self.user.address, folder)

    # --- SELECT / EXAMINE ---

    async def do_select(self, cmd):
        async for chunk in self._select(cmd, readonly=False):
            yield chunk

    async def do_examine(self, cmd):
        async for chunk in self._select(cmd, readonly=True):
            yield chunk

    async def _select(self, cmd, readonly: bool):
        from server.imap.session import AUTHENTICATED, SELECTED, _Code

        # RFC 3501 §6.3.1: a failed SELECT leaves no mailbox selected.
        self.selected = None
        self.state = AUTHENTICATED
        self.unwatch()
        folder = self.existing_folder(cmd.args.mailbox)
        condstore = bool(cmd.args.condstore or cmd.args.qresync) or "CONDSTORE" in self.enabled
        if condstore:
            self.enabled.add("CONDSTORE")
        view, first = await self._open_folder(folder, readonly, condstore)
        if first is None:
            index = view.folder
            await self.io(view.load)
            first_unseen = await self.io(lambda: index.first_unseen)
            defined = await self.io(index.defined_keywords)
        else:  # a first sync still writing its rows (_open_folder)
            first_unseen, defined = first.first_unseen, first.defined_keywords
        # From the view where it can be: the folder's counts and a DISTINCT over its
        # keywords each cost a scan of every message (20 ms at 100,000).
        keywords = sorted({*defined, *view.keywords()})
        flags = [*SYSTEM_FLAGS, *WELL_KNOWN_KEYWORDS,
                 *(k for k in keywords if k not in WELL_KNOWN_KEYWORDS)]
        yield b"* FLAGS " + flag_list(flags) + b"\r\n"
        permanent = [] if readonly else [*SYSTEM_FLAGS, *WELL_KNOWN_KEYWORDS, "\\*"]
        yield responses.ok("Flags you can change", "PERMANENTFLAGS " +
                           flag_list(permanent).decode())
        yield responses.untagged(f"{view.exists} EXISTS")
        yield responses.untagged(f"{len(view.recent)} RECENT")
        view.exists_reported = view.exists
        view.recent_reported = len(view.recent)
        if first_unseen is not None:
            seq = view.seq_of(first_unseen)
            if seq is not None:
                yield responses.ok("First unseen", f"UNSEEN {seq}")
        yield responses.ok("UIDs valid", f"UIDVALIDITY {view.uidvalidity}")
        yield responses.ok("Predicted next UID", f"UIDNEXT {view.uidnext}")
        # RFC 7162 §3.1.2.1: with persistent MODSEQs, on every SELECT and EXAMINE.
        yield responses.ok("Highest", f"HIGHESTMODSEQ {view.modseq}")
        self.selected = view
        self.state = SELECTED
        yield _Code("READ-ONLY" if readonly else "READ-WRITE")

    async def _open_folder(self, folder: str, readonly: bool, condstore: bool):
        """``(Selected, None)``, to load; or ``(Selected, FirstView)`` when the folder's first
        sync in this process inserts thousands of rows: it hands out their view before it
        writes them (maildir.index_sync.WRITE_BEHIND_ROWS) and SELECT answers from that."""
        value, early = await self.io_answering_early(
            f"first index rows of {folder}", self.mailbox_index.folder, folder)
        if not early:
            return Selected(value, folder, readonly, condstore, self.mailbox_index), None
        (first,) = value
        view = Selected(first.folder, folder, readonly, condstore, self.mailbox_index)
        await self.io(view.load_view, first.view)
        return view, first

    # --- CREATE / DELETE / RENAME ---

    async def do_create(self, cmd):
        name = cmd.args.mailbox.rstrip(names.SEPARATOR)
        folder = self.folder_name(name)
        if folder == "INBOX" or (self.root / f".{folder}").is_dir():
            raise No(f"Mailbox {name} already exists", "ALREADYEXISTS")
        if cmd.args.special_use:
            # RFC 6154 §3: honour it or refuse; special uses belong to the standard folders.
            raise No("Special-use attributes cannot be given to new mailboxes", "USEATTR")
        await self.io(create_folder, self.root, folder)
        return
        yield

    async def do_delete(self, cmd):
        folder = self.existing_folder(cmd.args.mailbox)
        if folder == "INBOX":
            raise No("INBOX cannot be deleted", "CANNOT")
        if any(f.startswith(folder + ".") for f in list_folders(self.root)):
            # Maildir++ keeps a child inside no directory of its parent, but a parent without
            # its own folder would confuse every other Maildir reader: delete children first.
            raise No(f"Mailbox {cmd.args.mailbox} has child mailboxes; delete them first",
                     "INUSE")
        if self.selected is not None and self.selected.name == folder:
            self.selected = None
            from server.imap.session import AUTHENTICATED
            self.state = AUTHENTICATED
        path = folder_path(self.root, folder)
        await self.io(shutil.rmtree, path)
        await self.io(self.mailbox_index.forget, folder)
        subs = names.load_subscriptions(self.root)
        if cmd.args.mailbox in subs:
            subs.discard(cmd.args.mailbox)
            await self.io(names.save_subscriptions, self.root, subs)
        self.notify(folder)
        return
        yield

    async def do_rename(self, cmd):
        old = self.existing_folder(cmd.args.old)
        new = self.folder_name(cmd.args.new.rstrip(names.SEPARATOR))
        if new == "INBOX" or (self.root / f".{new}").is_dir():
            raise No(f"Mailbox {cmd.args.new} already exists", "ALREADYEXISTS")
        if old == "INBOX":
            # RFC 3501 §6.3.5: renaming INBOX moves its messages and leaves it empty.
            await self.io(create_folder, self.root, new)
            src = await self.io(self.mailbox_index.folder, "INBOX")
            dest = await self.io(self.mailbox_index.folder, new)
            await self.io(src.move, await self.io(src.uids), dest)
            self.notify("INBOX")
            return
        if new.startswith(old + "."):
            raise No("A mailbox cannot be moved inside itself", "CANNOT")
        moves = [(f, new + f[len(old):]) for f in list_folders(self.root)
                 if f == old or f.startswith(old + ".")]
        for _, dst in moves:  # every new name must be valid before anything moves
            try:
                names.to_folder(names.to_imap(dst))
                if len(f".{dst}".encode()) > 255:
                    raise names.BadName(f"mailbox name too long: {names.to_imap(dst)}")
            except names.BadName as err:
                raise No(str(err), "CANNOT") from None
        done = []
        try:
            for src, dst in moves:
                await self.io((self.root / f".{src}").rename, self.root / f".{dst}")
                done.append((src, dst))
        except OSError as err:
            for src, dst in reversed(done):  # put back what moved: all or nothing
                await self.io((self.root / f".{dst}").rename, self.root / f".{src}")
            raise No(f"Cannot rename: {err.strerror}", "CANNOT") from None
        for parent in _parents(new):
            if not (self.root / f".{parent}").is_dir():
                await self.io(create_folder, self.root, parent)
        for src, _ in moves:
            await self.io(self.mailbox_index.forget, src)
            self.notify(src)
        return
        yield

    # --- subscriptions ---

    async def do_subscribe(self, cmd):
        self.existing_folder(cmd.args.mailbox)
        subs = names.load_subscriptions(self.root)
        subs.add(names.to_imap(self.folder_name(cmd.args.mailbox)))
        await self.io(names.save_subscriptions, self.root, subs)
        return
        yield

    async def do_unsubscribe(self, cmd):
        subs = names.load_subscriptions(self.root)
        name = names.to_imap(self.folder_name(cmd.args.mailbox))
        if name not in subs:
            raise No(f"Not subscribed to {cmd.args.mailbox}", "NONEXISTENT")
        subs.discard(name)
        await self.io(names.save_subscriptions, self.root, subs)
        return
        yield

    # --- LIST / LSUB ---

    async def do_list(self, cmd):
        args = cmd.args
        if args.patterns == ("",):
            # RFC 3501 §6.3.8: the hierarchy delimiter and root name.
            yield b'* LIST (\\Noselect) "/" ""\r\n'
            return
        lsub = cmd.name == "LSUB"
        folders = self.all_folders()
        existing = {names.to_imap(f) for f in folders}
        subs = names.load_subscriptions(self.root)
        want_subscribed = lsub or "SUBSCRIBED" in args.selection
        returns = set(args.returns)
        regexes = [_pattern(args.reference, p) for p in args.patterns]
        # RFC 3501 §6.3.9: LSUB "%" shows the unsubscribed parent of a subscribed child, so the
        # client can walk down to it.
        parents = {n.rsplit("/", 1)[0] for n in subs if "/" in n} - subs if lsub else set()
        candidates = sorted(existing | (subs if want_subscribed else set()) | parents,
                            key=lambda n: (n != "INBOX", n))
        for name in candidates:
            if not any(_matches(r, name) for r in regexes):
                continue
            if name in parents and name not in subs:
                hidden = [c for c in subs if c.startswith(name + "/")
                          and not any(_matches(r, c) for r in regexes)]
                if hidden:  # only where the pattern would not show the child itself
                    yield b"* LSUB (\\Noselect) \"/\" " + self.wire_name(name) + b"\r\n"
                continue
            if want_subscribed and name not in subs:
                continue
            attrs = []
            if name not in existing:
                attrs.append("\\NonExistent" if not lsub else "\\Noselect")
            children = any(o.startswith(name + "/") for o in existing)
            if not lsub:
                attrs.append("\\HasChildren" if children else "\\HasNoChildren")
            if name in subs and ("SUBSCRIBED" in returns or "SUBSCRIBED" in args.selection):
                attrs.append("\\Subscribed")
            use = names.special_use(names.to_folder(name)) if name in existing else None
            if use:  # RFC 6154 §4: always shown; the SPECIAL-USE options only filter
                attrs.append(use)
            if "SPECIAL-USE" in args.selection and not use:
                continue
            word = "LSUB" if lsub else "LIST"
            yield (f"* {word} (".encode() + " ".join(attrs).encode() + b') "/" '
                   + self.wire_name(name) + b"\r\n")
            if args.status_items and name in existing:
                yield await self._status_line(name, args.status_items)

    async def do_lsub(self, cmd):
        async for chunk in self.do_list(cmd):
            yield chunk

    # --- STATUS ---

    async def do_status(self, cmd):
        name = cmd.args.mailbox
        self.existing_folder(name)
        yield await self._status_line(name, cmd.args.items)

    async def _status_line(self, name: str, items) -> bytes:
        folder = self.folder_name(name)
        index = await self.io(self.mailbox_index.folder, folder)
        await self.io(index.sync)
        status = await self.io(index.status)
        values = {"MESSAGES": status.messages, "RECENT": 0, "UIDNEXT": status.uidnext,
                  "UIDVALIDITY": status.uidvalidity, "UNSEEN": status.unseen,
                  "SIZE": status.size, "HIGHESTMODSEQ": status.highestmodseq}
        out = []
        for item in items:
            item = item.upper()
            if item == "DELETED":
                infos = await self.io(index.messages)
                value = sum(1 for m in infos if "\\Deleted" in m.flags)
            elif item in values:
                value = values[item]
            else:
                raise Bad(f"Unknown STATUS item {item}")
            out += [item, str(value)]
        return b"* STATUS " + self.wire_name(name) + b" (" + " ".join(out).encode() + b")\r\n"

    # --- QUOTA (RFC 9208): one root, "", holding the user's whole mailbox ---

    async def _quota_line(self) -> bytes:
        from maildir import quota

        limit = self.user.quota_bytes
        if not limit:
            return b'* QUOTA "" ()\r\n'
        used, _ = await self.io(quota.usage, self.root, limit)
        # STORAGE is counted in units of 1024 octets (RFC 9208 §5.1).
        return f'* QUOTA "" (STORAGE {used // 1024} {limit // 1024})\r\n'.encode()

    async def do_getquotaroot(self, cmd):
        self.existing_folder(cmd.args.mailbox)
        yield b"* QUOTAROOT " + self.wire_name(cmd.args.mailbox) + b' ""\r\n'
        yield await self._quota_line()

    async def do_getquota(self, cmd):
        if cmd.args.mailbox != "":
            raise No(f"No quota root {cmd.args.mailbox}", "NONEXISTENT")
        yield await self._quota_line()

    async def _check_quota(self, size: int) -> None:
        from maildir import quota

        limit = self.user.quota_bytes
        if limit:
            used, _ = await self.io(quota.usage, self.root, limit)
            if used + size > limit:
                raise No("Over quota", "OVERQUOTA")

    # --- APPEND ---

    async def do_append(self, cmd):
        from server.imap.session import _Code

        name = cmd.args.mailbox
        try:
            folder = self.existing_folder(name)
        except No:
            raise No(f"No mailbox {name}", "TRYCREATE") from None
        index = await self.io(self.mailbox_index.folder, folder)
        await self._check_quota(sum(len(m.data) for m in cmd.args.messages))
        uids = []
        for message in cmd.args.messages:
            if b"\x00" in message.data and not message.binary:
                raise No("NUL in a message; send it as a literal8 (BINARY)", "CANNOT")
            data = _crlf(message.data)
            try:
                uids.append(await self.io(index.append, data, set(message.flags),
                                          message.date))
            except ValueError as err:
                raise No(str(err), "CANNOT") from None
        status = await self.io(index.status)
        self.notify(folder)
        if uids and self.ctx.on_junk_move is not None:  # spam training (APPEND into Junk)
            self.ctx.on_junk_move(self.user.address, None, folder, index, uids)
        if self.selected is not None and self.selected.name == folder:
            for chunk in await self.updates():
                yield chunk
        yield _Code(f"APPENDUID {status.uidvalidity} " + ",".join(map(str, uids)))


def _crlf(data: bytes) -> bytes:
    """Store CRLF line ends whatever the client sent (bare LF from some scripts)."""
    if b"\n" not in data.replace(b"\r\n", b""):
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _parents(folder: str) -> list[str]:
    parts = folder.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


__all__ = ["MailboxCommands", "encode"]
