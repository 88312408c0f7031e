"""The message of one DATA command, taken in whole chunks instead of line by line.

aiosmtpd 1.4 reads DATA one line at a time: a 5 KB message costs some eighty awaits, buffer
copies and debug-log calls, and its stream reader (limited to one line) pauses and resumes the
socket every 2 KB -- a third of an MX worker's CPU per message. ``DataReader`` is fed whatever
has arrived, finds the end with one search per chunk and undoes the dot-stuffing with one
replace. Sans-I/O: ``SMTPProtocol.smtp_DATA`` does the reading.

The rules are aiosmtpd's (RFC 5321 §4.5.2), so nothing a client sees changes:

* only CRLF "." CRLF ends the data (a line holding just "."), also as the very first line; a
  bare CR or LF is data, which the handler refuses (SMTP smuggling);
* a leading "." of any line is removed;
* a line longer than ``line_limit`` octets with its CRLF gives 500, more than ``size_limit``
  octets in all (counted as sent, before unstuffing) 552 -- whichever comes first, answered
  only after the end, when the client listens again (RFC 5321 §4.2.5). From the moment the
  message is known to be refused its bytes are dropped as they come.
"""

from __future__ import annotations

END = b"\r\n.\r\n"

NOMINAL = "nominal"
TOO_LONG = "too long"   # 500 Line too long
TOO_MUCH = "too much"   # 552 Too much mail data


class DataReader:
    def __init__(self, size_limit: int | None, line_limit: int):
        self.size_limit = size_limit or None
        self.line_limit = line_limit
        # The CRLF before the first line, so that "." as the first line ends the data too.
        self._buf = bytearray(b"\r\n")
        self._checked = 2  # over the size limit: lines before this offset are counted
        self._total = 0    # ... and this is their size
        self.state = NOMINAL
        self.message = b""  # the unstuffed message, once complete and NOMINAL

    def feed(self, chunk: bytes) -> bytes | None:
        """Take the next bytes. None: the end has not come yet. Otherwise the end was seen
        and this is what followed it (b"" if nothing): the client's next commands."""
        buf = self._buf
        start = max(0, len(buf) - len(END) + 1)  # the end may straddle the chunks
        buf += chunk
        end = buf.find(END, start)
        if end < 0:
            if (self.state == NOMINAL and self.size_limit is not None
                    and len(buf) - 2 > self.size_limit):
                self._count_lines()
            if self.state != NOMINAL:
                del buf[:-4]  # refused anyway: keep only what the end could start with
            return None
        leftover = bytes(buf[end + len(END):])
        if self.state == NOMINAL:
            raw = bytes(buf[2:end + 2])  # every line with its CRLF, still dot-stuffed
            self.state = _check(raw, self.size_limit, self.line_limit)
            if self.state == NOMINAL:
                if raw[:1] == b".":
                    raw = raw[1:]
                self.message = raw.replace(b"\r\n.", b"\r\n")
        self._buf = bytearray()
        return leftover

    def _count_lines(self) -> None:
        """More than the size limit has come and the end has not: is it a line too long or
        too much mail? Decided line by line as at the end; each line is looked at once."""
        buf = self._buf
        while True:
            eol = buf.find(b"\r\n", self._checked)
            if eol < 0:  # a partial line, already too long even if its CRLF is next
                partial = len(buf) - self._checked - (buf[-1:] == b"\r")
                if partial + 2 > self.line_limit:
                    self.state = TOO_LONG
                return
            length = eol + 2 - self._checked
            if length > self.line_limit:
                self.state = TOO_LONG
                return
            self._total += length
            if self._total > self.size_limit:
                self.state = TOO_MUCH
                return
            self._checked = eol + 2


def _check(raw: bytes, size_limit: int | None, line_limit: int) -> str:
    """The state for a complete message as sent (lines with their CRLF, dot-stuffed)."""
    # The common case, without a loop in Python: not too big, no line too long.
    fits = size_limit is None or len(raw) <= size_limit
    if fits and (len(raw) <= line_limit or max(map(len, raw.split(b"\r\n"))) + 2 <= line_limit):
        return NOMINAL
    return _first_problem(raw, size_limit, line_limit)


def _first_problem(raw: bytes, size_limit: int | None, line_limit: int) -> str:
    """Line by line as aiosmtpd counts: the first overlong line or the line that takes the
    total over ``size_limit``, whichever comes first."""
    total = 0
    lines = raw.split(b"\r\n")
    for index, line in enumerate(lines):
        length = len(line) + (2 if index < len(lines) - 1 else 0)
        if len(line) + 2 > line_limit:
            return TOO_LONG
        total += length
        if size_limit is not None and total > size_limit:
            return TOO_MUCH
    return NOMINAL
