"""The web listeners: ``http`` (port 80) and ``admin`` (HTTPS, port 443), on asyncio streams.

One request per connection: read the head (8 KiB, 10 s at most), answer via
``server/web/routes.py``, close. Keep-alive would save a handshake for the rare browser that
visits; it would also bring pipelining, body framing and idle sockets, which is all the
surface a slowloris or a smuggler needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from http import HTTPStatus

from server.config import Config, Listen, format_host_port
from server.smtp.protocol import new_conn_id
from server.web.message import (
    MAX_HEAD,
    HTTPError,
    Request,
    Response,
    head_end,
    parse_request,
    serialize,
    text_response,
)
from server.web.mtasts import DEFAULT_MAX_AGE, DEFAULT_MODE, check_policy
from server.web.routes import route

log = logging.getLogger("mailstead.web")

# Slowloris: the whole head must arrive within this time, however it is trickled.
HEADER_TIMEOUT = 10.0
TLS_HANDSHAKE_TIMEOUT = 10.0
# Our responses are small, but a client that never reads must not hold the task forever.
WRITE_TIMEOUT = 10.0
# After an error or a refused body, how long and how much we read and discard before closing;
# see _linger.
LINGER_TIMEOUT = 2.0
LINGER_BYTES = 256 * 1024
READ_CHUNK = 4096
LOGGED_PATH = 200  # characters of the path in the log line


class WebContext:
    """What both web listeners share: our names, the ACME responder, the MTA-STS policy."""

    def __init__(self, config: Config, accounts, responder, *,
                 mta_sts_mode: str | None = None, mta_sts_max_age: int | None = None):
        self.accounts = accounts
        self.responder = responder
        self.update_config(config, mta_sts_mode=mta_sts_mode, mta_sts_max_age=mta_sts_max_age)

    def update_config(self, config: Config, *, mta_sts_mode: str | None = None,
                      mta_sts_max_age: int | None = None) -> None:
        """A new config; the MTA-STS mode and max_age come from ``[web]`` unless given (checked
        first, so a bad value changes nothing)."""
        web = getattr(config, "web", None)
        mode = mta_sts_mode or (web.mta_sts_mode if web else DEFAULT_MODE)
        max_age = mta_sts_max_age if mta_sts_max_age is not None else (
            web.mta_sts_max_age if web else DEFAULT_MAX_AGE)
        check_policy(mode, max_age)
        self.config = config
        self.hostname = config.server.hostname
        self.mta_sts_mode, self.mta_sts_max_age = mode, max_age
        # Redirects go to the HTTPS listener's port: 443 normally, 8443 under --dev.
        admin = getattr(config.listen, "admin", None)
        self.https_port = admin.port if admin is not None else 443

    def domains(self) -> list[str]:
        return self.accounts.list_domains()


class WebListener:
    def __init__(self, name: str, listen: Listen, ctx: WebContext,
                 tls_context: ssl.SSLContext | None, *, max_connections: int = 500,
                 max_connections_per_ip: int = 50, header_timeout: float = HEADER_TIMEOUT):
        self.name = name
        self.listen = listen
        self.ctx = ctx
        self.tls_context = tls_context  # None: plain HTTP
        # Every connection is one short request, so 50 from one address is already a browser
        # opening many tabs or a scanner; the total keeps file descriptors for the mail services.
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip
        self.header_timeout = header_timeout
        self.connections: set[asyncio.Task] = set()
        self.answering: set[asyncio.Task] = set()  # the head is in: a response is under way
        self.per_ip: dict[str, int] = {}
        self.server: asyncio.Server | None = None

    @property
    def tls(self) -> bool:
        return self.tls_context is not None

    def update_config(self, config: Config) -> None:
        self.ctx.update_config(config)

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._serve, host=self.listen.host, port=self.listen.port, reuse_address=True,
            backlog=512, ssl=self.tls_context,
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if self.tls else None,
            limit=2 * MAX_HEAD)
        bound = ", ".join(format_host_port(*sock.getsockname()[:2])
                          for sock in self.server.sockets)
        log.info("%s listening on %s", self.name, bound)  # the real port when asked for 0

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()

    async def drain(self, grace: float) -> None:
        """Connections still waiting for a request go at once; responses under way get up to
        ``grace`` seconds (they are small and bounded by WRITE_TIMEOUT anyway)."""
        for task in self.connections - self.answering:
            task.cancel()
        if self.answering:
            await asyncio.wait(set(self.answering), timeout=grace)
        for task in list(self.connections):
            task.cancel()
        if self.connections:
            await asyncio.wait(set(self.connections), timeout=1)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn_id = new_conn_id()
        peer = writer.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, tuple) else "unknown"
        if len(self.connections) >= self.max_connections or \
                self.per_ip.get(ip, 0) >= self.max_connections_per_ip:
            log.warning("conn=%s %s: connection limit reached for [%s]", conn_id, self.name, ip)
            await self._refuse(writer)
            return
        task = asyncio.current_task()
        self.connections.add(task)
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        try:
            await self._exchange(conn_id, ip, reader, writer)
        except asyncio.CancelledError:
            # drain() ends the connection. The task ends normally rather than cancelled: on
            # Python 3.11 asyncio's stream callback calls task.exception() on it and logs the
            # CancelledError as an "Exception in callback" error.
            pass
        except Exception:  # a bug of ours: log it, never let it reach asyncio's handler
            log.exception("conn=%s %s: unexpected error", conn_id, self.name)
        finally:
            self.connections.discard(task)
            self.answering.discard(task)
            self.per_ip[ip] -= 1
            if not self.per_ip[ip]:
                del self.per_ip[ip]
            await self._close(writer)

    async def _refuse(self, writer: asyncio.StreamWriter) -> None:
        # Not counted, so not lingering either: write and close, whatever the client sent.
        resp = text_response(HTTPStatus.SERVICE_UNAVAILABLE, "Too many connections",
                             [("Retry-After", "10")])
        with contextlib.suppress(Exception):
            writer.write(serialize(resp, hsts=self.tls))
            async with asyncio.timeout(1):
                await writer.drain()
        await self._close(writer)

    async def _exchange(self, conn_id: str, ip: str, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        req: Request | None = None
        linger = True  # unless the request was read exactly and completely
        try:
            head, extra = await self._read_head(reader)
            if head is None:
                return  # closed or silent: nothing asked, nothing to answer
            self.answering.add(asyncio.current_task())
            req = parse_request(head)
            resp = route(req, self.ctx, tls=self.tls)
            linger = extra or req.has_body
        except HTTPError as err:
            resp = err.response()
        except Exception:
            log.exception("conn=%s %s: error answering a request", conn_id, self.name)
            resp = text_response(HTTPStatus.INTERNAL_SERVER_ERROR, "Internal Server Error")
        path = req.path[:LOGGED_PATH] if req else "-"  # the path only: queries may hold secrets
        log.info("conn=%s %s [%s] %s %s %d", conn_id, self.name, ip,
                 req.method if req else "-", path, resp.status.value)
        await self._respond(writer, resp, head_only=req is not None and req.method == "HEAD")
        if linger:
            await self._linger(reader, writer)

    async def _read_head(self, reader: asyncio.StreamReader) -> tuple[bytes | None, bool]:
        """The request head and whether more bytes followed it; (None, False) when the client
        closed or stayed silent. HTTPError for a head too long (431, 414) or too slow (408)."""
        buf = bytearray()
        try:
            async with asyncio.timeout(self.header_timeout):
                while (end := head_end(buf)) is None:
                    chunk = await reader.read(READ_CHUNK)
                    if not chunk:
                        return None, False
                    buf += chunk
        except TimeoutError:
            # A socket that never said anything (a browser's speculative pre-connect, a port
            # scan) is closed quietly, as nginx does; a trickled head gets RFC 9110 §15.5.9's 408.
            if not buf.strip():
                return None, False
            raise HTTPError(HTTPStatus.REQUEST_TIMEOUT) from None
        except OSError:  # reset, or a TLS error after the handshake
            return None, False
        return bytes(buf[:end]), end < len(buf)

    async def _respond(self, writer: asyncio.StreamWriter, resp: Response, *,
                       head_only: bool) -> None:
        try:
            data = serialize(resp, head_only=head_only, hsts=self.tls)
        except ValueError:
            log.exception("%s: unserialisable response", self.name)
            data = serialize(text_response(HTTPStatus.INTERNAL_SERVER_ERROR,
                                           "Internal Server Error"), hsts=self.tls)
        try:
            writer.write(data)
            async with asyncio.timeout(WRITE_TIMEOUT):
                await writer.drain()
        except (OSError, TimeoutError):
            pass  # the client left or does not read: nothing more to do for it

    @staticmethod
    async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """RFC 9112 §9.6: closing while the client's unread bytes (a body we refused, the rest
        of an oversized head) sit in our socket makes the kernel send a reset, and the client
        may lose our response with it. So we half-close where we can and read and discard for
        a moment first, as Apache's lingering close does."""
        with contextlib.suppress(Exception):
            if writer.can_write_eof():  # plain TCP; TLS has no half-close
                writer.write_eof()
            async with asyncio.timeout(LINGER_TIMEOUT):
                received = 0
                while received < LINGER_BYTES:
                    chunk = await reader.read(READ_CHUNK)
                    if not chunk:
                        break
                    received += len(chunk)

    @staticmethod
    async def _close(writer: asyncio.StreamWriter) -> None:
        writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):  # a TLS peer that never answers close_notify
                await writer.wait_closed()
