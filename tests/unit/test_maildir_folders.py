"""maildir.folders: Maildir++ layout, creation, listing and the folder-name boundary."""

from __future__ import annotations

import mailbox
import os
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maildir.folders import (
    DEFAULT_FOLDERS,
    create_folder,
    create_maildir,
    folder_path,
    list_folders,
)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("name", ["INBOX", "inbox", "Inbox", "iNbOx"])
def test_inbox_is_root(tmp_path, name):
    assert folder_path(tmp_path, name) == tmp_path


def test_dotless_i_is_not_inbox(tmp_path):
    # "ınbox".upper() == "INBOX": it must not alias the real INBOX.
    assert folder_path(tmp_path, "\u0131nbox") == tmp_path / ".\u0131nbox"


@pytest.mark.parametrize(
    ("name", "dirname"),
    [
        ("Sent", ".Sent"),
        ("Lists.python", ".Lists.python"),
        ("INBOX.x", ".INBOX.x"),
        ("Ünïcödé & spaces", ".Ünïcödé & spaces"),
        ("&AOk-t&AOk-", ".&AOk-t&AOk-"),
        ("~tilde", ".~tilde"),
    ],
)
def test_folder_path(tmp_path, name, dirname):
    assert folder_path(tmp_path, name) == tmp_path / dirname


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "../x",
        "../../etc",
        "..x",
        "x..",
        "a..b",
        "a...b",
        ".hidden",
        "trailing.",
        "a/b",
        "/abs",
        "a\\b",
        "x\x00",
        "\x00",
        "tab\there",
        "new\nline",
        "cr\r",
        "del\x7f",
        "c1\x85",
        "esc\x1b[31m",
        "lone\ud800surrogate",
        "x" * 255,
    ],
)
def test_folder_path_refuses(tmp_path, name):
    with pytest.raises(ValueError, match="folder name"):
        folder_path(tmp_path, name)
    with pytest.raises(ValueError):
        create_folder(tmp_path, name)


def test_longest_name_fits(tmp_path):
    create_maildir(tmp_path / "m", folders=())
    assert create_folder(tmp_path / "m", "x" * 254).name == "." + "x" * 254


@given(st.text())
def test_folder_path_never_escapes(name):
    from pathlib import PurePosixPath

    root = PurePosixPath("/srv/mail/u")
    try:
        path = folder_path(root, name)
    except ValueError:
        return
    if path == root:
        return
    # Exactly one level below root, a dot-directory, no component that walks.
    assert path.parent == root
    assert path.name.startswith(".")
    assert path.name not in (".", "..")
    assert "/" not in path.name and "\0" not in path.name


def test_create_maildir_layout(tmp_path):
    root = tmp_path / "var" / "mail" / "example.org" / "alice"
    create_maildir(root)
    for sub in ("cur", "new", "tmp"):
        assert (root / sub).is_dir()
        assert _mode(root / sub) == 0o700
    assert _mode(root) == 0o700
    for name in DEFAULT_FOLDERS:
        folder = root / ("." + name)
        assert _mode(folder) == 0o700
        for sub in ("cur", "new", "tmp"):
            assert _mode(folder / sub) == 0o700
        marker = folder / "maildirfolder"
        assert marker.is_file() and marker.stat().st_size == 0
    assert not (root / "maildirfolder").exists()  # the root is not a folder
    assert list_folders(root) == sorted(DEFAULT_FOLDERS)


def test_create_maildir_is_idempotent(tmp_path):
    root = tmp_path / "m"
    create_maildir(root)
    (root / "new" / "keep").write_bytes(b"x")
    create_maildir(root)
    create_maildir(root, folders=("Sent", "Other"))
    assert (root / "new" / "keep").read_bytes() == b"x"
    assert list_folders(root) == sorted({*DEFAULT_FOLDERS, "Other"})


def test_create_maildir_validates_before_creating(tmp_path):
    root = tmp_path / "m"
    with pytest.raises(ValueError):
        create_maildir(root, folders=("Sent", "../escape"))
    assert not root.exists()
    assert not (tmp_path / ".escape").exists()


def test_create_maildir_respects_no_umask_bits(tmp_path):
    old = os.umask(0o777)  # even a hostile umask must not make the store unusable
    try:
        create_maildir(tmp_path / "m", folders=("A",))
    finally:
        os.umask(old)
    assert _mode(tmp_path / "m" / ".A" / "new") == 0o700


def test_create_maildir_fails_on_file_in_the_way(tmp_path):
    (tmp_path / "m").write_bytes(b"")
    with pytest.raises(OSError):
        create_maildir(tmp_path / "m")


def test_create_folder_creates_superiors(tmp_path):
    root = tmp_path / "m"
    create_maildir(root, folders=())
    path = create_folder(root, "Lists.python.dev")
    assert path == root / ".Lists.python.dev"
    assert list_folders(root) == ["Lists", "Lists.python", "Lists.python.dev"]
    for name in list_folders(root):
        assert (root / ("." + name) / "maildirfolder").is_file()
    assert create_folder(root, "Lists.python.dev") == path  # idempotent
    assert create_folder(root, "INBOX") == root


def test_create_folder_needs_a_maildir(tmp_path):
    with pytest.raises(FileNotFoundError):
        create_folder(tmp_path / "nope", "Sent")
    assert not (tmp_path / "nope").exists()


def test_list_folders_skips_non_folders(tmp_path):
    root = tmp_path / "m"
    create_maildir(root, folders=("B", "a"))
    (root / ".file").write_bytes(b"")  # a file, not a folder
    (root / ".nocur").mkdir()  # no cur/: not a selectable folder
    (root / "..bad").mkdir()  # name folder_path would refuse
    (root / "..bad" / "cur").mkdir()
    (root / "plain").mkdir()  # no leading dot
    (root / "plain" / "cur").mkdir()
    assert list_folders(root) == ["B", "a"]
    assert list_folders(tmp_path / "missing") == []


def test_python_mailbox_sees_the_same_folders(tmp_path):
    root = tmp_path / "m"
    create_maildir(root)
    create_folder(root, "Lists.python")
    md = mailbox.Maildir(root, factory=None, create=False)
    assert sorted(md.list_folders()) == list_folders(root)
    assert len(md.get_folder("Lists.python")) == 0
