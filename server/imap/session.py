"""The IMAP state machine: one session per connection, one method per command.

States (RFC 3501 §3): not authenticated → authenticated → selected → logout. The dispatcher
checks once which commands a state allows; each ``do_<command>`` is an async generator that
yields response bytes (so a FETCH of 100,000 messages streams instead of piling up) and raises
``No``/``Bad`` to fail. The final tagged line is written here, in one place, and an unexpected
exception becomes ``NO [SERVERBUG]`` with a logged traceback — the connection stays up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from server.authlimit import check_password
from server.imap import responses
from server.imap.encode import encode
from server.imap.fetching import FetchCommands
from server.imap.mailboxes import MailboxCommands
from server.imap.messages import MessageCommands, out_of_space
from server.imap.parser import Command
from server.imap.responses import Bad, ImapError, No
from server.imap.searching import SearchCommands

log = logging.getLogger("mailstead.imap")

NOT_AUTHENTICATED, AUTHENTICATED, SELECTED, LOGOUT = "not-authenticated", "authenticated", \
    "selected", "logout"
ANY = (NOT_AUTHENTICATED, AUTHENTICATED, SELECTED)
AUTHED = (AUTHENTICATED, SELECTED)

BASE_CAPABILITIES = ["IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE"]
AUTHED_CAPABILITIES = [
    "IDLE", "NAMESPACE", "UIDPLUS", "MOVE", "UNSELECT", "CHILDREN", "SPECIAL-USE",
    "LIST-EXTENDED", "LIST-STATUS", "CONDSTORE", "ESEARCH", "QUOTA", "QUOTA=RES-STORAGE",
    "BINARY", "MULTIAPPEND", "STATUS=SIZE",
]


class Session(MailboxCommands, MessageCommands, FetchCommands, SearchCommands):
    # name -> states it is allowed in; the method is do_<name> (UID forms share it).
    STATES = {
        "CAPABILITY": ANY, "NOOP": ANY, "LOGOUT": ANY, "ID": ANY,
        "LOGIN": (NOT_AUTHENTICATED,), "AUTHENTICATE": (NOT_AUTHENTICATED,),
        "ENABLE": AUTHED, "NAMESPACE": AUTHED, "SELECT": AUTHED, "EXAMINE": AUTHED,
        "CREATE": AUTHED, "DELETE": AUTHED, "RENAME": AUTHED, "SUBSCRIBE": AUTHED,
        "UNSUBSCRIBE": AUTHED, "LIST": AUTHED, "LSUB": AUTHED, "STATUS": AUTHED,
        "APPEND": AUTHED, "GETQUOTA": AUTHED, "GETQUOTAROOT": AUTHED,
        "CHECK": (SELECTED,), "CLOSE": (SELECTED,), "UNSELECT": (SELECTED,),
        "EXPUNGE": (SELECTED,), "SEARCH": (SELECTED,), "FETCH": (SELECTED,),
        "STORE": (SELECTED,), "COPY": (SELECTED,), "MOVE": (SELECTED,),
    }

    def __init__(self, ctx, *, conn_id: str, peer_ip: str, tls: bool, starttls_offered: bool):
        self.ctx = ctx
        self.conn_id = conn_id
        self.peer_ip = peer_ip
        self.tls = tls
        self.starttls_offered = starttls_offered
        self.state = NOT_AUTHENTICATED
        self.user = None
        self.enabled: set[str] = set()
        self.selected = None  # a Selected view while in the selected state
        self.watching = None
        self.writing = None  # rows being written after the reply (io_answering_early)
        self.pipelined = False  # the client's next command has arrived (set by Connection)
        self.answered = None  # set when that reply is written (after_command)

    @property
    def logged_out(self) -> bool:
        return self.state == LOGOUT

    # --- capabilities and greeting ---

    def capabilities(self) -> list[str]:
        caps = list(BASE_CAPABILITIES)
        if self.state == NOT_AUTHENTICATED:
            if self.tls:
                caps.append("AUTH=PLAIN")
            else:
                # RFC 3501 §6.2.3 / RFC 8314: no password crosses the network in the clear.
                caps += ["STARTTLS", "LOGINDISABLED"]
        else:
            caps += AUTHED_CAPABILITIES
        return caps

    def greeting(self) -> bytes:
        return responses.ok(f"{self.ctx.hostname} mailstead IMAP ready",
                            "CAPABILITY " + " ".join(self.capabilities()))

    # --- the dispatcher ---

    async def execute(self, cmd: Command) -> AsyncIterator[bytes]:
        method = getattr(self, f"do_{cmd.name.lower()}", None)
        allowed = self.STATES.get(cmd.name)
        try:
            if self.writing is not None:  # an await per command otherwise
                await self.settle()
            if method is None or allowed is None:
                raise Bad(f"Unknown command {cmd.name}")
            if self.state not in allowed:
                raise Bad(f"{cmd.name} is not allowed {self._state_phrase()}")
            code = None
            async for chunk in method(cmd):
                if isinstance(chunk, _Code):
                    code = chunk.code
                else:
                    yield chunk
            for chunk in await self.after_command(cmd):
                yield chunk
            if self.state == LOGOUT and cmd.name != "LOGOUT":
                return  # a BYE was sent: the connection ends without a tagged reply
            text = f"{'UID ' if cmd.uid else ''}{cmd.name} completed"
            yield responses.tagged(cmd.tag, "OK", text, code)
        except ImapError as err:
            yield err.tagged(cmd.tag)
        except Exception as err:
            if out_of_space(err):
                # RFC 5530 OVERQUOTA, as Dovecot answers: the client keeps the message and
                # tries again later; nothing half-written is left (deliveries are atomic).
                log.warning("conn=%s %s: disk full: %s", self.conn_id, cmd.name, err)
                yield responses.tagged(cmd.tag, "NO", "Not enough disk space", "OVERQUOTA")
                return
            log.exception("conn=%s %s failed", self.conn_id, cmd.name)
            yield responses.tagged(cmd.tag, "NO", "Internal server error, sorry", "SERVERBUG")

    def _state_phrase(self) -> str:
        return {NOT_AUTHENTICATED: "before login", AUTHENTICATED: "without a selected mailbox",
                SELECTED: "now"}.get(self.state, "now")

    # --- any state ---

    async def do_capability(self, cmd):
        yield responses.untagged("CAPABILITY " + " ".join(self.capabilities()))

    async def do_noop(self, cmd):
        # The updates every command ends with (after_command) are all NOOP asks for.
        return
        yield

    async def do_logout(self, cmd):
        yield responses.untagged("BYE Logging out")
        self.state = LOGOUT

    async def do_id(self, cmd):
        # RFC 2971: say who we are; what the client says is only logged.
        if cmd.args is not None and cmd.args.params:
            fields = " ".join(f"{k}={v}" for k, v in list(cmd.args.params.items())[:8])
            log.info("conn=%s client id: %s", self.conn_id, fields[:300])
        yield responses.untagged(b"ID " + encode(["name", "mailstead", "vendor", "mailstead"]))

    # --- not authenticated ---

    def starttls_refusal(self, available: bool) -> ImapError | None:
        if self.tls or not self.starttls_offered or not available:
            return Bad("STARTTLS is not available now")
        if self.state != NOT_AUTHENTICATED:
            return Bad("STARTTLS is only allowed before login")
        return None

    def tls_started(self) -> None:
        self.tls = True

    def may_authenticate(self, cmd: Command) -> bool:
        return (self.state == NOT_AUTHENTICATED and self.tls
                and cmd.args.mechanism.upper() == "PLAIN")

    async def do_login(self, cmd):
        if not self.tls:
            raise No("LOGIN is disabled until TLS is in use (STARTTLS)", "PRIVACYREQUIRED")
        if self.ctx.throttle.banned(self.peer_ip):
            yield self._banned()
            return
        await self._login(cmd.args.user, cmd.args.password)
        yield _Code("CAPABILITY " + " ".join(self.capabilities()))

    async def do_authenticate(self, cmd):
        """AUTHENTICATE PLAIN (RFC 4616); when the client did not send its response with the
        command (SASL-IR, RFC 4959), the connection has asked for it and put it in ``args``."""
        args = cmd.args
        initial = args.initial
        if args.mechanism.upper() != "PLAIN":
            raise No(f"Unsupported mechanism {args.mechanism}", "CANNOT")
        if not self.tls:
            raise No("Authentication is disabled until TLS is in use", "PRIVACYREQUIRED")
        parts = (initial or b"").split(b"\x00")
        if len(parts) != 3 or (parts[0] and parts[0] != parts[1]):
            raise Bad("Malformed PLAIN response")
        if self.ctx.throttle.banned(self.peer_ip):
            yield self._banned()
            return
        await self._login(parts[1].decode("utf-8", "replace"),
                          parts[2].decode("utf-8", "replace"))
        yield _Code("CAPABILITY " + " ".join(self.capabilities()))

    def _banned(self) -> bytes:
        """Banned (server/abuse) since it connected: no more guesses; BYE ends the connection."""
        self.state = LOGOUT
        return responses.untagged("BYE [UNAVAILABLE] Too many failed logins from your address, "
                                  "try again later")

    async def _login(self, name: str, password: str) -> None:
        user = await check_password(self.ctx.throttle, self.ctx.accounts, self.ctx.executor,
                                    ip=self.peer_ip, name=name, password=password,
                                    service="imap", conn_id=self.conn_id, log=log)
        if user is None:
            raise No("Authentication failed", "AUTHENTICATIONFAILED")
        if not self.ctx.sessions.add(user.address, self):
            raise No("Too many connections for this account", "LIMIT")
        self.user = user
        self.state = AUTHENTICATED
        loop = asyncio.get_running_loop()
        self.mailbox_index = await loop.run_in_executor(self.ctx.executor, self.ctx.index_for,
                                                        user)
        log.info("conn=%s login user=%s", self.conn_id, user.address)

    # --- authenticated ---

    async def do_enable(self, cmd):
        done = []
        for cap in cmd.args.capabilities:
            upper = cap.upper()
            if upper in ("CONDSTORE",) and upper not in self.enabled:
                self.enabled.add(upper)
                done.append(upper)
        if "CONDSTORE" in done and self.selected is not None:
            self.selected.condstore = True
        yield responses.untagged("ENABLED" + "".join(f" {c}" for c in done))

    async def do_namespace(self, cmd):
        # RFC 2342: one personal namespace, no shared or other users' mailboxes.
        yield responses.untagged('NAMESPACE (("" "/")) NIL NIL')

    # --- lifetime ---

    async def close(self) -> None:
        if self.user is not None:
            self.ctx.sessions.remove(self.user.address, self)
        self.unwatch()
        self.selected = None


class _Code:
    """Yielded by a command method to put a response code in its tagged OK."""

    def __init__(self, code: str):
        self.code = code


__all__ = ["Session", "_Code"]
