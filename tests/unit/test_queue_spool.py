"""server.queue.spool: durable add, crash recovery, corrupt envelopes, ids, concurrency."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from maildir import safeio
from server.queue import spool as spool_mod
from server.queue.spool import (
    DELIVERED,
    PENDING,
    CorruptEnvelopeError,
    QueuedMessage,
    Recipient,
    Spool,
    new_id,
)

BODY = b"From: alice@example.test\r\nSubject: hi\r\n\r\nline one\r\nline two\r\n"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def spool(tmp_path):
    return Spool(tmp_path / "queue")


def _add(spool, recipients=("bob@example.net",), **kw):
    return spool.add("alice@example.test", list(recipients), [BODY[:20], BODY[20:]], **kw)


def test_add_stores_message_and_envelope_privately(spool):
    msg = _add(spool, ["bob@example.net", "carol@Example.NET", "dave@other.example"], now=1000.0)
    assert spool.read_message(msg.id) == BODY
    assert msg.size == len(BODY)
    assert (msg.created, msg.next_attempt, msg.attempts) == (1000.0, 1000.0, 0)
    assert [r.status for r in msg.recipients] == [PENDING] * 3
    assert spool.get(msg.id) == msg
    envelope = spool.root / "env" / f"{msg.id}.json"
    for path in (spool.message_path(msg.id), envelope):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for name in ("msg", "env", "tmp", "corrupt"):
        assert stat.S_IMODE((spool.root / name).stat().st_mode) == 0o700
    assert os.listdir(spool.root / "tmp") == []


def test_add_refuses_no_recipients_and_folds_repeats(spool):
    with pytest.raises(ValueError):
        _add(spool, [])
    msg = _add(spool, ["bob@example.net", "bob@example.net"])
    assert [r.address for r in msg.recipients] == ["bob@example.net"]


def test_domains_pending_done():
    msg = QueuedMessage(
        id=new_id(),
        sender="a@example.test",
        recipients=[
            Recipient("b@Example.net"),
            Recipient("c@example.NET"),
            Recipient('"x@y"@other.example'),
            Recipient("d@example.net", status=DELIVERED),
        ],
        created=0,
        next_attempt=0,
    )
    groups = msg.domains()
    assert sorted(groups) == ["example.net", "other.example"]
    assert [r.address for r in groups["example.net"]] == ["b@Example.net", "c@example.NET"]
    assert len(msg.pending()) == 3 and not msg.done()
    for rcpt in msg.recipients:
        rcpt.status = DELIVERED
    assert msg.done() and msg.domains() == {}


def test_restart_round_trip_keeps_status(spool, tmp_path):
    first = _add(spool, ["bob@example.net", "carol@example.net"], origin="submission alice")
    second = spool.add("", ["ünï@exämple.test"], [b"x\r\n"], is_dsn=True)
    first.recipients[0].status = DELIVERED
    first.recipients[0].delivered_at = 1234.5
    first.recipients[1].attempts = 1
    first.recipients[1].last_error = "451 4.7.1 greylisted, try later"
    first.recipients[1].last_code = 451
    first.attempts, first.next_attempt = 1, first.created + 60
    spool.save(first)

    reopened = Spool(tmp_path / "queue").load_all()
    assert reopened == [first, second]  # sorted by id, which is arrival order
    assert reopened[1].is_dsn and reopened[1].sender == ""
    assert list(Spool(tmp_path / "queue")) == reopened


def test_ids_are_sortable_filename_safe_and_unique(monkeypatch):
    clock = iter(range(10**18, 10**18 + 50))
    monkeypatch.setattr(spool_mod.time, "time_ns", lambda: next(clock))
    ids = [new_id() for _ in range(50)]
    assert ids == sorted(ids) and len(set(ids)) == 50
    assert all(len(i) == 21 and i.isalnum() and i.islower() for i in ids)


BAD_IDS = ["../../etc/passwd", "", "x", "A" * 21, "0" * 20 + "/", "0" * 22, None, 7]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_every_public_method_refuses_bad_ids(spool, bad):
    for call in (spool.get, spool.read_message, spool.message_path, spool.remove):
        with pytest.raises(ValueError):
            call(bad)
    msg = QueuedMessage(id=bad, sender="", recipients=[Recipient("b@x")], created=0,
                        next_attempt=0)  # fmt: skip
    with pytest.raises(ValueError):
        spool.save(msg)


def test_unknown_well_formed_id_is_a_key_error(spool):
    qid = new_id()
    with pytest.raises(KeyError):
        spool.get(qid)
    with pytest.raises(KeyError):
        spool.read_message(qid)
    assert spool.remove(qid) is False


def test_save_and_remove(spool):
    msg = _add(spool)
    msg.recipients[0].status = DELIVERED
    spool.save(msg)
    assert spool.get(msg.id).recipients[0].status == DELIVERED
    assert spool.remove(msg.id) is True
    assert spool.list() == []
    assert os.listdir(spool.root / "msg") == [] and os.listdir(spool.root / "env") == []
    with pytest.raises(KeyError):
        spool.save(msg)  # never resurrects an envelope without its message
    assert os.listdir(spool.root / "env") == []
    assert spool.remove(msg.id) is False


def test_writes_are_ordered_message_before_envelope(spool, monkeypatch):
    events = []
    real_rename, real_fsync_dir = os.rename, safeio.fsync_dir

    def rename(src, dst):
        events.append(("rename", Path(dst).parent.name))
        real_rename(src, dst)

    def fsync_dir(path):
        events.append(("fsync", Path(path).name))
        real_fsync_dir(path)

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(safeio, "fsync_dir", fsync_dir)
    monkeypatch.setattr(spool_mod, "fsync_dir", fsync_dir)
    _add(spool)
    assert events == [("rename", "msg"), ("fsync", "msg"), ("rename", "env"), ("fsync", "env")]


def test_failed_add_leaves_nothing(spool, monkeypatch):
    def broken(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spool_mod, "write_file_atomic", broken)
    with pytest.raises(OSError):
        _add(spool)
    for name in ("msg", "env", "tmp"):
        assert os.listdir(spool.root / name) == []


def test_crash_between_message_and_envelope_leaves_an_orphan_load_all_removes(spool):
    orphan = spool.message_path(new_id())
    orphan.write_bytes(BODY)  # as if the process died right after the message's fsync
    (spool.root / "tmp" / new_id()).write_bytes(b"half a mess")
    (spool.root / "tmp" / f"{new_id()}.json.1234").write_bytes(b"{")
    kept = _add(spool)
    assert Spool(spool.root).load_all() == [kept]
    assert not orphan.exists()
    assert os.listdir(spool.root / "tmp") == []


def test_kill_during_add_in_another_process(spool):
    # A real process dies (os._exit, like kill -9: no cleanup) after the message is durable
    # and before the envelope exists.  On restart the orphan goes, nothing else does.
    kept = _add(spool)
    code = (
        "import os, sys; from server.queue import spool as s\n"
        "s.Spool._write_envelope = lambda self, msg: os._exit(9)\n"
        "s.Spool(sys.argv[1]).add('a@x.test', ['b@y.test'], [b'body'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(spool.root)], cwd=REPO, check=False)
    assert proc.returncode == 9
    assert len(os.listdir(spool.root / "msg")) == 2
    assert spool.load_all() == [kept]
    assert os.listdir(spool.root / "msg") == [kept.id]


def test_load_all_spares_a_message_still_being_added(spool):
    # Another process holds the flock on its new message: an add() in progress.
    busy = spool.message_path(new_id())
    busy.write_bytes(BODY)
    with open(busy, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        assert spool.load_all() == []
        assert busy.exists()
    spool.load_all()
    assert not busy.exists()


def test_corrupt_envelope_is_set_aside_with_its_message(spool, caplog):
    good, bad, odd = _add(spool), _add(spool), _add(spool)
    (spool.root / "env" / f"{bad.id}.json").write_bytes(b'{"id": "trunc')
    envelope = json.loads((spool.root / "env" / f"{odd.id}.json").read_text())
    envelope["recipients"] = []
    (spool.root / "env" / f"{odd.id}.json").write_text(json.dumps(envelope))

    assert spool.list() == [good]  # read-only: skips, moves nothing
    assert (spool.root / "env" / f"{bad.id}.json").exists()
    with pytest.raises(CorruptEnvelopeError):
        spool.get(bad.id)

    with caplog.at_level(logging.ERROR, logger="mailstead.queue"):
        assert spool.load_all() == [good]
    assert bad.id in caplog.text and odd.id in caplog.text
    assert sorted(os.listdir(spool.root / "corrupt")) == sorted(
        [bad.id, f"{bad.id}.json", odd.id, f"{odd.id}.json"]
    )
    assert (spool.root / "corrupt" / bad.id).read_bytes() == BODY
    assert os.listdir(spool.root / "msg") == [good.id]


def test_envelope_without_message_is_set_aside(spool, caplog):
    msg = _add(spool)
    spool.message_path(msg.id).unlink()  # only by hand or disk damage: add() never does this
    with caplog.at_level(logging.ERROR, logger="mailstead.queue"):
        assert spool.load_all() == []
    assert "without message" in caplog.text
    assert os.listdir(spool.root / "corrupt") == [f"{msg.id}.json"]


def test_unknown_envelope_keys_are_ignored(spool):
    msg = _add(spool)
    path = spool.root / "env" / f"{msg.id}.json"
    doc = json.loads(path.read_text())
    doc["from_a_newer_version"] = 1
    doc["recipients"][0]["also_new"] = True
    path.write_text(json.dumps(doc))
    assert spool.load_all() == [msg]


def test_concurrent_adds_from_eight_threads(spool):
    ids: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(n):
        try:
            start.wait()
            for i in range(25):
                body = f"Subject: {n}-{i}\r\n\r\nbody\r\n".encode()
                ids.append(spool.add("a@x.test", [f"r{n}@y.test"], [body]).id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(ids)) == 200
    loaded = Spool(spool.root).load_all()
    assert [m.id for m in loaded] == sorted(ids)
    for m in loaded:
        n, i = spool.read_message(m.id).split(b"\r\n")[0].split(b": ")[1].split(b"-")
        assert m.recipients[0].address == f"r{n.decode()}@y.test"


def test_concurrent_save_and_remove_never_leave_an_envelope_alone(spool):
    for _ in range(20):
        msg = _add(spool)
        outcome = []

        def saver(msg=msg, outcome=outcome):
            for n in range(20):
                msg.attempts = n
                try:
                    spool.save(msg)
                except KeyError:
                    outcome.append("gone")
                    return

        threads = [threading.Thread(target=saver) for _ in range(3)]
        threads.append(threading.Thread(target=spool.remove, args=(msg.id,)))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not spool.message_path(msg.id).exists()
        assert not (spool.root / "env" / f"{msg.id}.json").exists()
    assert spool.load_all() == []
    assert os.listdir(spool.root / "corrupt") == []
