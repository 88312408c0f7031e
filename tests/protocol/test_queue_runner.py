"""The queue runner in-process, with the disk failing at the worst moments: results already
delivered are never sent again, and a report owed to the sender is never lost."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import argon2
import pytest

from server.accounts import AccountStore
from server.config import parse_config, render_config
from server.outbound import client
from server.outbound.queue_runner import OutboundQueue
from server.outbound.route import MXHost
from server.queue.spool import Spool
from tests.support.sink import Sink

MSG = b"From: ann@example.test\r\nTo: x@remote.test\r\nSubject: runner\r\n\r\nbody\r\n"


class FlakySpool(Spool):
    """A spool whose disk is full for the next ``save_failures`` saves / ``add_failures`` adds."""

    save_failures = 0
    add_failures = 0

    def save(self, msg):
        if self.save_failures:
            self.save_failures -= 1
            raise OSError(28, "No space left on device")
        return super().save(msg)

    def add(self, *args, **kwargs):
        if self.add_failures:
            self.add_failures -= 1
            raise OSError(28, "No space left on device")
        return super().add(*args, **kwargs)


@pytest.fixture
def world(tmp_path, dns_server):
    sink = Sink().start()
    text = render_config("mail.example.test", tmp_path, {}, {
        "dns": {"nameservers": [dns_server.nameserver]},
        "outbound": {"mx_port": sink.port}})
    config = parse_config(text, tmp_path / "mailstead.toml")
    store = AccountStore(config.db_path, config.mail_root,
                         hasher=argon2.PasswordHasher(time_cost=1, memory_cost=1024,
                                                      parallelism=1))
    store.initialise()
    store.add_domain("example.test")
    ann = store.add_user("ann@example.test", "a long password")
    spool = FlakySpool(Path(tmp_path) / "queue")
    with ThreadPoolExecutor(4) as pool:
        yield config, store, spool, pool, sink, ann
    sink.stop()


def run(coro):
    return asyncio.run(coro)


def test_save_failure_never_sends_twice(world):
    config, store, spool, pool, sink, _ = world
    msg = spool.add("ann@example.test", ["bob@remote.test", "gone@remote.test"], (MSG,))
    sink.handler.defer.add("gone@remote.test")

    async def scenario():
        queue = OutboundQueue(config, store, spool, pool)
        spool.save_failures = 10  # every save in this attempt fails
        await queue.attempt(msg.id)
        assert msg.id in queue.unsaved
        spool.save_failures = 0
        await queue.attempt(msg.id)  # bob is not sent again; the state is saved first
        return queue

    queue = run(scenario())
    assert [m.recipients for m in sink.messages] == [["bob@remote.test"]]
    saved = spool.get(msg.id)
    assert [r.status for r in saved.recipients] == ["delivered", "pending"]
    assert msg.id not in queue.unsaved


def test_report_is_owed_until_it_is_queued(world):
    config, store, spool, pool, sink, ann = world
    msg = spool.add("ann@example.test", ["gone@remote.test"], (MSG,))
    sink.handler.reject.add("gone@remote.test")

    async def scenario():
        queue = OutboundQueue(config, store, spool, pool)
        spool.add_failures = 1  # queueing the report fails once
        with pytest.raises(OSError):
            await queue.attempt(msg.id)
        owed = spool.get(msg.id)
        assert owed.recipients[0].status == "failed" and owed.recipients[0].bounce_owed
        await queue.attempt(msg.id)  # nothing to deliver, but the report is still owed
        reports = [m for m in spool.list() if m.is_dsn]
        assert len(reports) == 1 and reports[0].recipients[0].address == "ann@example.test"
        await queue.attempt(reports[0].id)  # local: straight into ann's INBOX

    run(scenario())
    with pytest.raises(KeyError):
        spool.get(msg.id)  # done: removed once the report was queued
    assert len(list((ann.maildir / "new").iterdir())) == 1
    assert len(sink.messages) == 0


def test_a_failing_group_does_not_cost_the_others(world, monkeypatch):
    config, store, spool, pool, sink, _ = world
    msg = spool.add("ann@example.test", ["bob@remote.test", "eve@broken.test"], (MSG,))

    async def scenario():
        queue = OutboundQueue(config, store, spool, pool)
        original = queue._deliver_group

        async def deliver_group(m, data, domain, rcpts, record):
            if domain == "broken.test":
                raise RuntimeError("a bug in one group")
            return await original(m, data, domain, rcpts, record)

        monkeypatch.setattr(queue, "_deliver_group", deliver_group)
        await queue.attempt(msg.id)
        await queue.attempt(msg.id)

    run(scenario())
    assert [m.recipients for m in sink.messages] == [["bob@remote.test"]]
    saved = spool.get(msg.id)
    assert [(r.address, r.status) for r in saved.recipients] == [
        ("bob@remote.test", "delivered"), ("eve@broken.test", "pending")]
    assert "Internal error" in saved.recipients[1].last_error


def test_entry_finished_before_a_crash_is_removed_at_start(world):
    """kill -9 after the last results were saved but before the entry was removed: the entry
    has nothing pending and a next attempt an hour away; the restart finishes it at once
    (the crash test found such entries lingering until the next retry or a flush)."""
    config, store, spool, pool, sink, _ = world
    msg = spool.add("ann@example.test", ["bob@remote.test"], (MSG,))
    msg.recipients[0].status = "delivered"
    msg.attempts, msg.next_attempt = 1, msg.created + 3600
    spool.save(msg)

    async def scenario():
        queue = OutboundQueue(config, store, spool, pool)
        await queue.load()
        assert queue.due == {msg.id: 0.0}
        queue.start()
        for _ in range(100):
            if not spool.list():
                break
            await asyncio.sleep(0.05)
        await queue.stop(1)

    run(scenario())
    assert spool.list() == []
    assert sink.messages == []  # finished, not sent again


def test_results_are_saved_before_quit(world):
    """The RFC 1047 window ends at the remote's reply to the final dot: the result is saved
    before QUIT, so a receiver that is slow to answer QUIT (or a kill -9 meanwhile) cannot
    make us send the message again."""
    config, store, spool, pool, sink, _ = world
    msg = spool.add("ann@example.test", ["bob@remote.test", "carl@remote.test"], (MSG,))
    sink.handler.hold_quit = threading.Event()
    statuses = []

    async def scenario():
        queue = OutboundQueue(config, store, spool, pool)
        queue.connections = None  # a connection per message: the transaction ends in QUIT
        attempt = asyncio.create_task(queue.attempt(msg.id))
        deadline = time.monotonic() + 20
        while not sink.handler.quits and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        statuses.extend(r.status for r in spool.get(msg.id).recipients)  # read from disk
        assert not attempt.done()  # still waiting for the reply to QUIT
        sink.handler.hold_quit.set()
        await attempt

    try:
        run(scenario())
    finally:
        sink.handler.hold_quit.set()
    assert statuses == ["delivered", "delivered"]
    assert [m.recipients for m in sink.messages] == [["bob@remote.test", "carl@remote.test"]]
    with pytest.raises(KeyError):
        spool.get(msg.id)  # done and removed after QUIT


def test_a_result_that_cannot_be_saved_is_not_sent_again(world):
    """The save after the final dot fails (disk full): the result stays in memory, the
    transaction still ends with QUIT, and the next attempt saves it instead of re-sending."""
    config, store, spool, pool, sink, _ = world
    msg = spool.add("ann@example.test", ["bob@remote.test"], (MSG,))

    async def scenario():
        queue = OutboundQueue(config, store, spool, pool)
        queue.connections = None  # a connection per message: the transaction ends in QUIT
        spool.save_failures = 1  # the save before QUIT
        await queue.attempt(msg.id)
        return queue

    queue = run(scenario())
    assert sink.handler.quits == 1
    assert [m.recipients for m in sink.messages] == [["bob@remote.test"]]
    assert msg.id not in queue.unsaved  # the save at the end of the attempt got it
    with pytest.raises(KeyError):
        spool.get(msg.id)


def test_a_failure_to_record_does_not_try_the_next_host(world):
    """The message went out; trying the next MX host after a failed record would send it
    again. The error reaches the runner, which retries later (at least once, not twice now)."""
    config, _, _, _, sink, _ = world
    loose, _ = client.tls_contexts()

    async def broken_record(outcomes):
        raise RuntimeError("a bug while recording")

    txn = client.Transaction(sender="ann@example.test", recipients=["bob@remote.test"],
                             message=MSG, helo="mail.example.test", port=sink.port,
                             connect_timeout=5, tls=loose, on_result=broken_record)
    hosts = [MXHost("mx1.remote.test", 10, ("127.0.0.1",)),
             MXHost("mx2.remote.test", 20, ("127.0.0.1",))]
    with pytest.raises(client.RecordFailed):
        run(client.send(hosts, txn))
    assert len(sink.messages) == 1


def test_messages_to_one_host_share_a_connection(world):
    """Postfix's connection cache: ten messages to the same MX go over one connection (RSET
    between them), each recorded as delivered; the connection is closed with QUIT when the
    queue stops."""
    config, store, spool, pool, sink, _ = world
    ids = [spool.add("ann@example.test", [f"r{i}@remote.test"], (MSG,)).id for i in range(10)]

    async def scenario():
        queue = OutboundQueue(config, store, spool, pool)
        for qid in ids:
            await queue.attempt(qid)
        before_stop = sink.handler.quits
        queue._main = asyncio.create_task(asyncio.sleep(0))
        await queue.stop(1)
        return before_stop

    quits_before_stop = run(scenario())
    assert [m.recipients for m in sink.messages] == [[f"r{i}@remote.test"] for i in range(10)]
    assert sink.handler.connections == 1
    assert quits_before_stop == 0 and sink.handler.quits == 1
    assert spool.list() == []


def test_a_kept_connection_the_remote_closed_is_replaced(world):
    """The receiver drops idle connections: RSET on the kept one fails and a new connection
    carries the message."""
    config, store, spool, pool, sink, _ = world
    first = spool.add("ann@example.test", ["a@remote.test"], (MSG,)).id
    second = spool.add("ann@example.test", ["b@remote.test"], (MSG,)).id

    async def scenario():
        queue = OutboundQueue(config, store, spool, pool)
        await queue.attempt(first)
        [kept] = [item.client for items in queue.connections._idle.values() for item in items]
        kept.transport.abort()  # as if the receiver had hung up
        await asyncio.sleep(0.05)
        await queue.attempt(second)
        await queue.connections.close()

    run(scenario())
    assert [m.recipients for m in sink.messages] == [["a@remote.test"], ["b@remote.test"]]
    assert sink.handler.connections == 2
    assert spool.list() == []
