"""Postfix anchors: a private Postfix delivering to a Maildir, one relaying to ``smtp-sink``.

Both are ``tests.support.postfix.PostfixPeer`` instances (own config, queue and data
directories, ``smtpd`` on a loopback port, DNS lookups off, started with ``postfix -c DIR
start``, stopped by the master's PID) with Postfix's default process and concurrency limits.

- ``inbound_postfix``: the MX of ``example.test``; ``virtual(8)`` delivers every recipient to
  one Maildir (``root/mail/Maildir``), fsyncing each file before the rename as Postfix always
  does; the queue file is fsynced before the 250. Nothing can leave: no SMTP client service.
- ``relay_postfix``: accepts anything from 127.0.0.0/8 (``permit_mynetworks``, no AUTH: Postfix
  would need a SASL server for that) and relays it with its ``smtp(8)`` client to
  ``relayhost = [127.0.0.1]:<sink>``; master.cf gets the ``smtp`` service the test peer lacks.

``SMTPSink`` is Postfix's ``smtp-sink``, the remote MX of the submission benchmark: it accepts
everything, stores nothing, and counts messages (``-c``) on its stdout.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench import procs
from tests.support.postfix import PostfixPeer, postfix_unavailable_reason

__all__ = ["SMTPSink", "inbound_postfix", "postfix_unavailable_reason", "relay_postfix"]


def inbound_postfix(root: Path) -> PostfixPeer:
    return PostfixPeer(root, domain="example.test", hostname="mx.example.test",
                       main_cf={"smtpd_tls_security_level": "none"})


class _RelayPeer(PostfixPeer):
    def write_config(self) -> None:
        super().write_config()
        master = self.config_dir / "master.cf"
        master.write_text(master.read_text()
                          + "smtp           unix  -       -      n      -      -       smtp\n")
        past = time.time() - 60  # see PostfixPeer.write_config: an old file starts faster
        os.utime(master, (past, past))


def relay_postfix(root: Path, sink_port: int) -> PostfixPeer:
    return _RelayPeer(root, domain="example.test", hostname="mail.example.test", main_cf={
        "relayhost": f"[127.0.0.1]:{sink_port}",
        "default_transport": "smtp",
        "relay_transport": "smtp",
        "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
        "smtpd_recipient_restrictions": "permit_mynetworks, reject",
        "smtp_tls_security_level": "none",
        "smtpd_tls_security_level": "may",
    })


class SMTPSink:
    """``smtp-sink`` on a loopback port; ``received`` is its message counter."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.workdir = Path(workdir)
        self.port = port or procs.free_ports(1)[0]
        self.proc: subprocess.Popen | None = None
        self.received = 0
        self._reader: threading.Thread | None = None

    def start(self) -> SMTPSink:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # -u: the user it runs as once bound (it refuses to stay root); -c: counters on stdout.
        self.proc = subprocess.Popen(
            ["smtp-sink", "-c", "-u", "nobody", f"127.0.0.1:{self.port}", "1024"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tempfile.gettempdir())
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        procs.wait_port(self.port, proc=self.proc)
        return self

    def _read(self) -> None:
        # "sess=N quit=N mesg=N\r", rewritten in place as messages arrive.
        buf = b""
        while True:
            chunk = self.proc.stdout.read1(65536)
            if not chunk:
                return
            buf = (buf + chunk)[-256:]
            found = re.findall(rb"mesg=(\d+)", buf)
            if found:
                self.received = int(found[-1])

    def wait_for(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.received < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def stop(self) -> None:
        procs.stop(self.proc)

    def __enter__(self) -> SMTPSink:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
