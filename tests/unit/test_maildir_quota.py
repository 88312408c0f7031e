"""maildir.quota: maildirsize reading, recalculation, appends and invalidation."""

from __future__ import annotations

import os

import pytest

from maildir import (
    Delivery,
    create_maildir,
    deliver,
    invalidate,
    recalculate,
    record,
    set_flags,
    usage,
)
from maildir.quota import MAILDIRSIZE

QUOTA = 1_048_576
MSG = b"Subject: q\r\n\r\n" + b"x" * 100 + b"\r\n"  # 116 bytes


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "alice"
    create_maildir(root, folders=("Sent", "Lists.python"))
    return root


def _maildirsize(root):
    return (root / MAILDIRSIZE).read_text()


def test_fresh_maildir(root):
    assert usage(root, QUOTA) == (0, 0)
    assert _maildirsize(root) == f"{QUOTA}S\n0 0\n"
    assert os.listdir(root / "tmp") == []  # the atomic write left no temporary behind


def test_usage_after_deliveries_across_folders(root):
    paths = deliver(
        [Delivery(root, [MSG]), Delivery(root / ".Sent", [MSG]), Delivery(root, [b"hi\r\n"])]
    )
    deliver([Delivery(root / ".Lists.python", [MSG])])
    set_flags(root, paths[0].name, "S")  # a message in cur/ counts as well
    expected = (3 * len(MSG) + 4, 4)
    assert recalculate(root) == expected
    assert usage(root, QUOTA) == expected
    assert _maildirsize(root) == f"{QUOTA}S\n{expected[0]} {expected[1]}\n"


def test_record_appends_and_usage_sums(root):
    assert usage(root, QUOTA) == (0, 0)
    record(root, 1000, 1)
    record(root, 250, 2)
    record(root, -200, -1)
    assert _maildirsize(root) == f"{QUOTA}S\n0 0\n1000 1\n250 2\n-200 -1\n"
    # The appended lines are trusted (no rescan): nothing was really delivered.
    assert usage(root, QUOTA) == (1050, 2)


def test_record_without_file_does_nothing(root):
    record(root, 1000, 1)
    assert not (root / MAILDIRSIZE).exists()
    assert usage(root, QUOTA) == (0, 0)  # recalculated from the store, ignoring the record


def test_recalculates_when_quota_changed(root):
    deliver([Delivery(root, [MSG])])
    usage(root, QUOTA)
    record(root, 5000, 5)  # bogus, to see whether it is trusted
    assert usage(root, QUOTA) == (len(MSG) + 5000, 6)
    assert usage(root, 2 * QUOTA) == (len(MSG), 1)
    assert _maildirsize(root) == f"{2 * QUOTA}S\n{len(MSG)} 1\n"


def test_recalculates_when_oversize(root):
    usage(root, QUOTA)
    line = b"1 1\n"
    while (root / MAILDIRSIZE).stat().st_size <= 5120 - len(line):
        record(root, 1, 1)
    assert (root / MAILDIRSIZE).stat().st_size <= 5120
    trusted = usage(root, QUOTA)
    assert trusted[0] > 1000  # at exactly the limit the lines are still summed
    record(root, 1, 1)
    assert (root / MAILDIRSIZE).stat().st_size > 5120
    assert usage(root, QUOTA) == (0, 0)
    assert _maildirsize(root) == f"{QUOTA}S\n0 0\n"


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\n",
        f"{QUOTA}S\n1 2 3\n".encode(),
        f"{QUOTA}S\nabc 1\n".encode(),
        f"{QUOTA}S\n1_000 1\n".encode(),
        f"{QUOTA}S\n+5 1\n".encode(),
        f"{QUOTA}S\n\n".encode(),
        f"{QUOTA}S\n10 1\n5".encode(),  # torn append: no final newline
        f"{QUOTA}S\n-10 -1\n".encode(),  # negative total: drifted
        f"{QUOTA}S\n\xff 1\n".encode("latin-1"),
        f"{QUOTA}S,100C\n0 0\n".encode(),  # another writer's definition
        f" {QUOTA}S\n0 0\n".encode(),
    ],
)
def test_recalculates_when_unparseable(root, content):
    deliver([Delivery(root, [MSG])])
    (root / MAILDIRSIZE).write_bytes(content)
    assert usage(root, QUOTA) == (len(MSG), 1)
    assert _maildirsize(root) == f"{QUOTA}S\n{len(MSG)} 1\n"


def test_accepts_courier_padding(root):
    (root / MAILDIRSIZE).write_text(f"{QUOTA}S\n      116      1\n  -16     -0\n")
    assert usage(root, QUOTA) == (100, 1)


def test_recalculates_when_missing(root):
    deliver([Delivery(root, [MSG])])
    usage(root, QUOTA)
    (root / MAILDIRSIZE).unlink()
    deliver([Delivery(root / ".Sent", [MSG])])
    assert usage(root, QUOTA) == (2 * len(MSG), 2)


def test_sizes_come_from_names_with_stat_fallback(root):
    # ,S= is trusted without a stat (that is its purpose)...
    (root / "cur" / "1.M1P1.h,S=5000:2,S").write_bytes(b"tiny")
    # ...and a name without it is stat()ed.
    (root / "cur" / "2.M1P1.h:2,").write_bytes(b"1234567")
    (root / ".Sent" / "new" / "3.M1P1.h").write_bytes(b"123")
    # Not messages: dotfiles, tmp/, directories, files in the root.
    (root / "cur" / ".hidden").write_bytes(b"x" * 99)
    (root / "tmp" / "4.M1P1.h,S=1").write_bytes(b"x")
    (root / "new" / "subdir").mkdir()
    (root / "dovecot-uidlist").write_bytes(b"x" * 99)
    assert usage(root, QUOTA) == (5000 + 7 + 3, 3)


def test_counts_folders_with_unusual_names(root):
    # Disk usage includes a folder another program made that folder_path would refuse.
    weird = root / ".a..b"
    for sub in ("cur", "new", "tmp"):
        (weird / sub).mkdir(parents=True)
    (weird / "new" / "1.M1P1.h,S=10").write_bytes(b"0123456789")
    assert usage(root, QUOTA) == (10, 1)


def test_invalidate(root):
    usage(root, QUOTA)
    invalidate(root)
    assert not (root / MAILDIRSIZE).exists()
    invalidate(root)  # idempotent
    deliver([Delivery(root, [MSG])])
    assert usage(root, QUOTA) == (len(MSG), 1)


def test_negative_quota_rejected(root):
    with pytest.raises(ValueError):
        usage(root, -1)
