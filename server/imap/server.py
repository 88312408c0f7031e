"""The IMAP listeners (``imap``: STARTTLS; ``imaps``: implicit TLS, RFC 8314) and what all
sessions of the process share: accounts, one login throttle, the abuse guard (bans and per-IP
connection limits, asked before the greeting), the per-user indexes, the change hub and a
session count per user."""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections import defaultdict
from concurrent.futures import Executor

from maildir.index import MailboxIndex
from server.abuse import BANNED, RATE, Guard, Refused
from server.config import Config, Listen, worker_count
from server.imap.connection import Connection
from server.imap.notify import ChangeHub
from server.imap.parsepool import ParsePool
from server.imap.session import Session
from server.smtp.protocol import new_conn_id
from server.tlscert import HANDSHAKE_TIMEOUT, SHUTDOWN_TIMEOUT

log = logging.getLogger("mailstead.imap")


_REFUSALS = {
    BANNED: b"* BYE [UNAVAILABLE] Too many failed logins from your address, try again later\r\n",
    RATE: b"* BYE [UNAVAILABLE] Too many connections per minute, try again later\r\n",
    None: b"* BYE Too many connections, try again later\r\n",
}


class SessionCount:
    def __init__(self, limit: int):
        self.limit = limit
        self._by_user: dict[str, set] = defaultdict(set)

    def add(self, user: str, session) -> bool:
        sessions = self._by_user[user]
        if len(sessions) >= self.limit:
            return False
        sessions.add(session)
        return True

    def remove(self, user: str, session) -> None:
        sessions = self._by_user.get(user)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self._by_user[user]


class IMAPContext:
    def __init__(self, config: Config, accounts, throttle, executor: Executor, hub: ChangeHub,
                 guard: Guard | None = None):
        self.accounts = accounts
        self.throttle = throttle
        self.guard = guard
        self.executor = executor
        self.hub = hub
        # server/spam/training.py: called as (user, source folder or None for APPEND, dest
        # folder, dest FolderIndex, new uids) after COPY/MOVE/APPEND; set by the runner.
        self.on_junk_move = None
        self._indexes: dict[str, MailboxIndex] = {}
        self._lock = threading.Lock()
        self.parse_pool = ParsePool(worker_count(config.imap.parse_workers),
                                    start_at=config.imap.parse_workers_from)
        self.update_config(config)

    def update_config(self, config: Config) -> None:
        self.config = config
        self.hostname = config.server.hostname
        self.sessions = getattr(self, "sessions", None) or SessionCount(
            config.imap.max_connections_per_user)
        self.sessions.limit = config.imap.max_connections_per_user

    def index_for(self, user) -> MailboxIndex:
        """One index per user per process, shared by all their sessions (and thread-safe)."""
        with self._lock:
            index = self._indexes.get(user.address)
            if index is None:
                index = self._indexes[user.address] = MailboxIndex(user.maildir)
            return index

    def close(self) -> None:
        self.parse_pool.close()
        with self._lock:
            for index in self._indexes.values():
                index.close()
            self._indexes.clear()


class IMAPListener:
    def __init__(self, name: str, listen: Listen, ctx: IMAPContext,
                 tls_context: ssl.SSLContext, *, implicit_tls: bool):
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
            backlog=512, ssl=self.tls_context if self.implicit_tls else None,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT if self.implicit_tls else None,
            ssl_shutdown_timeout=SHUTDOWN_TIMEOUT if self.implicit_tls else None, limit=256 * 1024)
        log.info("%s listening on %s", self.name, self.listen)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn_id = new_conn_id()
        peer = writer.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, tuple) else "unknown"
        config = self.ctx.config.imap
        if len(self.connections) >= config.max_connections:
            log.warning("conn=%s %s: connection limit reached for [%s]", conn_id, self.name, ip)
            writer.write(b"* BYE Too many connections, try again later\r\n")
            writer.close()
            return
        try:
            slot = self.ctx.guard.admit(ip, self.name, conn_id) if self.ctx.guard else None
        except Refused as refusal:
            # RFC 3501 §7.1.5: BYE as the greeting refuses the connection; RFC 5530 UNAVAILABLE.
            writer.write(_REFUSALS.get(refusal.reason, _REFUSALS[None]))
            writer.close()
            return
        task = asyncio.current_task()
        self.connections.add(task)
        log.info("conn=%s %s connect from [%s]", conn_id, self.name, ip)
        session = Session(self.ctx, conn_id=conn_id, peer_ip=ip, tls=self.implicit_tls,
                          starttls_offered=not self.implicit_tls)
        try:
            await Connection(reader, writer, session, tls_context=self.tls_context,
                             idle_timeout=config.idle_timeout,
                             max_literal=config.max_literal,
                             login_timeout=config.login_timeout).run()
        except asyncio.CancelledError:
            # Shutdown ends the connection. Ending normally keeps Python 3.11's stream
            # callback from logging the CancelledError as "Exception in callback".
            writer.transport.abort()
        finally:
            self.connections.discard(task)
            if slot is not None:
                slot.release()

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()

    async def drain(self, grace: float) -> None:
        """IMAP has no transactions to finish: say BYE to every session at once."""
        for task in list(self.connections):
            task.cancel()
        if self.connections:
            await asyncio.wait(self.connections, timeout=grace)
