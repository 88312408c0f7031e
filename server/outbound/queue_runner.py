"""The outbound queue runner: takes messages from the spool to their destinations.

Up to ``[outbound] workers`` messages are attempted at once. A message's pending recipients are
grouped by domain (one SMTP transaction per domain; all together through a smarthost); local
domains go straight to their Maildirs. Each group's results are saved to the envelope as soon
as they are known — for a remote transaction right after the reply to the final dot, before
QUIT — so a ``kill -9`` re-sends only a transaction whose 250 was not saved yet (RFC 1047). If
saving fails (a full disk), the results are kept in memory and the message is never sent again
to a recipient that has it. A permanent failure is first recorded as a report owed to the
sender, then the report is queued, then the debt is cleared: a crash can duplicate a report,
never lose one. Never a report for a report or for the null sender.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import Executor

from maildir import Delivery
from server import accounts as acc
from server.addresses import AddressError, parse_address
from server.config import Config
from server.dnsresolve import make_resolver
from server.outbound import client
from server.outbound.conncache import ConnectionCache
from server.outbound.route import MXHost, RouteError, mx_hosts
from server.queue import dsn, schedule
from server.queue.spool import (
    DELIVERED,
    FAILED,
    CorruptEnvelopeError,
    QueuedMessage,
    Recipient,
    Spool,
    domain_of,
)
from server.smtp import trace
from server.smtp.commit import deliver_and_count

log = logging.getLogger("mailstead.queue")

RELAY = "*relay*"  # the group key for everything that leaves through the smarthost


class OutboundQueue:
    def __init__(self, config: Config, accounts: acc.AccountStore, spool: Spool,
                 executor: Executor, mtasts=None, signer=None, on_delivered=None):
        self.accounts = accounts
        self.spool = spool
        self.executor = executor
        self.mtasts = mtasts
        self.signer = signer
        self.on_delivered = on_delivered or (lambda addresses: None)
        self.due: dict[str, float] = {}  # queue id -> next attempt (time.time())
        self.in_flight: set[str] = set()
        self.unsaved: dict[str, QueuedMessage] = {}  # results the disk would not take yet
        self.errors: dict[str, int] = {}  # unexpected failures per id, for back-off
        self._wakeup = asyncio.Event()
        self._attempts: set[asyncio.Task] = set()
        self._main: asyncio.Task | None = None
        # Open connections kept a few seconds for the next message to the same host.
        self.connections = ConnectionCache()
        self.update_config(config)

    def update_config(self, config: Config) -> None:
        self.config = config
        self.resolver = make_resolver(config.dns, cache=True)
        self.loose_tls, self.strict_tls = client.tls_contexts(config.outbound.ca_file)

    # --- scheduling ---

    def wake(self, queue_id: str | None = None) -> None:
        """A new message (or a flush): look at the queue now."""
        if queue_id is not None:
            self.due[queue_id] = 0.0
        self._wakeup.set()

    async def load(self) -> None:
        for msg in await self._io(self.spool.load_all):
            # A crash between saving the last results and removing the entry leaves one with
            # nothing left to do but a next_attempt in the future: finish it now, not then.
            self.due[msg.id] = 0.0 if msg.done() else msg.next_attempt
        if self.due:
            log.info("queue: %d message(s) waiting", len(self.due))

    async def flush(self) -> None:
        """Retry everything now (``mailstead queue flush`` sends SIGUSR1)."""
        for msg in await self._io(self.spool.list):
            self.due[msg.id] = 0.0
        self._wakeup.set()

    def start(self) -> None:
        self._main = asyncio.create_task(self.run())

    async def stop(self, grace: float) -> None:
        """Start nothing new; let attempts in progress finish for up to ``grace`` seconds.
        One cut off is sent again after the restart (its results were not saved yet)."""
        if self._main is None:
            return
        self._main.cancel()
        await asyncio.gather(self._main, return_exceptions=True)
        if self._attempts:
            _, late = await asyncio.wait(self._attempts, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self.connections.close()

    async def run(self) -> None:
        await self.load()
        while True:
            now = time.time()
            free = self.config.outbound.workers - len(self.in_flight)
            waiting = [(when, qid) for qid, when in self.due.items() if qid not in self.in_flight]
            waiting.sort()
            for when, qid in waiting[:max(free, 0)]:
                if when > now:
                    break
                self.in_flight.add(qid)
                task = asyncio.create_task(self._attempt_guarded(qid))
                self._attempts.add(task)
                task.add_done_callback(self._attempts.discard)
            timeout = None
            rest = [w for w, q in waiting if q not in self.in_flight]
            if rest and len(self.in_flight) < self.config.outbound.workers:
                timeout = max(0.05, rest[0] - time.time())
            # A finishing attempt, a new message or a flush sets the event; otherwise sleep
            # until the next message is due (or for ever while every worker is busy).
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    async def _attempt_guarded(self, qid: str) -> None:
        try:
            await self.attempt(qid)
            self.errors.pop(qid, None)
        except Exception:
            count = self.errors[qid] = self.errors.get(qid, 0) + 1
            log.exception("queue: attempt for %s failed unexpectedly", qid)
            self.due[qid] = time.time() + schedule.next_delay(count)
        finally:
            self.in_flight.discard(qid)
            self._wakeup.set()

    async def _io(self, func, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, func, *args)

    async def _save(self, msg: QueuedMessage) -> None:
        try:
            await self._io(self.spool.save, msg)
            self.unsaved.pop(msg.id, None)
        except KeyError:
            raise  # deleted meanwhile: the caller drops it
        except OSError as err:
            # What was delivered must not be delivered again: keep the results in memory
            # and the message in the schedule; the next attempt saves them first.
            self.unsaved[msg.id] = msg
            log.error("queue: cannot save the state of %s (%s); kept in memory", msg.id, err)

    # --- one attempt ---

    async def attempt(self, qid: str) -> None:
        try:
            msg = self.unsaved.get(qid) or await self._io(self.spool.get, qid)
            data = await self._io(self.spool.read_message, qid)
            if qid in self.unsaved:
                await self._save(msg)
        except KeyError:
            self._forget(qid)  # deleted meanwhile (mailstead queue delete)
            return
        except CorruptEnvelopeError as err:
            log.error("queue: %s is unreadable (%s); left for inspection, set aside at the "
                      "next start", qid, err)
            self._forget(qid)
            return
        try:
            await self._attempt(msg, data)
        except KeyError:
            self._forget(qid)

    def _forget(self, qid: str) -> None:
        self.due.pop(qid, None)
        self.unsaved.pop(qid, None)

    async def _attempt(self, msg: QueuedMessage, data: bytes) -> None:
        now = time.time()
        if schedule.is_expired(msg, now, self.config.outbound.expiry):
            days = self.config.outbound.expiry / 86400
            for rcpt in msg.pending():
                rcpt.status, rcpt.bounce_owed = FAILED, True
                rcpt.last_error = (f"4.4.7 Gave up after {days:g} days; last error: "
                                   f"{rcpt.last_error or 'none'}")
                rcpt.last_code = 0  # our verdict, not a reply from the remote
        elif msg.pending():
            await self._deliver_groups(msg, data, now)
            msg.attempts += 1
            msg.next_attempt = now + schedule.next_delay(msg.attempts)
        await self._save(msg)
        await self._report(msg, data, now)
        if msg.done():
            await self._io(self.spool.remove, msg.id)
            self._forget(msg.id)
            log.info("queue: %s done (%s)", msg.id, ", ".join(
                f"{r.address} {r.status}" for r in msg.recipients))
        else:
            self.due[msg.id] = msg.next_attempt

    async def _deliver_groups(self, msg: QueuedMessage, data: bytes, now: float) -> None:
        """All domains at once; each group's results saved as soon as they are known (for a
        remote group: after the reply to the final dot, before QUIT)."""
        saving = asyncio.Lock()  # one save at a time, so the last one written has everything
        recorded: set[int] = set()  # id() of the recipients whose outcome is applied

        async def record(rcpts: list[Recipient], outcomes: dict[str, client.Outcome]) -> None:
            fresh = [r for r in rcpts if id(r) not in recorded]
            for rcpt in fresh:
                recorded.add(id(rcpt))
                self._apply(rcpt, outcomes[rcpt.address], now)
            if fresh:
                async with saving:
                    await self._save(msg)

        async def deliver(domain: str, rcpts: list[Recipient]) -> None:
            try:
                outcomes = await self._deliver_group(msg, data, domain, rcpts, record)
            except client.RecordFailed as err:
                if isinstance(err.__cause__, KeyError):
                    raise err.__cause__ from None  # deleted meanwhile: attempt() drops it
                raise
            await record(rcpts, outcomes)

        groups = self._groups(msg)
        tasks = [asyncio.create_task(deliver(domain, rcpts)) for domain, rcpts in groups.items()]
        try:
            failures = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for task in tasks:
                task.cancel()
        for rcpts, failure in zip(groups.values(), failures, strict=True):
            if isinstance(failure, KeyError):
                raise failure
            if isinstance(failure, BaseException):
                # One group's bug must not cost the others their results; what this one
                # recorded before it failed stands, the rest is tried again.
                log.error("queue: a delivery group of %s failed", msg.id, exc_info=failure)
                await record(rcpts, {r.address: client.Outcome(
                    451, "4.3.0 Internal error, will retry") for r in rcpts})

    async def _report(self, msg: QueuedMessage, data: bytes, now: float) -> None:
        """Queue the failure report owed and any delay warning due, then record that."""
        failed = [r for r in msg.recipients if r.bounce_owed]
        delay_after = self.config.outbound.delay_warning or None
        delayed = schedule.needs_delay_warning(msg, now, delay_after)
        if not dsn.should_bounce(msg):
            for rcpt in failed:
                rcpt.bounce_owed = False  # nobody to tell: the null sender or our own report
            if failed:
                await self._save(msg)
            return
        if not failed and not delayed:
            return
        await self._bounce(msg, data, failed, delayed)
        for rcpt in failed:
            rcpt.bounce_owed = False
        for rcpt in delayed:
            rcpt.dsn_sent = True
        await self._save(msg)

    def _groups(self, msg: QueuedMessage) -> dict[str, list[Recipient]]:
        groups: dict[str, list[Recipient]] = {}
        relay = self.config.outbound.relay
        for rcpt in msg.pending():
            domain = domain_of(rcpt.address)
            if relay is not None and not self.accounts.is_local_domain(domain):
                domain = RELAY
            groups.setdefault(domain, []).append(rcpt)
        return groups

    @staticmethod
    def _apply(rcpt: Recipient, outcome: client.Outcome, now: float) -> None:
        rcpt.attempts += 1
        rcpt.last_attempt = now
        rcpt.remote_mta = outcome.remote
        if outcome.ok:
            rcpt.status = DELIVERED
            rcpt.delivered_at = now
            rcpt.last_error, rcpt.last_code = "", outcome.code
            log.info("queue: delivered to %s via %s: %s", rcpt.address, outcome.remote or "local",
                     outcome.reply())
            return
        rcpt.last_error, rcpt.last_code = outcome.reply(), outcome.code
        log.info("queue: %s to %s: %s", "failed" if outcome.permanent else "deferred",
                 rcpt.address, outcome.reply())
        if outcome.permanent:
            rcpt.status, rcpt.bounce_owed = FAILED, True

    async def _deliver_group(self, msg: QueuedMessage, data: bytes, domain: str,
                             rcpts: list[Recipient], record) -> dict[str, client.Outcome]:
        """The outcome per address; a remote transaction also hands them to ``record``
        before its QUIT, so a crash after the remote's 250 re-sends as little as it can."""
        addresses = [r.address for r in rcpts]
        if domain != RELAY and self.accounts.is_local_domain(domain):
            return await self._deliver_local(msg, data, addresses)
        out = self.config.outbound
        txn = client.Transaction(sender=msg.sender, recipients=addresses, message=data,
                                 helo=self.config.server.hostname, port=out.mx_port,
                                 connect_timeout=out.connect_timeout, tls=self.loose_tls,
                                 on_result=lambda outcomes: record(rcpts, outcomes),
                                 cache=self.connections)
        if domain == RELAY:
            relay = out.relay
            txn.port, txn.tls = relay.port, self.strict_tls
            txn.implicit_tls = out.relay_tls == "tls"
            txn.username, txn.password = out.relay_username, out.relay_password
            hosts = [MXHost(relay.host, 0, (relay.host,))]
        else:
            try:
                hosts = await mx_hosts(self.resolver, domain)
            except RouteError as err:
                code = 550 if err.permanent else 451
                return {a: client.Outcome(code, f"{err.enhanced} {err}") for a in addresses}
            hosts, txn.tls, refusal = await self._apply_mta_sts(domain, hosts)
            if refusal is not None:
                return {a: refusal for a in addresses}
        return await client.send(hosts, txn)

    async def _apply_mta_sts(self, domain: str, hosts: list[MXHost]):
        if self.mtasts is None:
            return hosts, self.loose_tls, None
        policy = await self.mtasts.policy(domain)
        if policy is None or policy.mode != "enforce":
            if policy is not None and policy.mode == "testing":
                log.info("queue: MTA-STS testing policy for %s (not enforced)", domain)
            return hosts, self.loose_tls, None
        # RFC 8461 §4.1-4.2: only MX hosts the policy names, and only over verified TLS.
        allowed = [h for h in hosts if policy.matches(h.name)]
        if not allowed:
            return [], self.strict_tls, client.Outcome(
                451, f"4.7.5 No MX host of {domain} matches its MTA-STS policy")
        return allowed, self.strict_tls, None

    async def _deliver_local(self, msg: QueuedMessage, data: bytes,
                             addresses: list[str]) -> dict[str, client.Outcome]:
        """Queued mail for our own domains (reports, mostly) goes straight to the Maildirs."""
        results: dict[str, client.Outcome] = {}
        deliveries, roots, delivered_to, users = [], [], [], []
        for address in addresses:
            try:
                mailboxes = self.accounts.resolve(parse_address(address)).mailboxes
            except (AddressError, acc.AccountError) as err:
                mailboxes, reason = (), str(err)
            else:
                reason = "no local mailbox"
            if not mailboxes:
                # Alias expansion happened when the message was accepted; what is left
                # here must be a mailbox, or it has nowhere to go.
                results[address] = client.Outcome(550, f"5.1.1 {address}: {reason}")
                continue
            for user in mailboxes:
                head = trace.return_path(msg.sender) + trace.delivered_to(user.address)
                deliveries.append(Delivery(user.maildir, (head, data)))
                roots.append(user.maildir if user.quota_bytes else None)
                users.append(user.address)
            delivered_to.append(address)
        if deliveries:
            try:
                await self._io(deliver_and_count, deliveries, roots, self.config.server.hostname)
            except OSError as err:
                for address in delivered_to:
                    results[address] = client.Outcome(451, f"4.3.0 Local delivery failed: {err}")
                return results
        for address in delivered_to:
            results[address] = client.Outcome(250, "2.0.0 Delivered locally")
        self.on_delivered(users)
        return results

    async def _bounce(self, msg: QueuedMessage, data: bytes, failed: list[Recipient],
                      delayed: list[Recipient]) -> None:
        hostname = self.config.server.hostname
        sender_domain = domain_of(msg.sender)
        domain = sender_domain if self.accounts.is_local_domain(sender_domain) else None
        domain = domain or next(iter(self.accounts.list_domains()), hostname)
        postmaster = f"postmaster@{domain}"
        report = dsn.build_dsn(reporting_mta=hostname, postmaster=postmaster, original=data,
                               sender=msg.sender, failed=failed, delayed=delayed,
                               arrival=msg.created, message_id_domain=hostname,
                               retry_until=msg.created + self.config.outbound.expiry)
        if self.signer is not None:
            # Signed like our users' mail, so the report passes DMARC where it lands.
            report = await self._io(self.signer.sign, report, domain) + report
        # RFC 5321 §4.5.5: reports go out with the null reverse-path, so they never loop.
        queued = await self._io(lambda: self.spool.add("", [msg.sender], (report,),
                                                       origin=f"report for {msg.id}",
                                                       is_dsn=True))
        log.info("queue: %s report %s for %s to <%s>", "failure" if failed else "delay",
                 queued.id, msg.id, msg.sender)
        self.wake(queued.id)
