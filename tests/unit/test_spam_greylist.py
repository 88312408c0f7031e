"""Greylisting with an injected clock: first sight, retry, remembered triples, auto-allow."""

from __future__ import annotations

import asyncio
import stat

import pytest

from server.config import parse_config
from server.smtp.replies import GREYLISTED
from server.spam import SpamFilter
from server.spam.greylist import (
    PASSED_LIFETIME,
    PRUNE_EVERY,
    RETRY_WINDOW,
    Greylist,
    client_network,
)

DELAY = 300.0
DAY = 86400.0
SENDER, RCPT = "news@remote.test", "alice@example.test"


class Clock:
    def __init__(self):
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def grey(tmp_path, clock):
    g = Greylist(tmp_path / "greylist.sqlite3", delay=DELAY, auto_allow=3, clock=clock)
    yield g
    g.close()


def test_networks():
    assert client_network("203.0.113.77") == "203.0.113.0/24"
    assert client_network("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert client_network("::ffff:203.0.113.77") == "203.0.113.0/24"


def test_first_sight_then_retry_after_the_delay(grey, clock):
    assert grey.check_sync("203.0.113.5", SENDER, RCPT) is False
    clock.now += DELAY - 1
    assert grey.check_sync("203.0.113.5", SENDER, RCPT) is False  # too early
    clock.now += 1
    assert grey.check_sync("203.0.113.5", SENDER, RCPT) is True
    clock.now += 1
    assert grey.check_sync("203.0.113.5", SENDER, RCPT) is True


def test_early_retries_do_not_restart_the_clock(grey, clock):
    grey.check_sync("203.0.113.5", SENDER, RCPT)
    for _ in range(5):
        clock.now += 60
        grey.check_sync("203.0.113.5", SENDER, RCPT)
    assert grey.check_sync("203.0.113.5", SENDER, RCPT) is True  # 300 s after the first


def test_retry_from_another_host_of_the_same_network(grey, clock):
    grey.check_sync("203.0.113.5", SENDER, RCPT)
    clock.now += DELAY
    assert grey.check_sync("203.0.113.200", SENDER, RCPT) is True
    grey.check_sync("2001:db8::1", SENDER, RCPT)
    clock.now += DELAY
    assert grey.check_sync("2001:db8::ffff:1", SENDER, RCPT) is True
    assert grey.check_sync("2001:db8:0:1::1", SENDER, RCPT) is False  # another /64


def test_triple_is_the_key(grey, clock):
    grey.check_sync("203.0.113.5", SENDER, RCPT)
    clock.now += DELAY
    assert grey.check_sync("203.0.113.5", SENDER, RCPT) is True
    assert grey.check_sync("203.0.113.5", "other@remote.test", RCPT) is False
    assert grey.check_sync("203.0.113.5", SENDER, "bob@example.test") is False
    assert grey.check_sync("203.0.113.5", SENDER.upper(), RCPT.upper()) is True  # case


def test_null_sender(grey, clock):
    assert grey.check_sync("203.0.113.5", "", RCPT) is False
    clock.now += DELAY
    assert grey.check_sync("203.0.113.5", "", RCPT) is True


def test_a_retry_after_a_day_starts_over(grey, clock):
    grey.check_sync("203.0.113.5", SENDER, RCPT)
    clock.now += RETRY_WINDOW + 1
    assert grey.check_sync("203.0.113.5", SENDER, RCPT) is False
    clock.now += DELAY
    assert grey.check_sync("203.0.113.5", SENDER, RCPT) is True


def test_passed_triples_are_remembered_from_their_last_use(grey, clock):
    grey.check_sync("203.0.113.5", SENDER, RCPT)
    clock.now += DELAY
    grey.check_sync("203.0.113.5", SENDER, RCPT)
    for _ in range(3):  # a monthly newsletter keeps its pass
        clock.now += 30 * DAY
        assert grey.check_sync("203.0.113.5", SENDER, RCPT) is True
    clock.now += PASSED_LIFETIME + 1
    assert grey.check_sync("203.0.113.5", SENDER, RCPT) is False


def test_network_that_passed_often_is_allowed(grey, clock):
    for i in range(3):
        grey.check_sync("203.0.113.5", f"s{i}@remote.test", RCPT)
    clock.now += DELAY
    for i in range(3):
        assert grey.check_sync("203.0.113.9", f"s{i}@remote.test", RCPT) is True
    assert grey.check_sync("203.0.113.9", "new@remote.test", "new@example.test") is True
    assert grey.check_sync("198.51.100.9", "new@remote.test", RCPT) is False


def test_auto_allow_off(tmp_path, clock):
    grey = Greylist(tmp_path / "g.sqlite3", delay=DELAY, auto_allow=0, clock=clock)
    for i in range(10):
        grey.check_sync("203.0.113.5", f"s{i}@remote.test", RCPT)
    clock.now += DELAY
    for i in range(10):
        grey.check_sync("203.0.113.5", f"s{i}@remote.test", RCPT)
    assert grey.check_sync("203.0.113.5", "new@remote.test", RCPT) is False
    grey.close()


def test_old_rows_are_pruned(grey, clock):
    grey.check_sync("203.0.113.5", SENDER, RCPT)            # never retried
    grey.check_sync("198.51.100.5", SENDER, RCPT)
    clock.now += DELAY
    grey.check_sync("198.51.100.5", SENDER, RCPT)           # passed
    assert grey.count() == (2, 1)
    clock.now += RETRY_WINDOW + PRUNE_EVERY
    grey.check_sync("192.0.2.1", SENDER, RCPT)
    assert grey.count() == (2, 1)  # the unretried one went; a new one came
    clock.now += PASSED_LIFETIME
    grey.check_sync("192.0.2.2", SENDER, RCPT)
    assert grey.count() == (1, 0)


def test_database_is_private_and_wal(grey, tmp_path):
    grey.check_sync("203.0.113.5", SENDER, RCPT)
    path = tmp_path / "greylist.sqlite3"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (tmp_path / "greylist.sqlite3-wal").exists()


def test_state_survives_a_restart(tmp_path, clock):
    first = Greylist(tmp_path / "g.sqlite3", delay=DELAY, clock=clock)
    first.check_sync("203.0.113.5", SENDER, RCPT)
    first.close()
    clock.now += DELAY
    second = Greylist(tmp_path / "g.sqlite3", delay=DELAY, clock=clock)
    assert second.check_sync("203.0.113.5", SENDER, RCPT) is True
    second.close()


def _filter(tmp_path, spam="greylisting = true\n", abuse=""):
    text = (f'[server]\nhostname = "mail.example.test"\ndata_dir = "{tmp_path}"\n'
            f"[spam]\n{spam}[abuse]\n{abuse}")
    return SpamFilter(parse_config(text, tmp_path / "mailstead.toml"))


def test_filter_greylists_strangers_only(tmp_path):
    async def main():
        spam = _filter(tmp_path, abuse='allow = ["192.0.2.0/24"]\n')
        first = await spam.rcpt_check("203.0.113.5", SENDER, RCPT)
        again = await spam.rcpt_check("203.0.113.5", SENDER, RCPT)  # delay 300 s not over
        signed_in = await spam.rcpt_check("198.51.100.1", SENDER, RCPT, authenticated=True)
        allowed = await spam.rcpt_check("192.0.2.7", SENDER, RCPT)
        await spam.close()
        return first, again, signed_in, allowed

    first, again, signed_in, allowed = asyncio.run(main())
    assert first == again == GREYLISTED
    assert str(first) == "451 4.7.1 Greylisted, please try again later"
    assert signed_in is None and allowed is None
    assert (tmp_path / "greylist.sqlite3").exists()


def test_filter_off_by_default(tmp_path):
    spam = _filter(tmp_path, spam="")
    assert asyncio.run(spam.rcpt_check("203.0.113.5", SENDER, RCPT)) is None
    assert not (tmp_path / "greylist.sqlite3").exists()
