"""Abuse defence shared by every service: bans, connection limits, sending limits, their log.

One ``Guard`` per process (made in ``server/runner.py``), configured by ``[abuse]``:

- ``AuthThrottle.failure`` reports each failed login here (``auth_failure``): it is logged in
  the fail2ban format (``events``) and counted towards a ban of the client (``bans``).
- Every listener calls ``admit(ip, service)`` as a connection arrives and gets a ``Slot`` to
  ``release()`` when it ends, or ``Refused``: the client is banned, over the connections a
  minute, or over the connections at once (``connections``). Each protocol answers that with
  its own temporary refusal (SMTP 421 4.7.0, IMAP ``* BYE``, POP3 ``-ERR [SYS/TEMP]``, HTTP
  403/429/503) and hangs up.
- Submission asks ``sending`` before each MAIL FROM and RCPT TO (``sending``).

Networks in ``[abuse] allow`` are never banned nor held to the connection limits (the login
delay still applies to them: a compromised machine inside must not guess at full speed).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from server.abuse.bans import BanList
from server.abuse.connections import ConnectionLimits
from server.abuse.events import AbuseLog, auth_failure_line, ban_line, iso
from server.abuse.sending import SendingLimits
from server.authlimit import client_key
from server.config import AbuseSection

log = logging.getLogger("mailstead.abuse")

BANS_FILE = "abuse-bans.json"

BANNED, RATE, BUSY = "banned", "rate", "busy"


class Refused(Exception):
    """A connection turned away; ``reason`` is BANNED, RATE or BUSY, ``retry_after`` seconds
    a polite client should wait (HTTP Retry-After)."""

    def __init__(self, reason: str, retry_after: float):
        self.reason = reason
        self.retry_after = max(1, int(retry_after) + 1)
        super().__init__(reason)


class Slot:
    """An admitted connection; ``release()`` (idempotent) when it ends."""

    def __init__(self, limits: ConnectionLimits | None, service: str, key: str):
        self._limits = limits
        self.service = service
        self.key = key

    def release(self) -> None:
        if self._limits is not None:
            self._limits.release(self.service, self.key)
            self._limits = None


class Guard:
    def __init__(self, config: AbuseSection, data_dir: Path | None = None, clock=time.time,
                 monotonic=time.monotonic):
        state = Path(data_dir) / BANS_FILE if data_dir is not None else None
        self.bans = BanList(config.ban_after, config.ban_time, config.allow, state, clock)
        self.connections = ConnectionLimits(config.max_connections_per_ip,
                                            config.connection_rate_per_ip, monotonic)
        self.sending = SendingLimits(config.max_messages_per_hour,
                                     config.max_recipients_per_hour, monotonic)
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.events = AbuseLog(self._log_path(config.fail2ban_log), clock)
        self.clock = clock
        self.config = config

    def update_config(self, config: AbuseSection) -> None:
        """SIGHUP: new limits apply to the next connection, login and message; counts and
        bans in force stay (a ban shortened in the config runs its original course)."""
        self.config = config
        self.bans.configure(config.ban_after, config.ban_time, config.allow)
        self.connections.max_concurrent = config.max_connections_per_ip
        self.connections.rate_per_minute = config.connection_rate_per_ip
        self.sending.max_messages = config.max_messages_per_hour
        self.sending.max_recipients = config.max_recipients_per_hour
        self.events.path = self._log_path(config.fail2ban_log)

    def _log_path(self, path: str) -> str:
        if path and self.data_dir is not None:
            return str(self.data_dir / path)  # an absolute path stays as it is
        return path

    def allowed(self, ip: str) -> bool:
        return self.bans.allowed(ip)

    def is_banned(self, ip: str) -> bool:
        return self.bans.banned_until(ip) is not None

    def admit(self, ip: str, service: str, conn_id: str = "-") -> Slot:
        """Let a new connection in (a ``Slot``), or raise ``Refused``."""
        if self.allowed(ip):
            return Slot(None, service, "")
        until = self.bans.banned_until(ip)
        if until is not None:
            self._refused(conn_id, service, ip, BANNED)
            raise Refused(BANNED, until - self.clock())
        key = client_key(ip)
        why = self.connections.admit(service, key)
        if why == "busy":
            self._refused(conn_id, service, ip, BUSY)
            raise Refused(BUSY, 60)
        if why == "rate":
            self._refused(conn_id, service, ip, RATE)
            raise Refused(RATE, 60)
        return Slot(self.connections, service, key)

    def _refused(self, conn_id: str, service: str, ip: str, reason: str) -> None:
        # Not in the fail2ban format: a refusal is not a guess, and a banned client's every
        # retry would otherwise extend fail2ban's ban forever.
        log.info("conn=%s refused service=%s rhost=%s reason=%s", conn_id, service, ip, reason)

    def auth_failure(self, ip: str, user: str, service: str, conn_id: str = "-") -> None:
        """A failed login (wrong password, unknown user, bad second factor or API token)."""
        self.events.emit(logging.WARNING, auth_failure_line(service, ip, user, conn_id))
        banned = self.bans.failure(ip)
        if banned is not None:
            key, until, failures = banned
            self.events.emit(logging.WARNING, ban_line(ip, key, until, failures, conn_id))


__all__ = ["BANNED", "BUSY", "RATE", "Guard", "Refused", "Slot", "iso"]
