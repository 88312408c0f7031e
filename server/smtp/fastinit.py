"""What aiosmtpd 1.4 does for every connection and every command, done at a fraction of the cost.

An MX receives one message per connection, so what a connection costs to set up is a share of
what a message costs. aiosmtpd's ``SMTP.__init__`` finds the commands, hooks and AUTH
mechanisms by introspection (``inspect.getmembers`` of the protocol and the handler, ``dir()``
twice, the EHLO hook's signature) and binds some thirty methods, of which a session uses five
or six. Here the names are found once per class, the handler's hooks are bound once per handler
(every connection of a listener shares one), and the protocol's own commands and mechanisms are
bound when a client uses them. tests/unit/test_smtp_protocol.py compares the result with a
plain ``SMTP.__init__``, so an aiosmtpd upgrade that adds an attribute fails there.

Per command, aiosmtpd sanitizes each client line for two log calls (a regular expression
against AUTH payloads) before the logger says whether it logs at all; its "mail.log" logger is
set to ERROR (``runner.setup_logging``), so that work is skipped unless the line is logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping

import aiosmtpd.smtp
from aiosmtpd.smtp import SMTP, _AuthMechAttr, login_always_fail

# (protocol class, handler class) -> (AUTH mechanism -> (method name, the protocol's own?),
# handler hook names, command -> protocol method name); shared read-only by every connection.
_NAMES: dict[tuple[type, type], tuple[dict, tuple, dict]] = {}


def _method_names(proto_cls: type, handler_cls: type) -> tuple[dict, tuple, dict]:
    names = _NAMES.get((proto_cls, handler_cls))
    if names is None:
        auth = {getattr(getattr(owner, name), "__auth_mechanism_name__",
                        name.replace("auth_", "").replace("__", "-")): (name, owner is proto_cls)
                for owner in (proto_cls, handler_cls) for name in dir(owner)
                if name.startswith("auth_") and callable(getattr(owner, name))}
        hooks = tuple(name for name in dir(handler_cls) if name.startswith("handle_"))
        commands = {name[5:]: name for name in dir(proto_cls) if name.startswith("smtp_")}
        names = _NAMES[(proto_cls, handler_cls)] = (auth, hooks, commands)
    return names


class _LazyMethods(Mapping):
    """A read-only name -> bound method mapping that binds on lookup; aiosmtpd only ever
    calls ``get``, ``[]``, ``in``, ``keys`` and ``items`` on these. Iteration keeps the
    ``dir()`` order a dict built by aiosmtpd would have (HELP lists commands in it)."""

    __slots__ = ("_bind", "_names", "_order")

    def __init__(self, names: dict[str, object], bind) -> None:
        self._names = names  # key -> what ``bind`` needs to make its value
        self._order = tuple(names)
        self._bind = bind

    def __getitem__(self, key: str):
        return self._bind(self._names[key])

    def get(self, key, default=None):  # Mapping's goes through a KeyError per miss
        spec = self._names.get(key)
        return default if spec is None else self._bind(spec)

    def __contains__(self, key) -> bool:
        return key in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)


def _handler_hooks(handler, hooks: tuple) -> dict:
    """``{"DATA": handler.handle_DATA, ...}``, made once per handler and shared read-only by
    its connections (aiosmtpd never changes it)."""
    cached = getattr(handler, "_mailstead_hooks", None)
    if cached is None or cached[0] != hooks:
        cached = (hooks, {name[7:]: getattr(handler, name) for name in hooks})
        try:
            handler._mailstead_hooks = cached
        except AttributeError:  # a handler with __slots__: bound per connection then
            pass
    return cached[1]


def fast_smtp_init(self: SMTP, handler, *, loop: asyncio.AbstractEventLoop, hostname: str,
                   ident: str, tls_context, require_starttls: bool, timeout: float,
                   auth_required: bool, auth_require_tls: bool, data_size_limit: int,
                   enable_SMTPUTF8: bool, decode_data: bool, authenticator=None) -> None:
    """``SMTP.__init__`` (aiosmtpd 1.4) for the arguments the listener passes."""
    self.__ident__ = ident
    self.loop = loop
    asyncio.StreamReaderProtocol.__init__(
        self, asyncio.StreamReader(loop=loop, limit=self.line_length_limit),
        client_connected_cb=self._cb_client_connected, loop=loop)
    self.event_handler = handler
    self.data_size_limit = data_size_limit
    self.enable_SMTPUTF8 = enable_SMTPUTF8
    self._decode_data = decode_data
    self.command_size_limits.clear()
    self.hostname = hostname
    self.tls_context = tls_context
    self.require_starttls = tls_context and require_starttls
    self._timeout_duration = timeout
    self._timeout_handle = None
    self._tls_handshake_okay = True
    self._tls_protocol = None
    self._original_transport = None
    self.session = None
    self.envelope = None
    self.transport = None
    self._handler_coroutine = None
    self._auth_require_tls = auth_require_tls
    self._proxy_timeout = None
    if authenticator is not None:
        self._authenticator, self._auth_callback = authenticator, None
    else:
        self._authenticator, self._auth_callback = None, login_always_fail
    auth, hooks, commands = _method_names(type(self), type(handler))
    self._auth_methods = _LazyMethods(
        auth, lambda spec: _AuthMechAttr(getattr(self if spec[1] else handler, spec[0]), spec[1]))
    self._handle_hooks = _handler_hooks(handler, hooks)
    # Our handlers' EHLO hook is the five-argument form ("new" to aiosmtpd).
    self._ehlo_hook_ver = "new" if "EHLO" in self._handle_hooks else None
    self._smtp_methods = _LazyMethods(commands, lambda name: getattr(self, name))
    self._enforce_call_limit = False
    self._auth_required = auth_required


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}
_aiosmtpd_sanitized_log = aiosmtpd.smtp.sanitized_log


def _sanitized_log(func, msg, *args, **kwargs) -> None:
    logger = getattr(func, "__self__", None)
    level = _LEVELS.get(getattr(func, "__name__", ""))
    if logger is None or level is None or logger.isEnabledFor(level):
        _aiosmtpd_sanitized_log(func, msg, *args, **kwargs)


# _handle_client looks the function up in its module at every call.
aiosmtpd.smtp.sanitized_log = _sanitized_log
