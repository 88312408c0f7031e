"""aiosmtpd's SMTP protocol with the few things its handler hooks cannot reach.

All mail behaviour lives in handler classes (``mx.MXHandler``). This subclass only:
- parses MAIL/RCPT paths by RFC 5321 instead of aiosmtpd's RFC 5322 header parser;
- adds RFC 3463 enhanced status codes to the replies aiosmtpd writes itself;
- counts error replies and ends the connection with 421 after ``max_errors`` (a client that
  keeps failing is guessing addresses or looping);
- answers 421 before closing on idle timeout and at shutdown, instead of a silent hang-up;
- refuses AUTH with 503 where the service offers none (the MX), and STARTTLS out of order;
- keeps one connection id across STARTTLS (aiosmtpd makes a new Session then, per RFC 3207 §4.2);
- reads DATA in whole chunks (``data.DataReader``) instead of aiosmtpd's line at a time.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import logging
import os
import time

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, TLSSetupException, syntax

from server.addresses import AddressError, parse_path
from server.smtp import replies
from server.smtp.data import NOMINAL, TOO_LONG, DataReader
from server.smtp.fastinit import fast_smtp_init

log = logging.getLogger("mailstead.smtp")

# More than the stream reader ever holds (it pauses the socket at twice its line limit, plus
# one read of the transport): a read of this size takes all that has arrived.
_READ_ALL = 1 << 30

# Paths repeat from message to message (see handler.cached_parse_address).
_parse_path = functools.lru_cache(maxsize=4096)(
    functools.partial(parse_path, allow_postmaster=True))

_conn_counter = itertools.count(1)
_conn_prefix = format(int(time.time()) % 46656, "x") + format(os.getpid() % 4096, "x")


def new_conn_id() -> str:
    return f"{_conn_prefix}{next(_conn_counter):x}"


class MailEnvelope(Envelope):
    """aiosmtpd's envelope plus what the MX decides while it fills it."""

    def __init__(self) -> None:
        super().__init__()
        self.sender: str = ""  # normalised reverse-path, "" for the null sender
        self.mailboxes: dict[int, tuple[object, str]] = {}  # user id -> (User, RCPT address)
        self.remote: list[str] = []  # addresses that leave through the outbound queue


class SMTPProtocol(SMTP):
    def __init__(self, handler, *, max_errors: int, registry: set[SMTPProtocol],
                 auth_enabled: bool = False, **kwargs):
        self.conn_id = new_conn_id()
        self.errors = 0
        self.transactions = 0
        self.max_errors = max_errors
        self.auth_enabled = auth_enabled
        self.registry = registry
        self.reverse_name_task: asyncio.Future | None = None
        self.delivering = False  # the handler is writing a message: shutdown waits for it
        self._greeted = False
        self.greeted_elsewhere = False  # the dispatcher sent the 220 (listener.greeting)
        self._continued: list[bytes] = []  # the lines of a reply pushed so far (push)
        self._in_helo = False
        self._in_mail = False
        self._close_after_transaction = False
        self._connected = 0.0
        # aiosmtpd keeps this dict on the class and grows it per EHLO, so one client's EHLOs
        # would raise every other connection's MAIL line limit; each connection gets its own.
        self.command_size_limits = collections.defaultdict(lambda: self.command_size_limit)
        fast_smtp_init(self, handler, **kwargs)
        self._last_data = self.loop.time()

    # --- identity and lifetime ---

    def _create_session(self) -> Session:
        session = Session(self.loop)
        session.conn_id = self.conn_id
        return session

    def _create_envelope(self) -> Envelope:
        return MailEnvelope()

    @property
    def peer_ip(self) -> str:
        peer = self.session.peer if self.session else None
        return peer[0] if isinstance(peer, tuple) else "unknown"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first:
            self.registry.add(self)
            self._connected = self.loop.time()
            # The client's address is in the disconnect line and in each message's line: a
            # line of its own here was a third of the log lines of a one-message session.
            log.debug("conn=%s connect from [%s]", self.conn_id, self.peer_ip)

    def connection_lost(self, error: Exception | None) -> None:
        self.registry.discard(self)
        if self.reverse_name_task is not None:
            self.reverse_name_task.cancel()
        log.info("conn=%s disconnect from [%s] after %.3fs errors=%d transactions=%d",
                 self.conn_id, self.peer_ip, self.loop.time() - self._connected, self.errors,
                 self.transactions)
        super().connection_lost(error)

    def eof_received(self) -> bool:
        super().eof_received()
        # aiosmtpd cancels its handler at EOF and lets the handler's CancelledError close the
        # transport. A handler cancelled before its first step never does: uvloop can read
        # the EOF of a connect-and-close in the same pass as connection_made, and the
        # half-open connection then held its slot until the idle timeout. Closing here
        # still flushes any replies written before the EOF.
        return False

    def tls_cipher(self) -> tuple | None:
        """(name, protocol, bits) of the TLS in use (STARTTLS or implicit), else None."""
        if self.transport is None:
            return None
        return self.transport.get_extra_info("cipher")

    @property
    def in_transaction(self) -> bool:
        return self.envelope is not None and self.envelope.mail_from is not None

    def close_with(self, reply: replies.Reply) -> None:
        """Write ``reply`` and close; the transport flushes the write before closing."""
        if self.transport is not None and not self.transport.is_closing():
            self._writer.write(f"{reply}\r\n".encode("ascii"))
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self._last_data = self.loop.time()
        super().data_received(data)

    def _reset_timeout(self, duration: float | None = None) -> None:
        # aiosmtpd cancels and re-creates its timer at every command. ``_timeout_cb`` measures
        # the silence itself and re-arms for what is left of it, so one timer per connection
        # is enough; only a re-arm with a duration (ours, or the PROXY timeout) makes a new one.
        if duration is None and self._timeout_handle is not None:
            return
        super()._reset_timeout(duration)

    def _timeout_cb(self) -> None:
        # aiosmtpd arms its timer per command, so a large message arriving slowly would be cut
        # off mid-DATA. The timeout we want is silence: re-arm while bytes keep coming.
        silent = self.loop.time() - self._last_data
        if silent < self._timeout_duration:
            self._reset_timeout(self._timeout_duration - silent)
            return
        log.info("conn=%s idle timeout", self.conn_id)
        self.close_with(replies.TIMEOUT)

    # --- replies ---

    async def push(self, status: str | bytes) -> None:
        if not self._greeted and self.greeted_elsewhere:
            self._greeted = True  # aiosmtpd's greeting: the client has it already
            return
        if isinstance(status, bytes):
            status = status.decode("utf-8", "surrogateescape")
        if self._greeted and not self._in_helo:
            if self._in_mail and status.startswith("553 5.1.3"):
                status = str(replies.BAD_SENDER_SYNTAX)  # aiosmtpd says 5.1.3 for both paths
            elif not replies.has_enhanced_code(status):  # ours all have one
                status = "\r\n".join(replies.add_enhanced_code(line)
                                     for line in status.split("\r\n"))
        self._greeted = True
        data = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii",
                             "surrogateescape") + b"\r\n"
        if status.rpartition("\n")[2][3:4] == "-":
            # RFC 5321 §4.2.1: not the last line of its reply. aiosmtpd pushes an EHLO answer
            # line by line; sent at once, it is one segment and one wake-up of the client
            # instead of six.
            self._continued.append(data)
            return
        if self._continued:
            data = b"".join(self._continued) + data
            self._continued.clear()
        # aiosmtpd's push, without its drain when the transport is not pushing back (a
        # coroutine and two calls for every reply, all returning at once).
        self._writer.write(data)
        transport = self.transport
        if self._paused or transport is None or transport.is_closing():
            await self._writer.drain()
        # Only permanent failures count: 4xx are our own conditions (full, too many recipients)
        # and must not end a transaction that is otherwise going well.
        if status.startswith("5"):
            self.errors += 1
            if self.errors >= self.max_errors:
                self._close_after_transaction = True
        if self._close_after_transaction and not (self.in_transaction and self.envelope.rcpt_tos):
            # Never while recipients are accepted: the message for them would be lost.
            log.info("conn=%s too many errors (%d), closing", self.conn_id, self.errors)
            self.close_with(replies.TOO_MANY_ERRORS)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd parses paths with RFC 5322 header rules: comments, folding white space and
        # RFC 2047 encoded words that SMTP does not have ("<=?utf-8?q?a?=@x>" would become
        # "a@x"). RFC 5321 §4.1.2 syntax instead, so the handler acts on what the client sent.
        if not arg or not arg.strip():
            return "", ""
        try:
            mailbox, rest = _parse_path(arg)
        except AddressError as err:
            log.info("conn=%s bad path %r: %s", self.conn_id, arg[:300], err)
            return None, None
        return mailbox or "<>", rest

    async def smtp_MAIL(self, arg: str) -> None:
        self._in_mail = True
        try:
            await super().smtp_MAIL(arg)
        finally:
            self._in_mail = False

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self._tls_protocol is not None:  # RFC 3207 §4.2
            await self.push(str(replies.BAD_SEQUENCE.with_text("TLS already active")))
            return
        if not self.session.host_name:
            await self.push(str(replies.BAD_SEQUENCE.with_text("Send EHLO first")))
            return
        await super().smtp_STARTTLS(arg)

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            # Scanners and broken clients do this all day; one line, no traceback.
            log.info("conn=%s TLS handshake failed: %s", self.conn_id, error.__cause__)
            return str(replies.LOCAL_ERROR)
        return await super().handle_exception(error)

    async def smtp_HELO(self, hostname: str) -> None:
        self._in_helo = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._in_helo = False

    async def smtp_EHLO(self, hostname: str) -> None:
        self._in_helo = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._in_helo = False

    async def smtp_AUTH(self, arg: str) -> None:
        if not self.auth_enabled:
            await self.push(str(replies.AUTH_NOT_ENABLED))
            return
        await super().smtp_AUTH(arg)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's ``smtp_DATA`` (1.4) with the message read by ``DataReader``: same
        replies, same envelope, same hook call."""
        if self._decode_data or "DATA" not in self._handle_hooks:
            await super().smtp_DATA(arg)
            return
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        reader = DataReader(self.data_size_limit, self.line_length_limit)
        while True:
            try:
                chunk = await self._reader.read(_READ_ALL)
            except asyncio.CancelledError:  # the connection was lost or the client hung up
                log.info("conn=%s connection lost during DATA", self.conn_id)
                self._writer.close()
                raise
            if not chunk:  # end of stream (eof_received cancels us first; never seen)
                self._writer.close()
                return
            rest = reader.feed(chunk)
            if rest is not None:
                break
        # What came after the end (pipelined commands) goes back for the command loop; the
        # read above took everything buffered, so it lands in front, in order.
        if rest and not self._reader.at_eof():
            self._reader.feed_data(rest)
        if reader.state != NOMINAL:
            await self.push("500 Line too long (see RFC5321 4.5.3.1.6)" if reader.state == TOO_LONG
                            else "552 Error: Too much mail data")
            self._set_post_data_state()
            return
        self.envelope.content = self.envelope.original_content = reader.message
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)
