"""maildir.flags: flag validation, name rewriting and the new/ -> cur/ move."""

from __future__ import annotations

import mailbox
import os

import pytest

from maildir import Delivery, create_maildir, deliver
from maildir.flags import flags_of, normalize_flags, set_flags, with_flags

NAME = "1700000000.M1P2Q3R0123456789abcdef.mx,S=10,W=10"


def test_flags_of():
    assert flags_of(NAME) == ""
    assert flags_of(NAME + ":2,") == ""
    assert flags_of(NAME + ":2,TSF") == "FST"
    assert flags_of(NAME + ":2,SSS") == "S"
    assert flags_of(NAME + ":1,S") == ""


@pytest.mark.parametrize(
    ("flags", "expected"),
    [("", ""), ("S", "S"), ("TSRPFD", "DFPRST"), ("SSFF", "FS"), ("zaS", "Saz"), ("ba", "ab")],
)
def test_with_flags_sorts_and_dedupes(flags, expected):
    assert with_flags(NAME, flags) == f"{NAME}:2,{expected}"


def test_with_flags_replaces_existing_info():
    assert with_flags(NAME + ":2,S", "F") == NAME + ":2,F"
    assert with_flags(NAME + ":1,experimental", "S") == NAME + ":2,S"
    assert with_flags(NAME + ":", "S") == NAME + ":2,S"


def test_with_flags_keeps_head_byte_exact():
    odd = "1.h,U=7,FMD5=ab,S=007"
    assert with_flags(odd + ":2,X", "S") == odd + ":2,S"


@pytest.mark.parametrize("bad", ["X", "s,", "S ", "\\Seen", "A", ":", "é", "S\0"])
def test_with_flags_rejects_unknown_letters(bad):
    with pytest.raises(ValueError, match="invalid Maildir flag"):
        with_flags(NAME, bad)
    with pytest.raises(ValueError):
        normalize_flags(bad)


@pytest.mark.parametrize("bad_name", ["", "..", "../x", "a/b"])
def test_with_flags_rejects_bad_names(bad_name):
    with pytest.raises(ValueError):
        with_flags(bad_name, "S")


@pytest.fixture
def delivered(tmp_path):
    root = tmp_path / "Maildir"
    create_maildir(root, folders=())
    [path] = deliver([Delivery(root, [b"Subject: hi\r\n\r\nbody\r\n"])])
    return root, path.name


def test_set_flags_moves_from_new_to_cur(delivered):
    root, name = delivered
    new_name = set_flags(root, name, "SS")
    assert new_name == name + ":2,S"
    assert os.listdir(root / "new") == []
    assert os.listdir(root / "cur") == [new_name]
    msg = mailbox.Maildir(root, factory=None, create=False)
    [key] = msg.keys()
    assert msg.get_message(key).get_flags() == "S"


def test_set_flags_renames_within_cur(delivered):
    root, name = delivered
    first = set_flags(root, name, "S")
    second = set_flags(root, first, "RFS")
    assert second == name + ":2,FRS"
    assert os.listdir(root / "cur") == [second]
    # Unchanged flags: same name, still there.
    assert set_flags(root, second, "FRS") == second
    assert os.listdir(root / "cur") == [second]
    # Clearing all flags keeps an empty ":2," info, as Dovecot does.
    assert set_flags(root, second, "") == name + ":2,"


def test_set_flags_missing_message(delivered):
    root, name = delivered
    set_flags(root, name, "S")
    with pytest.raises(FileNotFoundError):
        set_flags(root, name, "F")  # the old name is gone: caller must rescan
    with pytest.raises(FileNotFoundError):
        set_flags(root, "nonexistent", "S")


def test_set_flags_not_a_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no cur"):
        set_flags(tmp_path / "nowhere", "x", "S")


def test_set_flags_refuses_escaping_names(delivered):
    root, _ = delivered
    with pytest.raises(ValueError):
        set_flags(root, "..", "S")
    with pytest.raises(ValueError):
        set_flags(root, "../new/x", "S")
    with pytest.raises(ValueError):
        set_flags(root, "x", "Q")
