"""SEARCH (RFC 3501 §6.4.4; RFC 4731 ESEARCH; RFC 7162 MODSEQ): the keys are matched in
``search``; here the candidates are made from the session's view, and header fields come from
the index's field store where an earlier search left them.
"""

from __future__ import annotations

import datetime as dt

from server.imap import fetch, search
from server.imap.messages import compress


class SearchCommands:
    # --- SEARCH ---

    async def do_search(self, cmd):
        sel = self.selected
        args = cmd.args
        if _uses_modseq(args.key):
            self._condstore()
        found = await self.io(_search, sel, args.key)
        numbers = [c.uid if cmd.uid else c.seq for c in found]
        modseq = max((c.modseq for c in found), default=None) if _uses_modseq(args.key) \
            else None
        if args.returns is None:
            line = "SEARCH" + "".join(f" {n}" for n in numbers)
            if modseq is not None:
                line += f" (MODSEQ {modseq})"
            yield f"* {line}\r\n".encode()
            return
        returns = set(args.returns) or {"ALL"}
        parts = [f'(TAG "{cmd.tag}")'] + (["UID"] if cmd.uid else [])
        if numbers:
            if "MIN" in returns:
                parts.append(f"MIN {min(numbers)}")
            if "MAX" in returns:
                parts.append(f"MAX {max(numbers)}")
            if "ALL" in returns:
                parts.append(f"ALL {compress(numbers)}")
        if "COUNT" in returns:
            parts.append(f"COUNT {len(numbers)}")
        if modseq is not None and numbers:
            parts.append(f"MODSEQ {modseq}")
        yield ("* ESEARCH " + " ".join(parts) + "\r\n").encode()


def _search(sel, key) -> list:
    """Runs in a worker thread, so a big folder's SEARCH does not stall other sessions.

    Candidates are made from the view; the index's message rows are read only for keys
    that compare size, dates or MODSEQ, and header fields come from the index's field store
    where an earlier search left them (what this one reads from files is stored for the next).
    """
    folder = sel.folder
    with_info = search.needs_info(key) or _uses_modseq(key)
    infos = None
    if with_info:
        messages = folder.messages(dates=search.needs_dates(key))
        infos = {m.uid: m for m in messages}
    if not with_info:
        found = _search_known(sel, key)
        if found is not None:
            return found
    names = search.header_fields(key)
    known = {name: folder.field_values(name) for name in names}

    def loader(uid):
        def load() -> bytes:
            try:
                return fetch.crlf(folder.read(uid))
            except (OSError, LookupError):
                return b""  # expunged meanwhile by another program: matches no content key
        return load

    split: dict[int, tuple[frozenset, frozenset]] = {}
    candidates = []
    for seq, (uid, fid) in enumerate(zip(sel.uids, sel.flag_sets.ids, strict=True), 1):
        info = None
        if infos is not None:
            info = infos.get(uid)
            if info is None:
                continue
        flags = split.get(fid)
        if flags is None:
            every = sel.flag_sets_table(fid)
            flags = split[fid] = (frozenset(f for f in every if f.startswith("\\")),
                                  frozenset(f for f in every if not f.startswith("\\")))
        candidates.append(_Candidate(seq, uid, flags, uid in sel.recent, loader(uid), info,
                                     _KnownFields(known, uid) if names else None))
    largest_uid = sel.uids[-1] if sel.uids else 0
    learned: dict[str, dict[int, list[str]]] = {}
    found = search.search(key, candidates, largest_seq=len(sel.uids), largest_uid=largest_uid,
                          learned=learned)
    for name, values in learned.items():
        if name in names:
            folder.put_field_values(name, [(u, _pack(v)) for u, v in values.items()])
    return found


def _search_known(sel, key) -> list | None:
    """The matches, if ``key`` can be answered from the view and the field values the index
    keeps for every message of it (``search.known_matches``); else None."""
    folder = sel.folder
    every = set(sel.uids)
    covered: dict[str, bool] = {}

    def field_match(name: str, needle: str) -> set[int] | None:
        if name not in covered:
            covered[name] = folder.field_uids(name).issuperset(every)
        if not covered[name]:
            return None
        return folder.field_matches(name, needle.encode("utf-8", "surrogatepass")) & every

    ids = sel.flag_sets.ids

    def flag_match(test) -> set[int]:
        passing = {fid for fid in set(ids)
                   if test(frozenset(f.lower() for f in sel.flag_sets_table(fid)))}
        return {uid for uid, fid in zip(sel.uids, ids, strict=True) if fid in passing}

    matched = search.known_matches(key, every, field_match, flag_match)
    if matched is None:
        return None
    return [_Candidate(i + 1, uid, (frozenset(), frozenset()), uid in sel.recent, None, None,
                       None)
            for i, uid in enumerate(sel.uids) if uid in matched]


class _Candidate:
    """``search.Candidate`` made cheaply: 100,000 of them per SEARCH of a big folder, so the
    index row's date is turned into a datetime only for a key that compares it."""

    __slots__ = ("seq", "uid", "flags", "keywords", "recent", "load", "info", "fields")

    def __init__(self, seq, uid, flags, recent, load, info, fields):
        self.seq, self.uid, (self.flags, self.keywords) = seq, uid, flags
        self.recent, self.load, self.info, self.fields = recent, load, info, fields

    @property
    def size(self) -> int:
        return self.info.size

    @property
    def modseq(self) -> int:
        return self.info.modseq

    @property
    def internal_date(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.info.internal_date, dt.UTC)


class _KnownFields:
    """One message's field values from the index's field store (``Candidate.fields``)."""

    __slots__ = ("known", "uid")

    def __init__(self, known: dict[str, dict[int, bytes]], uid: int):
        self.known, self.uid = known, uid

    def get(self, name: str) -> list[str] | None:
        packed = self.known.get(name, {}).get(self.uid)
        return None if packed is None else packed.decode("utf-8", "surrogatepass").split("\0")[1:]


def _pack(values: list[str]) -> bytes:
    """A field's values as one UTF-8 string, each preceded by NUL (b"": field absent). A
    search string never holds NUL, so a substring test of the whole cannot match across two
    values (``field_matches`` tests the bytes)."""
    return "".join("\0" + v for v in values).encode("utf-8", "surrogatepass")


def _uses_modseq(key) -> bool:
    if key.name == "MODSEQ":
        return True
    return any(_uses_modseq(a) for a in key.args if hasattr(a, "name") and hasattr(a, "args"))
