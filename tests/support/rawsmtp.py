"""A bare SMTP client over a socket: exact bytes out, whole replies in.

smtplib normalises what it sends; attack tests need to send exactly the bytes an attacker would.
"""

from __future__ import annotations

import socket
import ssl


class RawSMTP:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10):
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection((host, port), timeout)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawSMTP:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed; pending {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self) -> tuple[int, list[str]]:
        """One (possibly multi-line) reply: its code and its text lines."""
        lines = []
        while True:
            line = self._line().decode("utf-8", "replace")
            lines.append(line)
            if line[3:4] != "-":
                return int(line[:3]), [ln[4:] for ln in lines]

    def raw_reply_lines(self) -> list[str]:
        lines = []
        while True:
            line = self._line().decode("utf-8", "replace")
            lines.append(line)
            if line[3:4] != "-":
                return lines

    def cmd(self, line: str | bytes) -> tuple[int, list[str]]:
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.send(line + b"\r\n")
        return self.reply()

    def closed(self, timeout: float = 5) -> bool:
        """True once the server has closed the connection (after any pending data)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    def starttls(self, context: ssl.SSLContext, server_hostname: str = "localhost") -> None:
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)
        self.buf = b""
