"""The rspamd client's requests and its failure paths, against a loopback HTTP stand-in.
(The real rspamd answers in tests/e2e/test_rspamd.py.)"""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import pytest

from server.config import parse_config
from server.spam import ACCEPT, JUNK, SpamFilter
from server.spam.rspamd import RspamdClient, RspamdError
from tests.support.httpstub import HTTPStub

CLEAN = {"score": 1.5, "required_score": 15.0, "action": "no action",
         "symbols": {"MISSING_DATE": {"name": "MISSING_DATE", "score": 1.0}}}
MESSAGE = b"From: a@remote.test\r\nSubject: hi\r\n\r\nhello\r\n"


@pytest.fixture
def stub():
    with HTTPStub() as server:
        yield server


def run(coro_fn):
    """Run ``coro_fn(client-factory)`` so every client made is closed inside the loop."""
    async def main():
        clients = []

        def make(url, **kw):
            clients.append(RspamdClient(url, **kw))
            return clients[-1]
        try:
            return await coro_fn(make)
        finally:
            for c in clients:
                await c.aclose()
    return asyncio.run(main())


def test_check_sends_the_envelope_as_headers(stub):
    stub.answer(200, json.dumps(CLEAN).encode())

    async def scan(make):
        return await make(stub.url, password="pw").check(
            MESSAGE, ip="203.0.113.5", helo="mx.remote.test", sender="a@remote.test",
            rcpts=["alice@example.test", "bob@example.test"], hostname="mx.remote.test",
            queue_id="Q123", mta_name="mail.example.test")

    reply = run(scan)
    assert (reply.score, reply.action) == (1.5, "no action")
    req = stub.requests[0]
    assert (req.method, req.path, req.body) == ("POST", "/checkv2", MESSAGE)
    assert req.header("Rcpt") == ["alice@example.test", "bob@example.test"]
    assert req.header("IP") == ["203.0.113.5"]
    assert req.header("Helo") == ["mx.remote.test"]
    assert req.header("From") == ["a@remote.test"]
    assert req.header("Queue-Id") == ["Q123"]
    assert req.header("Hostname") == ["mx.remote.test"]
    assert req.header("Password") == ["pw"]
    assert req.header("User") == []  # not signed in: no User header


def test_null_sender_and_hostile_values(stub):
    stub.answer(200, json.dumps(CLEAN).encode())

    async def scan(make):
        return await make(stub.url).check(
            MESSAGE, ip="203.0.113.5", helo="evil\r\nUser: admin", sender="",
            rcpts=["alice@example.test"])

    run(scan)
    req = stub.requests[0]
    assert req.header("From") == ["<>"]
    assert req.header("User") == []  # the HELO name could not smuggle a header in
    assert req.header("Helo") == ["evil  User: admin"]


def test_learn_goes_to_the_controller_with_the_password(stub):
    with HTTPStub() as controller:
        controller.answer(200, b'{"success":true}')

        async def learn(make):
            client = make("http://127.0.0.1:9", controller_url=controller.url, password="pw")
            return await client.learn(True, MESSAGE), await client.learn(False, MESSAGE)

        assert run(learn) == (True, True)
        assert [r.path for r in controller.requests] == ["/learnspam", "/learnham"]
        assert controller.requests[0].header("Password") == ["pw"]
        assert controller.requests[0].body == MESSAGE


def test_learn_already_learned(stub):
    stub.answer(208, b'{"error":"<1@x> has been already learned as spam, ignore it"}',
                reason="<1@x> has been already learned as spam, ignore it")
    assert run(lambda make: make(stub.url).learn(True, MESSAGE)) is False


@pytest.mark.parametrize("status, body, text", [
    (401, b'{"error":"Unauthorized"}', "rspamd_password"),
    (204, b"", "learn conditions denied"),
    (500, b'{"error":"no redis"}', "no redis"),
])
def test_learn_failures(stub, status, body, text):
    stub.answer(status, body, reason="all learn conditions denied learning" if status == 204
                else None)
    with pytest.raises(RspamdError, match=text):
        run(lambda make: make(stub.url).learn(True, MESSAGE))


@pytest.mark.parametrize("status, body", [
    (500, b'{"error":"internal"}'), (200, b"not json"), (200, b'{"error":"bad"}'),
    (200, b'{"score": 1}'),
])
def test_check_failures(stub, status, body):
    stub.answer(status, body)
    with pytest.raises(RspamdError):
        run(lambda make: make(stub.url).check(MESSAGE, ip=None, helo=None, sender="",
                                              rcpts=["a@example.test"]))


def test_connection_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the client connects
    with pytest.raises(RspamdError, match="ConnectError"):
        run(lambda make: make(f"http://127.0.0.1:{port}").check(
            MESSAGE, ip=None, helo=None, sender="", rcpts=["a@example.test"]))


def test_timeout(stub):
    stub.answer(200, json.dumps(CLEAN).encode(), delay=2.0)
    with pytest.raises(RspamdError, match="timed out"):
        run(lambda make: make(stub.url, timeout=0.3).check(
            MESSAGE, ip=None, helo=None, sender="", rcpts=["a@example.test"]))


def _filter(tmp_path, url, extra=""):
    text = (f'[server]\nhostname = "mail.example.test"\ndata_dir = "{tmp_path}"\n'
            f'[spam]\nrspamd_url = "{url}"\nrspamd_timeout = 0.5\n{extra}')
    return SpamFilter(parse_config(text, tmp_path / "mailstead.toml"))


def _scan(spam: SpamFilter):
    async def main():
        try:
            return await spam.scan(MESSAGE, ip="203.0.113.5", helo="mx.remote.test",
                                   sender="a@remote.test", rcpts=["alice@example.test"],
                                   queue_id="Q1")
        finally:
            await spam.close()
    return asyncio.run(main())


def test_unreachable_rspamd_accepts_and_says_so(tmp_path, caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with caplog.at_level(logging.WARNING, "mailstead.spam"):
        result = _scan(_filter(tmp_path, f"http://127.0.0.1:{port}"))
    assert result.action == ACCEPT and not result.scanned
    assert result.headers == [b"X-Spam-Status: unknown (rspamd unreachable)\r\n"]
    assert "Q1 not scanned, accepting it" in caplog.text


def test_slow_rspamd_accepts(tmp_path, stub):
    stub.answer(200, json.dumps(CLEAN).encode(), delay=2.0)
    result = _scan(_filter(tmp_path, stub.url))
    assert result.action == ACCEPT and not result.scanned


def test_filter_uses_our_thresholds(tmp_path, stub):
    stub.answer(200, json.dumps(CLEAN).encode())
    assert _scan(_filter(tmp_path, stub.url)).action == ACCEPT
    result = _scan(_filter(tmp_path, stub.url, "junk_score = 1.0\n"))
    assert result.action == JUNK
    assert b"X-Spam-Status: Yes, score=1.50 required=1.00\r\n" in result.headers
    assert stub.requests[-1].header("MTA-Name") == ["mail.example.test"]


def test_no_rspamd_no_headers(tmp_path):
    text = f'[server]\nhostname = "mail.example.test"\ndata_dir = "{tmp_path}"\n'
    result = _scan(SpamFilter(parse_config(text, tmp_path / "mailstead.toml")))
    assert result.action == ACCEPT and result.headers == []
