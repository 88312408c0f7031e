"""Process plumbing for the benchmark: free ports, waiting for listeners, memory of a tree.

Every server the benchmark starts is a child process it stops again by its own PID (or, for
Postfix, by its master's PID from its own pid file); nothing here looks processes up by name.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.support.ports import free_ports  # noqa: F401 (the same race-free ports as the tests)

HOST = "127.0.0.1"


def wait_port(port: int, timeout: float = 20, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process {proc.args!r} exited {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {HOST}:{port} after {timeout}s") from None
            time.sleep(0.05)


def stop(proc: subprocess.Popen | None, timeout: float = 20) -> None:
    """SIGTERM the process we started, SIGKILL it if it does not go."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def raise_fd_limit(want: int = 65536) -> None:
    """1,000 IDLE sessions need more than the usual 1,024 descriptors, here and in servers."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rpartition(b")")[2].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    kids = _children()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory(pids: list[int]) -> dict[str, int]:
    """Summed VmRSS and PSS (KiB) of ``pids``; RSS counts shared pages once per process."""
    return {"rss_kib": sum(_status_kib(p, "VmRSS") for p in pids),
            "pss_kib": sum(_pss_kib(p) for p in pids), "processes": len(pids)}


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of ``pids`` so far (processes gone meanwhile count 0)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / tick


def wait_idle(pid: int, busy: float = 0.05, window: float = 0.25, timeout: float = 20) -> float:
    """Wait until the tree of ``pid`` uses under ``busy`` of one CPU over ``window`` seconds
    (a server done starting: mailstead's SMTP worker processes import for a second or two
    after its ports listen, and a figure timed meanwhile shares the machine with them).
    Returns the seconds waited; gives up quietly after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = cpu_seconds(tree(pid))
        time.sleep(window)
        if cpu_seconds(tree(pid)) - before < busy * window:
            break
    return time.monotonic() - started
