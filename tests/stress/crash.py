"""Crash test: concurrent SMTP clients send numbered messages while the server is ``kill -9``-ed
at random moments and restarted; then nothing the server answered 250 for may be lost or doubled.

Clients alternate between the MX (local mailboxes, and aliases forwarding to remote addresses,
which go through the queue) and submission (local and remote recipients). Remote mail goes to
a sink on loopback that records every copy and when it arrived. A killer thread waits for
chosen points of progress, reads the INBOX of every local mailbox over IMAP (UID -> Message-ID),
sends SIGKILL, restarts the server on the same data dir and reads them again.

What is checked afterwards (``CrashReport.problems`` lists every violation):

* each message that got 250 is in each of its mailboxes exactly once, byte-intact; one whose
  DATA got no reply (the server died) at most once; one refused with 4xx/5xx nowhere;
* each remote copy that got 250 arrived at the sink, intact. More than once only in the window
  docs/rfc.md accepts (RFC 1047): the server died after the sink's 250 and before the queue
  entry was saved, so the transaction is sent again after the restart. A second copy counts as
  that window only if a kill fell within ``window`` seconds after the first copy arrived, or
  at most ``AFTER_KILL`` before it (a transaction the dead server had written to its socket
  to the end still reaches the sink); these are reported as ``window_duplicates``;
* every UID an IMAP client saw before a kill still names the same message after the restart
  and at the end, under the same UIDVALIDITY;
* IMAP shows exactly the files in new/ and cur/ (whatever a kill left in tmp/ is no mail),
  and a fresh index rebuilt from a copy of the Maildir (SQLite files deleted) gives the same
  UIDVALIDITY and UID -> Message-ID as the live server did;
* the queue is empty at the end, with nothing set aside as corrupt.

Run: ``python -m tests.stress.crash --clients 20 --messages 2000 --kills 3`` (``make
crashtest``); tests/e2e/test_crash.py runs a small one.
"""

from __future__ import annotations

import argparse
import random
import shutil
import smtplib
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from maildir.index import MailboxIndex
from maildir.index_sql import DB_NAME
from tests.stress.common import (
    ImapView,
    imap_view,
    maildir_copies,
    message,
    message_id,
    parse_copy,
    sink_copies,
    timed_sink,
)
from tests.support.dnsserver import DEFAULT_ZONE, DNSTestServer
from tests.support.instance import PASSWORD, Instance, cli

# A transaction the killed server had written to its socket to the end reaches the sink after
# the kill: the kernel still sends what it holds, and the sink records the copy when it has
# read it (a thread of this busy test process).  A copy this soon after a kill can only be the
# dead server's: the restarted one takes longer than that to start (restart_seconds).
AFTER_KILL = 0.25

LOCAL = [f"u{i}@example.test" for i in range(4)]
REMOTE = [f"r{i}@remote.test" for i in range(4)]
FORWARD = {f"fwd{i}@example.test": REMOTE[i] for i in range(4)}  # MX aliases to the sink
SUBMITTER = "ann@example.test"
MX_SENDER = "bob@remote.test"
OK, UNCERTAIN = "ok", "uncertain"
PER_CONNECTION = 20  # messages per SMTP connection before a client reconnects


@dataclass(frozen=True)
class Plan:
    via: str  # "mx" | "submission"
    envelope: tuple[str, ...]  # RCPT TO addresses
    local: tuple[str, ...]  # mailboxes that must get a copy
    remote: tuple[str, ...]  # sink recipients that must get a copy
    big: bool


def plan(n: int, via: str, big_every: int) -> Plan:
    """What message ``n`` is: a mix of one local, one remote, both, and two locals."""
    a, b = LOCAL[n % 4], LOCAL[(n + 1) % 4]
    remote = REMOTE[(n // 3) % 4]
    forward = next(k for k, v in FORWARD.items() if v == remote)
    kind = (n // 2) % 4
    local = {0: (a,), 1: (), 2: (a,), 3: (a, b)}[kind]
    rem = (remote,) if kind in (1, 2) else ()
    via_remote = tuple(forward for _ in rem) if via == "mx" else rem
    return Plan(via, local + via_remote, local, rem, big_every > 0 and n % big_every == 0)


@dataclass
class CrashReport:
    clients: int
    messages: int
    kills: int
    seconds: float = 0.0
    outcomes: Counter = field(default_factory=Counter)  # ok / uncertain / "451 ..." ...
    local_copies: int = 0
    remote_copies: int = 0
    window_duplicates: list[str] = field(default_factory=list)
    tmp_leftovers: int = 0
    restart_seconds: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return "\n".join([
            f"crash test: {self.messages} messages from {self.clients} clients, "
            f"{self.kills} kill -9, {self.seconds:.1f} s",
            "  outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())),
            f"  local copies checked: {self.local_copies}, remote copies: {self.remote_copies}",
            f"  restarts took: {', '.join(f'{s:.1f} s' for s in self.restart_seconds)}",
            f"  files left in Maildir tmp/ (not mail): {self.tmp_leftovers}",
            f"  sink duplicates in the RFC 1047 window: {len(self.window_duplicates)}"
            + "".join(f"\n    {d}" for d in self.window_duplicates),
            f"  problems: {len(self.problems)}" + "".join(f"\n    {p}" for p in self.problems),
        ])


class Sender(threading.Thread):
    """One SMTP client sending its share of the numbers, reconnecting across kills."""

    def __init__(self, inst: Instance, run: str, via: str, numbers: list[int], big_every: int,
                 outcomes: dict[int, str]):
        super().__init__(daemon=True)
        self.inst, self.run_id, self.via, self.numbers = inst, run, via, numbers
        self.big_every = big_every
        self.outcomes = outcomes
        self.conn: smtplib.SMTP | None = None
        self.sent_on_conn = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for n in self.numbers:
                self.outcomes[n] = self.send_one(n)
        except BaseException as exc:  # reported by the driver, not lost in a thread
            self.error = exc
        finally:
            self.drop()

    def connect(self) -> smtplib.SMTP:
        if self.via == "mx":
            conn = smtplib.SMTP("127.0.0.1", self.inst.mx_port, timeout=60,
                                local_hostname="client.remote.test")
            conn.ehlo()
        else:
            conn = smtplib.SMTP("127.0.0.1", self.inst.submission_port, timeout=60,
                                local_hostname="laptop.example.test")
            conn.starttls(context=self.inst.tls_context())
            conn.login(SUBMITTER, PASSWORD)
        self.sent_on_conn = 0
        return conn

    def drop(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
            self.conn = None

    def send_one(self, n: int) -> str:
        p = plan(n, self.via, self.big_every)
        sender = MX_SENDER if self.via == "mx" else SUBMITTER
        data = message(self.run_id, n, sender, list(p.local + p.remote), p.big)
        for _ in range(600):  # ~ a minute of the server being down
            if self.conn is None:
                try:
                    self.conn = self.connect()
                except (OSError, smtplib.SMTPException):
                    time.sleep(0.1)  # down or starting: nothing was sent, try the same again
                    continue
            in_data = False
            try:
                code, text = self.conn.mail(sender)
                if code != 250:
                    self.drop()
                    return f"MAIL {code} {text.decode(errors='replace')}"
                for rcpt in p.envelope:
                    code, text = self.conn.rcpt(rcpt)
                    if code != 250:
                        self.drop()
                        return f"RCPT {code} {text.decode(errors='replace')}"
                in_data = True
                code, text = self.conn.data(data)
            except smtplib.SMTPResponseException as exc:  # the DATA command itself refused
                self.drop()
                return f"DATA {exc.smtp_code} {exc.smtp_error!r}"
            except OSError:  # smtplib's SMTPServerDisconnected too: the server died
                self.drop()
                if in_data:
                    return UNCERTAIN  # it may have stored the message before it died
                continue  # nothing of this transaction was stored: send it again
            if code != 250:
                self.drop()
                return f"{code} {text.decode(errors='replace')}"
            self.sent_on_conn += 1
            if self.sent_on_conn >= PER_CONNECTION:
                try:
                    self.conn.quit()
                except (OSError, smtplib.SMTPException):
                    pass
                self.drop()
            return OK
        return "server unreachable"


def _restart(inst: Instance) -> float:
    """SIGKILL the server and start it again on the same data dir; seconds the start took."""
    assert inst.proc is not None
    inst.proc.kill()
    inst.proc.wait()
    inst.log_file.close()
    started = time.monotonic()
    inst.start(timeout=60)
    return time.monotonic() - started


def _views(inst: Instance) -> dict[str, ImapView]:
    with ThreadPoolExecutor(len(LOCAL)) as pool:
        return dict(zip(LOCAL, pool.map(lambda u: imap_view(inst, u), LOCAL), strict=True))


def _compare_views(before: dict[str, ImapView], after: dict[str, ImapView], when: str,
                   problems: list[str]) -> None:
    for user, old in before.items():
        new = after[user]
        if new.uidvalidity != old.uidvalidity:
            problems.append(f"{user}: UIDVALIDITY {old.uidvalidity} -> {new.uidvalidity} {when}")
        changed = {uid: (mid, new.uids.get(uid)) for uid, mid in old.uids.items()
                   if new.uids.get(uid) != mid}
        if changed:
            problems.append(f"{user}: UIDs changed {when}: {dict(list(changed.items())[:5])}")


def _wait_for_empty_queue(inst: Instance, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    flushed = False
    while time.monotonic() < deadline:
        if not inst.spool().list():
            return True
        if not flushed and time.monotonic() > deadline - timeout / 2:
            cli("-c", str(inst.config_path), "queue", "flush")
            flushed = True
        time.sleep(0.2)
    return False


def _rebuilt_view(root: Path, scratch: Path) -> ImapView:
    """INBOX as a fresh index sees it, built from a copy of the Maildir without SQLite files."""
    shutil.copytree(root, scratch, ignore=shutil.ignore_patterns(f"{DB_NAME}*"))
    with MailboxIndex(scratch) as index:
        folder = index.folder("INBOX")
        uids = {}
        for info in folder.messages():
            data = folder.read(info.uid)
            head = data[:data.find(b"\r\n\r\n")]
            mid = next((line.split(b"<", 1)[1].split(b">", 1)[0].decode()
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"message-id:") and b"<" in line), "")
            uids[info.uid] = mid
        return ImapView(folder.uidvalidity, uids)


def run_crash(root: Path, nameserver: str, *, clients: int = 20, messages: int = 2000,
              kills: int = 3, seed: int | None = None, big_every: int = 10,
              window: float = 5.0, log=print) -> CrashReport:
    rng = random.Random(seed)
    run_id = f"c{rng.randrange(10**6):06d}"
    report = CrashReport(clients, messages, kills)
    sink = timed_sink()
    inst = Instance(root / "inst", nameserver, extra_config=(
        f"[outbound]\nmx_port = {sink.port}\n"
        "[abuse]\nmax_messages_per_hour = 1000000\nmax_recipients_per_hour = 1000000\n"))
    for user in [*LOCAL, SUBMITTER]:
        inst.add_user(user)
    for alias, target in FORWARD.items():
        inst.add_alias(alias, target)
    started = time.monotonic()
    try:
        inst.start()
        outcomes: dict[int, str] = {}
        senders = [Sender(inst, run_id, "mx" if c % 2 == 0 else "submission",
                          list(range(c, messages, clients)), big_every, outcomes)
                   for c in range(clients)]
        for s in senders:
            s.start()
        snapshots: list[tuple[str, dict[str, ImapView]]] = []
        kill_times: list[float] = []
        for k in range(kills):
            # What a client saw shortly before the kill; then kill at a random point of
            # progress, with the clients and the queue busy.
            before = _views(inst)
            if snapshots:
                _compare_views(snapshots[-1][1], before, f"across kill {k}", report.problems)
            target = messages * (k + rng.uniform(0.2, 0.8)) / kills
            while len(outcomes) < target and any(s.is_alive() for s in senders):
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.05))
            kill_times.append(time.time())
            done = len(outcomes)
            report.restart_seconds.append(_restart(inst))
            log(f"kill {k + 1}: after {done} of {messages} messages, "
                f"{sum(len(v.uids) for v in before.values())} in the INBOXes a moment "
                f"before; restarted in {report.restart_seconds[-1]:.1f} s")
            snapshots.append((f"kill {k + 1}", before))
        for s in senders:
            s.join(600)
            if s.is_alive():
                report.problems.append(f"client {s.name} did not finish")
            elif s.error is not None:
                report.problems.append(f"client {s.name} crashed: {s.error!r}")
        report.outcomes = Counter(o if o in (OK, UNCERTAIN) else o.split()[0] + " " + o.split()[1]
                                  for o in outcomes.values())
        if not _wait_for_empty_queue(inst, 60):
            report.problems.append(f"queue not empty: {[m.id for m in inst.spool().list()]}")
        time.sleep(0.5)  # a late sink copy would still be counted
        final = _views(inst)
        for label, before in snapshots:
            _compare_views(before, final, f"between {label} and the end", report.problems)
        rc = inst.stop()
        if rc != 0:
            report.problems.append(f"server exited {rc} on SIGTERM")
        report.seconds = time.monotonic() - started
        _check(inst, run_id, outcomes, final, kill_times, sink, window, big_every, report)
        with tempfile.TemporaryDirectory(dir=root) as scratch:
            for user in LOCAL:
                local, domain = user.split("@")
                rebuilt = _rebuilt_view(inst.data_dir / "mail" / domain / local,
                                        Path(scratch) / local)
                if rebuilt != final[user]:
                    report.problems.append(f"{user}: rebuilt index differs from the live one: "
                                           f"{_diff(final[user], rebuilt)}")
        corrupt = list((inst.data_dir / "queue" / "corrupt").iterdir())
        if corrupt:
            report.problems.append(f"queue entries set aside as corrupt: {corrupt}")
        if "Traceback" in inst.log():
            report.problems.append("the server log has a traceback (see mailstead.log)")
        return report
    finally:
        inst.stop()
        sink.stop()


def _diff(a: ImapView, b: ImapView) -> str:
    only_a = {u: m for u, m in a.uids.items() if b.uids.get(u) != m}
    only_b = {u: m for u, m in b.uids.items() if a.uids.get(u) != m}
    return (f"uidvalidity {a.uidvalidity}/{b.uidvalidity}, live only "
            f"{dict(list(only_a.items())[:5])}, rebuilt only {dict(list(only_b.items())[:5])}")


def _before_kill(seconds: float) -> str:
    return f"{seconds:.2f} s before" if seconds >= 0 else f"{-seconds:.2f} s after"


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) + f"{t % 1:.3f}"[1:]


def _check(inst: Instance, run_id: str, outcomes: dict[int, str],
           final: dict[str, ImapView], kill_times: list[float], sink, window: float,
           big_every: int, report: CrashReport) -> None:
    problems = report.problems
    missing = [n for n in range(report.messages) if n not in outcomes]
    if missing:
        problems.append(f"{len(missing)} messages never sent: {missing[:10]}")
    clients = report.clients
    plans = {n: plan(n, "mx" if (n % clients) % 2 == 0 else "submission", big_every)
             for n in range(report.messages)}

    for user in LOCAL:
        counts, damaged, leftovers = maildir_copies(inst, user, run_id)
        problems.extend(damaged)
        report.tmp_leftovers += leftovers
        report.local_copies += sum(counts.values())
        for n, p in plans.items():
            want = user in p.local
            got = counts.get(n, 0)
            outcome = outcomes.get(n)
            if want and outcome == OK and got != 1:
                problems.append(f"{user}: message {n} got 250 but is there {got} times")
            elif want and outcome == UNCERTAIN and got > 1:
                problems.append(f"{user}: message {n} (no reply) is there {got} times")
            elif (not want or outcome not in (OK, UNCERTAIN)) and got:
                problems.append(f"{user}: message {n} ({outcome}) should not be there: {got}")
        # IMAP shows exactly the files in new/ and cur/ of this run, each once.
        view = final[user]
        shown = Counter(view.uids.values())
        files = Counter({message_id(run_id, n): c for n, c in counts.items()})
        if shown != files:
            problems.append(f"{user}: IMAP shows {sum(shown.values())} messages, "
                            f"new/+cur/ hold {sum(files.values())}: "
                            f"{dict(list((shown - files).items())[:5])} / "
                            f"{dict(list((files - shown).items())[:5])}")

    copies, damaged = sink_copies(sink, run_id)
    problems.extend(damaged)
    report.remote_copies = sum(len(t) for t in copies.values())
    for n, p in plans.items():
        outcome = outcomes.get(n)
        for rcpt in p.remote:
            times = sorted(copies.get((n, rcpt), []))
            if outcome == OK and not times:
                problems.append(f"message {n} to {rcpt} got 250 but never reached the sink")
            if outcome not in (OK, UNCERTAIN) and times:
                problems.append(f"message {n} ({outcome}) reached the sink anyway")
            # Copies after the first are accepted only for a kill in the RFC 1047 window.
            first = times[0] if times else 0.0
            explained = [k for k in kill_times if first - AFTER_KILL <= k <= first + window]
            extra = len(times) - 1
            if extra > len(explained):
                problems.append(f"message {n} to {rcpt} reached the sink {len(times)} times "
                                f"(kills from {AFTER_KILL} s before to {window} s after the "
                                f"first: {len(explained)}; "
                                f"copies at {', '.join(_clock(t) for t in times)}, kills at "
                                f"{', '.join(_clock(k) for k in kill_times)})")
            elif extra > 0:
                report.window_duplicates.append(
                    f"message {n} to {rcpt}: {len(times)} copies at "
                    f"{', '.join(_clock(t) for t in times)}, "
                    f"{_before_kill(min(explained) - first)} kill "
                    f"{kill_times.index(min(explained)) + 1}")
    for (n, rcpt) in copies:
        if n >= report.messages or rcpt not in plans[n].remote:
            problems.append(f"unexpected sink copy: message {n} to {rcpt}")
    spam = [m for m in inst.messages(SUBMITTER) if parse_copy(m, run_id)[0] is None]
    if spam:
        problems.append(f"{SUBMITTER} got {len(spam)} report(s): {spam[0][:300]!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the data dir for inspection")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="mailstead-crash-"))
    try:
        with DNSTestServer(DEFAULT_ZONE) as dns:
            report = run_crash(root, dns.nameserver, clients=args.clients,
                               messages=args.messages, kills=args.kills, seed=args.seed)
        print(report.summary())
        return 1 if report.problems else 0
    finally:
        if args.keep:
            print(f"data kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
