"""``python -m bench``: run every benchmark, print one table, write bench/results/*.json."""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from bench import fsync_rate, imap, smtp_inbound

RESULTS = Path(__file__).parent / "results"


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("--messages", type=int, default=2000, help="messages per SMTP run")
    p.add_argument("--sessions", default="1,10,50", help="concurrent sessions to try")
    p.add_argument("--imap-messages", default="10000,100000",
                   help="IMAP folder sizes to measure ('' to skip)")
    p.add_argument("--idle", type=int, default=1000, help="concurrent IDLE sessions")
    args = p.parse_args()
    rows = []
    rate1 = fsync_rate.measure(threads=1)
    rate16 = fsync_rate.measure(threads=16)
    rows.append(("disk: Maildir-style write+fsync+rename+dirsync, 1 thread", rate1, "ops/s"))
    rows.append(("disk: the same, 16 threads", rate16, "ops/s"))
    for n in (int(s) for s in args.sessions.split(",")):
        rate = smtp_inbound.measure(messages=args.messages, sessions=n)
        rows.append((f"SMTP inbound, 5 KB to Maildir, {n} sessions", rate, "msg/s"))
    if args.imap_messages:
        rows += imap.measure([int(n) for n in args.imap_messages.split(",")], args.idle)
    width = max(len(r[0]) for r in rows)
    print(f"{'operation':<{width}}  {'figure':>10}")
    for name, value, unit in rows:
        print(f"{name:<{width}}  {value:>10.1f} {unit}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": platform.platform(),
        "rows": [{"operation": n, "value": round(v, 1), "unit": u} for n, v, u in rows],
    }, indent=2))
    print(f"written {out}")
    return 0


raise SystemExit(main())
