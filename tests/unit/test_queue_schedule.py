"""server.queue.schedule: retry intervals, expiry, delay warnings."""

from __future__ import annotations

import pytest

from server.queue.schedule import (
    DEFAULT_DELAY_WARNING,
    DEFAULT_EXPIRY,
    RETRY_DELAYS,
    is_expired,
    needs_delay_warning,
    next_delay,
)
from server.queue.spool import DELIVERED, QueuedMessage, Recipient

HOUR = 3600


def _msg(created=0.0, sender="alice@example.test", is_dsn=False, recipients=None):
    return QueuedMessage(
        id="0" * 21,
        sender=sender,
        recipients=recipients or [Recipient("b@example.net"), Recipient("c@example.org")],
        created=created,
        next_attempt=created,
        is_dsn=is_dsn,
    )


@pytest.mark.parametrize(
    ("attempts", "delay"),
    [(-1, 0), (0, 0), (1, 60), (2, 300), (3, 900), (4, 1800), (5, 3600), (6, 7200), (50, 7200)],
)
def test_next_delay(attempts, delay):
    assert next_delay(attempts) == delay


def test_delays_grow_and_defaults():
    assert RETRY_DELAYS == (60, 300, 900, 1800, 3600)
    delays = [next_delay(n) for n in range(1, 10)]
    assert delays == sorted(delays)
    assert DEFAULT_EXPIRY == 5 * 24 * HOUR and DEFAULT_DELAY_WARNING == 4 * HOUR
    # With the defaults a message gets about 60 tries before it expires.
    elapsed, tries = 0.0, 0
    while elapsed < DEFAULT_EXPIRY:
        tries += 1
        elapsed += next_delay(tries)
    assert 55 <= tries <= 65


def test_is_expired():
    msg = _msg(created=1000.0)
    assert not is_expired(msg, 1000.0 + DEFAULT_EXPIRY - 1)
    assert is_expired(msg, 1000.0 + DEFAULT_EXPIRY)
    assert is_expired(msg, 1000.0 + 11, expiry_seconds=10)


def test_delay_warning_after_four_hours_for_pending_unwarned():
    msg = _msg()
    msg.recipients.append(Recipient("d@example.net", status=DELIVERED))
    assert needs_delay_warning(msg, 4 * HOUR - 1) == []
    assert [r.address for r in needs_delay_warning(msg, 4 * HOUR)] == [
        "b@example.net",
        "c@example.org",
    ]
    msg.recipients[0].dsn_sent = True
    assert [r.address for r in needs_delay_warning(msg, 5 * HOUR)] == ["c@example.org"]
    assert needs_delay_warning(msg, 10 * HOUR, after_seconds=None) == []  # warnings off
    assert needs_delay_warning(msg, 2 * HOUR, after_seconds=HOUR) == [msg.recipients[1]]


@pytest.mark.parametrize("kw", [{"sender": ""}, {"is_dsn": True}])
def test_never_a_delay_warning_about_a_bounce(kw):
    assert needs_delay_warning(_msg(**kw), 100 * HOUR) == []
