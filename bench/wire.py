"""Lean IMAP and POP3 clients over TLS that time commands, not their own parsing.

imaplib parses every response line with regular expressions in Python, which on a
100,000-line FETCH costs more than some servers take to send it. These clients send one
command and read raw bytes until the response is complete -- for IMAP the tagged status
line, for POP3 the single line or the ``.`` terminator -- so a timing is the server's work
plus the loopback round trip and TLS. Responses are kept only when asked for.
"""

from __future__ import annotations

import itertools
import socket
import ssl
import time

HOST = "127.0.0.1"
_BUF = 1 << 20


def _context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # loopback benchmark: whose certificate is not the question
    return ctx


_CTX = _context()


class IMAP:
    def __init__(self, port: int, timeout: float = 900):
        self.sock = _CTX.wrap_socket(socket.create_connection((HOST, port), timeout=timeout),
                                     server_hostname="localhost")
        self._tags = itertools.count(1)
        self.greeting = self.sock.recv(4096)

    def command(self, text: str, keep: bool = False) -> tuple[float, bytes]:
        """Send ``text``; seconds until the tagged reply, and the response if ``keep``."""
        tag = f"B{next(self._tags):05d}".encode()
        started = time.perf_counter()
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        parts, tail = [], b""
        while True:
            chunk = self.sock.recv(_BUF)
            if not chunk:
                raise ConnectionError(f"server closed the connection during {text!r}")
            if keep:
                parts.append(chunk)
            tail = (tail + chunk)[-4096:]
            if tail.endswith(b"\r\n"):
                cut = tail.rfind(b"\r\n", 0, len(tail) - 2)
                line = tail[cut + 2:] if cut >= 0 else tail
                if line.startswith(tag + b" ") and (cut >= 0 or len(tail) < 4096):
                    break
        seconds = time.perf_counter() - started
        status = line[len(tag) + 1:].split(b" ", 1)[0]
        if status != b"OK":
            raise RuntimeError(f"{text!r}: {line.strip()!r}")
        return seconds, b"".join(parts)

    def login(self, user: str, password: str) -> float:
        return self.command(f'LOGIN "{user}" "{password}"')[0]

    def close(self) -> None:
        try:
            self.command("LOGOUT")
        except (OSError, RuntimeError):
            pass
        self.sock.close()


class POP3:
    def __init__(self, port: int, timeout: float = 900):
        self.sock = _CTX.wrap_socket(socket.create_connection((HOST, port), timeout=timeout),
                                     server_hostname="localhost")
        self.greeting = self._read(multi=False)[1]

    def _read(self, multi: bool) -> tuple[float, bytes]:
        started = time.perf_counter()
        data = bytearray()
        while True:
            chunk = self.sock.recv(_BUF)
            if not chunk:
                raise ConnectionError("server closed the connection")
            data += chunk
            if not data.endswith(b"\r\n"):
                continue
            if data.startswith(b"-ERR"):
                raise RuntimeError(bytes(data[:200]).decode(errors="replace"))
            if not multi or data.endswith(b"\r\n.\r\n"):
                break
        return time.perf_counter() - started, bytes(data)

    def command(self, text: str, multi: bool = False) -> tuple[float, bytes]:
        started = time.perf_counter()
        self.sock.sendall(text.encode() + b"\r\n")
        _, data = self._read(multi)
        return time.perf_counter() - started, data

    def close(self) -> None:
        try:
            self.command("QUIT")
        except (OSError, RuntimeError):
            pass
        self.sock.close()
