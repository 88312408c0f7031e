"""fetchplan: what a FETCH's item list needs, worked out once per list."""

from __future__ import annotations

from server.imap import fetchplan
from server.imap.parser import parse_command


def _items(text: str) -> tuple:
    return parse_command(f"a FETCH 1 {text}".encode()).args.items


def test_a_list_sent_again_gets_the_same_plan_and_its_parse_the_same_items():
    first = _items("(BODY.PEEK[])")
    assert _items("(BODY.PEEK[])") is first  # the parser's memo, which the plan relies on
    plan = fetchplan.plan(first, False, False)
    assert fetchplan.plan(first, False, False) is plan
    assert fetchplan.plan(first, True, False) is not plan


def test_an_equal_list_that_is_another_tuple_is_planned_again_not_mistaken():
    items = _items("(RFC822.SIZE)")
    plan = fetchplan.plan(items, False, False)
    copy = tuple(list(items))
    assert fetchplan.plan(copy, False, False).items == plan.items


def test_uid_fetch_answers_uid_first_and_changedsince_adds_modseq():
    plan = fetchplan.plan(_items("(FLAGS RFC822.SIZE)"), True, True)
    assert plan.order == ("UID", "FLAGS", "RFC822.SIZE", "MODSEQ")
    assert not plan.condstore  # MODSEQ was not asked for: CHANGEDSINCE turns it on
    assert plan.wants_infos and not plan.wants_file and not plan.view_only


def test_what_each_kind_of_list_needs():
    peek = fetchplan.plan(_items("(BODY.PEEK[])"), False, False)
    assert peek.wants_file and peek.wants_infos and not peek.sets_seen and not peek.kinds
    body = fetchplan.plan(_items("(BODY[TEXT])"), False, False)
    assert body.sets_seen  # RFC 3501 §6.4.5: without .PEEK the message becomes \Seen
    sync = fetchplan.plan(_items("(UID FLAGS)"), False, False)
    assert sync.view_only and not sync.wants_infos
    envelope = fetchplan.plan(_items("(ENVELOPE INTERNALDATE)"), False, False)
    assert envelope.kinds == {"envelope"} and envelope.header_only and envelope.dates
    structure = fetchplan.plan(_items("(BODYSTRUCTURE BODY[1])"), False, False)
    assert structure.kinds == {"bodystructure"} and not structure.header_only
    assert fetchplan.plan(_items("(MODSEQ)"), False, False).condstore
