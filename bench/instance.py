"""mailstead under benchmark: a real instance on loopback ports, configured for load.

Built on the tests' ``Instance`` (``mailstead init`` into a temp dir, ``mailstead run`` as a
subprocess) with the loopback test DNS server. What the benchmark changes from the defaults,
and why:

- ``[inbound]`` SPF, DKIM, DMARC and ARC checks off: the Postfix anchor does none, and their
  DNS lookups would go to the tests' Python DNS server, which would then be what is measured.
- ``[abuse]``, ``[imap]``, ``[smtp]`` connection and sending limits raised: one loopback client
  opens 50 SMTP sessions at once, 1,000 IMAP sessions for one user and submits thousands of
  messages an hour, all of which the defaults rightly refuse.
- ``[outbound] mx_port``: the remote MX (``remote.test`` -> 127.0.0.1 in the test zone) is the
  benchmark's ``smtp-sink``.
- argon2 is the tests' cheap setting (1 MiB, 1 pass): logins are not what is measured.

A key that this checkout's config does not know is left out, so the benchmark keeps running
while the config grows.
"""

from __future__ import annotations

import dataclasses
from contextlib import ExitStack
from pathlib import Path

from bench import procs
from server.config import SECTIONS
from tests.support.dnsserver import DEFAULT_ZONE, DNSTestServer
from tests.support.instance import PASSWORD, Instance

USER = "bench@example.test"
POP_USER = "pop@example.test"
SENDER = "sender@example.test"

SETTINGS: dict[str, dict[str, object]] = {
    "inbound": {"spf": False, "dkim": False, "dmarc": False, "arc": False},
    "abuse": {"ban_after": 0, "max_connections_per_ip": 100000,
              "connection_rate_per_ip": 1000000, "max_messages_per_hour": 1000000,
              "max_recipients_per_hour": 1000000},
    "smtp": {"max_connections": 5000},
    "imap": {"max_connections": 5000, "max_connections_per_user": 5000},
    "pop3": {"max_connections": 5000},
}


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def bench_config(extra: dict[str, dict[str, object]] | None = None) -> str:
    """TOML for the sections above (init writes none of them), known keys only."""
    tables = {name: dict(values) for name, values in SETTINGS.items()}
    for name, values in (extra or {}).items():
        tables.setdefault(name, {}).update(values)
    out = []
    for name, values in tables.items():
        section = SECTIONS.get(name)
        if section is None:
            continue
        known = {f.name for f in dataclasses.fields(section)}
        lines = [f"{key} = {_toml(value)}" for key, value in values.items() if key in known]
        if lines:
            out.append(f"[{name}]\n" + "\n".join(lines) + "\n")
    return "\n".join(out)


class Mailstead:
    """``with Mailstead(root) as ms``: a running instance; ``ms.inst`` is the tests' Instance."""

    password = PASSWORD

    def __init__(self, root: Path, users: tuple[str, ...] = (USER,),
                 extra: dict[str, dict[str, object]] | None = None):
        self.root = Path(root)
        self.users = users
        self.extra = extra
        self._stack = ExitStack()
        self.inst: Instance | None = None
        self.maildirs: dict[str, Path] = {}

    def prepare(self) -> Mailstead:
        """init the instance and add the users; ``start()`` runs it."""
        dns = self._stack.enter_context(DNSTestServer(DEFAULT_ZONE))
        self.inst = Instance(self.root, dns.nameserver, extra_config=bench_config(self.extra))
        for user in self.users:
            self.maildirs[user] = Path(self.inst.add_user(user).maildir)
        return self

    def start(self) -> Mailstead:
        if self.inst is None:
            self.prepare()
        procs.raise_fd_limit()
        self.inst.start(timeout=60)
        return self

    def stop(self) -> None:
        if self.inst is not None:
            self.inst.stop()

    def close(self) -> None:
        self.stop()
        self._stack.close()

    def __enter__(self) -> Mailstead:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def pid(self) -> int:
        return self.inst.proc.pid

    def memory(self) -> dict[str, int]:
        """The server process and any workers it started."""
        return procs.memory(procs.tree(self.pid))

    def port(self, service: str) -> int:
        return self.inst.ports[service]

    @property
    def cert(self) -> Path:
        return self.inst.data_dir / "tls" / "cert.pem"

    @property
    def key(self) -> Path:
        return self.inst.data_dir / "tls" / "key.pem"
