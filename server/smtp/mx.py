"""The MX receiver's handler: who may get mail here, and safe delivery into the Maildirs.

Flow of one message (see docs/flow.md): EHLO starts a forward-confirmed reverse lookup of the
client; MAIL checks the sender's syntax; RCPT resolves each recipient through the account store
(users, aliases, catch-all, plus-addressing) and refuses everything that is not ours with 554,
whatever the address trick; DATA refuses bare CR/LF (SMTP smuggling) and mail loops, then writes
one copy per mailbox in a worker thread with ``maildir.deliver`` (all-or-nothing, fsynced) and
only then answers 250.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from concurrent.futures import Executor
from pathlib import Path

from maildir import Delivery, DeliveryError, deliver, quota
from server import accounts as acc
from server.addresses import AddressError, parse_address
from server.config import Config
from server.dnsresolve import make_resolver, verified_reverse_name
from server.smtp import replies, trace
from server.smtp.replies import SMTPError, smtp_hook

log = logging.getLogger("mailstead.mx")

# RFC 5321 §6.3: a message that has passed this many relays is looping.
MAX_HOPS = 100
# Local-part characters that only a relay trick would send to an MX: the percent hack
# (user%remote@us), bang paths (remote!user@us), quoted local parts hiding an address
# ("user@remote"@us) and source-route remnants.
_RELAY_CHARS = set("%!@:")


class MXHandler:
    def __init__(self, config: Config, accounts: acc.AccountStore, executor: Executor):
        self.config = config
        self.accounts = accounts
        self.resolver = make_resolver(config.dns)
        self.executor = executor

    def update_config(self, config: Config) -> None:
        self.config = config
        self.resolver = make_resolver(config.dns)

    # --- greeting ---

    def _start_reverse_lookup(self, server) -> None:
        if server.reverse_name_task is None:
            server.reverse_name_task = asyncio.ensure_future(
                verified_reverse_name(self.resolver, server.peer_ip))

    @smtp_hook
    async def handle_HELO(self, server, session, envelope, hostname: str) -> str:
        session.host_name = hostname
        self._start_reverse_lookup(server)
        return f"250 {self.config.server.hostname}"

    async def handle_EHLO(self, server, session, envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        self._start_reverse_lookup(server)
        keywords = [r[4:] for r in responses[1:]
                    if not r[4:].startswith("AUTH") and r[4:] != "HELP"]
        keywords += ["PIPELINING", "ENHANCEDSTATUSCODES"]
        lines = [f"250-{self.config.server.hostname}"]
        lines += [f"250-{k}" for k in keywords[:-1]]
        lines.append(f"250 {keywords[-1]}")
        return lines

    # --- envelope ---

    @smtp_hook
    async def handle_MAIL(self, server, session, envelope, address: str,
                          mail_options: list[str]) -> str:
        if address == "<>":
            envelope.sender = ""
        else:
            try:
                envelope.sender = str(parse_address(address))
            except AddressError as err:
                raise SMTPError(replies.BAD_SENDER_SYNTAX,
                               f"Sender address malformed: {err}") from None
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        server.transactions += 1
        return str(replies.SENDER_OK)

    @smtp_hook
    async def handle_RCPT(self, server, session, envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= self.config.smtp.max_recipients:
            raise SMTPError(replies.TOO_MANY_RECIPIENTS)
        resolution = self._resolve(server, address)
        if resolution.external:
            # External alias destinations need the outbound queue; a temporary failure makes
            # the sending server keep the message and retry, so nothing is lost meanwhile.
            raise SMTPError(replies.NO_FORWARDING_YET)
        declared = _declared_size(envelope.mail_options)
        for user in resolution.mailboxes:
            await self._check_quota(user, declared)
        for user in resolution.mailboxes:
            envelope.mailboxes.setdefault(user.id, (user, address))
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return str(replies.RECIPIENT_OK)

    def _resolve(self, server, address: str) -> acc.Resolution:
        # RFC 5321 §4.1.1.3: "Postmaster" without a domain must be accepted.
        if address.lower() == "postmaster":
            domains = self.accounts.list_domains()
            address = f"postmaster@{domains[0]}" if domains else address
        try:
            addr = parse_address(address)
        except AddressError as err:
            raise SMTPError(replies.BAD_RECIPIENT_SYNTAX,
                           f"Recipient address malformed: {err}") from None
        if addr.is_literal or _RELAY_CHARS & set(addr.local):
            self._refuse(server, address, "relay trick")
        try:
            return self.accounts.resolve(addr)
        except acc.NotLocal:
            self._refuse(server, address, "not a local domain")
        except acc.MailboxDisabled:
            raise SMTPError(replies.MAILBOX_DISABLED) from None
        except acc.UnknownRecipient:
            log.info("conn=%s rcpt=<%s> unknown user", server.conn_id, address)
            raise SMTPError(replies.UNKNOWN_USER) from None
        except acc.AliasLoop:
            log.warning("conn=%s rcpt=<%s> alias chain too deep", server.conn_id, address)
            raise SMTPError(replies.TOO_MANY_HOPS, "Alias chain too deep") from None

    @staticmethod
    def _refuse(server, address: str, why: str):
        log.info("conn=%s rcpt=<%s> relay denied (%s)", server.conn_id, address, why)
        raise SMTPError(replies.RELAY_DENIED)

    async def _check_quota(self, user: acc.User, size: int) -> None:
        if not user.quota_bytes:
            return
        loop = asyncio.get_running_loop()
        used, _ = await loop.run_in_executor(self.executor, quota.usage, user.maildir,
                                             user.quota_bytes)
        if used + size > user.quota_bytes:
            raise SMTPError(replies.MAILBOX_FULL)

    # --- data ---

    @smtp_hook
    async def handle_DATA(self, server, session, envelope) -> str:
        data: bytes = envelope.original_content
        txn_id = f"{server.conn_id}.{server.transactions}"
        reply = replies.LOCAL_ERROR
        try:
            reply = await self._deliver(server, session, envelope, data, txn_id)
        except SMTPError as err:
            reply = err.reply
        finally:
            log.info("conn=%s id=%s from=<%s> rcpts=%d mailboxes=%d size=%d result=%s",
                     server.conn_id, txn_id, envelope.sender, len(envelope.rcpt_tos),
                     len(envelope.mailboxes), len(data), f"{reply.code} {reply.enhanced}")
        return str(reply)

    async def _deliver(self, server, session, envelope, data: bytes,
                       txn_id: str) -> replies.Reply:
        if trace.has_bare_line_end(data):
            raise SMTPError(replies.BARE_LINE_END)
        if trace.count_received(data, MAX_HOPS) > MAX_HOPS:
            raise SMTPError(replies.TOO_MANY_HOPS)
        users = list(envelope.mailboxes.values())
        if len(users) == 1:
            # With one recipient a full mailbox can refuse the message outright. With several,
            # refusing would make the sender retry (and duplicate) for all the others, so a
            # mailbox accepted at RCPT takes the message and refuses the next one at RCPT.
            await self._check_quota(users[0][0], len(data))
        received_args = self._received_args(server, session, envelope, txn_id)
        if server.reverse_name_task is not None:
            received_args["reverse_name"] = await server.reverse_name_task
        deliveries = []
        for user, rcpt in users:
            head = (trace.return_path(envelope.sender) + trace.delivered_to(user.address)
                    + trace.received(recipient=rcpt, **received_args))
            deliveries.append(Delivery(user.maildir, (head, data)))
        quota_roots = [user.maildir if user.quota_bytes else None for user, _ in users]
        loop = asyncio.get_running_loop()
        server.delivering = True
        try:
            await loop.run_in_executor(self.executor, deliver_and_count, deliveries,
                                       quota_roots, self.config.server.hostname)
        except DeliveryError as err:
            code = err.errno or getattr(err.__cause__, "errno", None)
            log.error("conn=%s id=%s delivery failed: %s", server.conn_id, txn_id, err)
            if code in (errno.ENOSPC, errno.EDQUOT):
                raise SMTPError(replies.INSUFFICIENT_STORAGE) from None
            raise SMTPError(replies.LOCAL_ERROR) from None
        finally:
            server.delivering = False
        return replies.DELIVERED.with_text(f"Ok: delivered as {txn_id}")

    def _received_args(self, server, session, envelope, txn_id: str) -> dict:
        tls_info = None
        if session.ssl:
            cipher = session.ssl.get("cipher")
            if cipher:
                tls_info = f"using {cipher[1]} with cipher {cipher[0]}, {cipher[2]} bits"
        protocol = trace.protocol_keyword(esmtp=session.extended_smtp, tls=bool(session.ssl),
                                          auth=False, utf8=envelope.smtp_utf8)
        return dict(helo=session.host_name or "unknown", reverse_name=None, ip=server.peer_ip,
                    by=self.config.server.hostname, protocol=protocol, txn_id=txn_id,
                    tls_info=tls_info)

    async def handle_exception(self, error: Exception) -> str:
        log.error("unexpected SMTP error", exc_info=error)
        return str(replies.LOCAL_ERROR)


def deliver_and_count(deliveries: list[Delivery], quota_roots: list[Path | None],
                      hostname: str) -> None:
    """Deliver every copy (all or nothing), then add each to its mailbox's quota usage.

    Runs in a worker thread. Once ``deliver`` returns the message is stored, so nothing after
    it may fail the transaction: a 451 now would make the sender retry and duplicate it.
    ``maildirsize`` is only a cache, recalculated when it looks wrong.
    """
    deliver(deliveries, hostname)
    for delivery, root in zip(deliveries, quota_roots, strict=True):
        if root is not None:
            try:
                quota.record(root, sum(len(c) for c in delivery.chunks), 1)
            except OSError as err:
                log.warning("quota usage of %s not updated (%s); invalidating it", root, err)
                with contextlib.suppress(OSError):
                    quota.invalidate(root)


def _declared_size(mail_options: list[str]) -> int:
    for opt in mail_options:
        if opt.startswith("SIZE="):
            value = opt[5:]
            return int(value) if value.isdigit() else 0
    return 0
