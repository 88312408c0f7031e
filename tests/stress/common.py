"""What the stress drivers share: numbered messages that prove their own integrity, a sink that
notes when each copy arrived, IMAP views (UID -> Message-ID) and reading a Maildir's files."""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.imap import client as imap_client
from tests.support.instance import Instance
from tests.support.sink import Sink, SinkHandler

_MSGID = re.compile(rb"^Message-ID:\s*<([^>]*)>", re.IGNORECASE | re.MULTILINE)
_FETCH_UID = re.compile(rb"UID (\d+)")


def message_id(run: str, n: int) -> str:
    return f"{run}-{n}@stress.test"


def body(run: str, n: int, big: bool) -> bytes:
    """The body of message ``n``: its own number on every line, ending with ``END <n>``, so a
    truncated or mixed-up copy shows. ``big`` ones (~200 KB) widen the window a kill can hit."""
    lines = 3000 if big else 30
    text = "".join(f"{run} message {n} line {i:05d} " + "x" * 40 + "\r\n" for i in range(lines))
    return (text + f"END {n}\r\n").encode()


def message(run: str, n: int, sender: str, to: list[str], big: bool = False) -> bytes:
    head = (f"From: {sender}\r\nTo: {', '.join(to)}\r\nSubject: {run} {n}\r\n"
            f"Message-ID: <{message_id(run, n)}>\r\n"
            f"Date: Sat, 28 Nov 2026 12:00:00 +0000\r\n\r\n")
    return head.encode() + body(run, n, big)


def parse_copy(data: bytes, run: str) -> tuple[int | None, bool]:
    """(message number, intact) of a stored or relayed copy; (None, False) if not ours."""
    head_end = data.find(b"\r\n\r\n")
    match = _MSGID.search(data[:head_end if head_end >= 0 else len(data)])
    if match is None or not match[1].startswith(f"{run}-".encode()):
        return None, False
    n = int(match[1][len(run) + 1:].split(b"@")[0])
    tail = data[head_end + 4:]
    return n, tail in (body(run, n, False), body(run, n, True))


def rss_kib(pid: int) -> dict[str, int]:
    """Resident set size of ``pid`` in KiB (Linux /proc): VmRSS and its parts RssAnon (the
    heap: what a leak grows), RssFile (mapped files, e.g. SQLite's mmap) and RssShmem."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(value.split()[0])
    return out


# --- the remote side --------------------------------------------------------------------


@dataclass
class TimedSinkHandler(SinkHandler):
    """A sink that also records when (time.time()) each message was accepted."""

    times: list[float] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope):
        reply = await super().handle_DATA(server, session, envelope)
        with self.lock:
            self.times.append(time.time())
        return reply


def timed_sink() -> Sink:
    sink = Sink()
    sink.handler = TimedSinkHandler()
    return sink.start()


def sink_copies(sink: Sink, run: str) -> tuple[dict[tuple[int, str], list[float]], list[str]]:
    """{(number, recipient): [arrival times]} and a list of damaged copies."""
    with sink.handler.lock:
        got = list(zip(sink.handler.messages, sink.handler.times, strict=True))
    copies: dict[tuple[int, str], list[float]] = {}
    damaged = []
    for received, when in got:
        n, intact = parse_copy(received.data, run)
        if n is None:
            damaged.append(f"foreign message at the sink: {received.data[:200]!r}")
            continue
        if not intact:
            damaged.append(f"message {n} arrived damaged at the sink")
        for rcpt in received.recipients:
            copies.setdefault((n, rcpt.lower()), []).append(when)
    return copies, damaged


# --- the local side ---------------------------------------------------------------------


def maildir_copies(inst: Instance, address: str, run: str) -> tuple[Counter, list[str], int]:
    """({number: copies in new/ and cur/}, problems, files left in tmp/)."""
    local, domain = address.lower().split("@")
    root = inst.data_dir / "mail" / domain / local
    counts: Counter = Counter()
    problems = []
    for sub in ("new", "cur"):
        for path in Path(root, sub).iterdir():
            n, intact = parse_copy(path.read_bytes(), run)
            if n is None:
                problems.append(f"{address}: {sub}/{path.name} is not a message of this run")
            elif not intact:
                problems.append(f"{address}: message {n} in {sub}/ is damaged")
            else:
                counts[n] += 1
    return counts, problems, len(list(Path(root, "tmp").iterdir()))


@dataclass(frozen=True)
class ImapView:
    uidvalidity: int
    uids: dict[int, str]  # UID -> Message-ID ("" when the message has none)


def imap_view(inst: Instance, user: str) -> ImapView:
    """INBOX as an IMAP client sees it: UIDVALIDITY and each UID's Message-ID."""
    c = imap_client(inst, user)
    try:
        typ, _ = c.select("INBOX", readonly=True)
        assert typ == "OK", typ
        uidvalidity = int(c.response("UIDVALIDITY")[1][0])
        typ, data = c.uid("FETCH", "1:*",
                          "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        assert typ == "OK", (typ, data)
        uids: dict[int, str] = {}
        for item in data:
            if not isinstance(item, tuple):
                continue  # the closing ")" of each literal response
            uid = int(_FETCH_UID.search(item[0])[1])
            match = _MSGID.search(item[1])
            uids[uid] = match[1].decode() if match else ""
        return ImapView(uidvalidity, uids)
    finally:
        try:
            c.logout()
        except Exception:
            pass
