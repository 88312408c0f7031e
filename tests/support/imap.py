"""IMAP test helpers: logged-in imaplib clients against an Instance, and raw sessions."""

from __future__ import annotations

import imaplib
import re
import socket
import ssl
from pathlib import Path

from tests.support.instance import PASSWORD, Instance


def client(inst: Instance, user: str | None = None, implicit_tls: bool = True):
    """An imaplib client (IMAPS, or IMAP + STARTTLS), logged in as ``user`` if given."""
    if implicit_tls:
        c = imaplib.IMAP4_SSL("127.0.0.1", inst.ports["imaps"], ssl_context=inst.tls_context(),
                              timeout=15)
    else:
        c = imaplib.IMAP4("127.0.0.1", inst.ports["imap"], timeout=15)
        c.starttls(ssl_context=inst.tls_context())
    if user is not None:
        c.login(user, PASSWORD)
    return c


def deliver(inst: Instance, to: str, subject: str, body: str = "body", extra: str = "") -> None:
    inst.send(to, (f"From: Bob <bob@remote.test>\r\nTo: {to}\r\nSubject: {subject}\r\n"
                   f"Date: Sat, 28 Nov 2026 12:00:00 +0000\r\n{extra}\r\n{body}\r\n").encode())


def fill_cur(inst: Instance, address: str, n: int) -> None:
    """A new user with ``n`` messages put straight into cur/, unseen (SMTP would take too
    long for thousands)."""
    inst.add_user(address)
    cur = Path(inst.maildir(address)._path) / "cur"
    for i in range(n):
        data = b"From: bob@remote.test\r\nSubject: number %d\r\n\r\nbody\r\n" % i
        (cur / f"{1_700_000_000 + i}.M{i}P1.test,S={len(data)}:2,").write_bytes(data)


def lines_until_closed(line) -> list[bytes]:
    """Every line ``line()`` gives until the server hangs up."""
    lines = []
    try:
        while True:
            lines.append(line())
    except (ConnectionError, OSError):
        return lines


class Raw:
    """A raw IMAP session over TLS: send exact bytes, read untagged lines and the tagged end."""

    def __init__(self, inst: Instance, implicit_tls: bool = True, timeout: float = 15):
        port = inst.ports["imaps" if implicit_tls else "imap"]
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if implicit_tls:
            sock = inst.tls_context().wrap_socket(sock, server_hostname="localhost")
        self.sock = sock
        self.buf = b""
        self.greeting = self.line()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def line(self) -> bytes:
        """One response line; a literal is read and kept inline."""
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; pending {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        match = re.search(rb"\{(\d+)\}$", line)
        if match:
            size = int(match[1])
            while len(self.buf) < size:
                self.buf += self.sock.recv(65536)
            literal, self.buf = self.buf[:size], self.buf[size:]
            return line + b"\r\n" + literal + self.line()
        return line

    def cmd(self, tag: str, text: str | bytes) -> tuple[list[bytes], bytes]:
        """Send ``tag text`` and return (untagged/continuation lines, the tagged line)."""
        data = text.encode() if isinstance(text, str) else text
        self.send(tag.encode() + b" " + data + b"\r\n")
        return self.until(tag)

    def until(self, tag: str) -> tuple[list[bytes], bytes]:
        lines = []
        while True:
            line = self.line()
            if line.startswith(tag.encode() + b" "):
                return lines, line
            lines.append(line)

    def login(self, user: str) -> None:
        _, done = self.cmd("L", f'LOGIN {user} "{PASSWORD}"')
        assert done.startswith(b"L OK"), done

    def lines_until_closed(self) -> list[bytes]:
        return lines_until_closed(self.line)

    def closed(self, timeout: float = 5) -> bool:
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
            return True
        except TimeoutError:
            return False


__all__ = ["PASSWORD", "Raw", "client", "deliver"]
