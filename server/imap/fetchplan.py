"""What a FETCH's item list asks of the session (``FetchPlan``), worked out once per list.

A client sends the same item list again and again with other messages (mbsync and most
clients: one ``FETCH n (BODY.PEEK[])`` per message opened), and the parser hands back the same
tuple of items each time (``grammar.messages._FETCH_TAILS``).  Which items need the index
row, the file or a cached blob used to be asked of every item on every command: a tenth of
what a FETCH of one small message costs the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.imap import fetch

# Items whose values come from the message's index row (the view has UID and FLAGS).
INFO_ITEMS = frozenset({"INTERNALDATE", "RFC822.SIZE", "MODSEQ"})
_PLANS_MAX = 256  # distinct item lists remembered; a client uses a handful


@dataclass(frozen=True)
class FetchPlan:
    """``items``: the list to answer, UID first for UID FETCH (RFC 3501 §6.4.8) and with
    MODSEQ added for CHANGEDSINCE (RFC 7162 §3.3)."""

    items: tuple
    names: frozenset[str]
    order: tuple[str, ...]  # item names, in ``items`` order
    condstore: bool  # MODSEQ asked for: CONDSTORE is on (RFC 7162 §3.1)
    sets_seen: bool  # some item marks the message \Seen (RFC 3501 §6.4.5)
    view_only: bool  # UID and FLAGS only: the session's view answers
    wants_file: bool  # some item reads the message file
    kinds: frozenset[str]  # cached blobs asked for (envelope, body, bodystructure)
    header_only: bool  # the file is read for ENVELOPE only: its header is enough
    dates: bool  # INTERNALDATE asked for
    wants_infos: bool  # index rows needed (without CHANGEDSINCE, which always needs them)


def plan(items: tuple, uid: bool, changedsince: bool) -> FetchPlan:
    """The plan for ``items`` (as parsed), remembered by identity: the parser's memo hands
    back the same tuple for the same text, and the entry keeps it alive."""
    key = (id(items), uid, changedsince)
    known = _PLANS.get(key)
    if known is not None and known[0] is items:
        return known[1]
    made = _make(items, uid, changedsince)
    if len(_PLANS) >= _PLANS_MAX:
        _PLANS.clear()
    _PLANS[key] = (items, made)
    return made


_PLANS: dict[tuple[int, bool, bool], tuple[tuple, FetchPlan]] = {}


def _make(items: tuple, uid: bool, changedsince: bool) -> FetchPlan:
    from server.imap.parser import FetchItem

    names = {i.name for i in items}
    condstore = "MODSEQ" in names
    listed = list(items)
    if uid and "UID" not in names:
        listed.insert(0, FetchItem("UID"))
    if changedsince and "MODSEQ" not in names:
        listed.append(FetchItem("MODSEQ"))
    names = frozenset(i.name for i in listed)
    kinds = frozenset(k for k in map(fetch.cached_kind, listed) if k is not None)
    wants_file = any(fetch.needs_file(i) for i in listed)
    return FetchPlan(
        items=tuple(listed), names=names, order=tuple(i.name for i in listed),
        condstore=condstore, sets_seen=any(fetch.sets_seen(i) for i in listed),
        view_only=names <= {"UID", "FLAGS"}, wants_file=wants_file, kinds=kinds,
        # ENVELOPE alone (a client's first sync of a folder) needs only the header.
        header_only=not wants_file and kinds <= {"envelope"},
        dates="INTERNALDATE" in names, wants_infos=bool(names & INFO_ITEMS) or wants_file)
