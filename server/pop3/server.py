"""POP3 listeners (``pop3``: STLS, RFC 2595; ``pop3s``: implicit TLS, RFC 8314) and the
connection loop: line reading with a length limit, STLS with the clear-text pipeline dropped,
AUTH continuations, the RFC 1939 §3 ten-minute timeout, and what all POP3 sessions share (the
per-user maildrop lock, the abuse guard asked before the greeting)."""

from __future__ import annotations

import asyncio
import logging
import ssl

from server.abuse import BANNED, RATE, Guard, Refused
from server.config import Config, Listen
from server.pop3.session import Reply, Session
from server.readtimer import ReadTimer
from server.smtp.protocol import new_conn_id
from server.tlscert import HANDSHAKE_TIMEOUT, SHUTDOWN_TIMEOUT, close_stream

log = logging.getLogger("mailstead.pop3")

# RFC 2449 §4: commands are at most 255 octets; generous, but bounded.
MAX_LINE = 1024
MAX_ERRORS = 20
# RFC 3206 SYS/TEMP: a temporary condition; the client should try again later.
_REFUSALS = {
    BANNED: b"-ERR [SYS/TEMP] Too many failed logins from your address, try again later\r\n",
    RATE: b"-ERR [SYS/TEMP] Too many connections per minute, try again later\r\n",
    None: b"-ERR [SYS/TEMP] Too many connections, try again later\r\n",
}


class POP3Context:
    def __init__(self, config: Config, accounts, throttle, executor, imap_ctx, hub,
                 guard: Guard | None = None):
        self.accounts = accounts
        self.throttle = throttle
        self.guard = guard
        self.executor = executor
        self.imap = imap_ctx  # for the shared per-user index
        self.hub = hub
        self.locks: dict[str, Session] = {}
        self.update_config(config)

    def update_config(self, config: Config) -> None:
        self.config = config
        self.hostname = config.server.hostname

    def index_for(self, user):
        return self.imap.index_for(user)

    def lock(self, user: str, session: Session) -> bool:
        """RFC 1939 §8: an exclusive lock on the maildrop, for POP3 only."""
        if user in self.locks:
            return False
        self.locks[user] = session
        return True

    def unlock(self, user: str, session: Session) -> None:
        if self.locks.get(user) is session:
            del self.locks[user]

    def changed(self, user: str) -> None:
        self.hub.changed(user, "INBOX")


class POP3Listener:
    def __init__(self, name: str, listen: Listen, ctx: POP3Context, tls_context: ssl.SSLContext,
                 *, implicit_tls: bool):
        self.name = name
        self.listen = listen
        self.ctx = ctx
        self.tls_context = tls_context
        self.implicit_tls = implicit_tls
        self.connections: set[asyncio.Task] = set()
        self.server: asyncio.Server | None = None

    def update_config(self, config: Config) -> None:
        self.ctx.update_config(config)

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._serve, host=self.listen.host, port=self.listen.port, reuse_address=True,
            backlog=256, ssl=self.tls_context if self.implicit_tls else None,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT if self.implicit_tls else None,
            ssl_shutdown_timeout=SHUTDOWN_TIMEOUT if self.implicit_tls else None,
            limit=MAX_LINE * 4)
        log.info("%s listening on %s", self.name, self.listen)

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()

    async def drain(self, grace: float) -> None:
        for task in list(self.connections):
            task.cancel()
        if self.connections:
            await asyncio.wait(self.connections, timeout=grace)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn_id = new_conn_id()
        peer = writer.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, tuple) else "unknown"
        config = self.ctx.config.pop3
        if len(self.connections) >= config.max_connections:
            log.warning("conn=%s %s: connection limit reached for [%s]", conn_id, self.name, ip)
            writer.write(_REFUSALS[None])
            writer.close()
            return
        try:
            slot = self.ctx.guard.admit(ip, self.name, conn_id) if self.ctx.guard else None
        except Refused as refusal:
            writer.write(_REFUSALS.get(refusal.reason, _REFUSALS[None]))
            writer.close()
            return
        task = asyncio.current_task()
        self.connections.add(task)
        log.info("conn=%s %s connect from [%s]", conn_id, self.name, ip)
        session = Session(self.ctx, conn_id=conn_id, peer_ip=ip, tls=self.implicit_tls,
                          stls_offered=not self.implicit_tls)
        try:
            await Connection(reader, writer, session, self.tls_context, config).run()
        finally:
            self.connections.discard(task)
            if slot is not None:
                slot.release()


class Connection:
    def __init__(self, reader, writer, session: Session, tls_context, config):
        self.reader = reader
        self.writer = writer
        self.session = session
        self.tls_context = tls_context
        self.config = config
        self.errors = 0
        # login_timeout counts from the connection's start, not from the last line: a client
        # sending CAPA every minute (or a byte at a time) must not hold a slot without logging in.
        self.login_deadline = asyncio.get_running_loop().time() + config.login_timeout
        self.timer = ReadTimer(reader)

    async def write(self, chunks: list[bytes]) -> None:
        # Joined here, not by writelines(): uvloop's TLS transport makes a TLS record of
        # each chunk, and a UIDL of 10,000 messages is 10,000 lines.
        self.writer.write(b"".join(chunks) if len(chunks) > 1 else chunks[0])
        await self.writer.drain()

    async def line(self) -> bytes | None:
        if self.session.user:
            deadline = self.timer.loop.time() + self.config.idle_timeout
        else:
            deadline = self.login_deadline
        timer = self.timer
        try:
            try:
                data = await timer.wait(self.reader.readuntil(b"\n"), deadline)
            except asyncio.LimitOverrunError as err:
                # Drop the whole line, however long, then answer once: it is not a command.
                await self.reader.readexactly(err.consumed)
                while True:
                    try:
                        await timer.wait(self.reader.readuntil(b"\n"), deadline)
                        break
                    except asyncio.LimitOverrunError as more:
                        await self.reader.readexactly(more.consumed)
                return b"\x00too long"
        except asyncio.IncompleteReadError:
            if timer.timed_out:
                await self.write([b"-ERR [SYS/TEMP] Autologout; idle for too long\r\n"])
            return None
        return data.rstrip(b"\r\n")

    async def run(self) -> None:
        session = self.session
        try:
            await self.write([f"+OK {session.ctx.hostname} POP3 ready\r\n".encode()])
            while not session.quit:
                line = await self.line()
                if line is None:
                    break
                if line == b"\x00too long" or len(line) > MAX_LINE:
                    await self.write([Reply("Line too long").line()])
                    self.errors += 1
                elif line.upper() == b"STLS":
                    await self._stls()
                    continue
                else:
                    reply = await session.handle(line)
                    if reply == [b"+ \r\n"]:  # AUTH without an initial response
                        await self.write(reply)
                        response = await self.line()
                        if response is None:
                            break
                        try:
                            reply = await session.auth_response(response)
                        except Reply as err:
                            reply = [err.line()]
                    await self.write(reply)
                    self.errors = self.errors + 1 if reply[0].startswith(b"-ERR") else 0
                if self.errors >= MAX_ERRORS:
                    await self.write([b"-ERR Too many errors, bye\r\n"])
                    break
        except asyncio.CancelledError:
            try:
                self.writer.write(b"-ERR [SYS/TEMP] Server shutting down\r\n")
            except (ConnectionError, RuntimeError):
                pass
            raise
        except (ConnectionError, ssl.SSLError) as err:
            log.info("conn=%s connection lost: %s", session.conn_id, err)
        finally:
            self.timer.cancel()
            # Without QUIT nothing is deleted (RFC 1939 §6): DELE only marked the snapshot.
            await session.close()
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                self.writer.close()  # shutdown: the listener drops what is left
            else:
                await close_stream(self.writer)

    async def _stls(self) -> None:
        refusal = self.session.stls_refusal()
        if refusal is None and self.session.state != "authorization":
            refusal = Reply("STLS is only allowed before login")
        if refusal is not None:
            await self.write([refusal.line()])
            return
        await self.write([b"+OK Begin TLS negotiation\r\n"])
        # RFC 2595 §4 / CVE-2011-0411: anything pipelined in the clear after STLS is not taken
        # as said inside TLS; a client that did not wait is hung up on.
        if len(getattr(self.reader, "_buffer", b"")):
            raise ConnectionError("data sent in the clear after STLS")
        await self.writer.start_tls(self.tls_context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        self.session.tls = True
