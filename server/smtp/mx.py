"""The MX receiver's handler: who may get mail here.

Flow of one message (see docs/flow.md): EHLO starts a forward-confirmed reverse lookup of the
client; MAIL checks the sender's syntax; RCPT resolves each recipient through the account store
(users, aliases, catch-all, plus-addressing) and refuses everything that is not ours with 554,
whatever the address trick; DATA (``BaseHandler.handle_DATA``) refuses bare CR/LF (SMTP
smuggling) and mail loops; ``store`` then judges the sender's authentication
(``server/inbound``: SPF, DKIM, DMARC, ARC; DMARC p=reject refused with 550 5.7.1, a verdict
that needs a failed lookup with 451 4.4.3), writes one copy per mailbox (into Junk when the
sender's DMARC policy says so) and queues an ARC-sealed copy for external alias destinations,
durably, before the 250.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re

from maildir import create_folder
from server import accounts as acc
from server.addresses import AddressError
from server.inbound import arc, authresults
from server.inbound.verdict import Verdict, evaluate
from server.smtp import replies
from server.smtp.commit import Outgoing
from server.smtp.handler import BaseHandler, cached_parse_address, declared_size
from server.smtp.replies import SMTPError, smtp_hook

log = logging.getLogger("mailstead.mx")

# Local-part characters that only a relay trick would send to an MX: the percent hack
# (user%remote@us), bang paths (remote!user@us), quoted local parts hiding an address
# ("user@remote"@us) and source-route remnants.
_RELAY_CHARS = set("%!@:")

JUNK = "Junk"  # maildir.DEFAULT_FOLDERS; IMAP announces it as \Junk (RFC 6154)


class MXHandler(BaseHandler):
    name = "mx"
    spam = None  # server.spam.SpamFilter, set by the daemon; None in handler unit tests

    @smtp_hook
    async def handle_MAIL(self, server, session, envelope, address: str,
                          mail_options: list[str]) -> str:
        await self.check_client(server)
        sender = ""
        if address != "<>":
            try:
                sender = str(cached_parse_address(address))
            except AddressError as err:
                raise SMTPError(replies.BAD_SENDER_SYNTAX,
                                f"Sender address malformed: {err}") from None
        return self.begin(server, envelope, address, sender, mail_options)

    @smtp_hook
    async def handle_RCPT(self, server, session, envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= self.config.smtp.max_recipients:
            raise SMTPError(replies.TOO_MANY_RECIPIENTS)
        addr = self.parse_recipient(address)
        if addr.is_literal or _RELAY_CHARS & set(addr.local):
            self._refuse(server, address, "relay trick")
        try:  # says NotLocal itself: no separate lookup of the domain first
            resolution = self.resolve_local(server, addr)
        except acc.NotLocal:
            self._refuse(server, address, "not a local domain")
        declared = declared_size(envelope.mail_options)
        for user in resolution.mailboxes:
            await self.check_quota(user, declared)
        if self.spam is not None:
            refusal = await self.spam.rcpt_check(server.peer_ip, envelope.sender, str(addr))
            if refusal is not None:
                raise SMTPError(refusal)
        self.accept_recipient(envelope, address, resolution)
        if resolution.external and not getattr(envelope, "forwarding_domain", None):
            # The ARC seal on the forwarded copy is made with this domain's DKIM key: the
            # domain of the (first) alias that sends the message on.
            envelope.forwarding_domain = addr.domain
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return str(replies.RECIPIENT_OK)

    @staticmethod
    def _refuse(server, address: str, why: str):
        log.info("conn=%s rcpt=<%s> relay denied (%s)", server.conn_id, address, why)
        raise SMTPError(replies.RELAY_DENIED)

    async def check_client(self, server) -> None:
        """DNSBL (``[spam] dnsbl_zones``), answered at MAIL rather than in the greeting, as
        Postfix's delay-reject does: the client's log then shows which sender was refused.
        Cached per IP by the filter, so every MAIL of a session costs one lookup at most."""
        if self.spam is None:
            return
        refusal = await self.spam.connect_check(server.peer_ip)
        if refusal is not None:
            raise SMTPError(refusal)

    async def store(self, server, session, envelope, data: bytes, txn_id: str) -> replies.Reply:
        verdict = await self.authenticate(server, session, envelope, data, txn_id)
        spam = await self.scan(server, session, envelope, data, txn_id)
        # RFC 8601 §5: an Authentication-Results field claiming to be ours that came with the
        # message is forged; readers and filters would trust it.
        body, _ = authresults.strip_ours(data, self.config.server.hostname)
        users = list(envelope.mailboxes.values())
        if len(users) == 1 and not envelope.remote:
            # With one recipient a full mailbox can refuse the message outright. With several,
            # refusing would make the sender retry (and duplicate) for all the others, so a
            # mailbox accepted at RCPT takes the message and refuses the next one at RCPT.
            await self.check_quota(users[0][0], len(data))
        spam_head = b"".join(spam.headers) if spam is not None else b""
        heads = {}
        for _, rcpt in users:
            if rcpt not in heads:
                heads[rcpt] = await self.received_header(server, session, envelope, txn_id,
                                                         rcpt) + verdict.header + spam_head
        junk = verdict.action == "junk" or (spam is not None and spam.action == "junk")
        folder = JUNK if junk else None
        if folder and users:
            await asyncio.get_running_loop().run_in_executor(
                self.executor, _ensure_folder, [u.maildir for u, _ in users], folder)
        deliveries, roots = self.local_deliveries(envelope, heads, body, folder)
        outgoing = None
        if envelope.remote:
            # Forwarded as received (plus our trace and, with [inbound] arc, an ARC seal): the
            # original DKIM signature stays valid.
            head = await self.received_header(server, session, envelope, txn_id, None)
            head += verdict.header
            seal = await self.seal(server, envelope, verdict, head + body, txn_id)
            outgoing = Outgoing(envelope.sender, tuple(envelope.remote), (seal, head, body),
                                origin=f"forward via {self.config.server.hostname}")
        return await self.commit(server, txn_id, deliveries, roots, outgoing, folder)

    async def scan(self, server, session, envelope, data: bytes, txn_id: str):
        """rspamd's opinion (``[spam] rspamd_url``), or None without rspamd. Never raises
        for rspamd's own trouble: unscanned mail is accepted (the filter says so in a
        header); a spam score over ``reject_score`` is refused with 550 5.7.1."""
        if self.spam is None or self.spam.rspamd is None:
            return None
        result = await self.spam.scan(
            data, ip=server.peer_ip, helo=session.host_name or "", sender=envelope.sender,
            rcpts=list(envelope.rcpt_tos), queue_id=txn_id,
            hostname=await server.reverse_name_task if server.reverse_name_task else None)
        if result.action == "reject":
            raise SMTPError(replies.SPAM_REJECTED)
        return result

    async def authenticate(self, server, session, envelope, data: bytes,
                           txn_id: str) -> Verdict:
        """The sender's SPF/DKIM/DMARC/ARC verdict; raises the reply for reject and tempfail."""
        inbound = self.config.inbound
        if not (inbound.spf or inbound.dkim or inbound.dmarc or inbound.arc):
            return Verdict(header=b"", action="accept", reason="")
        verdict = await evaluate(data, ip=server.peer_ip, helo=session.host_name or "",
                                 mail_from=envelope.sender, config=self.config,
                                 resolver=self.resolver, executor=self.executor)
        log.info("conn=%s id=%s auth %s action=%s%s", server.conn_id, txn_id,
                 verdict.summary(), verdict.action,
                 f" ({verdict.reason})" if verdict.reason else "")
        if verdict.action == "reject":
            raise SMTPError(replies.DMARC_REJECTED, _one_line(verdict.reason))
        if verdict.action == "tempfail":
            raise SMTPError(replies.DNS_TEMPFAIL)
        return verdict

    async def seal(self, server, envelope, verdict: Verdict, message: bytes,
                   txn_id: str) -> bytes:
        """The ARC set for the forwarded copy (RFC 8617 §5.1), or b"" without [inbound] arc.

        A seal that cannot be made (no key for the domain) is logged and the message goes
        unsealed, as it did before ARC: forwarding must not depend on it. An ARC result we
        could not establish (temperror) cannot be sealed truthfully, so that waits for a retry.
        """
        if not self.config.inbound.arc or verdict.arc is None:
            return b""
        if verdict.arc.result == "temperror":
            raise SMTPError(replies.DNS_TEMPFAIL)
        domain = getattr(envelope, "forwarding_domain", None) or self.config.server.hostname
        loop = asyncio.get_running_loop()
        try:
            key = await loop.run_in_executor(self.executor, arc.sealing_key,
                                             self.config.dkim_dir, domain)
            if key is None:
                raise arc.SealError(f"no RSA DKIM key for {domain}")
            return await loop.run_in_executor(self.executor, functools.partial(
                arc.seal, message, authserv_id=self.config.server.hostname, key=key))
        except (arc.SealError, OSError) as err:
            log.warning("conn=%s id=%s forwarded without ARC seal: %s", server.conn_id, txn_id,
                        err)
            return b""


def _ensure_folder(roots: list, folder: str) -> None:
    """Make ``folder`` in each mailbox if the user deleted it (it exists from creation)."""
    for root in roots:
        create_folder(root, folder)


def _one_line(text: str, limit: int = 400) -> str:
    """Reply text from a verdict reason: printable ASCII only (it quotes DNS data)."""
    text = re.sub(r"[^ -~]", "?", text)
    return text if len(text) <= limit else text[:limit - 3] + "..."
