"""The POP3 state machine: AUTHORIZATION → TRANSACTION → UPDATE (RFC 1939 §3), one method per
command, replies built in one place.

The maildrop is a snapshot of INBOX taken at login: messages delivered later are not shown
until the next session (§8). DELE only marks; the deletions happen at QUIT (UPDATE), so a
dropped connection deletes nothing. UIDLs are the IMAP UID and UIDVALIDITY (Dovecot's form), so
they are stable across sessions and whatever IMAP clients do meanwhile. RETR marks \\Seen for
IMAP (in batches: at QUIT, when the connection ends, or every 500). One POP3 session per user
at a time (``-ERR [IN-USE]``); IMAP sessions carry on.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from dataclasses import dataclass

from server.authlimit import check_password
from server.imap.fetch import crlf, read_file

log = logging.getLogger("mailstead.pop3")

AUTHORIZATION, TRANSACTION, UPDATE = "authorization", "transaction", "update"


class Reply(Exception):
    """Raised by a command to answer ``-ERR``; ``code`` is an RFC 2449/3206 response code."""

    def __init__(self, text: str, code: str | None = None):
        super().__init__(text)
        self.text = text
        self.code = code

    def line(self) -> bytes:
        code = f"[{self.code}] " if self.code else ""
        # The text may quote the client (an unknown command's name): a CR or LF from it would
        # end our line early and let the client write a reply of its choosing.
        text = "".join(c if c.isprintable() else "?" for c in self.text)
        return f"-ERR {code}{text}\r\n".encode()


def ok(text: str = "") -> bytes:
    return f"+OK {text}".rstrip().encode() + b"\r\n"


@dataclass
class Message:
    uid: int
    size: int
    deleted: bool = False


def dot_stuff(data: bytes) -> bytes:
    """RFC 1939 §3: a line starting with "." gets one more; the message ends with CRLF."""
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..")


class Session:
    def __init__(self, ctx, *, conn_id: str, peer_ip: str, tls: bool, stls_offered: bool):
        self.ctx = ctx
        self.conn_id = conn_id
        self.peer_ip = peer_ip
        self.tls = tls
        self.stls_offered = stls_offered
        self.state = AUTHORIZATION
        self.user = None
        self.username: str | None = None  # from USER, waiting for PASS
        self.messages: list[Message] = []
        self.folder = None
        self.uidvalidity = 0
        self.quit = False
        self.retrieved: set[int] = set()  # UIDs RETRieved, not yet marked \Seen

    # --- dispatch ---

    async def handle(self, line: bytes) -> list[bytes]:
        """One command line (without CRLF) in, the reply out (possibly multi-line)."""
        text = line.decode("utf-8", "replace")
        name, _, arg = text.partition(" ")
        name = name.upper()
        method = getattr(self, f"cmd_{name.lower()}", None) if name.isalpha() else None
        try:
            if method is None or name not in COMMANDS:
                raise Reply(f"Unknown command {name[:20]}")
            if self.state not in COMMANDS[name]:
                raise Reply(f"{name} is not allowed in this state")
            return await method(arg)
        except Reply as reply:
            return [reply.line()]
        except Exception:
            log.exception("conn=%s %s failed", self.conn_id, name)
            return [Reply("Internal error", "SYS/TEMP").line()]

    def capabilities(self) -> list[str]:
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING",
                "EXPIRE NEVER", "LOGIN-DELAY 0", "IMPLEMENTATION mailstead"]
        if self.state == AUTHORIZATION:
            if self.tls:
                caps += ["USER", "SASL PLAIN"]
            elif self.stls_offered:
                caps.append("STLS")
        return caps

    # --- AUTHORIZATION ---

    async def cmd_capa(self, arg: str) -> list[bytes]:
        return [ok("Capability list follows"), *(f"{c}\r\n".encode() for c in
                                                 self.capabilities()), b".\r\n"]

    def _need_tls(self) -> None:
        if not self.tls:
            # RFC 2595 §4 and RFC 8314: passwords only inside TLS; say how to get there.
            raise Reply("Use STLS first: no passwords in the clear", "SYS/PERM")

    async def cmd_user(self, arg: str) -> list[bytes]:
        self._need_tls()
        if not arg:
            raise Reply("USER needs a name")
        self.username = arg.strip()
        return [ok("Send PASS")]

    async def cmd_pass(self, arg: str) -> list[bytes]:
        self._need_tls()
        if self.username is None:
            raise Reply("Send USER first")
        name, self.username = self.username, None
        return await self._login(name, arg)

    async def cmd_auth(self, arg: str) -> list[bytes]:
        self._need_tls()
        mechanism, _, initial = arg.partition(" ")
        if mechanism.upper() != "PLAIN":
            raise Reply("Unsupported mechanism; PLAIN only")
        if initial in ("", None):
            return [b"+ \r\n"]  # the connection reads the response and calls auth_response
        return await self.auth_response(initial.encode())

    async def auth_response(self, line: bytes) -> list[bytes]:
        if line.strip() == b"*":
            raise Reply("AUTH cancelled")
        try:
            blob = base64.b64decode(line.strip() if line.strip() != b"=" else b"", validate=True)
        except binascii.Error:
            raise Reply("Invalid base64") from None
        parts = blob.split(b"\x00")
        if len(parts) != 3 or (parts[0] and parts[0] != parts[1]):
            raise Reply("Malformed PLAIN response")
        return await self._login(parts[1].decode("utf-8", "replace"),
                                 parts[2].decode("utf-8", "replace"))

    async def _login(self, name: str, password: str) -> list[bytes]:
        throttle = self.ctx.throttle
        if throttle.banned(self.peer_ip):
            # Banned (server/abuse) since it connected: no more guesses on this connection.
            self.quit = True
            raise Reply("Too many failed logins from your address, try again later", "SYS/TEMP")
        user = await check_password(throttle, self.ctx.accounts, self.ctx.executor,
                                    ip=self.peer_ip, name=name, password=password,
                                    service="pop3", conn_id=self.conn_id, log=log)
        if user is None:
            raise Reply("Authentication failed", "AUTH")
        loop = asyncio.get_running_loop()
        if not self.ctx.lock(user.address, self):
            raise Reply("Mailbox is in use by another POP3 session", "IN-USE")
        try:
            await loop.run_in_executor(self.ctx.executor, self._open, user)
        except BaseException:
            self.ctx.unlock(user.address, self)
            raise
        self.user = user
        self.state = TRANSACTION
        log.info("conn=%s login user=%s messages=%d", self.conn_id, user.address,
                 len(self.messages))
        return [ok(f"{len(self.messages)} messages")]

    def _open(self, user) -> None:
        """The snapshot: INBOX as it is now (worker thread)."""
        index = self.ctx.index_for(user)
        folder = index.folder("INBOX")
        folder.sync()
        self.folder = folder
        self.uidvalidity = folder.status().uidvalidity
        # Sizes only: internal dates the index has not read yet stay unread.
        self.messages = [Message(m.uid, m.size) for m in folder.messages(dates=False)]

    # --- TRANSACTION ---

    def _message(self, arg: str) -> tuple[int, Message]:
        try:
            number = int(arg.split()[0])
        except (ValueError, IndexError):
            raise Reply("A message number is needed") from None
        if not 1 <= number <= len(self.messages) or self.messages[number - 1].deleted:
            raise Reply(f"No message {number}")
        return number, self.messages[number - 1]

    def _live(self):
        return [(n, m) for n, m in enumerate(self.messages, 1) if not m.deleted]

    async def cmd_stat(self, arg: str) -> list[bytes]:
        live = self._live()
        return [ok(f"{len(live)} {sum(m.size for _, m in live)}")]

    async def cmd_list(self, arg: str) -> list[bytes]:
        if arg.strip():
            n, m = self._message(arg)
            return [ok(f"{n} {m.size}")]
        listing = "".join([f"{n} {m.size}\r\n" for n, m in self._live()])
        return [ok("Scan listing follows"), listing.encode(), b".\r\n"]

    def uidl(self, m: Message) -> str:
        return f"{m.uid:08x}{self.uidvalidity:08x}"

    async def cmd_uidl(self, arg: str) -> list[bytes]:
        if arg.strip():
            n, m = self._message(arg)
            return [ok(f"{n} {self.uidl(m)}")]
        # One string for the listing: a call and an encode per line is most of its cost.
        validity = f"{self.uidvalidity:08x}"
        listing = "".join([f"{n} {m.uid:08x}{validity}\r\n" for n, m in self._live()])
        return [ok("Unique-id listing follows"), listing.encode(), b".\r\n"]

    async def _read(self, m: Message) -> bytes:
        if m.size <= INLINE_BYTES:
            # A download client's RETR of a usual message: read on the event loop from the
            # path the index has, as a trip to a worker thread costs more than the read
            # (page cache).  A file renamed since (another program) is looked for in a thread.
            path = self.folder.paths([m.uid]).get(m.uid)
            if path is not None:
                try:
                    return crlf(read_file(path), path)
                except FileNotFoundError:
                    pass
        loop = asyncio.get_running_loop()
        try:
            return crlf(await loop.run_in_executor(self.ctx.executor, self.folder.read, m.uid))
        except (OSError, LookupError):
            # Expunged by IMAP meanwhile: RFC 1939 has no word for it; say so plainly.
            raise Reply("That message was deleted meanwhile by another session",
                        "SYS/TEMP") from None

    async def cmd_retr(self, arg: str) -> list[bytes]:
        _, m = self._message(arg)
        data = await self._read(m)
        # Read over POP3 means read for IMAP too: marked in batches (at QUIT, when the
        # connection ends, or every SEEN_BATCH), as Dovecot does, not a rename and an index
        # transaction per message while a client downloads ten thousand.
        self.retrieved.add(m.uid)
        if len(self.retrieved) >= SEEN_BATCH:
            await self.mark_seen()
        return [ok(f"{len(data)} octets"), dot_stuff(data), b".\r\n"]

    async def mark_seen(self) -> None:
        uids = sorted(self.retrieved - {m.uid for m in self.messages if m.deleted})
        self.retrieved.clear()
        if not uids:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.ctx.executor, self.folder.store_flags, uids,
                                       {"\\Seen"}, "add")
        except (OSError, RuntimeError) as err:  # (RuntimeError: the pool is shut down)
            # A flag is not worth failing the session for.
            log.warning("conn=%s marking %d message(s) seen failed: %s", self.conn_id,
                        len(uids), err)
            return
        self.ctx.changed(self.user.address)

    async def cmd_top(self, arg: str) -> list[bytes]:
        parts = arg.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise Reply("TOP needs a message number and a line count")
        _, m = self._message(parts[0])
        data = await self._read(m)
        end = data.find(b"\r\n\r\n")
        header, body = (data, b"") if end < 0 else (data[:end + 4], data[end + 4:])
        if body.endswith(b"\r\n"):
            body = body[:-2]
        lines = body.split(b"\r\n") if body else []
        out = header + b"".join(line + b"\r\n" for line in lines[: int(parts[1])])
        return [ok("Top of message follows"), dot_stuff(out), b".\r\n"]

    async def cmd_dele(self, arg: str) -> list[bytes]:
        n, m = self._message(arg)
        m.deleted = True
        return [ok(f"Message {n} deleted")]

    async def cmd_rset(self, arg: str) -> list[bytes]:
        for m in self.messages:
            m.deleted = False
        return [ok(f"{len(self.messages)} messages")]

    def stls_refusal(self) -> Reply | None:
        if self.tls or not self.stls_offered:
            return Reply("STLS is not available here (already TLS, or use port 995)")
        return None

    async def cmd_noop(self, arg: str) -> list[bytes]:
        return [ok()]

    async def cmd_quit(self, arg: str) -> list[bytes]:
        self.quit = True
        if self.state != TRANSACTION:
            return [ok("Bye")]
        self.state = UPDATE
        await self.mark_seen()
        doomed = [m.uid for m in self.messages if m.deleted]
        if doomed:
            loop = asyncio.get_running_loop()
            try:
                gone = await loop.run_in_executor(self.ctx.executor, self.folder.expunge, doomed)
            except OSError as err:
                log.error("conn=%s deleting failed: %s", self.conn_id, err)
                raise Reply("Some deleted messages could not be removed", "SYS/TEMP") from None
            self.ctx.changed(self.user.address)
            log.info("conn=%s deleted %d message(s)", self.conn_id, len(gone))
        return [ok(f"Bye, {len(doomed)} message(s) deleted")]

    async def close(self) -> None:
        if self.user is not None:
            try:
                await self.mark_seen()  # a client that hung up without QUIT still read them
            finally:
                self.ctx.unlock(self.user.address, self)


SEEN_BATCH = 500
INLINE_BYTES = 256 * 1024  # a RETR of a message this small reads it on the event loop

AUTH_ONLY = (AUTHORIZATION,)
TRANS_ONLY = (TRANSACTION,)
COMMANDS = {
    "CAPA": (AUTHORIZATION, TRANSACTION), "QUIT": (AUTHORIZATION, TRANSACTION),
    "USER": AUTH_ONLY, "PASS": AUTH_ONLY, "AUTH": AUTH_ONLY, "STLS": AUTH_ONLY,
    "STAT": TRANS_ONLY, "LIST": TRANS_ONLY, "UIDL": TRANS_ONLY, "RETR": TRANS_ONLY,
    "TOP": TRANS_ONLY, "DELE": TRANS_ONLY, "RSET": TRANS_ONLY, "NOOP": TRANS_ONLY,
}
