"""IMAP on big folders: ``python -m bench.imap [--messages 10000,100000] [--idle 1000]``.

For each folder size, builds a Maildir of N varied 5-KB messages for one user of a real
mailstead instance on loopback and times, with imaplib over TLS, what clients do: LOGIN +
SELECT (cold: first time, index built; warm: again), ``UID FETCH 1:* (UID FLAGS)``,
``FETCH 1:* (ENVELOPE)`` (cold and cached), a header SEARCH, 100 ``BODY.PEEK[]`` and
``STORE 1:* +FLAGS.SILENT (\\Seen)``. Then opens ``--idle`` concurrent IDLE sessions and
reports the server's RSS growth. Prints a table and returns the rows (``bench`` saves them).
"""

from __future__ import annotations

import argparse
import imaplib
import os
import socket
import tempfile
import time
from pathlib import Path

from maildir import create_maildir
from tests.support.dnsserver import DEFAULT_ZONE, DNSTestServer
from tests.support.instance import PASSWORD, Instance

USER = "bench@example.test"


def message(i: int) -> bytes:
    return (f"From: Sender {i % 97} <s{i % 97}@remote.test>\r\nTo: {USER}\r\n"
            f"Subject: benchmark message {i} topic{i % 13}\r\n"
            f"Date: Sat, 28 Nov 2026 12:{i % 60:02d}:00 +0000\r\n"
            f"Message-ID: <{i}@remote.test>\r\n\r\n").encode() + (b"x" * 76 + b"\r\n") * 64


def build(root: Path, n: int) -> None:
    create_maildir(root)
    start = int(time.time()) - n
    for i in range(n):
        data = message(i)
        name = f"{start + i}.M{i}P1Q{i}R{i:016x}.bench,S={len(data)},W={len(data)}"
        (root / "new" / name).write_bytes(data)


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def login(inst) -> imaplib.IMAP4_SSL:
    c = imaplib.IMAP4_SSL("127.0.0.1", inst.ports["imaps"], ssl_context=inst.tls_context(),
                          timeout=600)
    c.login(USER, PASSWORD)
    return c


def folder_rows(inst, n: int) -> list[tuple[str, float, str]]:
    rows = []

    def row(name, seconds):
        rows.append((f"IMAP {n:,} msgs: {name}", seconds * 1000, "ms"))

    for label in ("cold", "warm"):
        t, c = timed(lambda: login(inst))
        t2, _ = timed(lambda c=c: c.select("INBOX"))
        row(f"LOGIN+SELECT ({label})", t + t2)
        if label == "cold":
            c.logout()
    row("UID FETCH 1:* (UID FLAGS)", timed(lambda: c.uid("FETCH", "1:*", "(UID FLAGS)"))[0])
    row("FETCH 1:* (ENVELOPE) cold", timed(lambda: c.fetch("1:*", "(ENVELOPE)"))[0])
    row("FETCH 1:* (ENVELOPE) cached", timed(lambda: c.fetch("1:*", "(ENVELOPE)"))[0])
    row("UID SEARCH HEADER Subject topic7",
        timed(lambda: c.uid("SEARCH", "HEADER", "Subject", "topic7"))[0])
    step = max(1, n // 100)
    row("100 x BODY.PEEK[]", timed(lambda: [c.fetch(str(i), "(BODY.PEEK[])")
                                           for i in range(1, n + 1, step)][:100])[0])
    row("STORE 1:* +FLAGS.SILENT (\\Seen)",
        timed(lambda: c.store("1:*", "+FLAGS.SILENT", "(\\Seen)"))[0])
    c.logout()
    return rows


def idle_rows(inst, count: int) -> list[tuple[str, float, str]]:
    ctx = inst.tls_context()
    before = rss_kib(inst.proc.pid)
    socks = []
    for _ in range(count):
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", inst.ports["imaps"])),
                            server_hostname="localhost")
        s.recv(4096)
        s.sendall(f'a LOGIN {USER} "{PASSWORD}"\r\nb SELECT INBOX\r\nc IDLE\r\n'.encode())
        socks.append(s)
    for s in socks:  # wait until each is idling
        data = b""
        while b"+ idling" not in data:
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError(f"IDLE session refused: {data[-200:]!r}")
            data += chunk
    after = rss_kib(inst.proc.pid)
    for s in socks:
        s.close()
    return [(f"IMAP RSS growth for {count} IDLE sessions", (after - before) / 1024, "MiB"),
            (f"IMAP RSS per IDLE session ({count})", (after - before) / count, "KiB")]


def measure(sizes: list[int], idle: int) -> list[tuple[str, float, str]]:
    rows = []
    with DNSTestServer(DEFAULT_ZONE) as dns, tempfile.TemporaryDirectory(
            dir=os.getcwd(), prefix=".bench-imap-") as tmp:
        for n in sizes:
            # Loopback is in [abuse] allow by default: no per-IP connection limit applies.
            inst = Instance(Path(tmp) / f"n{n}", dns.nameserver,
                            extra_config="[imap]\nmax_connections_per_user = 5000\n")
            user = inst.add_user(USER)
            build(user.maildir, n)
            inst.start()
            try:
                rows += folder_rows(inst, n)
                if idle and n == sizes[0]:
                    rows += idle_rows(inst, idle)
            finally:
                inst.stop()
    return rows


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.imap")
    p.add_argument("--messages", default="10000,100000")
    p.add_argument("--idle", type=int, default=1000)
    args = p.parse_args()
    for name, value, unit in measure([int(x) for x in args.messages.split(",")], args.idle):
        print(f"{name:<55} {value:>10.1f} {unit}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
