"""messages._read: a batch's files read by the paths looked up once for the batch."""

from __future__ import annotations

import os

from maildir import Delivery, create_maildir, deliver
from maildir.index import MailboxIndex
from server.imap.fetching import _read

HEADER = b"From: a@b.test\r\nSubject: hi\r\n\r\n"
BODY = b"x" * 40000


def _folder(tmp_path, *messages):
    root = tmp_path / "u"
    create_maildir(root, folders=())
    for message in messages:
        deliver([Delivery(root, [message])])
    return MailboxIndex(root).folder("INBOX")


def test_header_only_stops_at_the_first_read_and_whole_reads_all(tmp_path):
    fi = _folder(tmp_path, HEADER + BODY)
    path = fi.paths([1])[1]
    assert _read(fi, 1, path, header_only=True) == HEADER
    assert _read(fi, 1, path, header_only=False) == HEADER + BODY


def test_a_header_longer_than_the_first_read_is_read_whole(tmp_path):
    long = b"".join(b"X-T-%d: %s\r\n" % (i, b"y" * 70) for i in range(300)) + HEADER
    fi = _folder(tmp_path, long + BODY)
    assert _read(fi, 1, fi.paths([1])[1], header_only=True) == long + BODY


def test_a_stale_path_finds_the_file_again_and_an_unknown_uid_is_gone(tmp_path):
    fi = _folder(tmp_path, HEADER + b"one\r\n", HEADER + b"two\r\n")
    paths = fi.paths([1, 2, 3])
    assert set(paths) == {1, 2}
    os.rename(paths[2], paths[2] + "F")  # another program flags it after our lookup
    assert _read(fi, 2, paths[2], header_only=True) == HEADER + b"two\r\n"
    try:
        _read(fi, 3, paths.get(3), header_only=True)
    except LookupError:
        pass
    else:
        raise AssertionError("UID 3 does not exist")


def test_located_is_get_many_and_paths_in_one(tmp_path):
    fi = _folder(tmp_path, HEADER + b"one\r\n", HEADER + b"two\r\n", HEADER + b"three\r\n")
    fi.store_flags([2], {"\\Seen", "$Label1"}, "add")
    infos, paths = fi.located([1, 2, 5])
    assert infos == fi.get_many([1, 2, 5]) and paths == fi.paths([1, 2, 5])
    assert set(infos) == {1, 2} and infos[2].flags == {"\\Seen", "$Label1"}


def test_a_name_whose_sizes_agree_skips_the_line_end_count_and_others_are_converted():
    from server.imap.fetch import crlf, named_crlf

    assert named_crlf("/m/cur/1.M1P1.host,S=5093,W=5093:2,FS")
    assert named_crlf("/m/new/1.M1P1.host,W=12,S=12")
    for path in ("/m/cur/1.M1P1.host,S=5093,W=5101:2,S", "/m/cur/1.M1P1.host:2,S",
                 "/m/cur/1.M1P1.host,S=12:2,", "/m/cur/1.M1P1,S=,W=:2,"):
        assert not named_crlf(path), path
    bare = b"Subject: x\n\nbody\n"
    assert crlf(bare, "/m/cur/1.M1P1.host,S=17,W=20:2,") == bare.replace(b"\n", b"\r\n")
    assert crlf(bare, "/m/cur/1.M1P1.host:2,") == bare.replace(b"\n", b"\r\n")


def test_a_size_from_the_index_that_is_wrong_still_reads_the_whole_file(tmp_path):
    from server.imap.fetch import read_file

    path = tmp_path / "m"
    data = HEADER + BODY + b"z" * 70000  # longer than one follow-up read too
    path.write_bytes(data)
    for size in (None, 0, 10, len(data) - 1, len(data), len(data) + 500):
        assert read_file(str(path), size=size) == data, size
