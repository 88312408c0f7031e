"""maildir.index_sync: the first sync of a folder (its whole cur/ at once) against an oracle.

A first sync takes every plain cur/ name by one regex into a tuple and inserts by column
(index_sync ``fresh``), with no stat() of a file whose name gives its size; names that need
care (new/, twins, unusual shapes) go the way of renames.  Whatever the path, a message must
get the row parse_name says, its UID in the order Dovecot gives (the seconds and microseconds
in the name, then the name), and, once asked for, its mtime as internal date; files vanishing
or renamed mid-build lose nothing.
"""

from __future__ import annotations

import gc
import os
import random
import sqlite3
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from maildir import create_maildir, index_adds, parse_name
from maildir.index import MailboxIndex
from maildir.index_sql import DB_NAME
from maildir.index_state import (
    KnownFiles,
    common_names,
    order_of,
    usual_name,
    usual_names,
    vsizes,
)
from maildir.index_sync import _Pass
from maildir.keywords import LETTER_BITS, imap_flags
from maildir.uidlist import UIDLIST_NAME

KEYWORDS = {"a": "Junk", "b": "$Label1"}  # dovecot-keywords: letter -> name
INFOS = [":2,S", ":2,FS", ":2,", "", ":2,Sa", ":2,ab", ":2,SZx", ":1,foo", ":2,SS", ":2,Pb"]
SHAPES = [
    "{b},S={s},W={w}{i}",
    "{b},S={s}{i}",
    "{b}{i}",
    "{b},W={w}{i}",
    "{b},U=12,FMD5=ab{i}",  # offlineimap: not the usual shape, parse_name's way
    "{b},S=007{i}",  # not a canonical size: part of the base
]


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "alice"
    create_maildir(root, folders=())
    (root / "dovecot-keywords").write_text("0 Junk\n1 $Label1\n")
    return root


def fill(root: Path, n: int, seed: int = 7) -> None:
    """``n`` messages of every name shape, a ninth of them in new/; few distinct mtimes, so
    that the name breaks many ties; some nanoseconds just below the next second."""
    rnd = random.Random(seed)
    for k in range(n):
        base = f"{1700000000 + rnd.randrange(50)}.M{k}P9Q{k}R{k:04x}.host" + "é" * (k % 37 == 0)
        if k % 11 == 0:  # no microseconds: only the seconds and the name order it
            base = f"{1700000000 + rnd.randrange(50)}.P{k}Q{k}.host"
        elif k % 13 == 0:  # no seconds either
            base = f"x{k}.M{rnd.randrange(5)}.host"
        shape, info = rnd.choice(SHAPES), rnd.choice(INFOS)
        name = shape.format(b=base, s=100 + k, w=120 + k, i=info)
        subdir = "new" if k % 9 == 0 else "cur"
        if subdir == "new":
            name = name.partition(":")[0]
        path = root / subdir / name
        path.write_bytes(b"x" * (k % 50 + 1))
        sec = 1700000000 + rnd.randrange(20)
        nsec = rnd.choice([0, 5, 500, 999_999_999])
        os.utime(path, ns=(sec * 10**9, sec * 10**9 + nsec))


def dovecot_order(base: str) -> tuple[int, int, str]:
    """maildir_filename_sort_cmp's keys, written out the way Dovecot's C reads them: the
    leading digits, then the digits after the first "M" of the next dot-separated part."""
    i, secs, usecs = 0, 0, 0
    while i < len(base) and "0" <= base[i] <= "9":
        secs, i = secs * 10 + int(base[i]), i + 1
    if i < len(base) and base[i] == ".":
        i += 1
        while i < len(base) and base[i] not in ".:":
            i += 1
            if base[i - 1] == "M":
                while i < len(base) and "0" <= base[i] <= "9":
                    usecs, i = usecs * 10 + int(base[i]), i + 1
                break
    return secs, usecs, base


def oracle(root: Path, dates: bool = False) -> list[tuple]:
    """(uid, flags, keywords, size, internal_date, base, name) of every message file now in
    the folder, from parse_name and stat() alone: what the index must hold after a sync.
    The internal date is None where the name gives the size (not read yet), unless
    ``dates``: after something asked for them."""
    files = []
    for name in os.listdir(root / "cur"):
        st = os.stat(root / "cur" / name)
        if name.startswith(".") or "\n" in name or not os.path.isfile(root / "cur" / name):
            continue
        parsed = parse_name(name)
        letters = parsed.flags
        bits = sum(bit for letter, bit in LETTER_BITS.items() if letter in letters)
        keywords = " ".join(sorted(KEYWORDS[ch] for ch in set(letters) if ch in KEYWORDS))
        named = next((s for s in (parsed.vsize, parsed.size) if s is not None), None)
        size = st.st_size if named is None else named
        date = int(st.st_mtime) if dates or named is None else None
        entry = (bits, keywords, size, date, parsed.base, name)
        files.append((dovecot_order(parsed.base), entry))
    files.sort()
    return [(uid, *entry) for uid, (_, entry) in enumerate(files, start=1)]


def stored(root: Path) -> list[tuple]:
    query = (
        "SELECT uid, flags, keywords, size, internal_date, base, name FROM messages"
        " WHERE subdir = 'cur' ORDER BY uid"
    )
    with sqlite3.connect(root / DB_NAME) as db:
        return [tuple(row) for row in db.execute(query)]


def test_first_sync_of_every_name_shape_matches_the_oracle(root):
    fill(root, 400)
    (root / "cur" / "bad\nname:2,S").write_bytes(b"x")  # unindexable: left alone
    (root / "cur" / ".hidden").write_bytes(b"x")
    (root / "cur" / "adir").mkdir()
    with MailboxIndex(root) as mi:
        inbox = mi.folder("INBOX")
        assert os.listdir(root / "new") == []
        expected = oracle(root)
        assert len(expected) == 400
        assert stored(root) == expected
        assert inbox.uidnext == 401
        assert {m.internal_date for m in inbox.messages(dates=False)} > {None}
        # Asked for, every date is the file's mtime, and is stored.
        dated = oracle(root, dates=True)
        assert [m.internal_date for m in inbox.messages()] == [row[4] for row in dated]
        assert stored(root) == dated
        # The file list kept in memory is the one a later process loads from the index.
        known = inbox._known
        with mi.connection() as conn:
            loaded = KnownFiles.load(conn, known.folder_id, known.version)
        assert (known.by_dir, known.bases) == (loaded.by_dir, loaded.bases)
    # The uidlist holds every base with its UID, so a rebuilt index keeps them.
    lines = (root / UIDLIST_NAME).read_text().splitlines()[1:]
    uid_lines = [line for line in lines if not line.startswith("M")]
    assert uid_lines == [f"{uid} {base}" for uid, *_, base, _ in expected]


def test_a_rebuilt_index_keeps_every_uid(root):
    fill(root, 200)
    with MailboxIndex(root) as mi:
        mi.folder("INBOX")
    before = stored(root)
    for suffix in ("", "-wal", "-shm"):
        if (root / (DB_NAME + suffix)).exists():
            os.unlink(root / (DB_NAME + suffix))
    with MailboxIndex(root) as mi:
        mi.folder("INBOX")
    assert stored(root) == before == oracle(root)


def test_twins_found_together_each_get_a_name_and_uid(root):
    fill(root, 20)
    name = next(n for n in os.listdir(root / "cur") if n.endswith(":2,S"))
    os.link(root / "cur" / name, root / "cur" / (name[:-1] + "F"))  # same base, both new
    with MailboxIndex(root) as mi:
        inbox = mi.folder("INBOX")
        assert inbox.count == 21 + len(os.listdir(root / "new"))
    rows = stored(root)
    assert len({base for *_, base, _ in rows}) == len(rows) == len(os.listdir(root / "cur"))
    assert rows == oracle(root)


def _stat_that(monkeypatch, act):
    """Make index_adds's os.stat run ``act(file name)`` just before stat()ing a file (by path
    or by name in a directory): another program at work between the listing and the stat."""
    real = os.stat

    def stat(path, *args, **kwargs):
        act(os.path.basename(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr("maildir.index_adds.os.stat", stat)


def _sizeless(root: Path) -> list[str]:
    """The cur/ names that give no size: the only files a sync stat()s."""
    return [n for n in sorted(os.listdir(root / "cur"))
            if parse_name(n).size is None and parse_name(n).vsize is None]


def test_a_file_deleted_during_the_first_sync_is_not_indexed(root, monkeypatch):
    fill(root, 100)
    victim = _sizeless(root)[5]
    _stat_that(monkeypatch, lambda name: name == victim and os.unlink(root / "cur" / name))
    with MailboxIndex(root) as mi:
        inbox = mi.folder("INBOX")
        assert inbox.count == 99
        assert victim not in os.listdir(root / "cur")
        assert stored(root) == oracle(root)  # no UID lost to it: 1..99 in order
        assert inbox.uids() == list(range(1, 100))


def test_a_file_renamed_during_the_first_sync_keeps_its_new_flags(root, monkeypatch):
    fill(root, 100)
    victim = next(n for n in _sizeless(root) if n.endswith(":2,"))
    flagged = victim + "F"

    def rename(name):
        if name == victim:  # another program flags it meanwhile
            os.rename(root / "cur" / name, root / "cur" / flagged)

    _stat_that(monkeypatch, rename)
    with MailboxIndex(root) as mi:
        inbox = mi.folder("INBOX")
        assert inbox.count == 100
    # Missed by the first pass, found by the next: the last UID, with its new name's flags.
    *others, last = stored(root)
    expected = [row for row in oracle(root) if row[-1] != flagged]
    assert [row[1:] for row in others] == [row[1:] for row in expected]
    assert [row[0] for row in others] == list(range(1, 100))
    assert last[0] == 100 and last[-1] == flagged and last[1] == LETTER_BITS["F"]


def test_dates_of_files_renamed_or_deleted_since_the_sync(root):
    """A date is read from the name the index has; a file another program renamed since
    is found by a full sync, and one it deleted is left out (that sync expunges it)."""
    fill(root, 60)
    with MailboxIndex(root) as mi:
        inbox = mi.folder("INBOX")
        first, *rows = stored(root)
        renamed, deleted = [row for row in rows if row[4] is None][3:5]
        flagged = renamed[-1].partition(":")[0] + ":2,F"
        os.rename(root / "cur" / renamed[-1], root / "cur" / flagged)
        os.unlink(root / "cur" / deleted[-1])
        got = inbox.get_many([first[0], renamed[0], deleted[0]])
        assert sorted(got) == [first[0], renamed[0]]
        mtime = int(os.stat(root / "cur" / flagged).st_mtime)
        assert got[renamed[0]].internal_date == mtime
        assert inbox.get(deleted[0]) is None
        assert inbox.sync().expunged == [deleted[0]]
    now = {row[0]: row for row in stored(root)}
    assert now[renamed[0]][4:] == (mtime, renamed[5], flagged)
    assert now[first[0]][4] == int(os.stat(root / "cur" / first[-1]).st_mtime)


def test_a_sized_file_deleted_during_the_first_sync_is_expunged_by_the_next(root, monkeypatch):
    """Without a stat() a sync cannot tell a file deleted since the listing: it gets a UID
    (as it would, deleted just after the sync), and the next sync expunges it."""
    fill(root, 30)
    victim = next(n for n in sorted(os.listdir(root / "cur")) if parse_name(n).vsize)
    real = _Pass._list

    def listed_then_deleted(self, subdir):
        real(self, subdir)
        if subdir == "cur" and (root / "cur" / victim).exists():
            os.unlink(root / "cur" / victim)

    monkeypatch.setattr(_Pass, "_list", listed_then_deleted)
    with MailboxIndex(root) as mi:
        inbox = mi.folder("INBOX")
        assert inbox.count == 30
        [uid] = [row[0] for row in stored(root) if row[-1] == victim]
        monkeypatch.undo()
        assert inbox.sync(full=True).expunged == [uid]
        assert inbox.count == 29
        assert stored(root) == oracle(root)[: uid - 1] + [
            (u + 1, *row) for u, *row in oracle(root)[uid - 1 :]]


def test_what_is_not_a_regular_file_is_no_message(root):
    """The listing's file types (d_type) keep directories and FIFOs out, without a stat();
    a symlink to a message counts, as its target does."""
    fill(root, 10)
    target = sorted(os.listdir(root / "cur"))[0]
    (root / "cur" / "1700000001.M1P1.dir,S=10:2,S").mkdir()
    os.mkfifo(root / "cur" / "1700000001.M2P1.fifo,S=10:2,S")
    os.symlink(root / "cur" / target, root / "cur" / "1700000001.M3P1.link,S=10:2,S")
    os.symlink(root / "nowhere", root / "cur" / "1700000001.M4P1.dangling,S=10:2,S")
    with MailboxIndex(root) as mi:
        inbox = mi.folder("INBOX")
        names = {row[-1] for row in stored(root)}
        assert "1700000001.M3P1.link,S=10:2,S" in names
        assert not {"dir", "fifo", "dangling"} & {n.split(".")[2].split(",")[0] for n in names}
        assert inbox.count == 11 + len(os.listdir(root / "new"))


def test_bulk_added_file_list_equals_one_by_one():
    names = [f"{i}.M{i}.host,S={i}:2,S" for i in range(50)]
    bases = [n.partition(",")[0] for n in names]
    subdirs = ["cur" if i % 3 else "new" for i in range(50)]
    uids = list(range(1, 51))
    bulk, single = KnownFiles(1, 0), KnownFiles(1, 0)
    for known in (bulk, single):  # one listed already, under another name and directory
        known.add(99, bases[7], "new", "old-name")
    bulk.add_new(uids, bases, subdirs, names)
    for uid, base, subdir, name in zip(uids, bases, subdirs, names, strict=True):
        single.remove(base)
        single.add(uid, base, subdir, name)
    assert (bulk.by_dir, bulk.bases) == (single.by_dir, single.bases)


@given(st.text(alphabet="ab.,:SMW=0127\n\r\udcff", min_size=1, max_size=16))
def test_a_usual_name_is_indexable_and_split_as_parse_name_does(name):
    assume(name not in (".", ".."))  # never listed
    match = usual_name(name)
    if match is None:
        return
    assert not any(ch in name for ch in "\n\r\udcff")
    parsed = parse_name(name)
    base, secs, usecs, *rest = match.groups()
    assert (int(secs or 0), int(usecs or 0), base) == dovecot_order(parsed.base)
    assert order_of(base) == dovecot_order(base)[:2]
    assert (base, *rest) == (
        parsed.base,
        None if parsed.size is None else str(parsed.size),
        None if parsed.vsize is None else str(parsed.vsize),
        parsed.info,
    )


@given(st.lists(st.text(alphabet="ab.,:SMW=0127\n\r\udcff", min_size=1, max_size=12),
                min_size=1, max_size=6))
def test_a_listing_matched_at_once_is_matched_name_by_name(names):
    names = [n for n in names if "/" not in n]
    one_by_one = []
    for name in names:
        match = usual_name(name)
        groups = match.groups() if match else ("",) * 6
        one_by_one.append(tuple("" if g is None else g for g in groups))
    assert usual_names("/".join(names) + "/") == one_by_one


# The pieces of a name of common_names' shape: (good choices, choices just off the shape).
_PIECES = [
    (["1700000000", "0"], ["", "17x"]),
    ([".M", ".PM", ".aPM"], [".", ".P.M", "M", ".M\n"]),
    (["5", "0", "123456"], ["", "x"]),
    (["", "P1.host", "a.b"], [",", ":", "\n", "\udcff", "é"]),
    ([",S=1", ",S=0", ",S=" + "1" * 19], [",S=012", ",S=" + "1" * 20, "", ",S="]),
    ([",W=2", ",W=0"], [",W=", ",W=01", ""]),
    ([":2,S", ":2,", ":2,a:b", ":2,,W=3:", ":2,S:2,T"], [":1,x", "", ":2,\n", ":2,S\r", ":2"]),
]


_SPOILERS = [(i, bad) for i, (_, bads) in enumerate(_PIECES) for bad in bads]


def _common_like(spoiled: bool):
    """A name of common_names' shape; ``spoiled``: with one piece just off it."""
    return st.builds(
        lambda parts, spoiler: "".join(
            spoiler[1] if spoiled and i == spoiler[0] else part for i, part in enumerate(parts)),
        st.tuples(*(st.sampled_from(good) for good, _ in _PIECES)),
        st.sampled_from(_SPOILERS),
    )


@settings(max_examples=300)
@given(st.one_of(
    st.lists(_common_like(False), min_size=1, max_size=6),
    st.lists(st.one_of(_common_like(False), _common_like(True)), min_size=1, max_size=6),
    st.builds(lambda names, odd, at: names[:at] + [odd] + names[at:],
              st.lists(_common_like(False), max_size=5), _common_like(True), st.integers(0, 5)),
))
def test_a_listing_of_the_common_shape_is_split_as_name_by_name(names):
    """common_names finds one match per name exactly when every name has the shape, and then
    splits each as usual_name does; vsizes reads each one's ,W=."""
    names = [n for n in names if "/" not in n]
    assume(names)
    shaped = []
    for name in names:  # the shape, as usual_name splits names
        match = usual_name(name)
        shaped.append(match is not None and all(match.group(2, 3, 4, 5, 6))
                      and match[6].startswith("2,"))
    found = common_names(f"/{'/'.join(names)}/")
    assert (len(found) == len(names)) == all(shaped)
    if not all(shaped):
        return
    assert vsizes("/" + "/".join(names)) == [usual_name(n)[5] for n in names]
    for name, (base, secs, usecs, info) in zip(names, found, strict=True):
        assert usual_name(name).group(1, 2, 3, 6) == (base, secs, usecs, "2," + info)


def fill_usual(root: Path, n: int, seed: int = 5, common: bool = False) -> None:
    """``n`` cur/ files named as deliveries name them (with ,S= and ,W=), in every order
    shape and with every info: what a first sync takes all at once (``bulk_match``).
    ``common``: all of the shape common_names takes (and a "2," info)."""
    rnd = random.Random(seed)
    for k in range(n):
        sec = 1700000000 + rnd.randrange(30)
        base = [f"{sec}.M{rnd.randrange(99)}P{k}Q{k}.host", f"{sec}.P{k}.host", f"x{k}.M3.host",
                f"{sec}.M{k}P1.hé"][0 if common else k % 4]
        infos = [i for i in INFOS if i.startswith(":2,")] if common else INFOS
        path = root / "cur" / f"{base},S={100 + k},W={120 + k}{rnd.choice(infos)}"
        path.write_bytes(b"x")
        os.utime(path, (sec, sec))


@pytest.mark.parametrize(("twin", "common"), [(False, False), (True, False), (False, True)])
def test_a_first_sync_taken_at_once_matches_the_oracle(root, monkeypatch, twin, common):
    monkeypatch.setattr("maildir.index_sync.BULK", 10)
    fill_usual(root, 300, common=common)
    if common:  # sizes read after the rest, and those of new/ files known before
        for k in range(5):
            (root / "new" / f"1600000000.M{k}P1.host,S=7,W={9 + k}").write_bytes(b"x")
    if twin:  # the same base twice: taken name by name, which renames one
        name = sorted(os.listdir(root / "cur"))[9]
        os.link(root / "cur" / name, root / "cur" / (name.partition(":")[0] + ":2,T"))
    taken = []
    real = index_adds.bulk_match
    monkeypatch.setattr("maildir.index_sync.bulk_match", lambda names: taken.append(
        real(names)) or taken[-1])
    with MailboxIndex(root) as mi:
        inbox = mi.folder("INBOX")
        assert [t is not None for t in taken] == [not twin]
        assert [t[4] is None for t in taken if t is not None] == ([True] if common else
                                                                  [] if twin else [False])
        assert stored(root) == oracle(root)
        view = inbox.view()
        assert list(view.uids) == list(range(1, 301 + twin + 5 * common))
        assert view.flags == [imap_flags(bits, kws) for _, bits, kws, *_ in stored(root)]
        assert [m.internal_date for m in inbox.messages()] == [
            row[4] for row in oracle(root, dates=True)]
    assert gc.isenabled()


def test_a_rebuilt_index_taken_at_once_keeps_uids_out_of_name_order(root, monkeypatch):
    """A rebuilt index takes every UID back from the uidlist, whatever order the names
    would give: the view the first sync hands over is still in UID order."""
    monkeypatch.setattr("maildir.index_sync.BULK", 10)
    fill_usual(root, 200)
    with MailboxIndex(root) as mi:
        mi.folder("INBOX")
    path = root / UIDLIST_NAME
    header, *lines = path.read_text().splitlines()
    bases = [line.split(" ", 1)[1] for line in lines if not line.startswith("M")]
    shuffled = random.Random(3).sample(range(1, len(bases) + 1), len(bases))
    path.write_text("\n".join([header, *(f"{u} {b}" for u, b in zip(shuffled, bases,
                                                                      strict=True))]) + "\n")
    for suffix in ("", "-wal", "-shm"):
        if (root / (DB_NAME + suffix)).exists():
            os.unlink(root / (DB_NAME + suffix))
    with MailboxIndex(root) as mi:
        view = mi.folder("INBOX").view()
    rows = stored(root)
    assert {row[-2]: row[0] for row in rows} == dict(zip(bases, shuffled, strict=True))
    assert list(view.uids) == [row[0] for row in rows] == list(range(1, 201))
    assert view.flags == [imap_flags(bits, kws) for _, bits, kws, *_ in rows]


@pytest.mark.parametrize(
    "name",
    ["1.M1.host,S=12,W=14:2,S", "1.M1.host,W=0", "1.M1.host,S=5:", "1.M1.host", "b:2,a:b", "é"],
)
def test_usual_names_are_taken(name):
    assert usual_name(name) is not None


@pytest.mark.parametrize(
    "name", ["b,S=007", "b,S=5,", "b,W=5,S=5", "b,S=5,S=6", ",S=5", "b,U=1", "b\udcff", "b:\n"]
)
def test_unusual_names_are_left_to_parse_name(name):
    assert usual_name(name) is None


_RENAME = os.rename  # the real one, for what other programs do while it is patched


def _rename_that(monkeypatch, act):
    """Make os.rename (index_sync's and index_adds') run ``act(source path)`` first."""

    def rename(src, dst, *args, **kwargs):
        act(str(src))
        return _RENAME(src, dst, *args, **kwargs)

    monkeypatch.setattr("maildir.index_sync.os.rename", rename)


def test_new_files_another_reader_moves_first_are_found_in_cur(root, monkeypatch):
    fill(root, 90)
    in_new = sorted(os.listdir(root / "new"))
    victims = {in_new[0], in_new[-1]}  # whatever their name's shape

    def move_first(src):
        name = os.path.basename(src)
        if os.path.basename(os.path.dirname(src)) == "new" and name in victims:
            _RENAME(src, root / "cur" / (name + ":2,S"))  # another reader, a moment before

    _rename_that(monkeypatch, move_first)
    with MailboxIndex(root) as mi:
        inbox = mi.folder("INBOX")
        assert inbox.count == 90
    assert os.listdir(root / "new") == []
    *others, second_last, last = stored(root)
    assert {second_last[-1], last[-1]} == {name + ":2,S" for name in victims}
    expected = [row[1:] for row in oracle(root) if row[-1] not in (second_last[-1], last[-1])]
    assert [row[1:] for row in others] == expected
    assert [row[0] for row in others] == list(range(1, 89))


def test_a_new_dir_we_cannot_move_from_is_indexed_where_it_is(root, monkeypatch):
    fill(root, 45)
    in_new = set(os.listdir(root / "new"))

    def refuse(src):
        if os.path.basename(os.path.dirname(src)) == "new":
            raise PermissionError(src)

    _rename_that(monkeypatch, refuse)
    with MailboxIndex(root) as mi:
        inbox = mi.folder("INBOX")
        assert inbox.count == 45
        in_index = {p.name for p in map(inbox.path, inbox.uids()) if p.parent.name == "new"}
    assert in_index == in_new == set(os.listdir(root / "new"))


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3) | st.integers(999_998, 1_000_001),
                          st.text("ab", max_size=3)),
                unique_by=lambda t: t[2]))
def test_uid_order_is_seconds_microseconds_then_base(keys):
    """The one-int shortcut and the tuple fallback (ties, microseconds of a million and
    more) give the same order."""
    secs, usecs, bases = ([k[i] for k in keys] for i in range(3))
    order = index_adds._uid_order(secs, usecs, bases)
    assert [keys[i] for i in order] == sorted(keys)


def test_a_status_after_a_first_sync_lets_its_columns_go(root):
    # The first sync keeps its columns for the SELECT that follows; a STATUS (or a POP3
    # login) made the sync and will not SELECT: they must not stay until the next change.
    fill_usual(root, 50)
    with MailboxIndex(root) as mi:
        inbox = mi.folder("INBOX")
        assert inbox._built is not None
        status = inbox.status()
        assert inbox._built is None and status.messages == 50
        assert list(inbox.view().uids) == list(range(1, 51))  # read back from the index


def test_sizes_left_to_the_names_are_read_from_each_one():
    """NewRows.files reads the sizes a first sync left for later (None) from the names, all
    at once; known sizes stay, and a name off the shape is read by itself, never shifting
    the sizes after it."""
    names = ["1.M1a,S=5,W=7:2,S", "2.M2b,S=6:2,", "3.M3c,S=8,W=9:2,"]
    assert index_adds._sizes(names[::2], [None, None]) == [7, 9]
    assert index_adds._sizes(names, [None, None, None]) == [7, 6, 9]
    assert index_adds._sizes(names, [None, 12, None]) == [7, 12, 9]
    assert index_adds._sizes(names, ["3", 4, None]) == [3, 4, 9]
