"""Sequence sets (RFC 3501 §9 sequence-set, RFC 9051 §9).

``1:4,7,10:*``: numbers are message sequence numbers or UIDs, ``*`` the largest one in use,
and ``a:b`` is the same range as ``b:a`` (RFC 3501 §9). A set is kept as the client wrote it;
``*`` only gets a value once the mailbox is known, so every method takes ``largest``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from server.imap.grammar.tokens import MAX_NUMBER, Buf, ParseError, fail

_TOKEN = re.compile(rb"[0-9*:,$]+")
_NUMBER = re.compile(rb"[0-9]+")

Range = tuple[int | None, int | None]


def _wire(n: int | None) -> str:
    return "*" if n is None else str(n)


@dataclass(frozen=True)
class SequenceSet:
    """``ranges``: (first, last) pairs as sent, ``None`` for ``*``; ``5`` is (5, 5)."""

    ranges: tuple[Range, ...]

    def intervals(self, largest: int) -> list[tuple[int, int]]:
        """Sorted, merged, non-overlapping (low, high) ranges clipped to 1..largest.

        Use this (or ``contains``) for UID sets: a UID range may span billions of numbers that
        no message has, so ``values`` would be the wrong tool there.
        """
        spans = []
        for first, last in self.ranges:
            a = largest if first is None else first
            b = largest if last is None else last
            low, high = min(a, b), min(max(a, b), largest)
            # "100:*" with 50 messages is 50:100, so it still names message 50 (RFC 3501 §6.4.8).
            if low <= high and high >= 1:
                spans.append((max(low, 1), high))
        spans.sort()
        merged: list[tuple[int, int]] = []
        for low, high in spans:
            if merged and low <= merged[-1][1] + 1:
                if high > merged[-1][1]:
                    merged[-1] = (merged[-1][0], high)
            else:
                merged.append((low, high))
        return merged

    def contains(self, n: int, largest: int) -> bool:
        """Whether ``n`` is in the set for a mailbox whose largest number is ``largest``."""
        if not 1 <= n <= largest:
            return False
        for first, last in self.ranges:
            a = largest if first is None else first
            b = largest if last is None else last
            if min(a, b) <= n <= max(a, b):
                return True
        return False

    def values(self, largest: int) -> list[int]:
        """Every number in the set, sorted, de-duplicated, within 1..largest: at most
        ``largest`` numbers however large the ranges written."""
        out: list[int] = []
        for low, high in self.intervals(largest):
            out.extend(range(low, high + 1))
        return out

    def __str__(self) -> str:
        return ",".join(_wire(a) if a == b else f"{_wire(a)}:{_wire(b)}" for a, b in self.ranges)


def _seq_number(text: bytes) -> int | None:
    if text == b"*":
        return None
    if not _NUMBER.fullmatch(text):
        raise ParseError(f"invalid sequence number {text.decode('ascii', 'replace')!r}")
    significant = text.lstrip(b"0")
    if not significant:
        raise ParseError("0 is not a valid message number or UID (RFC 3501 nz-number)")
    if len(significant) > 10 or int(significant) > MAX_NUMBER:
        raise ParseError(f"sequence number {text[:24].decode()} is too large (at most "
                         f"{MAX_NUMBER})")
    return int(significant)


def parse_sequence_set(text: str | bytes) -> SequenceSet:
    """A whole sequence set, e.g. ``"1:4,7,10:*"``; ParseError if malformed."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    if b"$" in data:
        raise ParseError("the SEARCHRES variable $ (RFC 5182) is not supported")
    if not data:
        raise ParseError("empty sequence set")
    ranges = []
    for part in data.split(b","):
        if not part:
            raise ParseError("empty element in sequence set (stray ',')")
        first, colon, last = part.partition(b":")
        a = _seq_number(first)
        ranges.append((a, _seq_number(last) if colon else a))
    return SequenceSet(tuple(ranges))


def parse(buf: Buf) -> tuple[SequenceSet, Buf]:
    m = _TOKEN.match(buf)
    if not m:
        raise fail("a sequence set like 1:5,7 or 1:*", buf)
    text = m.group()
    # One message (a client opening it: FETCH n BODY.PEEK[]): the commonest set, taken
    # without splitting; nine digits at most cannot pass MAX_NUMBER, no leading 0 is valid.
    if text.isdigit() and len(text) <= 9 and text[0] != 0x30:
        n = int(text)
        return SequenceSet(((n, n),)), buf[m.end() :]
    return parse_sequence_set(text), buf[m.end() :]
