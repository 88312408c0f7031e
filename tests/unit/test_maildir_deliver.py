"""maildir.deliver: byte-exact delivery, all-or-nothing failure, concurrency, tmp cleanup."""

from __future__ import annotations

import errno
import mailbox
import os
import stat
import threading
import time

import pytest

from maildir import Delivery, DeliveryError, cleanup_tmp, create_maildir, deliver, parse_name

TRACE = b"Return-Path: <bob@example.net>\r\nDelivered-To: alice@example.org\r\n"
BODY = b"From: bob@example.net\r\nSubject: test\r\n\r\nline one\r\nline two\r\n.\r\n"


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "alice"
    create_maildir(root, folders=("Sent", "Junk"))
    return root


def _all_files(*folders):
    """Every file in tmp/ new/ cur/ of the given folders."""
    return [
        folder / sub / name
        for folder in folders
        for sub in ("tmp", "new", "cur")
        for name in os.listdir(folder / sub)
    ]


def test_single_delivery_is_byte_exact(root):
    [path] = deliver([Delivery(root, [TRACE, BODY])], hostname="mx.example.org")
    data = TRACE + BODY
    assert path.parent == root / "new"
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    parsed = parse_name(path.name)
    assert parsed.size == parsed.vsize == len(data) == path.stat().st_size
    assert parsed.info is None
    assert parsed.base.endswith(".mx.example.org")
    assert os.listdir(root / "tmp") == []

    md = mailbox.Maildir(root, factory=None, create=False)
    [key] = md.keys()
    assert md.get_bytes(key) == data  # CRLF kept, nothing rewritten
    assert md.get_message(key)["Subject"] == "test"


def test_chunks_may_be_any_bytes_like(root):
    [path] = deliver([Delivery(root, (bytearray(b"A\r\n"), memoryview(b"B\r\n"), b""))])
    assert path.read_bytes() == b"A\r\nB\r\n"
    assert parse_name(path.name).size == 6


def test_empty_message_and_no_deliveries(root):
    [path] = deliver([Delivery(root, [])])
    assert path.name.endswith(",S=0,W=0")
    assert deliver([]) == []


def test_multiple_deliveries_all_land_in_order(root, tmp_path):
    bob = tmp_path / "bob"
    create_maildir(bob, folders=())
    targets = [root, root / ".Junk", bob, root]
    paths = deliver([Delivery(t, [f"X-To: {i}\r\n".encode(), BODY]) for i, t in enumerate(targets)])
    assert [p.parent.parent for p in paths] == targets
    assert len(set(paths)) == 4
    for i, p in enumerate(paths):
        assert p.read_bytes() == f"X-To: {i}\r\n".encode() + BODY
    assert len(mailbox.Maildir(root, factory=None, create=False)) == 2
    assert len(mailbox.Maildir(root, create=False).get_folder("Junk")) == 1


class ExplodingChunks:
    """A chunks sequence whose iteration fails halfway, like a spool read error."""

    def __init__(self, first: bytes):
        self.first = first

    def __len__(self):
        return 2

    def __getitem__(self, i):
        raise IndexError(i)

    def __iter__(self):
        yield self.first
        raise RuntimeError("spool read failed")


def test_phase1_failure_leaves_nothing(root, tmp_path):
    bob = tmp_path / "bob"
    create_maildir(bob, folders=())
    deliveries = [
        Delivery(root, [TRACE, BODY]),
        Delivery(bob, [TRACE, BODY]),
        Delivery(root / ".Sent", ExplodingChunks(b"partial")),
        Delivery(root / ".Junk", [BODY]),
    ]
    with pytest.raises(DeliveryError) as info:
        deliver(deliveries)
    assert isinstance(info.value, OSError)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert ".Sent" in str(info.value)
    assert _all_files(root, bob, root / ".Sent", root / ".Junk") == []


def test_phase1_failure_carries_errno(root, tmp_path):
    broken = tmp_path / "broken"
    create_maildir(broken, folders=())
    os.rmdir(broken / "tmp")
    with pytest.raises(DeliveryError) as info:
        deliver([Delivery(root, [BODY]), Delivery(broken, [BODY])])
    assert info.value.errno == errno.ENOENT
    assert isinstance(info.value.__cause__, FileNotFoundError)
    assert _all_files(root) == []


def test_phase2_failure_leaves_nothing(root, tmp_path):
    # Replace a later folder's new/ with a plain file: the tmp write succeeds (phase 1) but
    # the rename into new/ fails (phase 2), whatever our privileges are.
    bob = tmp_path / "bob"
    create_maildir(bob, folders=())
    os.rmdir(bob / "new")
    (bob / "new").write_bytes(b"not a directory")
    carol = tmp_path / "carol"
    create_maildir(carol, folders=())
    deliveries = [
        Delivery(root, [TRACE, BODY]),
        Delivery(root / ".Sent", [BODY]),
        Delivery(bob, [BODY]),
        Delivery(carol, [BODY]),
    ]
    with pytest.raises(DeliveryError) as info:
        deliver(deliveries)
    assert info.value.errno == errno.ENOTDIR
    assert "moving into new/" in str(info.value)
    assert _all_files(root, root / ".Sent", carol) == []
    assert os.listdir(bob / "tmp") == [] and os.listdir(bob / "cur") == []
    assert len(mailbox.Maildir(root, factory=None, create=False)) == 0


def test_concurrent_deliveries_from_8_threads(root, tmp_path):
    bob = tmp_path / "bob"
    create_maildir(bob, folders=())
    per_thread = 25
    errors: list[BaseException] = []
    results: list[list] = [[] for _ in range(8)]
    barrier = threading.Barrier(8)

    def work(n: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                body = f"Subject: {n}-{i}\r\n\r\nx\r\n".encode()
                results[n].extend(deliver([Delivery(root, [TRACE, body]), Delivery(bob, [body])]))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    paths = [p for r in results for p in r]
    assert len(paths) == len(set(paths)) == 8 * per_thread * 2
    md = mailbox.Maildir(root, factory=None, create=False)
    subjects = sorted(msg["Subject"] for msg in md)  # iterating yields messages
    assert subjects == sorted(f"{n}-{i}" for n in range(8) for i in range(per_thread))
    assert len(os.listdir(bob / "new")) == 8 * per_thread
    assert os.listdir(root / "tmp") == [] and os.listdir(bob / "tmp") == []


def test_cleanup_tmp(root):
    tmp = root / "tmp"
    old = time.time() - 37 * 3600
    for name in ("stale1", "stale2"):
        (tmp / name).write_bytes(b"x")
        os.utime(tmp / name, (old, old))
    (tmp / "fresh").write_bytes(b"x")
    (tmp / "recently-read").write_bytes(b"x")
    os.utime(tmp / "recently-read", (time.time(), old))  # atime new, mtime old: keep
    (tmp / "olddir").mkdir()
    os.utime(tmp / "olddir", (old, old))
    assert cleanup_tmp(root) == 2
    assert sorted(os.listdir(tmp)) == ["fresh", "olddir", "recently-read"]
    assert cleanup_tmp(root, older_than=-1) == 2  # everything older than "the future"
    assert os.listdir(tmp) == ["olddir"]


def test_cleanup_tmp_missing_folder(tmp_path):
    assert cleanup_tmp(tmp_path / "gone") == 0
