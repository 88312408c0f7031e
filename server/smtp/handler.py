"""What the MX and submission handlers share: greeting, recipient lookup, trace headers,
message checks, quota, and the end of a transaction (commit, log line, reply)."""

from __future__ import annotations

import asyncio
import functools
import logging
from concurrent.futures import Executor

from maildir import Delivery, folder_path, quota
from server import accounts as acc
from server.addresses import Address, AddressError, parse_address
from server.config import Config
from server.dnsresolve import make_resolver, verified_reverse_name
from server.smtp import replies, trace
from server.smtp.commit import Outgoing, commit_or_reply
from server.smtp.handoff import Handoff
from server.smtp.replies import SMTPError, smtp_hook
from server.smtp.reverse import ReverseNames

log = logging.getLogger("mailstead.smtp")

# RFC 5321 §6.3: a message that has passed this many relays is looping.
MAX_HOPS = 100

# The same senders and recipients come again and again (a busy peer, our own users): each
# address is parsed once, not at every MAIL and RCPT. Address is immutable; a malformed one
# raises every time (exceptions are not cached).
cached_parse_address = functools.lru_cache(maxsize=4096)(parse_address)


class BaseHandler:
    offers_auth = False
    name = "smtp"
    # Where ``commit`` runs: a Handoff (the MX workers set one), else ``executor``.
    committer: Handoff | None = None

    def __init__(self, config: Config, accounts: acc.AccountStore, executor: Executor, spool,
                 on_queued=None, on_delivered=None):
        self.config = config
        self.accounts = accounts
        self.executor = executor
        self.spool = spool
        self.on_queued = on_queued or (lambda queue_id: None)
        # Told which mailboxes got a message, so IMAP sessions in IDLE hear of it at once.
        self.on_delivered = on_delivered or (lambda addresses, folder="INBOX": None)
        self.resolver = make_resolver(config.dns, cache=True)
        self.reverse_names = ReverseNames(lambda ip: verified_reverse_name(self.resolver, ip))

    def update_config(self, config: Config) -> None:
        self.config = config
        self.resolver = make_resolver(config.dns, cache=True)
        self.reverse_names.names.clear()  # perhaps other name servers now

    # --- greeting ---

    def _start_reverse_lookup(self, server) -> None:
        if server.reverse_name_task is None:
            server.reverse_name_task = self.reverse_names.start(server.peer_ip)

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
                    if r[4:] != "HELP" and (self.offers_auth or not r[4:].startswith("AUTH"))]
        keywords += ["PIPELINING", "ENHANCEDSTATUSCODES"]
        lines = [f"250-{self.config.server.hostname}"]
        lines += [f"250-{k}" for k in keywords[:-1]]
        lines.append(f"250 {keywords[-1]}")
        return lines

    # --- envelope ---

    @staticmethod
    def begin(server, envelope, address: str, sender: str, mail_options: list[str]) -> str:
        """Accept MAIL FROM: ``sender`` is the normalised reverse-path ("" for <>)."""
        envelope.sender = sender
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        server.transactions += 1
        return str(replies.SENDER_OK)

    def parse_recipient(self, address: str) -> Address:
        # RFC 5321 §4.1.1.3: "Postmaster" without a domain must be accepted.
        if address == "Postmaster":
            domains = self.accounts.list_domains()
            address = f"postmaster@{domains[0]}" if domains else address
        try:
            return cached_parse_address(address)
        except AddressError as err:
            raise SMTPError(replies.BAD_RECIPIENT_SYNTAX,
                            f"Recipient address malformed: {err}") from None

    def resolve_local(self, server, addr: Address) -> acc.Resolution:
        """Resolve an address of a local domain, or answer as a final recipient must."""
        try:
            return self.accounts.resolve(addr)
        except acc.MailboxDisabled:
            raise SMTPError(replies.MAILBOX_DISABLED) from None
        except acc.UnknownRecipient:
            log.info("conn=%s rcpt=<%s> unknown user", server.conn_id, addr)
            raise SMTPError(replies.UNKNOWN_USER) from None
        except acc.AliasLoop:
            log.warning("conn=%s rcpt=<%s> alias chain too deep", server.conn_id, addr)
            raise SMTPError(replies.TOO_MANY_HOPS, "Alias chain too deep") from None

    def accept_recipient(self, envelope, address: str, resolution: acc.Resolution) -> None:
        for user in resolution.mailboxes:
            envelope.mailboxes.setdefault(user.id, (user, address))
        for dest in resolution.external:
            if dest not in envelope.remote:
                envelope.remote.append(dest)

    async def check_quota(self, user: acc.User, size: int) -> None:
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
            if trace.has_bare_line_end(data):
                raise SMTPError(replies.BARE_LINE_END)
            if trace.count_received(data, MAX_HOPS) > MAX_HOPS:
                raise SMTPError(replies.TOO_MANY_HOPS)
            reply = await self.store(server, session, envelope, data, txn_id)
        except SMTPError as err:
            reply = err.reply
        finally:
            log.info("conn=%s id=%s %s client=[%s] from=<%s> rcpts=%d mailboxes=%d remote=%d "
                     "size=%d result=%s", server.conn_id, txn_id, self.name, server.peer_ip,
                     envelope.sender,
                     len(envelope.rcpt_tos), len(envelope.mailboxes), len(envelope.remote),
                     len(data), f"{reply.code} {reply.enhanced}")
        return str(reply)

    async def store(self, server, session, envelope, data: bytes, txn_id: str) -> replies.Reply:
        raise NotImplementedError

    async def commit(self, server, txn_id: str, deliveries: list[Delivery],
                     quota_roots: list, outgoing: Outgoing | None,
                     folder: str | None = None) -> replies.Reply:
        server.delivering = True
        try:
            queue_id = await commit_or_reply(
                self.committer or self.executor, deliveries, quota_roots, outgoing, self.spool,
                self.config.server.hostname, server.conn_id, txn_id)
        finally:
            server.delivering = False
        if deliveries:
            self.on_delivered([user.address for user, _ in server.envelope.mailboxes.values()],
                              folder or "INBOX")
        if queue_id is not None:
            self.on_queued(queue_id)
            return replies.DELIVERED.with_text(f"Ok: queued as {queue_id}")
        return replies.DELIVERED.with_text(f"Ok: delivered as {txn_id}")

    async def received_header(self, server, session, envelope, txn_id: str,
                              recipient: str | None, *, reveal_client: bool = True,
                              auth: bool = False) -> bytes:
        cipher = server.tls_cipher()
        tls_info = f"using {cipher[1]} with cipher {cipher[0]}, {cipher[2]} bits" if cipher \
            else None
        protocol = trace.protocol_keyword(esmtp=session.extended_smtp, tls=cipher is not None,
                                          auth=auth, utf8=envelope.smtp_utf8)
        by = self.config.server.hostname
        if not reveal_client:
            return trace.received_by(by=by, protocol=protocol, txn_id=txn_id,
                                     recipient=recipient)
        reverse_name = None
        if server.reverse_name_task is not None:
            reverse_name = await server.reverse_name_task
        return trace.received(helo=session.host_name or "unknown", reverse_name=reverse_name,
                              ip=server.peer_ip, by=by, protocol=protocol, txn_id=txn_id,
                              recipient=recipient, tls_info=tls_info)

    @staticmethod
    def local_deliveries(envelope, heads: dict[str, bytes], body: bytes,
                         folder: str | None = None) -> tuple[list, list]:
        """One Delivery per mailbox: Return-Path, Delivered-To, ``heads[rcpt]``, then ``body``;
        and the quota roots to count them against. ``folder`` (say "Junk") instead of the
        INBOX; the quota root stays the mailbox (Maildir++ counts every folder)."""
        deliveries, roots = [], []
        for user, rcpt in envelope.mailboxes.values():
            trace_head = trace.return_path(envelope.sender) + trace.delivered_to(user.address)
            target = folder_path(user.maildir, folder) if folder else user.maildir
            deliveries.append(Delivery(target, (trace_head + heads[rcpt], body)))
            roots.append(user.maildir if user.quota_bytes else None)
        return deliveries, roots

    async def handle_exception(self, error: Exception) -> str:
        log.error("unexpected SMTP error", exc_info=error)
        return str(replies.LOCAL_ERROR)


def declared_size(mail_options: list[str]) -> int:
    for opt in mail_options:
        if opt.startswith("SIZE="):
            value = opt[5:]
            return int(value) if value.isdigit() else 0
    return 0
