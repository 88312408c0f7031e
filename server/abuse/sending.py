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


class SendingLimits:
    def __init__(self, max_messages: int, max_recipients: int, clock=time.monotonic):
        self.max_messages = max_messages
        self.max_recipients = max_recipients
        self.clock = clock
        self._sent: dict[str, deque[tuple[float, int]]] = {}  # user -> (time, recipients)
        self._lock = threading.Lock()

    def _recent(self, user: str, now: float) -> deque[tuple[float, int]]:
        sent = self._sent.get(user)
        if sent is None:
            return deque()
        while sent and sent[0][0] <= now - WINDOW:
            sent.popleft()
        if not sent:
            del self._sent[user]
        return sent

    def usage(self, user: str) -> tuple[int, int]:
        """(messages, recipients) ``user`` sent in the last hour."""
        with self._lock:
            sent = self._recent(user, self.clock())
            return len(sent), sum(n for _, n in sent)

    def may_send(self, user: str) -> bool:
        return self.usage(user)[0] < self.max_messages

    def may_add_recipient(self, user: str, pending: int) -> bool:
        """Whether one more recipient fits, with ``pending`` already in the transaction."""
        return self.usage(user)[1] + pending < self.max_recipients

    def sent(self, user: str, recipients: int) -> None:
        now = self.clock()
        with self._lock:
            sent = self._recent(user, now)
            sent.append((now, recipients))
            self._sent[user] = sent
