"""The selected view's load (SELECT): from the index, or from the last loaded view plus what
changed since -- which must give exactly what a load from scratch gives."""

from __future__ import annotations

import random
import shutil

import pytest

from maildir import Delivery, create_folder, create_maildir, deliver
from maildir.index import MailboxIndex
from server.imap import selected
from server.imap.selected import Selected

SEEN, FLAGGED, DELETED = "\\Seen", "\\Flagged", "\\Deleted"


@pytest.fixture
def index(tmp_path, monkeypatch):
    monkeypatch.setattr(selected._Snapshots, "MIN_MESSAGES", 1)
    monkeypatch.setattr(selected, "_SNAPSHOTS", selected._Snapshots())
    root = tmp_path / "alice"
    create_maildir(root)
    with MailboxIndex(root) as mi:
        yield mi


def add(index: MailboxIndex, n: int, start: int = 0) -> None:
    for i in range(n):
        deliver([Delivery(index.root, [b"Subject: m %d\r\n\r\nbody\r\n" % (start + i)])])
    index.folder("INBOX").sync(full=True)


def load(index: MailboxIndex) -> Selected:
    view = Selected(index.folder("INBOX"), "INBOX", readonly=False, condstore=False,
                    mailbox_index=index)
    view.load()
    return view


def fresh(index: MailboxIndex) -> Selected:
    """A load that cannot use a snapshot."""
    selected._SNAPSHOTS = selected._Snapshots()
    return load(index)


def state(view: Selected) -> tuple:
    return (list(view.uids), [frozenset(f) for f in view.flag_sets], view.modseq,
            view.uidnext)


def test_second_load_starts_from_the_first_and_sees_every_change(index):
    add(index, 30)
    first = load(index)
    assert selected._SNAPSHOTS.get(index.folder("INBOX")) is not None
    inbox = index.folder("INBOX")
    inbox.store_flags([2, 5, 9], {SEEN}, "add")
    inbox.store_flags([5], {FLAGGED, "$Label1"}, "add")
    inbox.store_flags([7], {DELETED}, "add")
    inbox.expunge([7, 11])
    add(index, 3, start=100)
    again = load(index)
    assert state(again) == state(fresh(index))
    assert 7 not in again.uids and 11 not in again.uids and len(again.uids) == 31
    assert again.flags[5] == frozenset({SEEN, FLAGGED, "$Label1"})
    # The first view is the first session's own: loading another never changes it.
    assert len(first.uids) == 30 and first.flags[5] == frozenset()


def test_random_changes_between_loads_always_match_a_fresh_load(index):
    rng = random.Random(7)
    add(index, 60)
    load(index)
    inbox = index.folder("INBOX")
    for round_ in range(12):
        uids = list(load(index).uids)
        for _ in range(rng.randint(0, 4)):
            action = rng.choice(["flag", "unflag", "expunge", "add"])
            pick = rng.sample(uids, min(len(uids), rng.randint(1, 5)))
            if action == "flag":
                inbox.store_flags(pick, {rng.choice([SEEN, FLAGGED, "$Work"])}, "add")
            elif action == "unflag":
                inbox.store_flags(pick, {SEEN}, "remove")
            elif action == "expunge" and len(uids) > 10:
                inbox.expunge(pick)
                uids = [u for u in uids if u not in pick]
            else:
                add(index, rng.randint(1, 3), start=1000 * (round_ + 1))
        assert state(load(index)) == state(fresh(index)), round_


def test_a_recreated_folder_is_never_served_from_the_old_snapshot(index):
    """DELETE then CREATE of a folder: the next SELECT must show the new folder (new
    UIDVALIDITY, its own messages), not the view remembered for the old one."""
    def work_view() -> Selected:
        view = Selected(index.folder("Work"), "Work", readonly=False, condstore=False,
                        mailbox_index=index)
        view.load()
        return view

    path = create_folder(index.root, "Work")
    for i in range(5):
        deliver([Delivery(path, [b"Subject: old %d\r\n\r\nx\r\n" % i])])
    old = work_view()
    assert len(old.uids) == 5 and selected._SNAPSHOTS.get(index.folder("Work")) is not None
    shutil.rmtree(path)  # what IMAP DELETE does, then forgets the folder's rows
    index.forget("Work")
    path = create_folder(index.root, "Work")
    for i in range(2):
        deliver([Delivery(path, [b"Subject: new %d\r\n\r\nx\r\n" % i])])
    new = work_view()
    assert len(new.uids) == 2 and new.uidvalidity != old.uidvalidity
    assert state(new) == state(fresh_view(index, "Work"))


def fresh_view(index: MailboxIndex, name: str) -> Selected:
    selected._SNAPSHOTS = selected._Snapshots()
    view = Selected(index.folder(name), name, readonly=False, condstore=False,
                    mailbox_index=index)
    view.load()
    return view


def test_small_folders_keep_no_snapshot(index, monkeypatch):
    monkeypatch.setattr(selected._Snapshots, "MIN_MESSAGES", 10)
    add(index, 5)
    load(index)
    assert selected._SNAPSHOTS.get(index.folder("INBOX")) is None


def test_least_recently_used_folders_are_dropped(monkeypatch):
    monkeypatch.setattr(selected._Snapshots, "MIN_MESSAGES", 0)
    monkeypatch.setattr(selected._Snapshots, "MAX_FOLDERS", 2)
    snaps = selected._Snapshots()
    keys = [object() for _ in range(3)]
    snap = selected._Snapshot(1, 1, 1, selected.array("I", [1]), selected.array("I", [0]))
    snaps[keys[0]] = snap
    snaps[keys[1]] = snap
    snaps.get(keys[0])  # used: keys[1] is now the oldest
    snaps[keys[2]] = snap
    assert snaps.get(keys[1]) is None
    assert snaps.get(keys[0]) is snap and snaps.get(keys[2]) is snap


def test_view_knows_uidvalidity_and_keywords(index):
    add(index, 4)
    index.folder("INBOX").store_flags([2], {"$Work", SEEN}, "add")
    view = load(index)
    assert view.uidvalidity == index.folder("INBOX").uidvalidity != 0
    assert view.keywords() == {"$Work"}
    assert load(index).uidvalidity == view.uidvalidity  # from the snapshot too
    assert index.folder("INBOX").first_unseen == 1


@pytest.mark.parametrize("names", [("UID", "FLAGS"), ("FLAGS", "UID"), ("FLAGS",), ("UID",)])
@pytest.mark.parametrize("recent", [False, True])
def test_uid_flags_lines_match_the_reference_rendering(index, names, recent):
    add(index, 6)
    inbox = index.folder("INBOX")
    inbox.store_flags([2, 4], {SEEN}, "add")
    inbox.store_flags([4, 5], {FLAGGED, "$Work"}, "add")
    view = load(index)
    view.recent = {5, 6} if recent else set()
    targets = view.select(selected_seqset("2:*"), uid=True)
    assert [u for _, u in targets] == [2, 3, 4, 5, 6]

    def reference(seq: int, uid: int) -> bytes:
        flags = sorted(view.flags[uid]) + (["\\Recent"] if uid in view.recent else [])
        parts = {"UID": f"UID {uid}", "FLAGS": f"FLAGS ({' '.join(flags)})"}
        return f"* {seq} FETCH ({' '.join(parts[n] for n in names)})\r\n".encode()

    assert view.uid_flags_lines(targets, names) == [reference(s, u) for s, u in targets]


def selected_seqset(text: str):
    from server.imap.grammar.seqset import parse_sequence_set

    return parse_sequence_set(text)


@pytest.mark.parametrize("text", ["1:*", "*", "3", "2:4,1,9:7", "5:*,1:2", "*:4", "20:30", "4:20"])
def test_select_by_sequence_numbers_names_each_message_once_in_order(text):
    view = Selected(None, "INBOX", readonly=False, condstore=False)
    view.uids.extend([3, 5, 8, 9, 12, 20, 21, 40, 41])
    n = len(view.uids)
    reference = [(seq, view.uids[seq - 1]) for seq in selected_seqset(text).values(n)]
    assert view.select(selected_seqset(text), uid=False) == reference
    assert [seq for seq, _ in reference] == sorted({seq for seq, _ in reference})


@pytest.mark.parametrize("n", [1, 3, 9, 10, 12, 20, 41, 42, 4294967295])
def test_select_of_one_number_names_what_the_intervals_name(n):
    from server.imap.grammar.seqset import SequenceSet

    view = Selected(None, "INBOX", readonly=False, condstore=False)
    view.uids.extend([3, 5, 8, 9, 12, 20, 21, 40, 41])
    one = SequenceSet(((n, n),))
    assert view.select(one, uid=False) == \
        [(seq, view.uids[seq - 1]) for seq in one.values(len(view.uids))]
    assert view.select(one, uid=True) == \
        [(view.uids.index(u) + 1, u) for u in view.uids if one.contains(u, view.uids[-1])]


def test_views_of_a_folder_share_one_copy_until_one_of_them_changes(index):
    add(index, 20)
    a, b = load(index), load(index)
    assert a.uids.obj is b.uids.obj and a.flag_sets.ids.obj is b.flag_sets.ids.obj
    before = state(b)
    inbox = index.folder("INBOX")
    # a's own STORE, a flag set by its FETCH, and an expunge it reports: b never sees them
    # until its own poll, and the snapshot a third session starts from stays as it was.
    a.stored(inbox.store_flags([3], {FLAGGED}, "add")[0])
    a.flags[4] = frozenset({SEEN})
    inbox.expunge([5])
    a.refresh()
    a.updates(allow_expunge=True)
    assert a.flags[3] == frozenset({FLAGGED}) and 5 not in a.uids
    assert state(b) == before and b.flags[3] == frozenset()
    snap = selected._SNAPSHOTS.get(inbox)
    assert list(snap.uids) == before[0]
    b.refresh()  # new flags and the expunge, kept for b to report when it may
    assert b.flags[3] == frozenset({FLAGGED}) and b.pending_expunge == {5}
    with pytest.raises(TypeError):  # a shared column cannot be written by mistake
        snap.ids[0] = 1
