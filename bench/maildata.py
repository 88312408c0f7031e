"""Benchmark mail: N varied ~5-KB messages written straight into a Maildir, and copies of it.

The messages look like a real inbox, so ENVELOPE and SEARCH do realistic work: senders from
a few hundred people at a few dozen domains, To and sometimes Cc, threads (In-Reply-To),
subjects from a topic list, Date spread over a year, and a plain-text body of ~5 KB. Files
go into ``cur/`` named the way deliveries name them, with ``,S=`` and ``,W=`` (the stored
message is CRLF, so both equal the file size: neither server has to open a file to learn its
size) and the flags of an inbox that has been read for a while: 70 % \\Seen, 2 % \\Flagged.

``copy_tree`` gives each server its own copy. Files are hard-linked (Maildir files never
change in place: flag changes are renames), so copying 100,000 messages takes seconds and
both servers read the same bytes from the same page cache.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

SEARCH_WORD = "quarterly"  # in 1 of 12 subjects: what "UID SEARCH HEADER Subject" looks for

_TOPICS = ["quarterly report", "lunch on Friday", "invoice 2026", "holiday plans", "build broken",
           "meeting notes", "new office", "your order has shipped", "photos", "contract draft",
           "weekly digest", "password reset"]
_FIRST = ["Alice", "Bob", "Carol", "Dave", "Eve", "Frank", "Grace", "Heidi", "Ivan", "Judy",
          "Mallory", "Niaj", "Olivia", "Peggy", "Rupert", "Sybil", "Trent", "Victor", "Walter"]
_LAST = ["Smith", "Jones", "Martin", "Dubois", "Müller", "Rossi", "Tanaka", "Novak", "Silva",
         "Kowalski", "Jensen", "Nguyen", "Okafor", "Larsen"]
_WORDS = ["the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be",
          "by", "on", "not", "he", "this", "are", "or", "his", "from", "at", "which",
          "but", "have", "an", "they", "you", "were", "her", "she", "there", "been",
          "one", "all", "we", "their", "has", "would", "when", "if", "so", "what", "out",
          "up", "more", "about", "into", "than", "them", "can", "only", "other", "new",
          "some", "could", "time", "these", "two", "may", "then", "do", "first", "any",
          "my", "now", "such", "like", "our", "over", "man", "me", "even", "most", "made"]
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
_DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]


def _bodies(count: int = 64, size: int = 4600) -> list[bytes]:
    rng = random.Random(1)
    out = []
    for _ in range(count):
        lines, length = [], 0
        while length < size:
            line = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 13)))
            lines.append(line.capitalize() + ".")
            length += len(line) + 3
        out.append(("\r\n".join(lines) + "\r\n").encode())
    return out


_BODY_CACHE: list[bytes] = []


def message(i: int, to: str) -> bytes:
    """Message number ``i`` (deterministic), addressed to ``to``; CRLF line ends."""
    if not _BODY_CACHE:
        _BODY_CACHE.extend(_bodies())
    person = (i * 7919) % 389
    first, last = _FIRST[person % len(_FIRST)], _LAST[person % len(_LAST)]
    domain = f"{['mail', 'corp', 'example', 'lists', 'shop'][person % 5]}{person % 37}.test"
    day = i % 365
    headers = [
        f"Return-Path: <{first.lower()}.{last.lower()}@{domain}>",
        f"Received: from mx{person % 7}.{domain} (mx{person % 7}.{domain} [192.0.2.{person % 250}])"
        f"\r\n\tby mail.example.test with ESMTPS id {i:08x}; "
        f"{_DAYS[day % 7]}, {1 + day % 28} {_MONTHS[day // 31 % 12]} 2026 "
        f"{i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d} +0000",
        f"From: {first} {last} <{first.lower()}.{last.lower()}@{domain}>",
        f"To: Bench User <{to}>",
    ]
    if i % 5 == 0:
        headers.append(f"Cc: {_FIRST[(person + 3) % len(_FIRST)]} <cc{person % 41}@{domain}>")
    topic = _TOPICS[i % len(_TOPICS)]
    headers += [
        f"Subject: {'Re: ' if i % 3 == 0 else ''}{topic} #{i}",
        f"Date: {_DAYS[day % 7]}, {1 + day % 28} {_MONTHS[day // 31 % 12]} 2026 "
        f"{i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d} +0000",
        f"Message-ID: <{i}.{person}@{domain}>",
    ]
    if i % 3 == 0 and i >= 3:
        headers.append(f"In-Reply-To: <{i - 3}.{(i - 3) * 7919 % 389}@{domain}>")
    headers += ["MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8",
                "Content-Transfer-Encoding: 8bit"]
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + _BODY_CACHE[i % len(_BODY_CACHE)]


def _flags(i: int) -> str:
    if i % 50 == 0:
        return "FS"
    return "S" if i % 10 < 7 else ""


def build(maildir: Path, n: int, to: str) -> None:
    """A Maildir (``tmp/ new/ cur/``) holding messages 0..n-1 in ``cur/``."""
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    start = int(time.time()) - 10 * n
    cur = maildir / "cur"
    for i in range(n):
        data = message(i, to)
        when = start + 10 * i
        name = f"{when}.M{i}P1Q{i}R{i:016x}.bench,S={len(data)},W={len(data)}:2,{_flags(i)}"
        path = cur / name
        with open(path, "wb") as f:
            f.write(data)
        os.utime(path, (when, when))


def copy_tree(src: Path, dst: Path, uid: int | None = None, gid: int | None = None) -> None:
    """``dst`` gets the Maildir ``src``: same names, files hard-linked, directories new."""
    for sub in ("tmp", "new", "cur"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
        if uid is not None:
            os.chown(dst / sub, uid, gid)
        for entry in os.scandir(src / sub):
            os.link(entry.path, dst / sub / entry.name)
    if uid is not None:
        os.chown(dst, uid, gid)
