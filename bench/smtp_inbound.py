"""SMTP inbound: messages/s from Postfix's ``smtp-source`` into an fsynced Maildir.

Three servers run side by side: mailstead's MX, a private Postfix delivering to a Maildir with
``virtual(8)``, and bare aiosmtpd storing with mailstead's fsync pattern (``bench.ceiling``).
For each session count the three are driven one after the other with the same command:
``smtp-source -s S -m N -l 5120`` (one message per connection, as MX traffic arrives; plain
SMTP: smtp-source speaks no STARTTLS). A figure is N divided by the time from starting
smtp-source until the N-th message is in the Maildir's ``new/`` -- for mailstead and aiosmtpd
that is the last 250; Postfix answers 250 once the message is in its queue and delivers
after, so its figure includes draining the queue.

The disk's limit is measured in the same run: ``fsync_rate`` with as many writer threads as
there are sessions, each doing write + fsync + rename + fsync(dir) in a loop.

This disk's fsync rate drifts by a factor of two within minutes, and every figure here moves
with it. So the session counts that have targets are measured in ``rounds``: each round
measures the limit and then drives the three servers, starting with a different one each
round; a figure is the median of its rounds, and every round is kept in the JSON.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench import fsync_rate, procs
from bench.instance import USER, Mailstead
from bench.postfix import inbound_postfix
from bench.report import Row

SIZE = 5120
TIMEOUT = 900


def _clear(new: Path) -> None:
    for entry in os.scandir(new):
        os.unlink(entry.path)
    os.sync()  # the deletions' writeback must not land in the next run


def _count(new: Path) -> int:
    with os.scandir(new) as it:
        return sum(1 for _ in it)


def drive(port: int, new: Path, messages: int, sessions: int) -> float:
    """Messages/s: smtp-source start until ``new/`` holds every message."""
    _clear(new)
    cmd = ["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(SIZE),
           "-f", "sender@remote.test", "-t", USER, "-M", "client.remote.test",
           f"127.0.0.1:{port}"]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stdout}{proc.stderr}")
    deadline = time.monotonic() + TIMEOUT
    while (count := _count(new)) < messages:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {count} of {messages} messages arrived in {new}")
        time.sleep(0.005)
    return messages / (time.monotonic() - started)


def measure(messages: int, sessions: list[int], details: dict,
            fsync_seconds: float = 3.0, rounds: int = 3) -> list[Row]:
    rows: list[Row] = []
    tmp = Path(tempfile.mkdtemp(prefix="mailstead-bench-smtp-"))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        ms = Mailstead(tmp / "mailstead")
        stack.callback(ms.close)
        ms.start()
        postfix = inbound_postfix(tmp / "postfix")
        stack.callback(postfix.stop)
        postfix.start()
        ceiling_port = procs.free_ports(1)[0]
        ceiling_dir = tmp / "ceiling" / "Maildir"
        ceiling = subprocess.Popen(
            [sys.executable, "-m", "bench.ceiling", "--port", str(ceiling_port),
             "--maildir", str(ceiling_dir)], cwd=Path(__file__).parent.parent,
            stdout=subprocess.DEVNULL, stderr=open(tmp / "ceiling.log", "wb"))  # noqa: SIM115
        stack.callback(procs.stop, ceiling)
        procs.wait_port(ceiling_port, proc=ceiling)
        targets = {
            "mailstead": (ms.port("mx"), ms.maildirs[USER] / "new"),
            "postfix": (postfix.port, postfix.maildir / "new"),
            "aiosmtpd": (ceiling_port, ceiling_dir / "new"),
        }
        warm = min(200, max(20, messages // 10))
        for port, new in targets.values():  # wake every server, fill caches
            drive(port, new, warm, min(10, sessions[-1]))
        runs: dict[str, list[dict[str, float]]] = {}
        limits: dict[int, float] = {}
        for s in sessions:
            runs[str(s)] = []
            for r in range(rounds if s >= 10 else 1):
                names = list(targets)
                names = names[r % len(names):] + names[:r % len(names)]
                one = {"fsync limit": fsync_rate.measure(threads=s, seconds=fsync_seconds,
                                                         where=str(tmp))}
                for name in names:
                    port, new = targets[name]
                    one[name] = drive(port, new, messages, s)
                runs[str(s)].append({k: round(v, 1) for k, v in one.items()})
                print(f"  smtp inbound {s} sessions, round {r + 1}: {runs[str(s)][-1]}",
                      flush=True)
            rate = {k: statistics.median(run[k] for run in runs[str(s)])
                    for k in runs[str(s)][0]}
            limits[s] = rate["fsync limit"]
            target = 1.0 if s >= 10 else None
            rows.append(Row("smtp", f"SMTP inbound, {s} session{'s' * (s > 1)}", "msg/s",
                            rate["mailstead"], "Postfix", rate["postfix"], True, target))
            rows.append(Row("smtp", f"SMTP inbound, {s} session{'s' * (s > 1)}", "msg/s",
                            rate["mailstead"], "bare aiosmtpd", rate["aiosmtpd"], True))
            rows.append(Row("smtp", f"SMTP inbound, {s} session{'s' * (s > 1)}", "msg/s",
                            rate["mailstead"], f"fsync limit, {s} writer{'s' * (s > 1)}",
                            limits[s], True, 0.7 if s >= 10 else None))
        details["fsync_per_s_by_writers"] = {str(s): round(v, 1) for s, v in limits.items()}
        details["smtp_inbound"] = {"messages": messages, "size": SIZE, "rounds": runs}
    return rows
