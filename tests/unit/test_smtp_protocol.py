"""The SMTP protocol's fast constructor must leave a connection exactly as aiosmtpd's own
``SMTP.__init__`` would (it skips only the per-connection introspection)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping

import pytest
from aiosmtpd.smtp import SMTP

from server.smtp import protocol, replies
from server.smtp.mx import MXHandler
from server.smtp.submission import SubmissionHandler

# Attributes whose values are per-object (bound methods, the stream reader) are compared by
# what they refer to, not by identity.
_BOUND = ("_auth_methods", "_handle_hooks", "_smtp_methods")


def _kwargs(loop, ctx, submission: bool) -> dict:
    return dict(hostname="mail.example.test", ident="mailstead", tls_context=ctx,
                auth_required=submission, require_starttls=submission,
                auth_require_tls=True, data_size_limit=1000, enable_SMTPUTF8=True,
                decode_data=False, timeout=30, loop=loop)


def _describe(value, handler):
    if isinstance(value, Mapping):  # protocol.fast_smtp_init binds on lookup
        return {k: _describe(v, handler) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return tuple(_describe(v, handler) for v in value)
    func = getattr(value, "__func__", None)
    if func is not None:
        return (func.__qualname__, "handler" if value.__self__ is handler else "protocol")
    return value


@pytest.mark.parametrize("handler_cls,submission", [(MXHandler, False),
                                                     (SubmissionHandler, True)])
def test_fast_init_matches_aiosmtpd(handler_cls, submission):
    loop = asyncio.new_event_loop()
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        handler = handler_cls.__new__(handler_cls)  # the hooks are all that is looked at

        class Plain(protocol.SMTPProtocol):
            def __init__(self, handler, **kwargs):
                self.command_size_limits = {}
                SMTP.__init__(self, handler, **kwargs)

        fast = protocol.SMTPProtocol(handler, max_errors=10, registry=set(),
                                     auth_enabled=submission, **_kwargs(loop, ctx, submission))
        plain = Plain(handler, **_kwargs(loop, ctx, submission))
        skip = {"_stream_reader_wr", "_stream_reader", "_strong_reader", "conn_id", "errors",
                "transactions", "max_errors", "auth_enabled", "registry", "reverse_name_task",
                "delivering", "_greeted", "greeted_elsewhere", "_continued", "_in_helo", "_in_mail",
                "_close_after_transaction", "_connected",
                "command_size_limits", "_last_data", "_closed", "_client_connected_cb",
                "_source_traceback", "_loop", "_over_ssl", "_task"}
        fast_attrs = {k: v for k, v in vars(fast).items() if k not in skip}
        plain_attrs = {k: v for k, v in vars(plain).items() if k not in skip}
        assert fast_attrs.keys() == plain_attrs.keys()
        for key in fast_attrs:
            if key in _BOUND:
                # aiosmtpd also takes non-method members named auth_* as mechanisms (our
                # ``auth_enabled`` flag would become a mechanism "enabled"); we take methods only.
                plain_value = {k: v for k, v in plain_attrs[key].items()
                               if not (key == "_auth_methods" and not callable(v.method))}
                assert _describe(fast_attrs[key], handler) == _describe(plain_value, handler), key
            else:
                assert fast_attrs[key] == plain_attrs[key], key
        assert set(fast._auth_methods) == {"PLAIN", "LOGIN"}
        assert fast._handle_hooks["DATA"].__func__ is handler_cls.handle_DATA
    finally:
        loop.close()


def _run(scenario, *sockets) -> None:
    """Run ``scenario()`` on a fresh event loop (20 s at most), then close ``sockets``."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(scenario(), 20))
    finally:
        loop.close()
        for sock in sockets:
            sock.close()


def test_worker_outbox_loses_nothing_when_the_channel_is_full():
    """A worker's reports to the daemon ("closed", "queued", ...) wait when the channel is
    full and go out in order once the daemon reads again."""
    import socket

    from server.smtp.dispatch import Outbox, messages

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ours.setblocking(False)
    received = []

    async def scenario():
        outbox = Outbox(ours)
        for i in range(20000):
            outbox.send({"op": "queued", "id": str(i)})
        await asyncio.sleep(outbox.delay * 2)  # gathered, packed, sent as far as it goes
        assert outbox.waiting  # the channel filled up: the rest wait
        theirs.setblocking(False)
        while len(received) < 20000:
            try:
                received.extend(m["id"] for m in messages(theirs.recv(65536)))
            except BlockingIOError:
                await asyncio.sleep(0.001)
        assert not outbox.waiting

    _run(scenario, ours, theirs)
    assert received == [str(i) for i in range(20000)]


def test_worker_reports_go_together_and_drain_sends_the_rest():
    """Reports made within ``delay`` share one packet (one wake-up of the daemon); at exit,
    ``drain`` sends what is still gathering."""
    import socket

    from server.smtp.dispatch import Outbox, messages

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    theirs.settimeout(5)

    async def scenario():
        outbox = Outbox(ours, delay=0.05)
        outbox.send({"op": "delivered", "addresses": ["a@example.test"], "folder": "INBOX"})
        outbox.send({"op": "closed", "id": "c1"})
        assert outbox.pending  # not sent yet...
        await asyncio.sleep(0.1)
        assert [m["op"] for m in messages(theirs.recv(65536))] == ["delivered", "closed"]
        outbox.send({"op": "closed", "id": "c2"})
        outbox.drain()  # ...or sent at once when the worker stops
        assert messages(theirs.recv(65536)) == [{"op": "closed", "id": "c2"}]
        assert outbox.timer is None

    _run(scenario, ours, theirs)


def test_lazy_methods_bind_on_lookup_and_keep_aiosmtpd_order():
    """``_smtp_methods`` and ``_auth_methods`` bind when used; what aiosmtpd asks of them (get,
    [], in, keys, items: HELP and EHLO list them) answers as its dicts would."""
    loop = asyncio.new_event_loop()
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        handler = MXHandler.__new__(MXHandler)
        one = protocol.SMTPProtocol(handler, max_errors=10, registry=set(),
                                    **_kwargs(loop, ctx, False))
        two = protocol.SMTPProtocol(handler, max_errors=10, registry=set(),
                                    **_kwargs(loop, ctx, False))
        methods = one._smtp_methods
        assert methods.get("QUIT").__func__ is protocol.SMTPProtocol.smtp_QUIT
        assert methods.get("QUIT").__self__ is one and two._smtp_methods["QUIT"].__self__ is two
        assert methods.get("BOGUS") is None and "BOGUS" not in methods and "MAIL" in methods
        with pytest.raises(KeyError):
            methods["BOGUS"]
        assert list(methods) == sorted(methods) == [k for k, _ in methods.items()]
        assert sorted(one._auth_methods.keys()) == ["LOGIN", "PLAIN"]
        assert one._auth_methods["PLAIN"].is_builtin
        # The handler's hooks are bound once and shared by its connections.
        assert one._handle_hooks is two._handle_hooks
        assert one._handle_hooks["DATA"].__self__ is handler
    finally:
        loop.close()


def test_one_timer_per_connection_and_it_measures_the_silence():
    """aiosmtpd re-creates its idle timer at every command; ours is made once and re-armed by
    ``_timeout_cb`` for what is left of the silence, so a client that keeps talking is never
    cut off and a silent one is, after ``timeout`` seconds of silence."""
    loop = asyncio.new_event_loop()
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        smtp = protocol.SMTPProtocol(MXHandler.__new__(MXHandler), max_errors=10,
                                     registry=set(), **_kwargs(loop, ctx, False))
        smtp._reset_timeout()
        first = smtp._timeout_handle
        smtp._reset_timeout()  # a command: the same timer goes on
        assert smtp._timeout_handle is first
        closed = []
        smtp.close_with = closed.append
        smtp._last_data = loop.time() - 10  # heard from 10 s ago: 20 s of the 30 left
        smtp._timeout_cb()
        assert not closed and smtp._timeout_handle is not first
        assert 19 < smtp._timeout_handle.when() - loop.time() <= 20
        smtp._last_data = loop.time() - 31
        smtp._timeout_cb()
        assert closed == [replies.TIMEOUT]
        smtp._timeout_handle.cancel()
    finally:
        loop.close()


def test_aiosmtpd_log_lines_are_not_sanitized_for_a_logger_that_drops_them(monkeypatch):
    """aiosmtpd's per-command sanitized_log runs a regex over each client line; with its
    logger above the level (as the server sets it) that is skipped, and still done when
    the line is logged."""
    import logging

    import aiosmtpd.smtp

    from server.smtp import fastinit

    seen = []
    monkeypatch.setattr(fastinit, "_aiosmtpd_sanitized_log",
                        lambda func, msg, *args: seen.append(args))
    logger = logging.getLogger("test.sanitized")
    logger.setLevel(logging.ERROR)
    aiosmtpd.smtp.sanitized_log(logger.debug, "%r", b"AUTH PLAIN secret\r\n")
    aiosmtpd.smtp.sanitized_log(logger.info, "%r", b"MAIL FROM:<a@b>")
    assert seen == []
    aiosmtpd.smtp.sanitized_log(logger.error, "%r", b"x")
    logger.setLevel(logging.DEBUG)
    aiosmtpd.smtp.sanitized_log(logger.debug, "%r", b"y")
    assert seen == [(b"x",), (b"y",)]


def test_a_reply_of_several_lines_is_one_write():
    """push() holds the lines of a reply until its last one (RFC 5321 §4.2.1: "ddd-" goes
    on, "ddd " ends), then writes them together; one-line replies go out as they come."""
    loop = asyncio.new_event_loop()
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        smtp = protocol.SMTPProtocol(MXHandler.__new__(MXHandler), max_errors=10,
                                     registry=set(), **_kwargs(loop, ctx, False))
        writes = []

        class Writer:
            write = writes.append

        class Transport:
            def is_closing(self):
                return False

        smtp._writer, smtp.transport, smtp._greeted = Writer(), Transport(), True
        smtp._in_helo = True  # as for EHLO: the lines as given, no enhanced codes added
        for line in ["250-mail.example.test", "250-SIZE 1000", "250 HELP", "250 2.0.0 OK",
                     "250-a\r\n250 b", "214-x\r\n214-y", "214 z"]:
            loop.run_until_complete(smtp.push(line))
        assert writes == [b"250-mail.example.test\r\n250-SIZE 1000\r\n250 HELP\r\n",
                          b"250 2.0.0 OK\r\n", b"250-a\r\n250 b\r\n",
                          b"214-x\r\n214-y\r\n214 z\r\n"]
    finally:
        loop.close()
