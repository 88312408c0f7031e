"""The per-IP memory of verified reverse names (``server.smtp.reverse``)."""

from __future__ import annotations

import asyncio

from server.smtp.reverse import ReverseNames


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _names(ttl=10.0, max_entries=100):
    asked: list[str] = []

    async def lookup(ip: str) -> str | None:
        asked.append(ip)
        await asyncio.sleep(0)
        return None if ip.startswith("10.") else f"host-{ip}.example"

    clock = Clock()
    return ReverseNames(lookup, ttl=ttl, max_entries=max_entries, clock=clock), asked, clock


def test_answer_is_kept_for_ttl_seconds():
    async def run():
        names, asked, clock = _names()
        assert await names.start("192.0.2.1") == "host-192.0.2.1.example"
        assert await names.start("10.0.0.1") is None
        clock.now += 9
        cached = names.start("192.0.2.1")
        assert cached.done() and await cached == "host-192.0.2.1.example"
        assert await names.start("10.0.0.1") is None  # "no name" is an answer too
        assert asked == ["192.0.2.1", "10.0.0.1"]
        clock.now += 2  # expired: asked again
        assert await names.start("192.0.2.1") == "host-192.0.2.1.example"
        assert asked == ["192.0.2.1", "10.0.0.1", "192.0.2.1"]
    asyncio.run(run())


def test_a_cancelled_connection_leaves_the_others_alone():
    async def run():
        names, asked, _ = _names()
        assert await names.start("192.0.2.1")
        first, second = names.start("192.0.2.1"), names.start("192.0.2.1")
        first.cancel()
        assert await second == "host-192.0.2.1.example"
        lookup = names.start("192.0.2.9")
        lookup.cancel()  # cancelled before the answer: nothing remembered
        await asyncio.sleep(0.01)
        assert "192.0.2.9" not in names.names
    asyncio.run(run())


def test_oldest_entries_go_first_when_full():
    async def run():
        names, asked, clock = _names(max_entries=3)
        for i in range(5):
            await names.start(f"192.0.2.{i}")
            clock.now += 1
        assert list(names.names) == ["192.0.2.2", "192.0.2.3", "192.0.2.4"]
        clock.now += 8.5  # .2 and .3 have expired, .4 has not
        await names.start("192.0.2.7")
        assert list(names.names) == ["192.0.2.4", "192.0.2.7"]
    asyncio.run(run())
