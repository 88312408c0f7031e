"""Log lines for failed logins, bans and refusals, in the one format the fail2ban filter reads.

Each line goes to the ``mailstead.abuse`` logger (stderr, the journal under systemd) and, when
``[abuse] fail2ban_log`` is set, to that file too, prefixed with an ISO 8601 time and
``mailstead[abuse]:``. ``ansible/roles/mailstead/files/fail2ban-filter.conf`` matches::

    conn=3f2a9 auth failure service=imap rhost=192.0.2.7 user="alice@example.com"
    conn=- ban rhost=192.0.2.7 net=192.0.2.7 until=2025-01-01T13:00:00+00:00 failures=10

The client's address comes before anything the client chose, and the user name is written as a
JSON string (quoted, control characters escaped, cut to 100 characters): a login name such as
``x rhost=198.51.100.1`` or one with a newline in it must never make fail2ban ban someone else
(log injection, the classic fail2ban attack).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import UTC, datetime

log = logging.getLogger("mailstead.abuse")

FILE_TAG = "mailstead[abuse]:"
_MAX_USER = 100


def quote_user(name: str) -> str:
    return json.dumps(name[:_MAX_USER], ensure_ascii=True)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def auth_failure_line(service: str, ip: str, user: str, conn_id: str = "-") -> str:
    return (f"conn={conn_id or '-'} auth failure service={service} rhost={ip} "
            f"user={quote_user(user)}")


def ban_line(ip: str, key: str, until: float, failures: int, conn_id: str = "-") -> str:
    net = key.split(":", 1)[1]
    return (f"conn={conn_id or '-'} ban rhost={ip} net={net} until={iso(until)} "
            f"failures={failures}")


class AbuseLog:
    """Writes the lines above; the file is opened per line (append), so that logrotate can
    move it away at any moment without a restart or a ``copytruncate``."""

    def __init__(self, fail2ban_log: str = "", clock=time.time):
        self.path = fail2ban_log
        self.clock = clock
        self._lock = threading.Lock()  # the admin panel reports from its worker threads

    def emit(self, level: int, line: str) -> None:
        log.log(level, "%s", line)
        if not self.path:
            return
        text = f"{iso(self.clock())} {FILE_TAG} {line}\n"
        try:
            with self._lock, open(self.path, "a", encoding="ascii", errors="replace") as f:
                f.write(text)
        except OSError as err:
            # A full disk or a bad path must not turn a failed login into a server error.
            log.error("cannot write [abuse] fail2ban_log %s: %s", self.path, err)
