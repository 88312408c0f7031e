"""The submission handler (RFC 6409): our users' mail apps send through it.

AUTH PLAIN/LOGIN (RFC 4954) over TLS only, checked against the account store in a worker
thread (argon2 is slow on purpose), with growing delays for repeated failures. A user may send
only as an address that delivers to them, in the envelope and in ``From:``. The message gets the
fix-ups of RFC 6409 §8 (Date, Message-ID, no Bcc), a Received header that does not reveal the
client unless configured, and a DKIM signature; local recipients get it in their Maildir,
everyone else through the outbound queue. Each user may send ``[abuse] max_messages_per_hour``
messages to ``max_recipients_per_hour`` recipients an hour (``server/abuse/sending.py``).
"""

from __future__ import annotations

import asyncio
import binascii
import logging
from base64 import b64decode

from aiosmtpd.smtp import AuthResult

from server import accounts as acc
from server.abuse import Guard
from server.addresses import parse_address
from server.authlimit import AuthThrottle, check_password
from server.smtp import headers, replies
from server.smtp.commit import Outgoing
from server.smtp.handler import BaseHandler
from server.smtp.replies import SMTPError, smtp_hook

log = logging.getLogger("mailstead.submission")


class SubmissionHandler(BaseHandler):
    offers_auth = True
    name = "submission"

    def __init__(self, *args, signer, throttle: AuthThrottle, guard: Guard | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.signer = signer
        self.throttle = throttle
        self.guard = guard

    # --- authentication (aiosmtpd calls auth_<MECHANISM>(server, args)) ---

    async def auth_PLAIN(self, server, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = await server.challenge_auth("")
            if not isinstance(blob, bytes):
                return AuthResult(success=False, handled=True)
        else:
            blob = _b64(args[1])
            if blob is None:
                await server.push(str(replies.AUTH_BAD_BASE64))
                return AuthResult(success=False, handled=True)
        parts = blob.split(b"\x00")
        # RFC 4616 §2: [authzid] NUL authcid NUL passwd; acting as someone else is not offered.
        if len(parts) != 3 or (parts[0] and parts[0] != parts[1]):
            await server.push(str(replies.AUTH_BAD_FORMAT))
            return AuthResult(success=False, handled=True)
        return await self._login(server, parts[1], parts[2])

    async def auth_LOGIN(self, server, args: list[str]) -> AuthResult:
        if len(args) == 1:
            login = await server.challenge_auth("Username:")
            if not isinstance(login, bytes):
                return AuthResult(success=False, handled=True)
        else:
            login = _b64(args[1])
            if login is None:
                await server.push(str(replies.AUTH_BAD_BASE64))
                return AuthResult(success=False, handled=True)
        password = await server.challenge_auth("Password:")
        if not isinstance(password, bytes):
            return AuthResult(success=False, handled=True)
        return await self._login(server, login, password)

    async def _login(self, server, login: bytes, password: bytes) -> AuthResult:
        if self.throttle.banned(server.peer_ip):
            # Banned (server/abuse) since it connected: no more guesses on this connection.
            server.close_with(replies.BANNED)
            return AuthResult(success=False, handled=True)
        user = await check_password(
            self.throttle, self.accounts, self.executor, ip=server.peer_ip,
            name=login.decode("utf-8", "replace"), password=password.decode("utf-8", "replace"),
            service=self.name, conn_id=server.conn_id, log=log)
        if user is None:
            return AuthResult(success=False, handled=False)
        log.info("conn=%s auth ok user=%s", server.conn_id, user.address)
        return AuthResult(success=True, auth_data=user)

    # --- envelope ---

    def _user(self, session) -> acc.User:
        return session.auth_data

    def _check_owner(self, user: acc.User, address: str) -> None:
        if not self.accounts.owns(user, address):
            raise SMTPError(replies.NOT_YOUR_ADDRESS,
                            f"{address or '<>'} is not an address of {user.address}")

    @smtp_hook
    async def handle_MAIL(self, server, session, envelope, address: str,
                          mail_options: list[str]) -> str:
        sender = "" if address == "<>" else address
        user = self._user(session)
        self._check_owner(user, sender)
        if self.guard is not None and not self.guard.sending.may_send(user.address):
            log.warning("conn=%s user=%s hourly message limit (%d) reached", server.conn_id,
                        user.address, self.guard.sending.max_messages)
            raise SMTPError(replies.MESSAGE_RATE)
        return self.begin(server, envelope, address, str(parse_address(sender)), mail_options)

    @smtp_hook
    async def handle_RCPT(self, server, session, envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= self.config.smtp.max_recipients:
            raise SMTPError(replies.TOO_MANY_RECIPIENTS)
        user = self._user(session)
        if self.guard is not None and \
                not self.guard.sending.may_add_recipient(user.address, len(envelope.rcpt_tos)):
            log.warning("conn=%s user=%s hourly recipient limit (%d) reached", server.conn_id,
                        user.address, self.guard.sending.max_recipients)
            raise SMTPError(replies.RECIPIENT_RATE)
        addr = self.parse_recipient(address)
        if addr.is_literal:
            raise SMTPError(replies.NO_ADDRESS_LITERALS)
        if self.accounts.is_local_domain(addr.domain):
            self.accept_recipient(envelope, address, self.resolve_local(server, addr))
        elif str(addr) not in envelope.remote:
            envelope.remote.append(str(addr))
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return str(replies.RECIPIENT_OK)

    # --- data ---

    async def store(self, server, session, envelope, data: bytes, txn_id: str) -> replies.Reply:
        user = self._user(session)
        header, _ = headers.split(data)
        senders = headers.addresses(header, "from")
        if not senders:
            raise SMTPError(replies.NO_FROM_HEADER)
        # Every author and sender field a mail reader may show as "from" must be the user's.
        for name in ("from", "sender", "resent-from", "resent-sender"):
            for address in headers.addresses(header, name):
                self._check_owner(user, address)
        message = headers.fix_submission(data, self.config.server.hostname)
        received = await self.received_header(
            server, session, envelope, txn_id, None, auth=True,
            reveal_client=self.config.submission.reveal_client_ip)
        signed = received + message
        domain = parse_address(senders[0]).domain
        signature = await asyncio.get_running_loop().run_in_executor(
            self.executor, self.signer.sign, signed, domain)
        head = signature + received
        heads = {rcpt: head for _, rcpt in envelope.mailboxes.values()}
        deliveries, roots = self.local_deliveries(envelope, heads, message)
        outgoing = None
        if envelope.remote:
            outgoing = Outgoing(envelope.sender, tuple(envelope.remote), (head, message),
                                origin=f"submission {user.address}")
        reply = await self.commit(server, txn_id, deliveries, roots, outgoing)
        if self.guard is not None and reply.code == 250:
            self.guard.sending.sent(user.address, len(envelope.rcpt_tos))
        return reply


def _b64(text: str) -> bytes | None:
    try:
        return b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None
