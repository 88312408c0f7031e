"""The MX receiver's handler: who may get mail here.

Flow of one message (see docs/flow.md): EHLO starts a forward-confirmed reverse lookup of the
client; MAIL checks the sender's syntax; RCPT resolves each recipient through the account store
(users, aliases, catch-all, plus-addressing) and refuses everything that is not ours with 554,
whatever the address trick; DATA (``BaseHandler.handle_DATA``) refuses bare CR/LF (SMTP
smuggling) and mail loops, then ``store`` writes one copy per mailbox and queues the copy for
external alias destinations, durably, before the 250.
"""

from __future__ import annotations

import logging

from server.addresses import AddressError, parse_address
from server.smtp import replies
from server.smtp.commit import Outgoing
from server.smtp.handler import BaseHandler, declared_size
from server.smtp.replies import SMTPError, smtp_hook

log = logging.getLogger("mailstead.mx")

# Local-part characters that only a relay trick would send to an MX: the percent hack
# (user%remote@us), bang paths (remote!user@us), quoted local parts hiding an address
# ("user@remote"@us) and source-route remnants.
_RELAY_CHARS = set("%!@:")


class MXHandler(BaseHandler):
    name = "mx"

    @smtp_hook
    async def handle_MAIL(self, server, session, envelope, address: str,
                          mail_options: list[str]) -> str:
        sender = ""
        if address != "<>":
            try:
                sender = str(parse_address(address))
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
        if not self.accounts.is_local_domain(addr.domain):
            self._refuse(server, address, "not a local domain")
        resolution = self.resolve_local(server, addr)
        declared = declared_size(envelope.mail_options)
        for user in resolution.mailboxes:
            await self.check_quota(user, declared)
        self.accept_recipient(envelope, address, resolution)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return str(replies.RECIPIENT_OK)

    @staticmethod
    def _refuse(server, address: str, why: str):
        log.info("conn=%s rcpt=<%s> relay denied (%s)", server.conn_id, address, why)
        raise SMTPError(replies.RELAY_DENIED)

    async def store(self, server, session, envelope, data: bytes, txn_id: str) -> replies.Reply:
        users = list(envelope.mailboxes.values())
        if len(users) == 1 and not envelope.remote:
            # With one recipient a full mailbox can refuse the message outright. With several,
            # refusing would make the sender retry (and duplicate) for all the others, so a
            # mailbox accepted at RCPT takes the message and refuses the next one at RCPT.
            await self.check_quota(users[0][0], len(data))
        heads = {}
        for _, rcpt in users:
            if rcpt not in heads:
                heads[rcpt] = await self.received_header(server, session, envelope, txn_id, rcpt)
        deliveries, roots = self.local_deliveries(envelope, heads, data)
        outgoing = None
        if envelope.remote:
            # Forwarded as received (plus our trace): the original DKIM signature stays valid.
            head = await self.received_header(server, session, envelope, txn_id, None)
            outgoing = Outgoing(envelope.sender, tuple(envelope.remote), (head, data),
                                origin=f"forward via {self.config.server.hostname}")
        return await self.commit(server, txn_id, deliveries, roots, outgoing)

