"""Open SMTP connections kept for the next message to the same host, as Postfix's connection
cache does: a burst of mail to one domain (a mailing, a busy correspondent, the smarthost) is
sent over a few connections instead of a new TCP connection, EHLO and TLS handshake per
message.

A connection is returned after a transaction that ended with a reply to the final dot, kept
for at most ``IDLE`` seconds and ``MAX_USES`` messages, and checked with RSET before it is
used again (one that the remote has closed fails that, and a new connection is made). The
key holds everything that made the connection what it is -- host, address, port, TLS mode
and policy, login -- so a message is never sent over a connection its policy would not have
made (an MTA-STS enforce policy asks for a verified TLS connection, for instance).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Hashable

import aiosmtplib

IDLE = 5.0  # seconds a connection waits for another message
MAX_USES = 100  # messages per connection, then a fresh one
MAX_IDLE_CONNECTIONS = 50


class _Kept:
    __slots__ = ("client", "since", "uses")

    def __init__(self, client: aiosmtplib.SMTP, uses: int):
        self.client, self.since, self.uses = client, time.monotonic(), uses


class ConnectionCache:
    def __init__(self) -> None:
        self._idle: dict[Hashable, list[_Kept]] = {}
        self._uses: dict[int, int] = {}  # id(client) -> messages sent over it
        self._sweeper: asyncio.TimerHandle | None = None

    def take(self, key: Hashable) -> aiosmtplib.SMTP | None:
        kept = self._idle.get(key)
        while kept:
            item = kept.pop()
            if time.monotonic() - item.since < IDLE and item.client.is_connected:
                self._uses[id(item.client)] = item.uses
                return item.client
            _close(item.client)
        self._idle.pop(key, None)
        return None

    def give_back(self, key: Hashable, client: aiosmtplib.SMTP) -> bool:
        """Keep ``client`` for the next message to ``key``; False if it should be closed
        now instead (used up, or too many idle connections already)."""
        uses = self._uses.pop(id(client), 0) + 1
        if uses >= MAX_USES or sum(map(len, self._idle.values())) >= MAX_IDLE_CONNECTIONS:
            return False
        self._idle.setdefault(key, []).append(_Kept(client, uses))
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(IDLE, self._sweep)
        return True

    def forget(self, client: aiosmtplib.SMTP) -> None:
        self._uses.pop(id(client), None)

    def _sweep(self) -> None:
        self._sweeper = None
        now = time.monotonic()
        for key in list(self._idle):
            fresh = []
            for item in self._idle[key]:
                if now - item.since < IDLE and item.client.is_connected:
                    fresh.append(item)
                else:
                    asyncio.ensure_future(_quit(item.client))
            if fresh:
                self._idle[key] = fresh
            else:
                del self._idle[key]
        if self._idle:
            self._sweeper = asyncio.get_running_loop().call_later(IDLE, self._sweep)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        idle, self._idle = self._idle, {}
        await asyncio.gather(*(_quit(item.client) for kept in idle.values() for item in kept))


async def _quit(client: aiosmtplib.SMTP) -> None:
    try:
        await asyncio.wait_for(client.quit(), 5)
    except (TimeoutError, aiosmtplib.SMTPException, OSError):
        pass
    finally:
        _close(client)


def _close(client: aiosmtplib.SMTP) -> None:
    with contextlib.suppress(Exception):
        client.close()
