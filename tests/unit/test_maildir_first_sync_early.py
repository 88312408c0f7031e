"""A big folder's first sync hands out its view before it writes the rows
(``MailboxIndex.folder(early=...)``, index_sync.WRITE_BEHIND_ROWS): the view is what the
index says once they are in, every reader of this process or another waits for them, and a
crash after the view was handed out loses no UID, no flag and no MODSEQ."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from maildir import Delivery, create_maildir, deliver, index_sync
from maildir.index import MailboxIndex
from tests.support.maildirproc import committed_rows, run_python

N = 40


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "u"
    create_maildir(root, folders=())
    for i in range(N):
        deliver([Delivery(root, [b"Subject: %d\r\n\r\nbody\r\n" % i])])
    # A few read (\Seen) and one with a keyword, as another program left them.
    cur = root / "cur"
    for k, path in enumerate(sorted((root / "new").iterdir())):
        info = ":2,S" if k % 3 else ":2,"
        path.rename(cur / (path.name + info + ("a" if k == 7 else "")))
    (root / "dovecot-keywords").write_text("0 Work\n")
    return root


@pytest.fixture
def behind(monkeypatch):
    monkeypatch.setattr(index_sync, "WRITE_BEHIND_ROWS", 5)


def test_the_early_view_is_what_the_index_says_once_written(root, behind):
    got = []
    answered = threading.Event()

    def early(first):
        assert committed_rows(first.folder) == 0  # handed out before the rows are written
        got.append(first)
        answered.set()  # as the session does once its answer is sent
        return answered

    with MailboxIndex(root) as mi:
        fi = mi.folder("INBOX", early=early)
        (first,) = got
        view = fi.view()
        assert first.folder is fi
        assert first.view == view
        assert list(first.view.uids) == list(range(1, N + 1))
        assert first.view.uidnext == N + 1 == fi.status().uidnext
        assert first.view.highestmodseq == fi.highestmodseq
        assert first.first_unseen == fi.first_unseen == 1
        assert first.defined_keywords == ["Work"]
        assert {"Work", "\\Seen"} <= set(first.view.flags[7])
        assert committed_rows(fi) == N
        # Not again: the folder is open now, and a second open is no first sync.
        mi.folder("INBOX", early=early)
        assert len(got) == 1


def test_readers_wait_for_the_rows_and_the_event_loop_calls_do_not(root, behind):
    results: dict[str, object] = {}

    with MailboxIndex(root) as mi:
        def read() -> None:
            results["messages"] = len(mi.folder("INBOX").messages())

        def loop_calls(fi) -> None:
            results["unchanged"] = fi.unchanged_since(0)
            results["located"] = fi.located([1, 2], dates=False)

        def early(first):
            loop = threading.Thread(target=loop_calls, args=(first.folder,))
            loop.start()
            loop.join(5)
            results["loop_waited"] = loop.is_alive()
            reader = threading.Thread(target=read)
            reader.start()
            reader.join(0.3)
            results["waited"] = reader.is_alive()
            results["reader"] = reader
            return None

        mi.folder("INBOX", early=early)
        results["reader"].join()
    assert results["waited"] and results["messages"] == N
    assert not results["loop_waited"] and results["unchanged"] is False
    assert results["located"] == ({}, {})


def test_a_small_first_sync_writes_its_rows_first(root):
    calls = []
    with MailboxIndex(root) as mi:  # N is below WRITE_BEHIND_ROWS: no early view
        mi.folder("INBOX", early=calls.append)
    assert calls == []


def test_another_process_opening_meanwhile_waits_at_the_lock(root, behind):
    code = ("import sys\nfrom maildir.index import MailboxIndex\nprint('ready', flush=True)\n"
            "sys.stdin.readline()\n"
            "with MailboxIndex(sys.argv[1]) as mi:\n"
            "    fi = mi.folder('INBOX')\n"
            "    print(len(fi.messages()), fi.status().uidnext)\n")
    child = run_python(code, str(root), stdin=subprocess.PIPE)
    assert child.stdout.readline() == "ready\n"

    def early(first):
        child.stdin.write("go\n")
        child.stdin.flush()
        time.sleep(0.3)  # the child is at the lock by now

    with MailboxIndex(root) as mi:
        mi.folder("INBOX", early=early)
        out, _ = child.communicate(timeout=30)
    assert out.split() == [str(N), str(N + 1)]


def test_a_crash_after_the_early_view_loses_no_uid_flag_or_modseq(root):
    code = ("import os, sys\nfrom maildir import index_sync\nfrom maildir.index import "
            "MailboxIndex\nindex_sync.WRITE_BEHIND_ROWS = 5\n"
            "def early(first):\n"
            "    v = first.view\n"
            "    print(v.highestmodseq, v.uidnext, v.uidvalidity, flush=True)\n"
            "    print(*(f'{u}:{sorted(f)}' for u, f in zip(v.uids, v.flags)), sep='|',"
            " flush=True)\n"
            "    os._exit(0)\n"
            "MailboxIndex(sys.argv[1]).folder('INBOX', early=early)\n")
    out, _ = run_python(code, str(root)).communicate(timeout=30)
    head, told = out.splitlines()
    modseq, uidnext, uidvalidity = map(int, head.split())
    with MailboxIndex(root) as mi:
        fi = mi.folder("INBOX")
        status = fi.status()
        assert (status.uidnext, status.uidvalidity) == (uidnext, uidvalidity)
        assert "|".join(f"{i.uid}:{sorted(i.flags)}" for i in fi.messages()) == told
        assert fi.highestmodseq > modseq

