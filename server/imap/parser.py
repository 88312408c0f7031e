"""The sans-I/O IMAP command reader: bytes in, ``Command`` objects out (RFC 3501 §2.2, §9).

The connection feeds whatever arrives to ``CommandReader.feed`` and calls ``next()`` until it
returns None (more bytes needed):

- ``Command(tag, name, uid, args)``: a complete command; ``args`` is one of the classes of
  ``server.imap.grammar`` (re-exported here), None for commands without arguments.
- ``NeedLiteral(tag, size)``: the client sent a synchronising ``{N}`` and waits for a
  continuation (RFC 3501 §7.5). Send ``+ ...`` and keep feeding and calling ``next()``. It is
  returned once per synchronising literal, even when the bytes have already arrived. Before the
  first one of a command, the command so far is parsed: a command that is already wrong is
  answered BAD at once, without asking for the literal.
- ``ParseError``: answer ``tag BAD message`` (``* BAD`` when ``tag`` is None; see
  ``ParseError.code`` and ``.discarding``). The reader has already dropped the command and reads
  the next one normally.

Framing: a command is a line, unless the line ends in a literal ``{N}``, ``{N+}`` (RFC 7888)
or ``~{N}`` (RFC 3516): then N bytes follow and the command continues on the next line.
Lines end in CRLF; a bare LF is accepted too (typed sessions), and empty lines are ignored.

Limits (defensive, as in every IMAP server): a command's text (all its lines, without literal
data) is at most ``max_line`` bytes, and its literals together at most ``max_literal`` bytes,
so one command never holds more than ``max_line + max_literal`` bytes in memory. Past a limit
the reader answers ParseError and throws the rest of the command away as it arrives, including
the data of a non-synchronising literal (a client that sent ``{N+}`` does not wait for our
answer, so its literal must not be read as commands: that would let message content smuggle
commands in).

``read_line()`` returns one raw line for the things that are not commands: IDLE's ``DONE``
(RFC 2177) and AUTHENTICATE continuation responses (RFC 3501 §6.2.2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from server.imap.grammar import client, mailbox, messages, search
from server.imap.grammar.client import Authenticate, Enable, Id, Login
from server.imap.grammar.mailbox import (
    Append,
    AppendMessage,
    Create,
    List,
    Mailbox,
    QResync,
    Rename,
    Select,
    Status,
)
from server.imap.grammar.messages import CopyMove, Fetch, FetchItem, Section, Store, UidExpunge
from server.imap.grammar.search import Search, SearchKey
from server.imap.grammar.seqset import SequenceSet, parse_sequence_set
from server.imap.grammar.tokens import TAG, Incomplete, ParseError, fail, found, keyword, sp

__all__ = [
    "Append", "AppendMessage", "Authenticate", "Command", "CommandReader", "CopyMove", "Create",
    "Enable", "Fetch", "FetchItem", "Id", "List", "Login", "Mailbox", "NeedLiteral",
    "ParseError", "QResync", "Rename", "Search", "SearchKey", "Section", "Select",
    "SequenceSet", "Status", "Store", "UidExpunge", "parse_command", "parse_sequence_set",
]

MAX_LINE = 64 * 1024  # command text; Thunderbird's longest FETCH/UID lists stay far below
MAX_LITERAL = 64 * 1024 * 1024  # the largest message APPEND takes


@dataclass(frozen=True)
class NeedLiteral:
    tag: str
    size: int


@dataclass(frozen=True)
class Command:
    """``name`` upper-case; the UID forms are ``name`` "FETCH" etc. with ``uid`` True."""

    tag: str
    name: str
    uid: bool = False
    args: object = None


NO_ARGS = frozenset(("CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "CHECK", "CLOSE", "UNSELECT",
                     "EXPUNGE", "IDLE", "NAMESPACE"))
COMMANDS = {
    "LOGIN": client.parse_login,
    "AUTHENTICATE": client.parse_authenticate,
    "ENABLE": client.parse_enable,
    "ID": client.parse_id,
    "SELECT": mailbox.parse_select,
    "EXAMINE": mailbox.parse_select,
    "CREATE": mailbox.parse_create,
    "DELETE": mailbox.parse_mailbox,
    "SUBSCRIBE": mailbox.parse_mailbox,
    "UNSUBSCRIBE": mailbox.parse_mailbox,
    "RENAME": mailbox.parse_rename,
    "LIST": mailbox.parse_list,
    "LSUB": mailbox.parse_lsub,
    "STATUS": mailbox.parse_status,
    "GETQUOTA": mailbox.parse_quota_root,  # RFC 9208
    "GETQUOTAROOT": mailbox.parse_mailbox,
    "APPEND": mailbox.parse_append,
    "SEARCH": search.parse_search,
    "FETCH": messages.parse_fetch,
    "STORE": messages.parse_store,
    "COPY": messages.parse_copy_move,
    "MOVE": messages.parse_copy_move,
}
UID_COMMANDS = {
    "COPY": messages.parse_copy_move,
    "MOVE": messages.parse_copy_move,
    "FETCH": messages.parse_uid_fetch,
    "SEARCH": search.parse_search,
    "STORE": messages.parse_store,
    "EXPUNGE": messages.parse_uid_expunge,  # RFC 4315 §2.1
}


def parse_command(data: bytes) -> Command:
    """One whole command, literal data included and its final CRLF removed. Raises
    ParseError (or ``Incomplete`` if literal data is missing)."""
    buf = memoryview(data)
    m = TAG.match(buf)
    if not m or buf[m.end() : m.end() + 1] != b" ":
        raise ParseError(f"expected a tag and a space before the command, found {found(buf)}")
    tag = m.group().decode("ascii")
    label = ""
    try:
        name, buf = keyword(buf[m.end() + 1 :])
        if not name:
            raise fail("a command name", buf)
        uid = name == "UID"
        if uid:
            name, buf = keyword(sp(buf, "the command after UID"))
            handler = UID_COMMANDS.get(name)
            if handler is None:
                raise ParseError(f"UID {name[:30]}: only COPY FETCH MOVE SEARCH STORE EXPUNGE "
                                 "have a UID form")
        elif name in NO_ARGS:
            handler = None
        elif name in COMMANDS:
            handler = COMMANDS[name]
        else:
            raise ParseError(f"unknown command {name[:30]}")
        label = f"UID {name}: " if uid else f"{name}: "
        args = None
        if handler is not None:
            args, buf = handler(buf)
        if buf:
            what = "arguments" if handler else "arguments; it takes none"
            raise ParseError(f"unexpected {found(buf)} after the {what}")
    except ParseError as err:
        raise ParseError(label + err.message, tag, code=err.code) from None
    return Command(tag, name, uid, args)


# A line that ends in a literal marker. The grammar's ``tokens.LITERAL`` accepts exactly the
# same markers, so framing and parsing always agree on where literal data is.
_MARKER = re.compile(rb"(~?)\{([0-9]{1,20})(\+?)\}\r?\n\Z")
_WINDOW = 32  # bytes at the end of a line that can hold a marker: "~{" 20 digits "+}" CRLF


def _marker(tail: bytes) -> tuple[int, bool] | None:
    """(size, synchronising) if the line ending in ``tail`` announces a literal."""
    m = _MARKER.search(tail)
    return (int(m.group(2)), not m.group(3)) if m else None


def _peek_tag(line: bytes | bytearray) -> str | None:
    m = TAG.match(line)
    if m and line[m.end() : m.end() + 1] == b" ":
        return m.group().decode("ascii")
    return None


class CommandReader:
    def __init__(self, max_line: int = MAX_LINE, max_literal: int = MAX_LITERAL):
        self.max_line = max_line
        self.max_literal = max_literal
        self._buf = bytearray()
        self._skip = 0  # literal bytes still to throw away
        self._skip_line = False  # throwing away up to the next LF
        self._skip_literals = False  # ... and a {N+} literal that line may end with
        self._tail = b""  # the end of the line being thrown away, to spot that marker
        self._reset()

    def _reset(self) -> None:
        # The command being framed occupies _buf[:_end] (whole lines and literals).
        self._end = 0
        self._scan = 0  # where the search for the next LF resumes
        self._text = 0  # command text so far, literal data excluded
        self._literals = 0  # literal bytes so far
        self._need = 0  # literal bytes to wait for at _end
        self._tag: str | None = None
        self._checked = False  # the early check at the first synchronising literal

    def feed(self, data: bytes) -> None:
        self._buf += data
        if self._skip or self._skip_line:
            self._discard()

    def buffered(self) -> int:
        """Bytes received and not yet returned. After STARTTLS any is a plaintext injection
        (RFC 3501 §6.2.1)."""
        return len(self._buf)

    def more_waiting(self) -> bool:
        """Whether a line of another command has already arrived (pipelining): a cheap
        guess, never wrong about an empty buffer."""
        return self._buf.find(b"\n", self._end) >= 0

    def next(self) -> Command | NeedLiteral | ParseError | None:
        self._discard()
        if self._skip or self._skip_line:
            return None
        while True:
            if self._need:
                if len(self._buf) - self._end < self._need:
                    return None
                self._end += self._need
                self._scan = self._end
                self._need = 0
            lf = self._buf.find(b"\n", self._scan)
            if lf < 0:
                if self._text + len(self._buf) - self._end > self.max_line:
                    return self._line_too_long()
                self._scan = len(self._buf)
                return None
            start = self._end
            if start == 0:
                if lf <= 1 and self._buf[: lf + 1] in (b"\n", b"\r\n"):
                    del self._buf[: lf + 1]
                    self._scan = 0
                    continue
                self._tag = _peek_tag(self._buf)
            self._text += lf + 1 - start
            # Only a line ending in "}" (CR LF or LF after it) can announce a literal: most
            # lines are looked at no further (a copy and a regex search per command).
            brace = lf - 1 - (lf >= 1 and self._buf[lf - 1] == 0x0D)
            marker = _marker(bytes(self._buf[max(start, lf + 1 - _WINDOW) : lf + 1])) \
                if brace >= start and self._buf[brace] == 0x7D else None
            if self._text > self.max_line:
                # discarding as when the line is cut while still arriving: same answer
                # however the bytes came in.
                return self._drop(lf + 1, marker, ParseError(
                    f"command line too long (over {self.max_line} bytes)", self._tag,
                    discarding=True))
            if marker is None:
                data = bytes(self._buf[: lf + 1])
                del self._buf[: lf + 1]
                self._reset()
                return self._parse(data)
            size, sync = marker
            self._end = self._scan = lf + 1
            if size > self.max_literal or self._literals + size > self.max_literal:
                what = "literal" if size > self.max_literal else "literals in one command"
                return self._drop(self._end, marker, ParseError(
                    f"{what} over the limit of {self.max_literal} bytes", self._tag,
                    code="TOOBIG"))
            self._literals += size
            self._need = size
            if sync:
                error = self._check_early() if not self._checked and size else None
                if error is None and self._tag is None:
                    error = ParseError("expected a tag and a space before the command")
                if error is not None:
                    return self._drop(self._end, None, error)
                return NeedLiteral(self._tag, size)

    def read_line(self) -> bytes | None:
        """The next raw line, terminator included, or None until it is complete. A line over
        ``max_line`` comes back cut to ``max_line`` bytes (no terminator) and its rest is
        thrown away. Only between commands (after ``next()`` returned one)."""
        if self._end:
            raise RuntimeError("read_line() in the middle of a command")
        self._discard()
        if self._skip or self._skip_line:
            return None
        lf = self._buf.find(b"\n", self._scan)
        if lf < 0 and len(self._buf) <= self.max_line:
            self._scan = len(self._buf)
            return None
        self._reset()
        if 0 <= lf < self.max_line:
            line = bytes(self._buf[: lf + 1])
            del self._buf[: lf + 1]
            return line
        line = bytes(self._buf[: self.max_line])
        if lf < 0:
            del self._buf[:]
            self._skip_line, self._skip_literals, self._tail = True, False, b""
        else:
            del self._buf[: lf + 1]
        return line

    # --- errors and discarding ---

    def _parse(self, data: bytes) -> Command | ParseError:
        body = data[:-2] if data.endswith(b"\r\n") else data[:-1]
        try:
            return parse_command(body)
        except ParseError as err:
            return err
        except Incomplete:  # cannot happen: the framing has all literal data
            return ParseError("literal data missing", _peek_tag(body))

    def _check_early(self) -> ParseError | None:
        self._checked = True
        try:
            parse_command(bytes(self._buf[: self._end]))
        except Incomplete:
            return None
        except ParseError as err:
            return err
        return None

    def _drop(self, upto: int, marker: tuple[int, bool] | None,
              error: ParseError) -> ParseError:
        """Forget the command so far (``_buf[:upto]``); if it ended in a non-synchronising
        literal, that literal and the rest of the command are thrown away as they arrive."""
        del self._buf[:upto]
        self._reset()
        if marker is not None and not marker[1]:
            self._skip = marker[0]
            self._skip_line, self._skip_literals, self._tail = True, True, b""
            error.discarding = True
            self._discard()
        return error

    def _line_too_long(self) -> ParseError:
        tag = self._tag if self._end else _peek_tag(self._buf)
        tail = bytes(self._buf[max(self._end, len(self._buf) - _WINDOW) :])
        del self._buf[:]
        self._reset()
        self._skip_line, self._skip_literals, self._tail = True, True, tail
        return ParseError(f"command line too long (over {self.max_line} bytes)", tag,
                          discarding=True)

    def _discard(self) -> None:
        while True:
            if self._skip:
                n = min(self._skip, len(self._buf))
                del self._buf[:n]
                self._skip -= n
                if self._skip:
                    return
            if not self._skip_line:
                return
            lf = self._buf.find(b"\n")
            if lf < 0:
                self._tail = (self._tail + bytes(self._buf[-_WINDOW:]))[-_WINDOW:]
                del self._buf[:]
                return
            window = (self._tail + bytes(self._buf[max(0, lf + 1 - _WINDOW) : lf + 1]))
            del self._buf[: lf + 1]
            self._skip_line, self._tail = False, b""
            marker = _marker(window[-_WINDOW:]) if self._skip_literals else None
            if marker is not None and not marker[1]:
                self._skip, self._skip_line = marker[0], True
