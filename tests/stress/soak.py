"""Load/soak run: many SMTP sessions deliver continuously while many IMAP sessions IDLE.

One asyncio loop drives everything against one real instance on loopback:

* ``idlers`` IMAP sessions (IMAPS) spread over ``users`` mailboxes: LOGIN, SELECT INBOX, IDLE,
  counting the EXISTS pushes, until the end (DONE, LOGOUT);
* ``smtp`` MX sessions, each sending numbered messages to random users on one connection
  (a new one every ``PER_CONNECTION`` messages), with a random pause of up to twice ``pause``;
* one collector session per user that, every ``COLLECT_EVERY`` seconds, fetches the
  Message-IDs of new INBOX messages and expunges them: every message is counted exactly once,
  and the mailboxes (and the server's per-session state) stay small, so memory should be flat;
* a sampler reading the server's RSS (the daemon's and its MX workers') every ``sample_every``
  seconds.

At the end: every message that got 250 was collected exactly once, no errors anywhere (SMTP
exceptions or non-250 replies, IMAP NO/BAD/BYE, dropped connections, server tracebacks), every
IDLE session saw EXISTS, and the RSS of the second half grew less than 5 %.

How flatness is measured: RSS is sampled from the moment every IDLE session is up and sending
starts; the first half of the run is the warm-up (each user's index connection pool, caches,
SMTP connections being replaced after ``PER_CONNECTION`` messages), and the growth is the
least-squares trend of the second half's samples over its length, relative to its level at half
time (``SoakReport.growth_of``). A trend, not the last sample against one at half time: the
heap moves up and down by a few MiB with every garbage collection and every ``malloc_trim``
(server/malloctune.py), and two single samples said +8 % or -1 % of the same flat run depending
on where they fell. The summary shows both. ``--memtrace DIR`` makes the server write what its
memory is made of (malloc in use and free, SQLite, live objects by type) for finding what grows;
see server/memtrace.py.

The limits that would refuse this much from one client are raised in the instance's config
([imap] max_connections and max_connections_per_user, [abuse] per-IP limits; loopback is in
[abuse] allow by default anyway).

Run: ``python -m tests.stress.soak --seconds 600`` (``make soak``, ``SOAK_SECONDS``);
tests/e2e/test_soak_smoke.py runs a 20-second one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import ssl
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiosmtplib

from server.memtrace import ENV
from tests.stress.common import message, message_id, rss_kib
from tests.support.dnsserver import DEFAULT_ZONE, DNSTestServer
from tests.support.instance import PASSWORD, Instance

PER_CONNECTION = 50  # messages per SMTP connection
COLLECT_EVERY = 2.0  # seconds between a collector's sweeps
CONNECT_AT_ONCE = 25  # IMAP logins in flight while the sessions are set up
MAX_GROWTH = 0.05  # RSS of the second half may grow at most this much

_LITERAL = re.compile(rb"\{(\d+)\}\r\n$")
_FETCH = re.compile(rb"UID (\d+).*?<([^>]*)>", re.DOTALL)


@dataclass
class SoakReport:
    seconds: float
    smtp_sessions: int
    idle_sessions: int
    users: int
    sent: int = 0  # got 250
    collected: int = 0
    lost: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    idle_ready: int = 0
    idle_with_exists: int = 0
    exists_pushes: int = 0
    rss: list[tuple[float, dict[str, int]]] = field(default_factory=list)  # (s, tree_rss_kib())
    fds: list[int] = field(default_factory=list)

    def error(self, kind: str, text: str) -> None:
        self.errors[kind] += 1
        if len(self.error_samples) < 20:
            self.error_samples.append(f"{kind}: {text}")

    def growth_of(self, key: str = "VmRSS") -> float:
        """Growth over the second half of the run, from its trend: the least-squares slope of
        the samples taken in it, times its length, over the level at half time. The second
        half starts long after the warm-up (sessions logged in, pools and caches at their
        size); two single samples, the last against the one at half time, moved by several
        percent with where in its cycle the garbage collector or malloc_trim happened to be."""
        half = self.rss[len(self.rss) // 2:]
        if len(half) < 3:
            return 0.0
        times = [t for t, _ in half]
        values = [kib[key] for _, kib in half]
        mean_t, mean_v = sum(times) / len(times), sum(values) / len(values)
        slope = sum((t - mean_t) * (v - mean_v) for t, v in zip(times, values, strict=True)) / \
            sum((t - mean_t) ** 2 for t in times)
        start = mean_v + slope * (times[0] - mean_t)
        return slope * (times[-1] - times[0]) / start

    def endpoint_growth(self, key: str = "VmRSS") -> float:
        """The last sample against the one at half time (what this check used to be)."""
        if len(self.rss) < 3:
            return 0.0
        half = self.rss[len(self.rss) // 2][1][key]
        return (self.rss[-1][1][key] - half) / half

    @property
    def growth(self) -> float:
        return self.growth_of("VmRSS")

    def problems(self, check_growth: bool = True) -> list[str]:
        out = [f"{n} {kind}" for kind, n in self.errors.items()]
        if self.lost:
            out.append(f"{len(self.lost)} lost: {self.lost[:5]}")
        if self.duplicates:
            out.append(f"{len(self.duplicates)} duplicated: {self.duplicates[:5]}")
        if self.idle_ready != self.idle_sessions:
            out.append(f"only {self.idle_ready} of {self.idle_sessions} IDLE sessions started")
        if self.idle_with_exists != self.idle_sessions:
            out.append(f"only {self.idle_with_exists} of {self.idle_sessions} IDLE sessions "
                       "saw EXISTS")
        if self.sent == 0:
            out.append("nothing was delivered")
        if check_growth and self.growth >= MAX_GROWTH:
            out.append(f"RSS grew {self.growth:.1%} over the second half")
        return out

    def summary(self) -> str:
        rss = ", ".join(f"{t:.0f}s {kib['VmRSS'] / 1024:.1f}" for t, kib in self.rss)
        anon = ", ".join(f"{kib['RssAnon'] / 1024:.1f}" for t, kib in self.rss)
        files = ", ".join(f"{kib['RssFile'] / 1024:.1f}" for t, kib in self.rss)
        return "\n".join([
            f"soak: {self.seconds:.0f} s, {self.smtp_sessions} SMTP sessions, "
            f"{self.idle_sessions} IMAP IDLE sessions over {self.users} users",
            f"  delivered (250): {self.sent} ({self.sent / max(self.seconds, 1):.1f}/s), "
            f"collected: {self.collected}, lost: {len(self.lost)}, "
            f"duplicates: {len(self.duplicates)}",
            f"  IDLE: {self.idle_ready} started, {self.idle_with_exists} saw EXISTS, "
            f"{self.exists_pushes} EXISTS pushes in all",
            f"  errors: {dict(self.errors) or 0}" + "".join(
                f"\n    {e}" for e in self.error_samples),
            f"  server RSS (MiB): {rss}",
            f"    of which heap (RssAnon): {anon}",
            f"    of which mapped files (RssFile): {files}",
            f"  server open fds: {self.fds[0] if self.fds else '?'} .. "
            f"{self.fds[-1] if self.fds else '?'}",
            f"  RSS growth over the second half (trend): {self.growth:+.1%} (heap "
            f"{self.growth_of('RssAnon'):+.1%}, mapped files {self.growth_of('RssFile'):+.1%});"
            f" last sample against half time: {self.endpoint_growth():+.1%} (heap "
            f"{self.endpoint_growth('RssAnon'):+.1%})",
        ])


def tree_rss_kib(pid: int) -> dict[str, int]:
    """rss_kib of the daemon plus its MX worker processes ([smtp] workers), which receive
    and store the mail: the server's memory is all of theirs."""
    total = rss_kib(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                for key, kib in rss_kib(int(child)).items():
                    total[key] += kib
            except FileNotFoundError:
                pass  # ended meanwhile
    return total


class ImapError(Exception):
    pass


class AsyncImap:
    """Just enough of an IMAP client: tagged commands, literals read inline, IDLE."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.tags = 0

    @classmethod
    async def open(cls, inst: Instance, ctx: ssl.SSLContext) -> AsyncImap:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", inst.ports["imaps"], ssl=ctx, server_hostname="localhost",
            limit=1 << 20)
        conn = cls(reader, writer)
        greeting = await conn.line()
        if not greeting.startswith(b"* OK"):
            raise ImapError(f"greeting {greeting[:100]!r}")
        return conn

    async def line(self) -> bytes:
        line = await self.reader.readline()
        if not line:
            raise ImapError("connection closed by the server")
        while (match := _LITERAL.search(line)) is not None:
            line += await self.reader.readexactly(int(match[1]))
            line += await self.reader.readline()
        return line.rstrip(b"\r\n")

    async def command(self, text: str) -> list[bytes]:
        self.tags += 1
        tag = f"T{self.tags}".encode()
        self.writer.write(tag + b" " + text.encode() + b"\r\n")
        lines = []
        while True:
            line = await self.line()
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise ImapError(f"{text.split()[0]}: {line[:200]!r}")
                return lines
            if line.startswith(b"* BYE"):
                raise ImapError(f"BYE during {text.split()[0]}: {line[:200]!r}")
            lines.append(line)

    async def login(self, user: str) -> None:
        await self.command(f'LOGIN {user} "{PASSWORD}"')
        await self.command("SELECT INBOX")

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.command("LOGOUT"), 10)
        except (ImapError, OSError, TimeoutError):
            pass
        self.writer.close()


class Soak:
    def __init__(self, inst: Instance, report: SoakReport, run_id: str, seed: int | None,
                 pause: float, sample_every: float):
        self.inst, self.report, self.run_id = inst, report, run_id
        self.rng = random.Random(seed)
        self.pause, self.sample_every = pause, sample_every
        self.users = [f"s{i}@example.test" for i in range(report.users)]
        self.ctx = inst.tls_context()
        self.numbers = iter(range(10**9))
        self.ok: set[int] = set()
        self.uncertain: set[int] = set()
        self.seen: Counter = Counter()  # Message-ID -> times collected
        self.sending = asyncio.Event()
        self.stop_sending = asyncio.Event()
        self.stop_idle = asyncio.Event()
        self.started = 0.0

    # --- IMAP IDLE ---

    async def idler(self, user: str, gate: asyncio.Semaphore) -> None:
        report = self.report
        try:
            async with gate:
                conn = await AsyncImap.open(self.inst, self.ctx)
                await conn.login(user)
                conn.writer.write(b"I IDLE\r\n")
                line = await conn.line()
                if not line.startswith(b"+"):
                    raise ImapError(f"IDLE refused: {line[:200]!r}")
            report.idle_ready += 1
        except (ImapError, OSError, ssl.SSLError) as exc:
            report.error("IMAP session setup", repr(exc))
            return
        seen_exists = False

        async def listen() -> None:
            nonlocal seen_exists
            while True:
                line = await conn.line()
                if line.endswith(b" EXISTS"):
                    report.exists_pushes += 1
                    seen_exists = True
                elif line.startswith(b"I "):
                    if not line.startswith(b"I OK"):
                        raise ImapError(f"IDLE ended: {line[:200]!r}")
                    return
                elif line.startswith(b"* BYE"):
                    raise ImapError(f"BYE in IDLE: {line[:200]!r}")

        listener = asyncio.create_task(listen())
        stopper = asyncio.create_task(self.stop_idle.wait())
        try:
            await asyncio.wait({listener, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if listener.done():
                listener.result()  # raises what ended it early
                raise ImapError("IDLE ended before the end of the run")
            conn.writer.write(b"DONE\r\n")
            await asyncio.wait_for(listener, 30)
            if seen_exists:
                report.idle_with_exists += 1
        except (ImapError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            report.error("IMAP IDLE", repr(exc))
        finally:
            stopper.cancel()
            listener.cancel()
            await conn.close()

    # --- collecting what arrived ---

    async def collector(self, user: str) -> None:
        conn = None
        last = 0
        try:
            conn = await AsyncImap.open(self.inst, self.ctx)
            await conn.login(user)
            while True:
                done = self.stop_idle.is_set()
                lines = await conn.command(
                    f"UID FETCH {last + 1}:* (UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
                uids = []
                for line in lines:
                    match = _FETCH.search(line)
                    if b" FETCH " not in line or match is None:
                        continue
                    uid = int(match[1])
                    if uid <= last:
                        continue  # "n:*" always includes the highest UID
                    uids.append(uid)
                    self.seen[match[2].decode()] += 1
                if uids:
                    last = max(uids)
                    uid_set = ",".join(map(str, uids))
                    await conn.command(f"UID STORE {uid_set} +FLAGS.SILENT (\\Deleted)")
                    await conn.command(f"UID EXPUNGE {uid_set}")
                if done:
                    return
                try:
                    await asyncio.wait_for(self.stop_idle.wait(), COLLECT_EVERY)
                except TimeoutError:
                    pass
        except (ImapError, OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            self.report.error("IMAP collector", repr(exc))
        finally:
            if conn is not None:
                await conn.close()

    # --- SMTP ---

    async def sender(self) -> None:
        await self.sending.wait()
        smtp = None
        count = 0
        while not self.stop_sending.is_set():
            n = next(self.numbers)
            rcpt = self.rng.choice(self.users)
            data = message(self.run_id, n, "soak@remote.test", [rcpt], big=n % 50 == 0)
            try:
                if smtp is None:
                    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=self.inst.mx_port,
                                           local_hostname="client.remote.test",
                                           start_tls=False, timeout=120)
                    await smtp.connect()
                    count = 0
                errors, text = await smtp.sendmail("soak@remote.test", [rcpt], data)
                if errors:
                    self.report.error("SMTP refused", f"{errors} {text}")
                else:
                    self.ok.add(n)
                count += 1
                if count >= PER_CONNECTION:
                    await smtp.quit()
                    smtp = None
            except (aiosmtplib.SMTPException, OSError) as exc:
                self.report.error("SMTP", repr(exc))
                self.uncertain.add(n)
                if smtp is not None:
                    smtp.close()
                smtp = None
            await asyncio.sleep(self.rng.uniform(0, 2 * self.pause))
        if smtp is not None:
            try:
                await smtp.quit()
            except (aiosmtplib.SMTPException, OSError):
                smtp.close()

    # --- memory ---

    async def sampler(self) -> None:
        pid = self.inst.proc.pid
        while True:
            self.report.rss.append((time.monotonic() - self.started, tree_rss_kib(pid)))
            self.report.fds.append(len(list(Path(f"/proc/{pid}/fd").iterdir())))
            await asyncio.sleep(self.sample_every)

    # --- the run ---

    async def run(self, seconds: float, log) -> None:
        report = self.report
        gate = asyncio.Semaphore(CONNECT_AT_ONCE)
        collectors = [asyncio.create_task(self.collector(u)) for u in self.users]
        idlers = [asyncio.create_task(self.idler(self.users[i % len(self.users)], gate))
                  for i in range(report.idle_sessions)]
        senders = [asyncio.create_task(self.sender()) for _ in range(report.smtp_sessions)]
        setup = time.monotonic()
        while report.idle_ready + report.errors["IMAP session setup"] < len(idlers):
            await asyncio.sleep(0.1)
        log(f"{report.idle_ready} IDLE sessions up in {time.monotonic() - setup:.1f} s; "
            f"sending for {seconds:.0f} s")
        self.started = time.monotonic()
        sampler = asyncio.create_task(self.sampler())
        self.sending.set()
        next_note = self.started + 60
        while time.monotonic() < self.started + seconds:
            await asyncio.sleep(min(1.0, self.started + seconds - time.monotonic()))
            if time.monotonic() >= next_note:
                next_note += 60
                log(f"{time.monotonic() - self.started:.0f} s: {len(self.ok)} delivered, "
                    f"{sum(self.seen.values())} collected, RSS "
                    f"{report.rss[-1][1]['VmRSS'] / 1024:.1f} MiB, "
                    f"errors {dict(report.errors) or 0}")
        self.stop_sending.set()
        await asyncio.gather(*senders)
        report.seconds = time.monotonic() - self.started
        sampler.cancel()
        # Let the collectors catch up with everything that got 250.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(message_id(self.run_id, n) in self.seen for n in self.ok):
                break
            await asyncio.sleep(0.5)
        self.stop_idle.set()
        await asyncio.gather(*idlers, *collectors)
        report.sent = len(self.ok)
        report.collected = sum(self.seen.values())
        wanted = {message_id(self.run_id, n) for n in self.ok}
        maybe = {message_id(self.run_id, n) for n in self.uncertain}
        report.lost = sorted(wanted - set(self.seen))
        report.duplicates = sorted(m for m, c in self.seen.items() if c > 1)
        foreign = set(self.seen) - wanted - maybe
        if foreign:
            report.error("collected but never accepted", str(sorted(foreign)[:5]))


def run_soak(root: Path, nameserver: str, *, seconds: float = 600, smtp: int = 200,
             idle: int = 1000, users: int = 50, pause: float = 0.2, sample_every: float = 10,
             seed: int | None = None, log=print) -> SoakReport:
    rng = random.Random(seed)
    report = SoakReport(seconds, smtp, idle, users)
    inst = Instance(root / "inst", nameserver, extra_config=(
        f"[imap]\nmax_connections = {2 * (idle + users) + 100}\n"
        f"max_connections_per_user = {2 * idle // users + 10}\n"
        f"[smtp]\nmax_connections = {2 * smtp + 100}\n"
        "[abuse]\nmax_connections_per_ip = 100000\nconnection_rate_per_ip = 1000000\n"))
    for i in range(users):
        inst.add_user(f"s{i}@example.test")
    inst.start()
    try:
        soak = Soak(inst, report, f"soak{rng.randrange(10**6):06d}", seed, pause, sample_every)
        asyncio.run(soak.run(seconds, log))
        if inst.proc.poll() is not None:
            report.error("server died", f"exit {inst.proc.returncode}")
    finally:
        rc = inst.stop()
    if rc != 0:
        report.error("server exit", f"SIGTERM exit code {rc}")
    for line in inst.log().splitlines():
        if line.startswith("Traceback") or " ERROR " in line:
            report.error("server log", line[:300])
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--smtp", type=int, default=200, help="concurrent SMTP sessions")
    parser.add_argument("--idle", type=int, default=1000, help="IMAP IDLE sessions")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--pause", type=float, default=0.2,
                        help="mean seconds between an SMTP session's messages")
    parser.add_argument("--sample-every", type=float, default=10)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the data dir for inspection")
    parser.add_argument("--memtrace", metavar="DIR", default="",
                        help="the server writes memory statistics into DIR (server/memtrace.py)")
    parser.add_argument("--tracemalloc", metavar="FRAMES", type=int, default=0,
                        help="with --memtrace: tracemalloc snapshots too (slows the server)")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="mailstead-soak-"))
    if args.memtrace:  # inherited by the server
        os.environ[ENV] = str(Path(args.memtrace).resolve())
        os.environ[f"{ENV}_EVERY"] = str(args.sample_every)
        os.environ[f"{ENV}_FRAMES"] = str(args.tracemalloc)
    try:
        with DNSTestServer(DEFAULT_ZONE) as dns:
            report = run_soak(root, dns.nameserver, seconds=args.seconds, smtp=args.smtp,
                              idle=args.idle, users=args.users, pause=args.pause,
                              sample_every=args.sample_every, seed=args.seed,
                              log=lambda line: print(line, flush=True))
        print(report.summary())
        problems = report.problems(check_growth=args.seconds >= 120)
        print("problems: " + ("; ".join(problems) if problems else "none"))
        return 1 if problems else 0
    finally:
        if args.keep:
            print(f"data kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
