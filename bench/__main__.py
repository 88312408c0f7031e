"""``python -m bench``: mailstead against Postfix and Dovecot, same machine, same run.

Prints one table (operation, mailstead's figure, the anchor's, the ratio, the target, met?)
and writes it as ``<out>/<timestamp>.json`` and ``.png`` plus ``latest.json``/``latest.png``/
``latest.txt``, with the environment the figures were measured in. ``--quick`` runs every part
at tiny sizes (the smoke test in ``make test``); ``--only`` runs some parts. Needs root and
Debian's ``postfix``, ``dovecot-imapd``, ``dovecot-pop3d`` and ``isync``; every server it
starts listens on 127.0.0.1 only and is stopped by its PID at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import fsync_rate, report
from bench.dovecot import available as dovecot_unavailable
from bench.postfix import postfix_unavailable_reason

RESULTS = Path(__file__).parent / "results"
PARTS = ("smtp", "submission", "imap", "pop3")
TOOLS = {"smtp": ("smtp-source", "postfix"), "submission": ("smtp-sink", "postfix"),
         "imap": ("dovecot", "mbsync"), "pop3": ("dovecot",)}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes (200 messages, 500-message folders, 20 IDLE): a smoke run")
    p.add_argument("--only", default=",".join(PARTS),
                   help=f"comma-separated parts to run, of {', '.join(PARTS)}")
    p.add_argument("--messages", type=int, help="SMTP and submission messages (5000)")
    p.add_argument("--sessions", help="SMTP inbound concurrent sessions (1,10,50)")
    p.add_argument("--submission-sessions", type=int, default=10)
    p.add_argument("--imap-sizes", help="IMAP folder sizes (10000,100000)")
    p.add_argument("--pop3-messages", type=int, help="POP3 folder size (10000)")
    p.add_argument("--idle", type=int, help="concurrent IDLE sessions (1000)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = p.parse_args(argv)
    quick = args.quick
    args.messages = args.messages or (200 if quick else 5000)
    args.sessions = _ints(args.sessions or "1,10,50")
    args.imap_sizes = _ints(args.imap_sizes or ("500" if quick else "10000,100000"))
    args.pop3_messages = args.pop3_messages or (500 if quick else 10000)
    args.idle = args.idle or (20 if quick else 1000)
    args.only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(args.only) - set(PARTS)
    if unknown:
        p.error(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    return args


def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "not installed"


def environment(fsync_1: float) -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import aiosmtpd

    repo = Path(__file__).resolve().parent.parent
    commit = _version(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain",
                            "--untracked-files=no"], capture_output=True, text=True).stdout
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpus": os.cpu_count(), "cpu_model": cpu, "kernel": platform.release(),
        "machine": platform.platform(), "python": platform.python_version(),
        "memory_mib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20,
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "fsync_per_s_1_writer": round(fsync_1, 1),
        "filesystem": _version(["findmnt", "-no", "SOURCE,FSTYPE,OPTIONS", "-T",
                                tempfile.gettempdir()]),
        "mailstead_commit": commit + (" + uncommitted changes" if dirty else ""),
        "postfix": _version(["postconf", "-d", "-h", "mail_version"]),
        "dovecot": _version(["dovecot", "--version"]),
        "mbsync": _version(["mbsync", "--version"]),
        "aiosmtpd": aiosmtpd.__version__,
    }


def missing(parts: list[str]) -> list[str]:
    problems = [f"{tool} (for {part})" for part in parts for tool in TOOLS[part]
                if shutil.which(tool) is None]
    if not problems:
        if {"smtp", "submission"} & set(parts) and postfix_unavailable_reason():
            problems.append(postfix_unavailable_reason())
        if {"imap", "pop3"} & set(parts) and dovecot_unavailable():
            problems.append(dovecot_unavailable())
    return problems


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (a timeout, Ctrl-C's cousin) unwinds like an exception, so every server this
    # run started is stopped by the ``with`` blocks that started it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    problems = missing(args.only)
    if problems:
        print("cannot run: " + "; ".join(problems) + " (as root: make bench installs them)",
              file=sys.stderr)
        return 2
    started = time.monotonic()
    fsync_1 = fsync_rate.measure(threads=1, seconds=1.0 if args.quick else 3.0,
                                 where=tempfile.gettempdir())
    env = environment(fsync_1)
    print(f"mailstead benchmark ({'quick' if args.quick else 'full'}): {env['cpus']} CPUs, "
          f"{env['kernel']}, disk {fsync_1:.0f} fsyncs/s (1 writer)", flush=True)
    rows: list[report.Row] = []
    details: dict = {"arguments": {k: (str(v) if isinstance(v, Path) else v)
                                   for k, v in vars(args).items()}}
    timings = {}
    for part in PARTS:
        if part not in args.only:
            continue
        part_started = time.monotonic()
        print(f"{part} ...", flush=True)
        if part == "smtp":
            from bench import smtp_inbound
            rows += smtp_inbound.measure(args.messages, args.sessions, details,
                                         fsync_seconds=0.5 if args.quick else 3.0,
                                         rounds=1 if args.quick else 3)
        elif part == "submission":
            from bench import submission
            rows += submission.measure(args.messages, args.submission_sessions, details)
        elif part == "imap":
            from bench import imap
            rows += imap.measure(args.imap_sizes, args.idle, details,
                                  rounds=1 if args.quick else 3)
        elif part == "pop3":
            from bench import pop3
            rows += pop3.measure(args.pop3_messages, details)
        timings[part] = round(time.monotonic() - part_started, 1)
    env["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    env["seconds"] = round(time.monotonic() - started, 1)
    env["seconds_per_part"] = timings
    text = report.table(rows)
    print()
    print(text)
    met = [r.met for r in rows if r.met is not None]
    print(f"\ntargets met: {sum(met)} of {len(met)}; took {env['seconds']:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    title = (f"mailstead vs Postfix/Dovecot ({'quick' if args.quick else 'full'}), "
             f"{env['when']}, {env['cpus']} CPUs, {env['mailstead_commit']}")
    report.write_json(args.out / f"{stamp}.json", rows, env, details)
    report.write_png(args.out / f"{stamp}.png", rows, title)
    for suffix in ("json", "png"):
        shutil.copyfile(args.out / f"{stamp}.{suffix}", args.out / f"latest.{suffix}")
    (args.out / "latest.txt").write_text(text + "\n")
    print(f"written {args.out / stamp}.json, .png (and latest.*)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
