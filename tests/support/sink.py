"""A remote MX stand-in on loopback: aiosmtpd that records what it receives.

Tests choose its answers per recipient (``reject``: 550, ``defer``: 451), whether it offers
STARTTLS (with any certificate), and whether it requires AUTH (as a smarthost would).
For the real-MTA peer see ``postfix.py``.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.support.instance import free_port


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    tls: bool
    auth: str | None


@dataclass
class SinkHandler:
    reject: set[str] = field(default_factory=set)
    defer: set[str] = field(default_factory=set)
    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    connections: int = 0
    # Set: QUIT is answered only once it is released (a slow or silent receiver after DATA).
    hold_quit: threading.Event | None = None
    quits: int = 0  # QUIT commands received

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        with self.lock:
            self.connections += 1
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower() in self.reject:
            return f"550 5.1.1 <{address}>: Recipient address rejected: no such user"
        if address.lower() in self.defer:
            return "451 4.3.0 Try again later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                          envelope.original_content, session.ssl is not None
                                          or server.transport.get_extra_info("cipher") is not None,
                                          getattr(session.auth_data, "login", None)))
        return "250 2.0.0 Ok: queued"

    async def handle_QUIT(self, server, session, envelope):
        with self.lock:
            self.quits += 1
        while self.hold_quit is not None and not self.hold_quit.is_set():
            await asyncio.sleep(0.02)
        return "221 2.0.0 Bye"


class Sink:
    def __init__(self, port: int | None = None, *, tls_cert: tuple[Path, Path] | None = None,
                 implicit_tls: bool = False, auth: tuple[str, str] | None = None,
                 hostname: str = "mx.remote.test", smtputf8: bool = True,
                 broken_tls: bool = False):
        self.port = port or free_port()
        self.handler = SinkHandler()
        self.tls_cert = tls_cert
        self.implicit_tls = implicit_tls
        self.auth = auth
        self.hostname = hostname
        self.smtputf8 = smtputf8
        self.broken_tls = broken_tls  # offers STARTTLS, but only TLS 1.0: no handshake succeeds
        self.controller: Controller | None = None

    def _context(self) -> ssl.SSLContext | None:
        if self.tls_cert is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(*self.tls_cert)
        if self.broken_tls:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1
        return ctx

    def _authenticator(self, server, session, envelope, mechanism, data):
        ok = isinstance(data, LoginPassword) and self.auth is not None and \
            (data.login.decode(), data.password.decode()) == self.auth
        return AuthResult(success=ok, auth_data=data if ok else None)

    def start(self) -> Sink:
        ctx = self._context()
        kwargs = dict(hostname="127.0.0.1", port=self.port, server_hostname=self.hostname,
                      enable_SMTPUTF8=self.smtputf8, ready_timeout=10)
        if self.auth is not None:
            kwargs.update(authenticator=self._authenticator, auth_required=True,
                          auth_require_tls=not self.implicit_tls)
        if ctx is not None and self.implicit_tls:
            kwargs["ssl_context"] = ctx
        elif ctx is not None:
            kwargs["tls_context"] = ctx
        self.controller = Controller(self.handler, **kwargs)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    @property
    def messages(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.messages)

    def wait_for(self, count: int, timeout: float = 20) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.messages
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise AssertionError(f"sink got {len(self.messages)} message(s), wanted {count}")

