"""The ``admin`` listener: the Flask panel (``admin.create_app``) served by Hypercorn.

Hypercorn's HTTP/1.1 handler runs in the daemon's own event loop (WSGI views run in worker
threads), on sockets we bind ourselves, with the one ``SSLContext`` every mail listener
shares: an ACME renewal loaded into it reaches the panel too, and the tls-alpn-01 responder's
SNI callback answers the CA on this port. No ALPN is offered, so every client speaks HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl

from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config as HypercornConfig
from hypercorn.utils import wrap_app

from server.abuse import BANNED, RATE, Guard, Refused
from server.config import Config, Listen, format_host_port

log = logging.getLogger("mailstead.admin")

TLS_HANDSHAKE_TIMEOUT = 10.0
TLS_SHUTDOWN_TIMEOUT = 1.0
GRACE = 5.0
BODY_TIMEOUT = 30.0  # seconds for a whole request body (forms are a few KiB)
MAX_BODY = 1024 * 1024  # forms and API calls are small; the panel takes no uploads


def bind(listen: Listen) -> list[socket.socket]:
    """Listening sockets for ``listen`` (no host: every IPv4 and IPv6 address)."""
    if listen.host is None:
        if socket.has_dualstack_ipv6():
            socks = [socket.create_server(("::", listen.port), family=socket.AF_INET6,
                                          dualstack_ipv6=True, backlog=512)]
        else:
            socks = [socket.create_server(("0.0.0.0", listen.port), backlog=512)]
    else:
        family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
        socks = [socket.create_server((listen.host, listen.port), family=family, backlog=512)]
    for sock in socks:
        sock.setblocking(False)
    return socks


class _AtLeastOneChunk:
    """Hypercorn's WSGI wrapper (0.17-0.18) sends the status line with the first body chunk,
    so a response without one — a 304 to a browser revalidating its cached stylesheet, a HEAD,
    a 204 — reaches the client as a 500 (pgjones/hypercorn#331). An empty first chunk makes
    it send the status; h11 writes nothing for it."""

    def __init__(self, body):
        self.body = body

    def __iter__(self):
        sent = False
        for chunk in self.body:
            sent = True
            yield chunk
        if not sent:
            yield b""

    def close(self) -> None:
        close = getattr(self.body, "close", None)
        if close is not None:
            close()


class _BodyTimeout(Exception):
    pass


class _BodyDeadline:
    """Hypercorn bounds the wait for a request's head (keep-alive timeout) and each read
    (read_timeout), but not the whole body: a client sending a byte a minute would hold a
    connection for as long as Content-Length allows. The body must arrive within
    ``listener.body_timeout`` seconds, else 408 and the connection closes."""

    def __init__(self, app, listener):
        self.app = app
        self.listener = listener

    async def __call__(self, scope, receive, send, sync_spawn, call_soon):
        if scope["type"] != "http":
            return await self.app(scope, receive, send, sync_spawn, call_soon)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.listener.body_timeout

        async def timed_receive():
            try:
                return await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise _BodyTimeout from None

        try:
            await self.app(scope, timed_receive, send, sync_spawn, call_soon)
        except _BodyTimeout:
            # The WSGI wrapper reads the whole body before the app runs: nothing was sent yet.
            log.info("%s: request body from [%s] too slow; 408", self.listener.name,
                     (scope.get("client") or ("?",))[0])
            await send({"type": "http.response.start", "status": 408,
                        "headers": [(b"connection", b"close"), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def _status_always_sent(app):
    def wsgi(environ, start_response):
        return _AtLeastOneChunk(app(environ, start_response))
    return wsgi


class PanelListener:
    """Hypercorn's HTTP/1.1 connection handler (``TCPServer``) behind our own accept loop:
    ours so that the listener has the same limits and shutdown as the others — the abuse
    guard's bans and per-IP limits, connections in all, a short TLS shutdown (asyncio waits
    30 s for a client's close_notify by default), and connections ended quietly when the
    server stops."""

    def __init__(self, name: str, listen: Listen, app, tls_context: ssl.SSLContext, *,
                 max_connections: int = 500, guard: Guard | None = None):
        self.name = name
        self.guard = guard
        self.listen = listen
        self.wsgi = app
        self.app = _BodyDeadline(wrap_app(_status_always_sent(app), MAX_BODY, "wsgi"), self)
        self.body_timeout = BODY_TIMEOUT
        self.tls_context = tls_context
        self.max_connections = max_connections
        self.hconfig = self._hypercorn_config()
        self.context = WorkerContext(None)
        self.connections: set[asyncio.Task] = set()
        self.servers: list[asyncio.Server] = []

    def _hypercorn_config(self) -> HypercornConfig:
        cfg = HypercornConfig()
        cfg.keep_alive_timeout = 30
        cfg.read_timeout = 60  # a client that sends nothing for a minute is dropped
        cfg.h11_max_incomplete_size = 16 * 1024  # request line + headers: a slowloris cap
        cfg.wsgi_max_body_size = MAX_BODY
        cfg.include_server_header = False
        cfg.accesslog = logging.getLogger("mailstead.admin.access")
        cfg.errorlog = log
        cfg.access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(L)ss'
        return cfg

    async def start(self) -> None:
        for sock in bind(self.listen):
            self.servers.append(await asyncio.start_server(
                self._serve, sock=sock, ssl=self.tls_context, backlog=512,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
                ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT))
        bound = ", ".join(format_host_port(*sock.getsockname()[:2])
                          for server in self.servers for sock in server.sockets)
        log.info("%s listening on %s", self.name, bound)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, tuple) else "unknown"
        if len(self.connections) >= self.max_connections:
            log.warning("%s: connection limit reached for [%s]", self.name, ip)
            writer.transport.abort()
            return
        try:
            slot = self.guard.admit(ip, self.name) if self.guard is not None else None
        except Refused as refusal:
            await _refuse(reader, writer, refusal)
            return
        task = asyncio.current_task()
        self.connections.add(task)
        try:
            await TCPServer(self.app, asyncio.get_running_loop(), self.hconfig, self.context,
                            {}, reader, writer)
        except (TimeoutError, OSError, ssl.SSLError):
            pass  # the client went away, or never answered our TLS close_notify
        except asyncio.CancelledError:
            # drain() ends it; ending normally keeps Python 3.11's stream callback from
            # logging the CancelledError as "Exception in callback".
            writer.transport.abort()
        except Exception:
            log.exception("%s: unexpected error serving [%s]", self.name, ip)
        finally:
            self.connections.discard(task)
            if slot is not None:
                slot.release()

    def update_config(self, config: Config) -> None:
        from admin import update_config

        update_config(self.wsgi, config)

    def stop_accepting(self) -> None:
        for server in self.servers:
            server.close()

    async def drain(self, grace: float) -> None:
        """Idle keep-alive connections close at once (hypercorn watches ``terminated``);
        requests under way get the grace, at most GRACE seconds: a panel page is quick."""
        await self.context.terminated.set()
        if self.connections:
            await asyncio.wait(set(self.connections), timeout=min(grace, GRACE))
        for task in list(self.connections):
            task.cancel()
        if self.connections:
            await asyncio.wait(set(self.connections), timeout=1)


_STATUS = {BANNED: b"403 Forbidden", RATE: b"429 Too Many Requests"}
_TEXT = {BANNED: b"Too many failed logins from your address; try again later.\n",
         RATE: b"Too many connections per minute; try again later.\n"}


async def _refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  refusal: Refused) -> None:
    """An HTTP answer instead of a reset, so a person locked out of the panel sees why:
    403 banned, 429 too many connections a minute, 503 too many at once."""
    status = _STATUS.get(refusal.reason, b"503 Service Unavailable")
    text = _TEXT.get(refusal.reason, b"Too many connections; try again later.\n")
    writer.write(b"HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                 b"Retry-After: %d\r\nConnection: close\r\n\r\n%s"
                 % (status, len(text), refusal.retry_after, text))
    try:
        # Read (and drop) what the client sent meanwhile, briefly: closing with unread data
        # makes the kernel send a reset, which can destroy the answer before it is read.
        await asyncio.wait_for(reader.read(16 * 1024), 1.0)
        await asyncio.wait_for(writer.drain(), 1.0)
    except (TimeoutError, OSError, ssl.SSLError):
        pass
    writer.close()
