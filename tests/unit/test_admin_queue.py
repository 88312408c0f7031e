"""Queue page: what waits and why, one message's details, delete, retry now."""

from __future__ import annotations

import pytest

from admin import Services
from server.queue.spool import Spool
from tests.support.panel import ADMIN, Panel, flashes, instance, text

BODY = [b"From: alice@example.test\r\nSubject: hi\r\n\r\nhello\r\n"]


@pytest.fixture
def flushes():
    return []


@pytest.fixture
def panel(tmp_path, dns_server, flushes):
    panel = Panel.create(tmp_path, dns_server, flush_queue=lambda: flushes.append(1))
    panel.login(ADMIN)
    return panel


def spool(panel) -> Spool:
    return Spool(panel.inst.config.queue_dir)


def queue_message(panel, error=""):
    s = spool(panel)
    msg = s.add("alice@example.test", ["bob@remote.test", "carol@remote.test"], BODY,
                origin="submission alice@example.test")
    if error:
        msg.recipients[0].last_error = error
        msg.recipients[0].attempts = 1
        msg.attempts = 1
        s.save(msg)
    return msg


def test_empty_queue(panel):
    page = text(panel.get("/queue/"))
    assert "Nothing waiting" in page and "retry-all" not in page


def test_queue_lists_messages_and_why_they_wait(panel):
    msg = queue_message(panel, error="451 4.7.1 <b>greylisted</b>, try later")
    page = text(panel.get("/queue/"))
    assert msg.id in page
    assert "alice@example.test" in page and "bob@remote.test" in page
    assert "carol@remote.test" in page
    assert "451 4.7.1 &lt;b&gt;greylisted&lt;/b&gt;, try later" in page
    detail = text(panel.get(f"/queue/{msg.id}"))
    assert "submission alice@example.test" in detail and "1 attempts" in detail
    assert "&lt;b&gt;greylisted" in detail
    # The overview counts it as retrying.
    assert "1 retrying" in text(panel.get("/"))


def test_bounce_shows_null_sender(panel):
    msg = spool(panel).add("", ["alice@remote.test"], BODY, is_dsn=True)
    page = text(panel.get("/queue/"))
    assert msg.id in page and "&lt;&gt;" in page


@pytest.mark.parametrize("qid", ["not-an-id", "..%2F..%2Fetc%2Fpasswd", "0" * 21])
def test_unknown_or_bad_id_is_404(panel, qid):
    assert panel.get(f"/queue/{qid}").status_code == 404


def test_delete(panel):
    keep, gone = queue_message(panel), queue_message(panel)
    r = panel.post(f"/queue/{gone.id}/delete")
    assert f"Deleted {gone.id}; no bounce is sent." in flashes(panel.follow(r))
    assert [m.id for m in spool(panel).list()] == [keep.id]
    assert not spool(panel).message_path(gone.id).exists()
    r = panel.post(f"/queue/{gone.id}/delete")
    assert f"No queued message {gone.id}." in flashes(panel.follow(r))
    r = panel.post("/queue/bad-id/delete")
    assert "No queued message bad-id." in flashes(panel.follow(r))
    assert [m.id for m in spool(panel).list()] == [keep.id]


def test_retry_calls_the_flush_service(panel, flushes):
    queue_message(panel)
    assert "retry-all" in text(panel.get("/queue/"))
    r = panel.post("/queue/retry")
    assert "Retrying every queued message now." in flashes(panel.follow(r))
    assert flushes == [1]


def test_retry_without_a_running_server_is_an_error(tmp_path, dns_server):
    inst = instance(tmp_path, dns_server.nameserver)
    inst.add_user(ADMIN, admin=True)
    panel = Panel(inst, Services())
    panel.login(ADMIN)
    queue_message(panel)
    assert 'id="retry-all" disabled' in text(panel.get("/queue/"))
    r = panel.post("/queue/retry")
    assert any("The server is not running" in m for m in flashes(panel.follow(r)))
