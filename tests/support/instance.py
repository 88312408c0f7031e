"""A real mailstead instance for protocol and e2e tests.

``Instance`` runs ``mailstead init`` (the real CLI) into a temp dir with every listener on a free
loopback port (or off) and ``[dns] nameservers`` pointed at the loopback test DNS server, then
runs ``mailstead -c ... run`` as a subprocess and waits until its ports accept connections.
"""

from __future__ import annotations

import email
import mailbox
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

from server.accounts import AccountStore
from server.config import SERVICES, load_config
from tests.support.ports import free_port, free_ports  # noqa: F401 (re-exported for tests)

MAILSTEAD = [sys.executable, "-m", "server"]
PASSWORD = "correct horse battery"
# The implemented services; the others stay off so the tests see only what exists.
RUNNING = ("mx", "submission", "submissions", "imap", "imaps", "pop3", "pop3s", "http",
           "admin")


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, int | float):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def cli(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*MAILSTEAD, *args], input=input, capture_output=True, text=True,
                          timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"mailstead {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}{proc.stderr}")
    return proc


class Instance:
    def __init__(self, root: Path, nameserver: str, domain: str = "example.test",
                 hostname: str = "mail.example.test", extra_config: str = "",
                 acme: dict | None = None):
        self.root = Path(root)
        self.data_dir = self.root / "data"
        self.domain = domain
        self.hostname = hostname
        self.ports = dict(zip(RUNNING, free_ports(len(RUNNING)), strict=True))
        listen = [f"--listen={svc}=127.0.0.1:{self.ports[svc]}" if svc in self.ports
                  else f"--listen={svc}=" for svc in SERVICES]
        cli("init", "--data-dir", str(self.data_dir), "--domain", domain, "--hostname",
            hostname, "--nameserver", nameserver, *listen)
        self.config_path = self.data_dir / "mailstead.toml"
        # init turns ACME on for a real server; a test instance must never reach Let's Encrypt,
        # so it is off unless the test brings its own CA (Pebble).
        self.set_acme(acme or {"enabled": False})
        # Cheaper password hashing keeps fixtures fast; production defaults are tested in unit.
        self.append_config("[accounts]\nargon2_memory_kib = 1024\nargon2_time_cost = 1\n"
                           + extra_config)
        self.proc: subprocess.Popen | None = None
        self.log_path = self.root / "mailstead.log"

    # --- config and accounts ---

    def set_acme(self, settings: dict) -> None:
        """Replace the [acme] table init wrote (keys: strings, bools, lists of strings)."""
        text = self.config_path.read_text()
        head, sep, rest = text.partition("\n[acme]\n")
        if sep:
            nxt = rest.find("\n[")
            rest = rest[nxt + 1:] if nxt >= 0 else ""
        lines = [f"{key} = {_toml(value)}" for key, value in settings.items()]
        self.config_path.write_text(head + "\n[acme]\n" + "\n".join(lines) + "\n\n" + rest)

    def append_config(self, text: str) -> None:
        with open(self.config_path, "a") as f:
            f.write("\n" + text + "\n")

    @property
    def config(self):
        return load_config(self.config_path)

    @property
    def accounts(self) -> AccountStore:
        return AccountStore.from_config(self.config)

    def add_user(self, address: str, **kwargs):
        store = self.accounts
        try:
            return store.add_user(address, PASSWORD, **kwargs)
        finally:
            store.close()

    def add_alias(self, source: str, *destinations: str):
        store = self.accounts
        try:
            return store.add_alias(source, list(destinations))
        finally:
            store.close()

    def maildir(self, address: str, folder: str = "") -> mailbox.Maildir:
        local, domain = address.lower().split("@")
        path = self.data_dir / "mail" / domain / local
        if folder:
            path = path / f".{folder}"
        return mailbox.Maildir(path, factory=None, create=False)

    def messages(self, address: str, folder: str = "") -> list[bytes]:
        """The mailbox's (or its ``folder``'s) messages in delivery order."""
        box = self.maildir(address, folder)
        return [box.get_bytes(key) for key in sorted(box.keys(), key=_delivery_order)]

    def parsed(self, address: str, folder: str = "") -> list[email.message.Message]:
        return [email.message_from_bytes(m) for m in self.messages(address, folder)]

    # --- process ---

    def start(self, timeout: float = 15) -> Instance:
        self.log_file = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen([*MAILSTEAD, "-c", str(self.config_path), "run"],
                                     stdout=self.log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        pending = dict(self.ports)
        while pending:
            if self.proc.poll() is not None:
                raise AssertionError(f"mailstead exited {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"mailstead did not start listening:\n{self.log()}")
            for svc, port in list(pending.items()):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    del pending[svc]
                except OSError:
                    time.sleep(0.05)
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()
        return self.proc.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if text in log:
                return log
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in log:\n{self.log()}")

    # --- clients ---

    @property
    def mx_port(self) -> int:
        return self.ports["mx"]

    def smtp(self, timeout: float = 10) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", self.mx_port, local_hostname="client.remote.test",
                              timeout=timeout)
        return client

    @property
    def submission_port(self) -> int:
        return self.ports["submission"]

    @property
    def submissions_port(self) -> int:
        return self.ports["submissions"]

    def submit(self, user: str, rcpts: list[str] | str, data: bytes, sender: str | None = None,
               implicit_tls: bool = False, mail_options: tuple[str, ...] = ()) -> dict:
        """Send as ``user`` through submission (STARTTLS, or implicit TLS) with AUTH."""
        if isinstance(rcpts, str):
            rcpts = [rcpts]
        if implicit_tls:
            client = smtplib.SMTP_SSL("127.0.0.1", self.submissions_port, timeout=10,
                                      local_hostname="laptop.example.test",
                                      context=self.tls_context())
        else:
            client = smtplib.SMTP("127.0.0.1", self.submission_port, timeout=10,
                                  local_hostname="laptop.example.test")
            client.starttls(context=self.tls_context())
        with client:
            client.login(user, PASSWORD)
            return client.sendmail(sender or user, rcpts, data, mail_options=list(mail_options))

    def spool(self):
        from server.queue.spool import Spool

        return Spool(self.data_dir / "queue")

    def tls_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.data_dir / "tls" / "cert.pem"))
        return ctx

    def send(self, rcpts: list[str] | str, data: bytes, sender: str = "bob@remote.test",
             starttls: bool = True) -> dict:
        """Send one message over the MX; returns smtplib's refused-recipients dict."""
        if isinstance(rcpts, str):
            rcpts = [rcpts]
        with self.smtp() as client:
            if starttls:
                client.starttls(context=self.tls_context())
            return client.sendmail(sender, rcpts, data)


def _delivery_order(key: str) -> tuple[int, int, str]:
    # "<sec>.M<usec>P..." : the microseconds are not zero-padded, so sort by the numbers.
    sec, _, rest = key.partition(".")
    usec = rest[1:].split("P", 1)[0] if rest.startswith("M") else "0"
    return int(sec) if sec.isdigit() else 0, int(usec) if usec.isdigit() else 0, key
