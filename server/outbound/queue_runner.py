"""The outbound queue runner: takes messages from the spool to their destinations.

Every due message is attempted by one of ``[outbound] workers`` tasks: its pending recipients
are grouped by domain (one SMTP transaction per domain; all together through a smarthost),
local domains are delivered to their Maildirs directly, the others to their MX hosts. After each
attempt the envelope is saved before anything else happens, so a ``kill -9`` re-sends at most
the one transaction that was in flight. Permanent failures and expiry produce a DSN to the
sender (never for a bounce); temporary ones are retried on ``server.queue.schedule``.
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
from server.outbound.route import MXHost, RouteError, mx_hosts
from server.queue import dsn, schedule
from server.queue.spool import DELIVERED, FAILED, QueuedMessage, Recipient, Spool, domain_of
from server.smtp import trace
from server.smtp.commit import deliver_and_count

log = logging.getLogger("mailstead.queue")


class OutboundQueue:
    def __init__(self, config: Config, accounts: acc.AccountStore, spool: Spool,
                 executor: Executor, mtasts=None):
        self.accounts = accounts
        self.spool = spool
        self.executor = executor
        self.mtasts = mtasts
        self.due: dict[str, float] = {}  # queue id -> next attempt (time.time())
        self.in_flight: set[str] = set()
        self._wakeup = asyncio.Event()
        self._attempts: set[asyncio.Task] = set()
        self._main: asyncio.Task | None = None
        self.update_config(config)

    def update_config(self, config: Config) -> None:
        self.config = config
        self.resolver = make_resolver(config.dns)
        self.loose_tls, self.strict_tls = client.tls_contexts(config.outbound.ca_file)

    # --- scheduling ---

    def wake(self, queue_id: str | None = None) -> None:
        """A new message (or a flush): look at the queue now."""
        if queue_id is not None:
            self.due[queue_id] = 0.0
        self._wakeup.set()

    async def load(self) -> None:
        for msg in await self._io(self.spool.load_all):
            self.due[msg.id] = msg.next_attempt
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
        One cut off is sent again after the restart (its envelope was not saved yet)."""
        if self._main is None:
            return
        self._main.cancel()
        await asyncio.gather(self._main, return_exceptions=True)
        if self._attempts:
            _, late = await asyncio.wait(self._attempts, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def run(self) -> None:
        await self.load()
        workers = asyncio.Semaphore(self.config.outbound.workers)
        while True:
            now = time.time()
            for qid, when in sorted(self.due.items(), key=lambda kv: kv[1]):
                if when > now or qid in self.in_flight or workers.locked():
                    continue
                await workers.acquire()
                self.in_flight.add(qid)
                task = asyncio.create_task(self._attempt_guarded(qid, workers))
                self._attempts.add(task)
                task.add_done_callback(self._attempts.discard)
            waiting = [w for q, w in self.due.items() if q not in self.in_flight]
            timeout = max(0.05, min(waiting) - time.time()) if waiting else None
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    async def _attempt_guarded(self, qid: str, workers: asyncio.Semaphore) -> None:
        try:
            await self.attempt(qid)
        except Exception:
            log.exception("queue: attempt for %s failed unexpectedly", qid)
            self.due[qid] = time.time() + schedule.next_delay(1)
        finally:
            self.in_flight.discard(qid)
            workers.release()
            self._wakeup.set()

    async def _io(self, func, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, func, *args)

    # --- one attempt ---

    async def attempt(self, qid: str) -> None:
        try:
            msg = await self._io(self.spool.get, qid)
            data = await self._io(self.spool.read_message, qid)
        except KeyError:
            self.due.pop(qid, None)  # deleted meanwhile (mailstead queue delete)
            return
        now = time.time()
        newly_failed: list[Recipient] = []
        if schedule.is_expired(msg, now, self.config.outbound.expiry):
            for rcpt in msg.pending():
                rcpt.status = FAILED
                rcpt.last_error = (f"4.4.7 Gave up after {self.config.outbound.expiry / 86400:g} "
                                   f"days; last error: {rcpt.last_error or 'none'}")
                newly_failed.append(rcpt)
        else:
            groups = self._groups(msg)
            results = await asyncio.gather(*(self._deliver_group(msg, data, domain, rcpts)
                                             for domain, rcpts in groups.items()))
            for rcpts, outcomes in zip(groups.values(), results, strict=True):
                for rcpt in rcpts:
                    if self._apply(rcpt, outcomes[rcpt.address], now):
                        newly_failed.append(rcpt)
            msg.attempts += 1
            msg.next_attempt = now + schedule.next_delay(msg.attempts)
        delayed = schedule.needs_delay_warning(msg, now, self.config.outbound.delay_warning or None)
        for rcpt in delayed:
            rcpt.dsn_sent = True
        # Saved first: whatever happens next, a restart will not re-send what was delivered.
        await self._io(self.spool.save, msg)
        if (newly_failed or delayed) and dsn.should_bounce(msg):
            await self._bounce(msg, data, newly_failed, delayed)
        if msg.done():
            await self._io(self.spool.remove, qid)
            self.due.pop(qid, None)
            log.info("queue: %s done (%s)", qid, ", ".join(
                f"{r.address} {r.status}" for r in msg.recipients))
        else:
            self.due[qid] = msg.next_attempt

    def _groups(self, msg: QueuedMessage) -> dict[str, list[Recipient]]:
        groups: dict[str, list[Recipient]] = {}
        relay = self.config.outbound.relay
        for rcpt in msg.pending():
            domain = domain_of(rcpt.address)
            if relay is not None and not self.accounts.is_local_domain(domain):
                domain = "*relay*"
            groups.setdefault(domain, []).append(rcpt)
        return groups

    @staticmethod
    def _apply(rcpt: Recipient, outcome: client.Outcome, now: float) -> bool:
        """Record one result; True if the recipient has just failed for good."""
        rcpt.attempts += 1
        rcpt.last_attempt = now
        rcpt.remote_mta = outcome.remote
        if outcome.ok:
            rcpt.status = DELIVERED
            rcpt.delivered_at = now
            rcpt.last_error, rcpt.last_code = "", outcome.code
            log.info("queue: delivered to %s via %s: %s", rcpt.address, outcome.remote or "local",
                     outcome.reply())
            return False
        rcpt.last_error, rcpt.last_code = outcome.reply(), outcome.code
        log.info("queue: %s to %s: %s", "failed" if outcome.permanent else "deferred",
                 rcpt.address, outcome.reply())
        if outcome.permanent:
            rcpt.status = FAILED
            return True
        return False

    async def _deliver_group(self, msg: QueuedMessage, data: bytes, domain: str,
                             rcpts: list[Recipient]) -> dict[str, client.Outcome]:
        addresses = [r.address for r in rcpts]
        if domain != "*relay*" and self.accounts.is_local_domain(domain):
            return await self._deliver_local(msg, data, addresses)
        out = self.config.outbound
        txn = client.Transaction(sender=msg.sender, recipients=addresses, message=data,
                                 helo=self.config.server.hostname, port=out.mx_port,
                                 timeout=out.connect_timeout, tls=self.loose_tls)
        if domain == "*relay*":
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
        """Queued mail for our own domains (bounces, mostly) goes straight to the Maildirs."""
        results: dict[str, client.Outcome] = {}
        deliveries, roots, delivered_to = [], [], []
        for address in addresses:
            try:
                resolution = self.accounts.resolve(parse_address(address))
            except (AddressError, acc.AccountError) as err:
                results[address] = client.Outcome(550, f"5.1.1 {err}")
                continue
            for user in resolution.mailboxes:
                head = trace.return_path(msg.sender) + trace.delivered_to(user.address)
                deliveries.append(Delivery(user.maildir, (head, data)))
                roots.append(user.maildir if user.quota_bytes else None)
            delivered_to.append(address)
            # External destinations of a local alias are not followed from the queue: the
            # alias was expanded when the message was accepted.
        if deliveries:
            try:
                await self._io(deliver_and_count, deliveries, roots, self.config.server.hostname)
            except OSError as err:
                for address in delivered_to:
                    results[address] = client.Outcome(451, f"4.3.0 Local delivery failed: {err}")
                return results
        for address in delivered_to:
            results[address] = client.Outcome(250, "2.0.0 Delivered locally")
        return results

    async def _bounce(self, msg: QueuedMessage, data: bytes, failed: list[Recipient],
                      delayed: list[Recipient]) -> None:
        hostname = self.config.server.hostname
        domains = self.accounts.list_domains()
        postmaster = f"postmaster@{domains[0]}" if domains else f"postmaster@{hostname}"
        report = dsn.build_dsn(reporting_mta=hostname, postmaster=postmaster, original=data,
                               sender=msg.sender, failed=failed, delayed=delayed,
                               arrival=msg.created, message_id_domain=hostname)
        # RFC 5321 §4.5.5: reports go out with the null reverse-path, so they never loop.
        queued = await self._io(lambda: self.spool.add("", [msg.sender], (report,),
                                                       origin=f"report for {msg.id}", is_dsn=True))
        log.info("queue: %s report %s for %s to <%s>", "failure" if failed else "delay",
                 queued.id, msg.id, msg.sender)
        self.wake(queued.id)
