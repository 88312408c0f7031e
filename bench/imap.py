"""IMAP on big folders, mailstead against Dovecot on a copy of the same Maildir.

For each folder size a Maildir of N varied ~5-KB messages is written once (``maildata``) and
linked into mailstead's user and into Dovecot's; neither has an index yet. Over IMAPS, with
``wire.IMAP`` timing each command's round trip, both get the same sequence:

- LOGIN+SELECT cold: the first open, which builds the server's index (uid list, flags,
  sizes); then LOGIN+SELECT warm, the median of five more (each its own connection);
- ``UID FETCH 1:* (UID FLAGS)``, ``FETCH 1:* (ENVELOPE)`` (first, then again: parsed headers
  cached or not), ``UID SEARCH HEADER Subject quarterly``, 100 ``FETCH n BODY.PEEK[]`` spread
  over the folder (one command each), medians of three where repeating changes nothing;
- ``STORE 1:* +FLAGS (\\Seen)`` once (30 % of the messages are unseen: those are renamed).

This runs in ``rounds`` (three; one with ``--quick``), each on fresh copies for both servers,
the one that goes first alternating: Dovecot's own figures moved 2-3x between runs on a small
machine, as ours did, and the operations done once per copy (cold SELECT, the first ENVELOPE,
STORE) cannot be repeated on it. A figure is the median of the rounds; every round is kept in
the JSON.

On the first and the biggest size (where the 1.5x target applies): ``mbsync`` pulls the
whole INBOX into an empty local Maildir (its own config, TLS to the server, wall time of the
run), once, in the last round. On the first size only: the memory of N IDLE sessions (each
its own TLS connection that logged in, SELECTed INBOX and is IDLE): the summed VmRSS of the
server's processes with the sessions open (mailstead: its process; Dovecot: the master and
everything under it: login proxies, imap processes, auth, config, log, anvil).

Both servers run the whole time; the files are in the page cache for both (just written),
so "cold" means no server index, not a cold disk. Each server's sequence starts on a quiet
machine: dirty pages written out (sync) and both servers' processes idle (``procs.wait_idle``),
so neither is timed while the other still writes behind its last operation, or while a
server is starting.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from bench import maildata, procs
from bench.dovecot import Dovecot
from bench.instance import USER, Mailstead
from bench.report import Row
from bench.wire import IMAP

WARM_RUNS = 5
REPEATS = 3


@dataclass
class Target:
    name: str
    port: int
    password: str
    cert: Path
    memory: Callable[[], dict[str, int]]


def _open(t: Target, n: int) -> tuple[float, IMAP]:
    started = time.perf_counter()
    c = IMAP(t.port)
    c.login(USER, t.password)
    _, data = c.command("SELECT INBOX", keep=True)
    seconds = time.perf_counter() - started
    if f"* {n} EXISTS".encode() not in data:
        raise RuntimeError(f"{t.name}: SELECT did not report {n} messages: {data[:300]!r}")
    return seconds, c


def _median(fn: Callable[[], float], runs: int = REPEATS) -> float:
    return statistics.median(fn() for _ in range(runs))


def operations(t: Target, n: int) -> dict[str, float]:
    """Seconds per operation, in the order the module docstring gives."""
    out: dict[str, float] = {}
    out["LOGIN+SELECT cold"], c = _open(t, n)
    c.close()
    warm = []
    for _ in range(WARM_RUNS):
        seconds, c = _open(t, n)
        warm.append(seconds)
        c.close()
    out["LOGIN+SELECT warm"] = statistics.median(warm)
    _, c = _open(t, n)
    try:
        out["UID FETCH 1:* (UID FLAGS)"] = _median(
            lambda: c.command("UID FETCH 1:* (UID FLAGS)")[0])
        out["FETCH 1:* (ENVELOPE), first"] = c.command("FETCH 1:* (ENVELOPE)")[0]
        out["FETCH 1:* (ENVELOPE), again"] = _median(lambda: c.command("FETCH 1:* (ENVELOPE)")[0])
        out[f"UID SEARCH HEADER Subject {maildata.SEARCH_WORD}"] = _median(
            lambda: c.command(f"UID SEARCH HEADER Subject {maildata.SEARCH_WORD}")[0])
        step = max(1, n // 100)
        numbers = list(range(1, n + 1, step))[:100]
        out["100 x FETCH n BODY.PEEK[]"] = _median(
            lambda: sum(c.command(f"FETCH {i} (BODY.PEEK[])")[0] for i in numbers))
        out["STORE 1:* +FLAGS (\\Seen)"] = c.command("STORE 1:* +FLAGS (\\Seen)")[0]
    finally:
        c.close()
    return out


def mbsync(t: Target, n: int, workdir: Path) -> float:
    """Seconds for mbsync to pull the INBOX into an empty local Maildir."""
    local = workdir / f"mbsync-{t.name}"
    shutil.rmtree(local, ignore_errors=True)
    (local / "mail").mkdir(parents=True)
    rc = local / "mbsyncrc"
    rc.write_text(
        f"IMAPAccount bench\nHost localhost\nPort {t.port}\nUser {USER}\n"
        f'Pass "{t.password}"\nSSLType IMAPS\nCertificateFile {t.cert}\nAuthMechs PLAIN\n\n'
        "IMAPStore remote\nAccount bench\n\n"
        f"MaildirStore local\nPath {local}/mail/\nInbox {local}/mail/INBOX\n\n"
        "Channel bench\nFar :remote:\nNear :local:\nPatterns INBOX\nCreate Near\n"
        "Sync Pull\nSyncState *\n")
    started = time.monotonic()
    proc = subprocess.run(["mbsync", "-q", "-c", str(rc), "-a"], capture_output=True,
                          text=True, timeout=1800)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"mbsync against {t.name} failed: {proc.stdout}{proc.stderr}")
    got = sum(1 for sub in ("cur", "new") for _ in (local / "mail/INBOX" / sub).iterdir())
    if got != n:
        raise RuntimeError(f"mbsync got {got} of {n} messages from {t.name}")
    shutil.rmtree(local, ignore_errors=True)
    return seconds


def idle_memory(t: Target, count: int) -> dict[str, int]:
    """Memory of the server with ``count`` sessions in IDLE on INBOX."""
    sessions = []
    try:
        for _ in range(count):
            c = IMAP(t.port, timeout=120)
            c.sock.sendall(f'a LOGIN "{USER}" "{t.password}"\r\nb SELECT INBOX\r\nc IDLE\r\n'
                           .encode())
            sessions.append(c)
        for c in sessions:
            data = b""
            while not (data.startswith(b"+ ") or b"\r\n+ " in data):
                chunk = c.sock.recv(65536)
                if not chunk or b"\r\nc NO" in data or b"\r\nc BAD" in data:
                    raise RuntimeError(f"{t.name}: IDLE refused: {data[-300:]!r}")
                data += chunk
        time.sleep(1.0 if count >= 100 else 0.3)  # lazy allocations, process starts settle
        return t.memory()
    finally:
        for c in sessions:
            c.sock.close()
        time.sleep(2.0 if count >= 100 else 0.5)  # the server tears the sessions down


def _rows(n: int, ms: dict[str, float], dv: dict[str, float], big: bool) -> list[Row]:
    rows = []
    for op, seconds in ms.items():
        target = None
        if big:
            target = 1.0 if op == "LOGIN+SELECT warm" else 1.5
        rows.append(Row("imap", f"IMAP {n:,}: {op}", "ms", seconds * 1000, "Dovecot",
                        dv[op] * 1000, False, target))
    return rows


def measure(sizes: list[int], idle: int, details: dict, rounds: int = 3) -> list[Row]:
    rows: list[Row] = []
    tmp = Path(tempfile.mkdtemp(prefix="mailstead-bench-imap-"))
    info: dict = {"sizes": sizes, "rounds": rounds, "operations_s": {}, "idle": {}}
    details["imap"] = info
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        for index, n in enumerate(sizes):
            template = tmp / f"template-{n}"
            started = time.monotonic()
            maildata.build(template, n, USER)
            print(f"  imap: built a {n}-message Maildir in {time.monotonic() - started:.1f} s",
                  flush=True)
            runs: list[dict[str, dict[str, float]]] = []
            extra: list[Row] = []
            big = n == max(sizes) and n >= 10000  # the size the targets are for
            for r in range(rounds):
                # mbsync and the IDLE sessions once, on the first size's last round; mbsync
                # on the big folder too, which has a target.
                more: Callable[[list[Target]], list[Row]] = lambda ts: []  # noqa: E731
                if r == rounds - 1 and index == 0:
                    more = partial(_first_size_rows, n=n, idle=idle, tmp=tmp, info=info,
                                   target=1.5 if big else None)
                elif r == rounds - 1 and big:
                    more = partial(_mbsync_rows, n=n, tmp=tmp, info=info, target=1.5)
                ops, got = _round(template, tmp / f"{n}-{r}", n, r, more)
                runs.append(ops)
                extra += got
            info["operations_s"][str(n)] = runs
            ops = {name: {op: statistics.median(run[name][op] for run in runs)
                          for op in runs[0][name]} for name in ("mailstead", "dovecot")}
            rows += _rows(n, ops["mailstead"], ops["dovecot"], big)
            rows += extra
            shutil.rmtree(template, ignore_errors=True)
    return rows


def _round(template: Path, workdir: Path, n: int, r: int,
           more: Callable[[list[Target]], list[Row]],
           ) -> tuple[dict[str, dict[str, float]], list[Row]]:
    """One round: a fresh copy (no index) for each server, both driven in turn, the one
    that goes first alternating, as Dovecot's figures move between runs as much as ours."""
    with ExitStack() as per_round:
        ms = Mailstead(workdir / "mailstead").prepare()
        per_round.callback(ms.close)
        maildata.copy_tree(template, ms.maildirs[USER])
        ms.start()
        dovecot = Dovecot(workdir / "dovecot", ms.cert, ms.key)
        dovecot.add_user(USER, template)
        per_round.enter_context(dovecot)
        targets = [Target("mailstead", ms.port("imaps"), ms.password, ms.cert, ms.memory),
                   Target("dovecot", dovecot.imaps, dovecot.password, ms.cert,
                          dovecot.memory)]
        ops = {}
        for t in targets if r % 2 == 0 else targets[::-1]:
            # Each on a quiet machine: not while a server is still starting, or writing
            # behind the other's last operation (its index, the disk's dirty pages).
            os.sync()
            for pid in (ms.pid, dovecot.proc.pid):
                procs.wait_idle(pid)
            ops[t.name] = operations(t, n)
        print(f"  imap {n} round {r + 1}: " + ", ".join(
            f"{op} {ops['mailstead'][op] * 1000:.0f}/{ops['dovecot'][op] * 1000:.0f} ms"
            for op in ops["mailstead"]), flush=True)
        extra = more(targets)
    shutil.rmtree(workdir, ignore_errors=True)
    return ops, extra


def _mbsync_rows(targets: list[Target], n: int, tmp: Path, info: dict,
                 target: float | None) -> list[Row]:
    sync = {t.name: mbsync(t, n, tmp) for t in targets}
    info.setdefault("mbsync_s", {})[str(n)] = sync
    print(f"  mbsync {n}: {sync}", flush=True)
    return [Row("imap", f"mbsync full sync, {n:,} messages", "s", sync["mailstead"], "Dovecot",
                sync["dovecot"], False, target)]


def _first_size_rows(targets: list[Target], n: int, idle: int, tmp: Path,
                     info: dict, target: float | None = None) -> list[Row]:
    ms, dv = targets
    rows = _mbsync_rows(targets, n, tmp, info, target)
    base = {t.name: t.memory() for t in targets}
    few = min(100, idle)
    counts = sorted({few, idle})
    mem = {t.name: {c: idle_memory(t, c) for c in counts} for t in targets}
    info["idle"] = {"baseline": base, **{name: {str(c): m for c, m in by.items()}
                                          for name, by in mem.items()}}
    print(f"  idle memory: {info['idle']}", flush=True)
    mib = 1024
    for c in counts if len(counts) > 1 else ():
        rows.append(Row("imap", f"RSS with {c:,} IDLE sessions", "MiB",
                        mem[ms.name][c]["rss_kib"] / mib, f"Dovecot, {c:,} sessions",
                        mem[dv.name][c]["rss_kib"] / mib, False))
    # The target (RSS summed over processes, as the issue words it) and, for information,
    # PSS: a page shared by Dovecot's many processes counts once in total, not once each.
    for kind in ("rss", "pss"):
        rows.append(Row("imap", f"{kind.upper()} with {idle:,} IDLE sessions", "MiB",
                        mem[ms.name][idle][f"{kind}_kib"] / mib, f"Dovecot, {few:,} sessions",
                        mem[dv.name][few][f"{kind}_kib"] / mib, False,
                        1.0 if kind == "rss" else None))
    return rows
