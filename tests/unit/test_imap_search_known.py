"""SEARCH with the index's stored header fields: the first search of a field reads the files
and stores what it decoded; later ones answer from the index (by set algebra, or with the
stored values handed to the general search) and must find exactly what reading finds."""

from __future__ import annotations

import random

import pytest

from maildir import Delivery, create_maildir, deliver
from maildir.index import MailboxIndex
from server.imap import searching
from server.imap.parser import SearchKey
from server.imap.selected import Selected

SUBJECTS = ["Quarterly report", "=?utf-8?q?Quarterly_r=C3=A9sum=C3=A9?=", "lunch", None,
            "re: QUARTERLY numbers", "", "Stra\u00dfe quarterly"]


def K(name: str, *args) -> SearchKey:
    return SearchKey(name, args)


def message(i: int, rng: random.Random) -> bytes:
    subject = rng.choice(SUBJECTS)
    head = f"From: Person {i} <p{i}@example.org>\r\nTo: team@example.test\r\n"
    if subject is not None:
        head += f"Subject: {subject}\r\n"
        if rng.random() < 0.1:
            head += "Subject: second quarterly subject\r\n"
    return (head + f"Message-ID: <{i}@example.org>\r\n\r\nbody {i} quarterly\r\n").encode()


@pytest.fixture
def view(tmp_path):
    rng = random.Random(11)
    root = tmp_path / "alice"
    create_maildir(root)
    for i in range(60):
        deliver([Delivery(root, [message(i, rng)])])
    with MailboxIndex(root) as index:
        inbox = index.folder("INBOX")
        inbox.sync(full=True)
        inbox.store_flags(list(range(1, 61, 3)), {"\\Seen"}, "add")
        inbox.store_flags(list(range(1, 61, 7)), {"$Work"}, "add")
        sel = Selected(inbox, "INBOX", readonly=False, condstore=False, mailbox_index=index)
        sel.load()
        yield sel


KEYS = [
    K("SUBJECT", "quarterly"),
    K("HEADER", "Subject", "r\u00e9sum\u00e9"),
    K("HEADER", "subject", ""),
    K("NOT", K("SUBJECT", "quarterly")),
    SearchKey("AND", (K("UNSEEN"), K("SUBJECT", "quarterly"))),
    SearchKey("OR", (K("KEYWORD", "$work"), K("FROM", "person 1"))),
    SearchKey("AND", (K("SUBJECT", "stra\u00dfe"), K("ALL"))),
    K("SUBJECT", "second quarterly"),
    K("TO", "team@"),
    SearchKey("AND", (K("SUBJECT", "quarterly"), K("BODY", "body 1"))),  # general path
    SearchKey("AND", (K("SUBJECT", "quarterly"), K("LARGER", 10))),  # needs the rows
]


def uids(found) -> list[int]:
    return [c.uid for c in found]


@pytest.mark.parametrize("key", KEYS, ids=lambda k: repr(k)[:60])
def test_stored_fields_answer_exactly_what_reading_the_files_answers(view, key):
    from_files = uids(searching._search(view, key))  # also stores the fields it decoded
    assert uids(searching._search(view, key)) == from_files
    assert uids(searching._search(view, key)) == from_files


def test_the_set_path_is_taken_once_every_value_is_stored(view, monkeypatch):
    key = SearchKey("AND", (K("UNSEEN"), K("SUBJECT", "quarterly")))
    assert searching._search_known(view, key) is None  # nothing stored yet
    expected = uids(searching._search(view, key))
    # Only the unseen messages' subjects were read (UNSEEN is tested first): still partial.
    assert len(view.folder.field_uids("subject")) == 40
    assert searching._search_known(view, key) is None
    searching._search(view, K("SUBJECT", "anything"))
    assert len(view.folder.field_uids("subject")) == 60
    found = searching._search_known(view, key)
    assert found is not None and uids(found) == expected and expected
    assert [c.seq for c in found] == [view.seq_of(u) for u in expected]


def test_a_new_message_without_a_stored_value_is_read_from_its_file(view, tmp_path):
    key = K("SUBJECT", "quarterly")
    before = uids(searching._search(view, key))
    deliver([Delivery(view.folder.directory, [b"Subject: quarterly late\r\n\r\nx\r\n"])])
    view.refresh()
    assert searching._search_known(view, key) is None  # one value unknown: general path
    after = uids(searching._search(view, key))
    assert after == [*before, view.uids[-1]]
    assert uids(searching._search_known(view, key)) == after


def test_expunged_messages_lose_their_stored_values(view):
    searching._search(view, K("SUBJECT", "x"))
    assert 5 in view.folder.field_uids("subject")
    view.folder.expunge([5])
    assert 5 not in view.folder.field_uids("subject")
