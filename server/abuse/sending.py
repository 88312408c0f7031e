"""How much one signed-in user may send an hour through submission.

A stolen password is most often used to send spam; the limits cap the damage (and the harm to
the server's reputation, which every user shares) until the owner notices. Sliding window of an
hour. A message counts once it is accepted (250); its recipients count with it. Checks happen
before: at MAIL FROM for messages, at each RCPT TO for recipients (counting those already given
in the transaction), so a refused message never reaches DATA. Parallel connections of one user
can overshoot by the messages they have in flight, which is fine for a spam cap. In memory: a
restart starts a new hour.
"""

from __future__ import annotations

import threading
import time
from collections import deque

WINDOW = 3600.0


class _Window:
    """One user's sends in the last hour, and their recipients' running total (a sum over
    the deque at every MAIL and RCPT made a busy hour's submission quadratic)."""

    __slots__ = ("recipients", "sends")

    def __init__(self) -> None:
        self.sends: deque[tuple[float, int]] = deque()  # (time, recipients)
        self.recipients = 0

    def expire(self, now: float) -> None:
        sends = self.sends
        while sends and sends[0][0] <= now - WINDOW:
            self.recipients -= sends.popleft()[1]


class SendingLimits:
    def __init__(self, max_messages: int, max_recipients: int, clock=time.monotonic):
        self.max_messages = max_messages
        self.max_recipients = max_recipients
        self.clock = clock
        self._sent: dict[str, _Window] = {}
        self._lock = threading.Lock()

    def _recent(self, user: str, now: float) -> _Window | None:
        window = self._sent.get(user)
        if window is not None:
            window.expire(now)
            if not window.sends:
                del self._sent[user]
                return None
        return window

    def usage(self, user: str) -> tuple[int, int]:
        """(messages, recipients) ``user`` sent in the last hour."""
        with self._lock:
            window = self._recent(user, self.clock())
            return (0, 0) if window is None else (len(window.sends), window.recipients)

    def may_send(self, user: str) -> bool:
        return self.usage(user)[0] < self.max_messages

    def may_add_recipient(self, user: str, pending: int) -> bool:
        """Whether one more recipient fits, with ``pending`` already in the transaction."""
        return self.usage(user)[1] + pending < self.max_recipients

    def sent(self, user: str, recipients: int) -> None:
        now = self.clock()
        with self._lock:
            window = self._recent(user, now)
            if window is None:
                window = self._sent[user] = _Window()
            window.sends.append((now, recipients))
            window.recipients += recipients
