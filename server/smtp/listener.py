"""One SMTP listening socket: admits or refuses each connection, makes a protocol per admitted
one, and shuts down gracefully."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time

from server.abuse import BANNED, RATE, Guard, Refused, Slot
from server.config import Config, Listen
from server.smtp import replies
from server.smtp.protocol import SMTPProtocol, new_conn_id
from server.tlscert import HANDSHAKE_TIMEOUT, SHUTDOWN_TIMEOUT

log = logging.getLogger("mailstead.smtp")

IDENT = "ESMTP mailstead"


def greeting(hostname: str) -> bytes:
    """The 220 that opens a session, as the protocol would write it (aiosmtpd's format)."""
    return f"220 {hostname} {IDENT}\r\n".encode()


class SMTPListener:
    def __init__(self, name: str, listen: Listen, handler, config: Config,
                 tls_context: ssl.SSLContext, *, submission: bool = False,
                 implicit_tls: bool = False, guard: Guard | None = None):
        self.name = name
        self.guard = guard
        self.listen = listen
        self.handler = handler
        self.config = config
        self.tls_context = tls_context
        self.submission = submission
        self.implicit_tls = implicit_tls
        self.connections: set[SMTPProtocol] = set()
        self.server: asyncio.Server | None = None

    def update_config(self, config: Config) -> None:
        self.config = config

    def _protocol(self) -> asyncio.Protocol:
        if len(self.connections) >= self.config.smtp.max_connections:
            return _Refuse(self.name)
        if self.guard is None:
            return self._smtp(None)
        return _Gate(self)

    def _smtp(self, slot: Slot | None) -> SMTPProtocol:
        smtp = self.config.smtp
        return _Connection(
            slot,
            self.handler,
            max_errors=smtp.max_errors,
            registry=self.connections,
            hostname=self.config.server.hostname,
            ident=IDENT,
            # Implicit TLS (RFC 8314) is set up by the server socket; no STARTTLS inside it.
            tls_context=None if self.implicit_tls else self.tls_context,
            # Submission: AUTH required, offered and accepted only under TLS (RFC 4954 §4);
            # on the STARTTLS port nothing but EHLO/STARTTLS/NOOP/QUIT before TLS (530 5.7.0).
            auth_enabled=self.submission,
            auth_required=self.submission,
            require_starttls=self.submission and not self.implicit_tls,
            # aiosmtpd only knows STARTTLS as TLS and would never offer AUTH on an
            # implicit-TLS socket with this on (aio-libs/aiosmtpd#281); that socket is TLS.
            auth_require_tls=not self.implicit_tls,
            data_size_limit=smtp.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=smtp.idle_timeout,
            loop=asyncio.get_running_loop(),
        )

    async def start(self) -> None:
        self.server = await asyncio.get_running_loop().create_server(
            self._protocol, host=self.listen.host, port=self.listen.port,
            reuse_address=True, backlog=512,
            ssl=self.tls_context if self.implicit_tls else None,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT if self.implicit_tls else None,
            ssl_shutdown_timeout=SHUTDOWN_TIMEOUT if self.implicit_tls else None)
        log.info("%s listening on %s", self.name, self.listen)

    async def adopt(self, sock: socket.socket, conn_id: str, slot, greeted: bool = False) -> None:
        """Serve a connection accepted and admitted elsewhere (``dispatch.MXDispatcher``):
        ``slot.release()`` is called when it ends, ``conn_id`` names it in the logs;
        ``greeted``: the 220 was sent already (``greeting``), the session goes on from there."""
        if len(self.connections) >= self.config.smtp.max_connections:
            refuse_socket(sock, replies.TOO_MANY_CONNECTIONS)
            slot.release()
            return

        def protocol() -> SMTPProtocol:
            smtp = self._smtp(slot)
            smtp.conn_id = conn_id
            smtp.greeted_elsewhere = greeted
            return smtp
        try:
            await asyncio.get_running_loop().connect_accepted_socket(protocol, sock)
        except OSError as err:  # the client went away while being handed over
            log.info("conn=%s lost before the greeting: %s", conn_id, err)
            sock.close()
            slot.release()

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()

    async def drain(self, grace: float) -> None:
        """Close idle connections with 421 now; give transactions in progress ``grace`` seconds
        to finish (each is closed with 421 as soon as its transaction ends), then close the rest.
        """
        deadline = time.monotonic() + grace
        while self.connections and time.monotonic() < deadline:
            for conn in list(self.connections):
                if not conn.in_transaction:
                    conn.close_with(replies.SHUTTING_DOWN)
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            if not conn.delivering:
                log.warning("conn=%s still in a transaction at shutdown; closing", conn.conn_id)
                conn.close_with(replies.SHUTTING_DOWN)
        # A message already being written is finished and acknowledged, not cut off (the
        # client would retry a message that was stored: a duplicate). Writing is bounded.
        while any(conn.delivering for conn in self.connections):
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.close_with(replies.SHUTTING_DOWN)
        if self.server is not None:
            await self.server.wait_closed()


class _Connection(SMTPProtocol):
    """An admitted connection: gives its abuse-guard slot back when it ends."""

    def __init__(self, slot: Slot | None, *args, **kwargs):
        self.slot = slot
        super().__init__(*args, **kwargs)

    def connection_lost(self, error: Exception | None) -> None:
        if self.slot is not None:
            self.slot.release()
        super().connection_lost(error)


class _Gate(asyncio.Protocol):
    """Asks the abuse guard about the client before any SMTP is spoken (the peer address is
    only known once connected, after the protocol factory ran). Admitted: the transport is
    handed to a new SMTP protocol, and this one is out of the picture. Refused: 421 (RFC 5321
    §3.1: a server may refuse a connection with 421 instead of its greeting) and hang up."""

    def __init__(self, listener: SMTPListener):
        self.listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, tuple) else "unknown"
        conn_id = new_conn_id()
        try:
            slot = self.listener.guard.admit(ip, self.listener.name, conn_id)
        except Refused as refusal:
            reply = {BANNED: replies.BANNED, RATE: replies.CONNECTION_RATE}.get(
                refusal.reason, replies.TOO_MANY_CONNECTIONS)
            transport.write(f"{reply}\r\n".encode("ascii"))
            transport.close()
            return
        smtp = self.listener._smtp(slot)
        transport.set_protocol(smtp)
        smtp.connection_made(transport)


class _Refuse(asyncio.Protocol):
    """Answers a connection over the limit with 421 (RFC 5321 §3.1) and hangs up."""

    def __init__(self, name: str):
        self.name = name

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        log.warning("%s: connection limit reached, refusing %s", self.name,
                    transport.get_extra_info("peername"))
        transport.write(f"{replies.TOO_MANY_CONNECTIONS}\r\n".encode("ascii"))
        transport.close()


def refuse_socket(sock: socket.socket, reply: replies.Reply) -> None:
    """421 on a plain socket and close it; the line fits any socket buffer, so it never blocks."""
    try:
        sock.send(f"{reply}\r\n".encode("ascii"))
    except OSError:
        pass
    sock.close()
