"""maildir.uidlist: format, durability, torn lines, compaction and locking across processes."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time

import pytest

from maildir import create_maildir
from maildir.uidlist import MAX_UID, UIDLIST_NAME, UidList, UidListCorrupt, new_uidvalidity


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "alice"
    create_maildir(root, folders=())
    return root


def _new(folder) -> UidList:
    uidlist = UidList(folder)
    assert uidlist.create() is True
    return uidlist


def _assign(uidlist: UidList, *bases: str, reuse=None) -> list[int]:
    with uidlist.locked():
        return uidlist.assign(list(bases), reuse)


def test_create_writes_a_header_with_a_32_bit_uidvalidity(folder):
    uidlist = _new(folder)
    text = (folder / UIDLIST_NAME).read_text()
    assert text == f"1 V{uidlist.uidvalidity} N1 M0\n"
    assert 0 < uidlist.uidvalidity <= MAX_UID
    assert uidlist.next_uid == 1
    assert oct(os.stat(folder / UIDLIST_NAME).st_mode & 0o777) == "0o600"
    assert os.listdir(folder / "tmp") == []  # the file was written aside there, then linked


def test_create_never_overwrites(folder):
    first = _new(folder)
    _assign(first, "a")
    second = UidList(folder)
    assert second.create(previous_uidvalidity=first.uidvalidity) is False
    assert second.uidvalidity == first.uidvalidity
    assert second.get("a") == 1


def test_new_uidvalidity_is_above_the_previous_one():
    now = int(time.time())
    assert new_uidvalidity(now + 100) == now + 101
    assert new_uidvalidity(0) >= now
    assert new_uidvalidity(MAX_UID) == 1  # wraps to a nonzero value


def test_assign_appends_and_survives_reopening(folder):
    uidlist = _new(folder)
    assert _assign(uidlist, "a", "b") == [1, 2]
    assert _assign(uidlist, "c") == [3]
    lines = (folder / UIDLIST_NAME).read_text().splitlines()
    assert lines[1:] == ["1 a", "2 b", "3 c"]
    again = UidList(folder)
    assert again.load() is True
    assert again.items() == {"a": 1, "b": 2, "c": 3}
    assert again.next_uid == 4


def test_the_map_knows_what_assign_wrote_at_every_look(folder):
    """assign() leaves its map update for later (a first sync answers first): every reader,
    the same holder included, and the lock's release bring it in."""
    uidlist = _new(folder)
    with uidlist.locked():
        assert uidlist.assign(["a", "b"]) == [1, 2]
        assert uidlist.get("b") == 2  # the same holder, before the release
        assert uidlist.assign(["c"]) == [3]
        assert uidlist.assign(["a"], lambda base, uid: True) == [1]  # seen as listed
        assert uidlist.items() == {"a": 1, "b": 2, "c": 3}
        assert uidlist.assign(["d", "e"]) == [4, 5]
    assert uidlist._unmapped == []  # taken in at the release
    assert uidlist._uids == {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}
    assert uidlist.line_count == 5
    with uidlist.locked():
        uidlist.assign(["f"])
        uidlist.compact({"b", "f"})
    assert uidlist.items() == {"b": 2, "f": 6}


def test_assign_needs_the_lock(folder):
    uidlist = _new(folder)
    with pytest.raises(RuntimeError):
        uidlist.assign(["a"])
    with pytest.raises(RuntimeError):
        uidlist.raise_modseq_floor(10)


def test_reuse_decides_whether_a_listed_base_keeps_its_uid(folder):
    uidlist = _new(folder)
    _assign(uidlist, "a", "b")
    assert _assign(uidlist, "a", reuse=lambda base, uid: True) == [1]
    # Refused: the base gets a fresh UID and the later line wins from now on.
    assert _assign(uidlist, "b", reuse=lambda base, uid: False) == [3]
    assert UidList(folder).load() and UidList(folder).get("b") is None  # fresh object: unloaded
    again = UidList(folder)
    again.load()
    assert again.get("b") == 3
    assert again.line_count == 3


def test_load_of_a_missing_file_is_false(folder):
    assert UidList(folder).load() is False


def test_refresh_reads_only_appended_lines(folder):
    writer = _new(folder)
    _assign(writer, "a")
    reader = UidList(folder)
    reader.load()
    # Damage the already-read part in place: a reader that re-read the whole file would
    # now see "9 a"; one that follows the offset does not.
    path = folder / UIDLIST_NAME
    data = path.read_bytes()
    with open(path, "r+b") as f:
        f.seek(data.index(b"1 a"))
        f.write(b"9")
    _assign(writer, "b")
    reader.refresh()
    assert (reader.get("a"), reader.get("b")) == (1, 2)


def test_a_torn_last_line_is_ignored_then_cut_by_the_next_writer(folder):
    uidlist = _new(folder)
    _assign(uidlist, "a")
    path = folder / UIDLIST_NAME
    with open(path, "ab") as f:
        f.write(b"2 half-writ")  # a crash in the middle of an append
    reader = UidList(folder)
    assert reader.load() is True
    assert reader.items() == {"a": 1}
    assert reader.next_uid == 2
    assert _assign(reader, "b") == [2]
    assert path.read_text().splitlines()[1:] == ["1 a", "2 b"]


def test_junk_lines_are_skipped(folder):
    path = folder / UIDLIST_NAME
    path.write_bytes(
        b"1 V42 N5 M7\n3 a\nx y\n0 zero\n99999999999 huge\n4\n\xff\xfe bad\n6 \xffbad\nM9\n"
    )
    uidlist = UidList(folder)
    uidlist.load()
    assert uidlist.items() == {"a": 3}
    assert (uidlist.uidvalidity, uidlist.next_uid, uidlist.modseq_floor) == (42, 5, 9)


@pytest.mark.parametrize(
    "content", [b"", b"1 V42", b"2 V42 N1\n", b"1 N5\n", b"1 V0\n", b"garbage\n"]
)
def test_an_unreadable_header_is_corrupt(folder, content):
    (folder / UIDLIST_NAME).write_bytes(content)
    with pytest.raises(UidListCorrupt):
        UidList(folder).load()


def test_modseq_floor_is_appended_and_durable(folder):
    uidlist = _new(folder)
    with uidlist.locked():
        uidlist.raise_modseq_floor(1000)
        uidlist.raise_modseq_floor(500)  # never lowered
    assert (folder / UIDLIST_NAME).read_text().splitlines()[1:] == ["M1000"]
    again = UidList(folder)
    again.load()
    assert again.modseq_floor == 1000


def test_compact_drops_lines_but_never_lets_a_uid_be_reused(folder):
    uidlist = _new(folder)
    _assign(uidlist, "a", "b", "c")
    with uidlist.locked():
        uidlist.raise_modseq_floor(77)
        uidlist.compact({"a"})
    text = (folder / UIDLIST_NAME).read_text()
    assert text == f"1 V{uidlist.uidvalidity} N4 M77\n1 a\n"
    assert _assign(uidlist, "d") == [4]
    other = UidList(folder)
    other.load()
    assert (other.items(), other.next_uid, other.modseq_floor) == ({"a": 1, "d": 4}, 5, 77)


def test_a_reader_notices_the_file_was_replaced(folder):
    writer = _new(folder)
    _assign(writer, "a", "b")
    reader = UidList(folder)
    reader.load()
    with writer.locked():
        writer.compact({"b"})
    reader.refresh()
    assert reader.items() == {"b": 2}


def test_waiting_writer_follows_the_compacted_file(folder):
    first = _new(folder)
    _assign(first, "a", "b")
    second = UidList(folder)
    second.load()
    got: list[int] = []
    with first.locked():
        waiter = threading.Thread(target=lambda: got.extend(_assign(second, "c")))
        waiter.start()  # blocks on flock of the old file
        time.sleep(0.1)
        first.compact({"a"})
    waiter.join(5)
    assert got == [3]
    again = UidList(folder)
    again.load()
    assert again.items() == {"a": 1, "c": 3}


def test_threads_sharing_one_uidlist_get_distinct_uids(folder):
    uidlist = _new(folder)
    results: list[int] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        for i in range(50):
            uids = _assign(uidlist, f"t{n}-{i}")
            with lock:
                results.extend(uids)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(1, 201))


def _child(folder, tag: str, count: int, queue) -> None:
    uidlist = UidList(folder)
    uidlist.load()
    got = []
    for i in range(count):
        got += _assign(uidlist, f"{tag}-{i}")
        if i == count // 2 and tag == "p0":
            with uidlist.locked():
                uidlist.compact(set(uidlist.items()))
    queue.put(got)


def test_processes_appending_at_once_never_share_a_uid(folder):
    _new(folder)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_child, args=(folder, f"p{n}", 40, queue)) for n in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    uids = sorted(u for r in results for u in r)
    assert uids == list(range(1, 161))
    final = UidList(folder)
    final.load()
    assert len(final.items()) == 160
    assert sorted(final.items().values()) == uids
