"""POP3 on a big INBOX, mailstead against Dovecot on a copy of the same Maildir.

A Maildir of N messages (``maildata``) is linked into a mailstead user and a Dovecot user;
over POP3S, with ``wire.POP3`` timing each command, a download client's session: USER/PASS
(the first login: the server lists the folder and, with no index yet, builds what it needs),
``LIST``, ``UIDL``, then ``RETR`` of every message, one command at a time, and QUIT with
nothing deleted. mailstead marks retrieved messages \\Seen for IMAP at QUIT; Dovecot by
default does not (its QUIT is timed too, in the JSON details).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench import maildata, procs
from bench.dovecot import Dovecot
from bench.instance import POP_USER, Mailstead
from bench.report import Row
from bench.wire import POP3


def session(port: int, user: str, password: str, n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    started = time.perf_counter()
    c = POP3(port)
    c.command(f"USER {user}")
    c.command(f"PASS {password}")
    out["login"] = time.perf_counter() - started
    seconds, data = c.command("LIST", multi=True)
    out["LIST"] = seconds
    listed = data.count(b"\r\n") - 2
    if listed != n:
        raise RuntimeError(f"LIST on port {port} gave {listed} messages, expected {n}")
    out["UIDL"] = c.command("UIDL", multi=True)[0]
    out[f"RETR x {n:,}"] = sum(c.command(f"RETR {i}", multi=True)[0] for i in range(1, n + 1))
    out["QUIT"] = c.command("QUIT")[0]
    c.sock.close()
    return out


def measure(n: int, details: dict) -> list[Row]:
    tmp = Path(tempfile.mkdtemp(prefix="mailstead-bench-pop3-"))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        template = tmp / "template"
        maildata.build(template, n, POP_USER)
        ms = Mailstead(tmp / "mailstead", users=(POP_USER,)).prepare()
        stack.callback(ms.close)
        maildata.copy_tree(template, ms.maildirs[POP_USER])
        ms.start()
        dovecot = Dovecot(tmp / "dovecot", ms.cert, ms.key)
        dovecot.add_user(POP_USER, template)
        stack.enter_context(dovecot)
        for pid in (ms.pid, dovecot.proc.pid):  # neither timed while still starting
            procs.wait_idle(pid)
        got = {"mailstead": session(ms.port("pop3s"), POP_USER, ms.password, n),
               "dovecot": session(dovecot.pop3s, POP_USER, dovecot.password, n)}
    details["pop3"] = {"messages": n, "seconds": got}
    print(f"  pop3 {n:,}: " + ", ".join(
        f"{op} {got['mailstead'][op] * 1000:.0f}/{got['dovecot'][op] * 1000:.0f} ms"
        for op in got["mailstead"]), flush=True)
    return [Row("pop3", f"POP3 {n:,}: {op}", "ms", got["mailstead"][op] * 1000, "Dovecot",
                got["dovecot"][op] * 1000, False)
            for op in got["mailstead"] if op != "QUIT"]
