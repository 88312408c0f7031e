"""Abuse-defence tests: an instance with small limits, and clients from chosen loopback addresses.

Every address in 127.0.0.0/8 reaches the loopback listeners, so each test attacks from its own
source address (``source(n)``) and a ban or a connection count of one test never touches
another. The instance's ``[abuse] allow`` is only ``ALLOWED`` (not loopback, the default).
"""

from __future__ import annotations

import imaplib
import poplib
import socket
import time

from tests.support.instance import PASSWORD, Instance

DELAY = 0.15  # [accounts] auth_failure_delay: waits of 0.15, 0.3, 0.6 s after 2 failures
BAN_AFTER = 4
ALLOWED = "127.0.0.250"
CONFIG = f"""auth_failure_delay = {DELAY}

[abuse]
allow = ["{ALLOWED}/32"]
ban_after = {BAN_AFTER}
ban_time = 60
fail2ban_log = "fail2ban.log"
max_connections_per_ip = 3
connection_rate_per_ip = 12
max_messages_per_hour = 3
max_recipients_per_hour = 5
"""
WRONG = "not the password"
# The accounts of the test_abuse_* modules (each guesses at its own: the per-account delay).
USERS = ("ivy@example.test", "paul@example.test", "sam@example.test", "sally@example.test",
         "wanda@example.test", "ada@example.test")


def source(n: int) -> str:
    return f"127.0.0.{n}"


def start(root, dns_server, *users: str) -> Instance:
    """A running instance with CONFIG (appended under [accounts], see Instance)."""
    inst = Instance(root, dns_server.nameserver, extra_config=CONFIG)
    for user in users:
        inst.add_user(user)
    return inst.start()


def timed(func, *args, **kwargs) -> tuple[float, object]:
    """(seconds taken, result or the exception raised)."""
    began = time.monotonic()
    try:
        result = func(*args, **kwargs)
    except Exception as err:  # the caller asserts on it
        result = err
    return time.monotonic() - began, result


def assert_growing(waits: list[float]) -> None:
    """Attempts 1-2 are free, 3 waits DELAY, 4 waits 2 * DELAY (loosely: a busy machine
    adds time, never removes it)."""
    assert waits[2] >= DELAY * 0.9, waits
    assert waits[3] >= 2 * DELAY * 0.9, waits
    assert waits[3] > waits[0] + DELAY, waits


def eventually(func, timeout: float = 3.0):
    """``func()``'s result, retried while it raises: the server frees a connection's slot a
    moment after the client has seen the connection end."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return func()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def connect(inst: Instance, service: str, ip: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", inst.ports[service]), timeout=10,
                                    source_address=(ip, 0))


def first_line(inst: Instance, service: str, ip: str) -> bytes:
    """The greeting (or refusal) of a plaintext service to a new connection from ``ip``."""
    with connect(inst, service, ip) as sock:
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.split(b"\r\n", 1)[0]


class IMAP(imaplib.IMAP4_SSL):
    """IMAPS from a chosen source address."""

    def __init__(self, inst: Instance, ip: str):
        self.source_ip = ip
        super().__init__("127.0.0.1", inst.ports["imaps"], ssl_context=inst.tls_context(),
                         timeout=10)

    def _create_socket(self, timeout):
        sock = socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self.source_ip, 0))
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


class POP3(poplib.POP3_SSL):
    """POP3S from a chosen source address."""

    def __init__(self, inst: Instance, ip: str):
        self.source_ip = ip
        super().__init__("127.0.0.1", inst.ports["pop3s"], context=inst.tls_context(),
                         timeout=10)

    def _create_socket(self, timeout):
        sock = socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self.source_ip, 0))
        return self.context.wrap_socket(sock, server_hostname=self.host)


__all__ = ["PASSWORD"]
