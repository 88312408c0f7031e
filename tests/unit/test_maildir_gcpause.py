"""gcpause: the cyclic collector is off during a big call only, and always back on after."""

from __future__ import annotations

import gc

import pytest

from maildir import gcpause


@pytest.fixture(autouse=True)
def collector_on():
    gc.enable()
    yield
    gc.enable()


def test_big_calls_pause_the_collector_and_small_ones_do_not():
    with gcpause.paused(gcpause.MIN_ITEMS):
        assert not gc.isenabled()
    assert gc.isenabled()
    with gcpause.paused(gcpause.MIN_ITEMS - 1):
        assert gc.isenabled()


def test_the_collector_comes_back_after_an_error():
    with pytest.raises(KeyError), gcpause.paused(10**6):
        raise KeyError("x")
    assert gc.isenabled()


def test_overlapping_pauses_leave_the_collector_on_and_an_off_switch_alone():
    outer = gcpause.paused(10**6)
    inner = gcpause.paused(10**6)
    outer.__enter__()
    inner.__enter__()
    outer.__exit__(None, None, None)  # the first to end turns it back on
    assert gc.isenabled()
    inner.__exit__(None, None, None)
    assert gc.isenabled()
    gc.disable()  # someone else's choice
    with gcpause.paused(10**6):
        pass
    assert not gc.isenabled()


def test_a_big_store_runs_with_the_collector_paused(tmp_path, monkeypatch):
    from maildir import Delivery, create_maildir, deliver, index_ops
    from maildir.index import MailboxIndex

    monkeypatch.setattr(gcpause, "MIN_ITEMS", 3)
    root = tmp_path / "u"
    create_maildir(root, folders=())
    for i in range(4):
        deliver([Delivery(root, [b"Subject: %d\r\n\r\nbody\r\n" % i])])
    seen = []
    real = index_ops.store_flags

    def spy(*args):
        seen.append(gc.isenabled())
        return real(*args)

    monkeypatch.setattr(index_ops, "store_flags", spy)
    with MailboxIndex(root) as mi:
        inbox = mi.folder("INBOX")
        inbox.store_flags([1, 2], {"\\Seen"}, "add")
        inbox.store_flags(iter(range(1, 5)), {"\\Seen"}, "add")  # any iterable of UIDs
        assert all("\\Seen" in i.flags for i in inbox.messages())
    assert seen == [True, False] and gc.isenabled()
