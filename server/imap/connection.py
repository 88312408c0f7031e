"""The IMAP connection layer: bytes in and out of a socket, nothing else.

It feeds what arrives to the sans-I/O ``CommandReader``, answers synchronising literals with a
continuation, hands commands to the ``Session`` and writes what it yields. It owns the things
that touch the transport: STARTTLS (RFC 3501 §6.2.1, with anything the client sent in the clear
after the command thrown away, or the connection dropped), IDLE (RFC 2177: waiting for changes
and for DONE at once), AUTHENTICATE continuations, the idle timeout (RFC 3501 §5.4) and LOGOUT.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import logging
import ssl

from server.imap import responses
from server.imap.parser import Command, CommandReader, NeedLiteral, ParseError
from server.readtimer import ReadTimer
from server.tlscert import HANDSHAKE_TIMEOUT, close_stream

log = logging.getLogger("mailstead.imap")

WRITE_CHUNK = 64 * 1024
READ_SIZE = 256 * 1024
# Before login a client may send no more than a login needs: nobody can make us hold an
# APPEND-sized literal without a password.
PREAUTH_LIMIT = 8 * 1024
MAX_LINE = 64 * 1024
MAX_BAD_COMMANDS = 20  # in a row: a client that only sends garbage is not a mail client
# Seconds between looks at the disk while idling: with inotify only a safety net; without it,
# how late another program's change can show up.
IDLE_CHECK_WATCHED = 300.0
IDLE_CHECK_POLLED = 10.0
# After a change, one more look a little later: a second change within the same filesystem
# timestamp tick is only seen once the index's dirty window (2 s) has passed.
IDLE_CHECK_AFTER_CHANGE = 3.0


class Closed(Exception):
    """The connection is over (LOGOUT, timeout, client gone)."""


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, session,
                 *, tls_context: ssl.SSLContext | None, idle_timeout: float, max_literal: int,
                 login_timeout: float):
        self.reader = reader
        self.writer = writer
        self.session = session
        self.tls_context = tls_context
        self.idle_timeout = idle_timeout
        self.login_timeout = login_timeout
        self.max_literal = max_literal
        self.commands = self._reader()
        self.bad_in_a_row = 0
        # Responses not written yet: those of a command whose successor the client already
        # sent (pipelined, as mbsync does a message at a time) wait for it, so that a run of
        # commands costs one TLS record and one send, not one each (see ``next_event``).
        self._out: list[bytes] = []
        self._out_size = 0
        # login_timeout is how long a connection may take to log in, counted from its start:
        # were it reset by every read, a client trickling a byte at a time (slowloris) would
        # hold a slot for ever without a password.
        self.login_deadline = asyncio.get_running_loop().time() + login_timeout
        self.timer = ReadTimer(reader)

    def _reader(self) -> CommandReader:
        return CommandReader(max_line=PREAUTH_LIMIT, max_literal=PREAUTH_LIMIT)

    def _limits_after(self) -> None:
        if self.session.user is not None:
            self.commands.max_line = MAX_LINE
            self.commands.max_literal = self.max_literal

    # --- I/O primitives ---

    async def write(self, data: bytes) -> None:
        """Send ``data`` now, after any responses still held."""
        self._hold(data)
        await self.flush()

    def _hold(self, data: bytes) -> None:
        self._out.append(data)
        self._out_size += len(data)

    async def flush(self) -> None:
        if self._out:
            self.writer.write(b"".join(self._out))
            self._out.clear()
            self._out_size = 0
        # Waiting for the client to take what is written matters only when some of it is
        # still buffered (uvloop sends at once what the socket takes); a connection lost
        # meanwhile is found by the next read.
        if self.writer.transport.get_write_buffer_size():
            await self.writer.drain()

    async def _fill(self) -> None:
        # RFC 3501 §5.4's 30 minutes are for users; a connection that has not logged in
        # gets a minute in all, so silent or trickling connections cannot hold every slot.
        if self.session.user is not None:
            deadline = self.timer.loop.time() + self.idle_timeout
        else:
            deadline = self.login_deadline
        data = await self.timer.wait(self.reader.read(READ_SIZE), deadline)
        if self.timer.timed_out:
            await self.write(responses.untagged("BYE Autologout; idle for too long"))
            raise Closed("idle timeout")
        if not data:
            raise Closed("client closed the connection")
        self.commands.feed(data)

    async def next_event(self):
        while True:
            event = self.commands.next()
            if event is not None:
                return event
            await self.flush()  # nothing more to do before the client says more
            await self._fill()

    async def read_line(self) -> bytes:
        while True:
            line = self.commands.read_line()
            if line is not None:
                return line
            await self.flush()
            await self._fill()

    # --- the loop ---

    async def run(self) -> None:
        try:
            await self.write(self.session.greeting())
            while True:
                event = await self.next_event()
                if isinstance(event, NeedLiteral):
                    await self.write(b"+ Ready for literal data\r\n")
                elif isinstance(event, ParseError):
                    await self._bad(event)
                else:
                    self.bad_in_a_row = 0
                    await self._command(event)
                    self._limits_after()
        except Closed as why:
            log.info("conn=%s closed: %s", self.session.conn_id, why)
        except asyncio.CancelledError:
            # Shutdown: tell the client, as RFC 3501 §7.1.5 describes, then go.
            try:
                self._hold(responses.untagged("BYE Server shutting down"))
                self.writer.write(b"".join(self._out))
            except (ConnectionError, RuntimeError):
                pass
            raise
        except (ConnectionError, ssl.SSLError) as err:
            log.info("conn=%s connection lost: %s", self.session.conn_id, err)
        finally:
            self.timer.cancel()
            await self.session.close()
            await self._close()

    async def _close(self) -> None:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            self.writer.close()  # shutdown: the listener drops what is left
        else:
            await close_stream(self.writer)

    async def _bad(self, error: ParseError) -> None:
        self.bad_in_a_row += 1
        tag = error.tag or "*"
        await self.write(responses.tagged(tag, "BAD", error.message, getattr(error, "code", None)))
        if self.bad_in_a_row >= MAX_BAD_COMMANDS:
            await self.write(responses.untagged("BYE Too many invalid commands"))
            raise Closed("too many invalid commands")

    async def _command(self, cmd: Command) -> None:
        self.session.pipelined = self.commands.more_waiting()
        if cmd.name == "STARTTLS":
            await self._starttls(cmd)
        elif cmd.name == "IDLE":
            await self._idle(cmd)
        elif cmd.name == "AUTHENTICATE" and cmd.args.initial is None \
                and self.session.may_authenticate(cmd):
            # RFC 4959 clients send the response at once; older ones wait for "+ ".
            await self.write(b"+ \r\n")
            line = (await self.read_line()).rstrip(b"\r\n")
            if line == b"*":
                await self.write(responses.tagged(cmd.tag, "BAD", "AUTHENTICATE cancelled"))
                return
            try:
                initial = base64.b64decode(line, validate=True)
            except binascii.Error:
                await self.write(responses.tagged(cmd.tag, "BAD", "Invalid base64"))
                return
            cmd = dataclasses.replace(cmd, args=dataclasses.replace(cmd.args, initial=initial))
            await self._run_session(self.session.execute(cmd))
        else:
            await self._run_session(self.session.execute(cmd))
        if self.session.logged_out:
            await self.flush()  # the BYE and the tagged OK
            raise Closed("logout")

    async def _run_session(self, chunks) -> None:
        # Responses come a line at a time (a FETCH of a big folder is 100,000 lines); each
        # write through TLS is a record of its own, so lines are gathered into ~64 KiB writes.
        # What is left is held until the client's next command is not already here.
        async for chunk in chunks:
            self._hold(chunk)
            if self._out_size >= WRITE_CHUNK:
                self.writer.write(b"".join(self._out))
                self._out.clear()
                self._out_size = 0
                if self.writer.transport.get_write_buffer_size() > READ_SIZE:
                    await self.writer.drain()

    async def _starttls(self, cmd: Command) -> None:
        refusal = self.session.starttls_refusal(self.tls_context is not None)
        if refusal is not None:
            await self.write(refusal.tagged(cmd.tag))
            return
        await self.write(responses.tagged(cmd.tag, "OK", "Begin TLS negotiation now"))
        # RFC 3501 §6.2.1 / CVE-2011-0411: nothing the client sent in the clear after STARTTLS
        # may be taken as said inside TLS. What we had already read is dropped with the old
        # reader; what is still buffered by asyncio means a client that did not wait: hang up.
        pending = len(getattr(self.reader, "_buffer", b""))
        if self.commands.buffered() or pending:
            raise Closed("data sent in the clear after STARTTLS")
        await self.writer.start_tls(self.tls_context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        self.commands = self._reader()
        self.session.tls_started()

    async def _idle(self, cmd: Command) -> None:
        refusal = self.session.idle_refusal()
        if refusal is not None:
            await self.write(refusal.tagged(cmd.tag))
            return
        changed = self.session.watch()
        await self.write(b"+ idling\r\n")
        done = asyncio.ensure_future(self.read_line())
        recheck = False
        try:
            while True:
                changes = asyncio.ensure_future(changed.wait())
                tick = IDLE_CHECK_WATCHED if getattr(changed, "watched", False) \
                    else IDLE_CHECK_POLLED
                if recheck:
                    tick = min(tick, IDLE_CHECK_AFTER_CHANGE)
                finished, _ = await asyncio.wait({done, changes}, timeout=tick,
                                                 return_when=asyncio.FIRST_COMPLETED)
                recheck = changes in finished
                changes.cancel()
                changed.clear()
                # Sync on a change event and on every tick (writers outside this process).
                for chunk in await self.session.updates():
                    await self.write(chunk)
                if self.session.logged_out:
                    raise Closed("selected mailbox went away")
                if done in finished:
                    line = done.result().rstrip(b"\r\n")
                    if line.upper() == b"DONE":
                        await self.write(responses.tagged(cmd.tag, "OK", "IDLE terminated"))
                    else:
                        await self.write(responses.tagged(cmd.tag, "BAD", "Expected DONE"))
                    return
        finally:
            done.cancel()
            self.session.unwatch()
