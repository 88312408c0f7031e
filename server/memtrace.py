"""Opt-in memory accounting for finding what grows (the soak test's ``--memtrace``).

With ``MAILSTEAD_MEMTRACE=<dir>`` in the environment, ``mailstead run`` starts a thread that
every ``MAILSTEAD_MEMTRACE_EVERY`` seconds (default 30) appends one JSON line to
``<dir>/stats.jsonl``: RSS, glibc malloc's bytes in use and free (mallinfo2), SQLite's own
allocations (``sqlite3_memory_used``), and live objects by type (``gc.get_objects``). These are
cheap enough to leave the server's timing alone. ``MAILSTEAD_MEMTRACE_FRAMES=N`` also starts
tracemalloc with N frames and writes a snapshot next to each line; that slows the server down
severalfold. Diff two snapshots with ``python -m server.memtrace OLD NEW``, or the object
counts of the first and last lines with ``python -m server.memtrace DIR/stats.jsonl``.
Never for production.
"""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import os
import sys
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path

log = logging.getLogger("mailstead")

ENV = "MAILSTEAD_MEMTRACE"


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _native_counters():
    """(malloc in use, malloc free, sqlite in use) in bytes, each None where unavailable."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        libc = None
    try:
        sqlite = ctypes.CDLL("libsqlite3.so.0")  # the copy the sqlite3 module has loaded
        sqlite.sqlite3_memory_used.restype = ctypes.c_int64
    except (OSError, AttributeError):
        sqlite = None

    def read():
        info = libc.mallinfo2() if libc is not None else None
        return (info and info.uordblks + info.hblkhd, info and info.fordblks,
                sqlite.sqlite3_memory_used() if sqlite is not None else None)
    return read


def _rss_kib() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out


def sample(started: float, native) -> dict:
    malloc_used, malloc_free, sqlite_used = native()
    types = Counter(type(o).__qualname__ for o in gc.get_objects())
    return {"t": round(time.monotonic() - started), **_rss_kib(),
            "malloc_used": malloc_used, "malloc_free": malloc_free, "sqlite_used": sqlite_used,
            "threads": threading.active_count(), "objects": dict(types.most_common(80))}


def start_from_env() -> None:
    target = os.environ.get(ENV)
    if not target:
        return
    directory = Path(target)
    directory.mkdir(parents=True, exist_ok=True)
    every = float(os.environ.get(f"{ENV}_EVERY", "30"))
    frames = int(os.environ.get(f"{ENV}_FRAMES", "0"))
    if frames:
        tracemalloc.start(frames)
    started = time.monotonic()
    native = _native_counters()

    def run_forever() -> None:
        with open(directory / "stats.jsonl", "a") as out:
            while True:
                time.sleep(every)
                line = sample(started, native)
                out.write(json.dumps(line) + "\n")
                out.flush()
                if frames:
                    snapshot = tracemalloc.take_snapshot().filter_traces(
                        [tracemalloc.Filter(False, tracemalloc.__file__)])
                    snapshot.dump(str(directory / f"snapshot-{line['t']:06d}.pickle"))

    threading.Thread(target=run_forever, name="memtrace", daemon=True).start()
    log.warning("memtrace on: stats every %g s in %s%s", every, directory,
                f", tracemalloc with {frames} frames" if frames else "")


def diff_snapshots(old: str, new: str, limit: int = 25) -> None:
    stats = tracemalloc.Snapshot.load(new).compare_to(tracemalloc.Snapshot.load(old),
                                                      "traceback")
    print(f"total {sum(s.size_diff for s in stats) / 1024:+.0f} KiB "
          f"({sum(s.count_diff for s in stats):+d} blocks)")
    for stat in stats[:limit]:
        print(f"\n{stat.size_diff / 1024:+.1f} KiB, {stat.count_diff:+d} blocks "
              f"(now {stat.size / 1024:.0f} KiB in {stat.count})")
        for line in stat.traceback.format()[-16:]:
            print("   ", line)


def diff_stats(path: str, start: int = 1) -> None:
    """Each sample against line ``start`` (0-based): native counters, then object counts."""
    lines = [json.loads(x) for x in Path(path).read_text().splitlines()]
    mib = 1 << 20
    for line in lines:
        used, free, sqlite = (line[k] or 0 for k in ("malloc_used", "malloc_free", "sqlite_used"))
        print(f"{line['t']:5d}s RSS {line['VmRSS'] / 1024:6.1f} anon {line['RssAnon'] / 1024:6.1f}"
              f" malloc used {used / mib:6.1f} free {free / mib:6.1f} sqlite {sqlite / mib:6.1f}"
              f" MiB, {line['threads']} threads, {sum(line['objects'].values())} objects")
    first, last = lines[min(start, len(lines) - 1)]["objects"], lines[-1]["objects"]
    changes = {k: last.get(k, 0) - first.get(k, 0) for k in first.keys() | last.keys()}
    for name, change in sorted(changes.items(), key=lambda kv: -abs(kv[1]))[:30]:
        print(f"  {change:+8d} {name} (now {last.get(name, 0)})")


if __name__ == "__main__":
    if sys.argv[1].endswith(".jsonl"):
        diff_stats(sys.argv[1], *map(int, sys.argv[2:3]))
    else:
        diff_snapshots(*sys.argv[1:3])
