"""Maildir file names: generating unique names for delivery and parsing existing ones.

A message file is named ``<unique>[,S=<size>][,W=<vsize>][:<info>]``:

* ``<unique>`` identifies the message for its whole life (https://cr.yp.to/proto/maildir.html,
  "How a message is delivered").  We generate Dovecot-style names
  ``{sec}.M{usec}P{pid}Q{n}R{random}.{host}``.
* ``,S=`` (file size) and ``,W=`` (RFC 822 size, i.e. with CRLF line ends) are the Maildir++
  and Dovecot extensions that let quota and IMAP RFC822.SIZE work without a stat() per file.
* ``:<info>`` belongs to the reader; ``:2,<flags>`` is the only defined form (see flags.py).

Parsing is lossless: ``parse_name(x).filename() == x`` for every name ``parse_name`` accepts,
so renaming a message to change its flags never mangles a name written by another program.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import secrets
import socket
import time
from dataclasses import dataclass

# The "Q" delivery counter.  itertools.count.__next__ is one C call, hence atomic under the
# GIL: two threads delivering at the same microsecond still get different numbers.  After a
# fork the child keeps counting from the parent's value, which is fine because P (the pid)
# differs.
_counter = itertools.count(1)

# maildir.html: "replace / with \057 and : with \072" in the host part.  We also escape ","
# (as \054, same octal scheme) because a comma starts the ,S= / ,W= fields: a host name
# holding ",S=1" would otherwise give every reader a wrong size.  Real host names never
# contain any of the three, so for them this is a no-op.
_HOST_ESCAPES = {"/": "\\057", ":": "\\072", ",": "\\054"}

# Sizes are canonical decimal (no sign, no leading zero, ASCII digits only) so that the
# number rebuilds to the same text; at most 19 digits keeps int() cheap and bounded.
_NUMBER = re.compile(r"0|[1-9][0-9]{0,18}")


@functools.lru_cache(maxsize=64)  # one host name per server: escaped once, not per delivery
def _escape_host(host: str) -> str:
    return "".join(_HOST_ESCAPES.get(ch, ch) for ch in host)


def new_unique_name(hostname: str | None = None) -> str:
    """Return a fresh Maildir unique name, ``"{sec}.M{usec}P{pid}Q{n}R{hex}.{host}"``.

    Unique across threads (the counter), processes (the pid), pid reuse after a reboot and
    hosts sharing a store (16 random hex digits, as Dovecot adds with R).
    """
    # time_ns avoids the float rounding of time.time() that can yield usec == 1000000.
    sec, nsec = divmod(time.time_ns(), 1_000_000_000)
    host = _escape_host(hostname or socket.gethostname() or "localhost")
    return f"{sec}.M{nsec // 1000}P{os.getpid()}Q{next(_counter)}R{secrets.token_hex(8)}.{host}"


@dataclass(frozen=True)
class MaildirName:
    """A parsed message file name.

    ``base`` is the unique part: everything before ``:`` minus a trailing ``,S=<n>`` and/or
    ``,W=<n>``.  Other comma fields (e.g. offlineimap's ``,U=12,FMD5=...``) and sizes that are
    not canonical decimals stay in ``base`` untouched, so they survive a rename.
    """

    base: str
    size: int | None = None
    vsize: int | None = None
    flags: str = ""
    info: str | None = None

    def filename(self) -> str:
        """Rebuild the file name; exact inverse of ``parse_name``."""
        name = self.base
        if self.size is not None:
            name += f",S={self.size}"
        if self.vsize is not None:
            name += f",W={self.vsize}"
        if self.info is not None:
            name += ":" + self.info
        return name


def _split_tail_field(head: str, key: str) -> tuple[str, int | None]:
    """Split a trailing ``,<key>=<number>`` off ``head``.

    Only a *trailing* field is taken, S before W as Dovecot and Courier write them: taking
    fields from the middle would make the rebuilt name differ from the file on disk.
    """
    marker = f",{key}="
    at = head.rfind(marker)
    if at >= 0:
        digits = head[at + len(marker) :]
        if _NUMBER.fullmatch(digits):
            return head[:at], int(digits)
    return head, None


def parse_name(filename: str) -> MaildirName:
    """Parse a Maildir file name.  Never raises except ValueError for a non-file name.

    Raises ValueError for "", ".", "..", or a name containing "/" or NUL: those cannot be a
    file inside cur/ or new/, and accepting them would let a caller's name walk out of the
    folder (``cur/..``).  Every other string parses.
    """
    if not filename or filename in (".", ".."):
        raise ValueError(f"not a Maildir message file name: {filename!r}")
    if "/" in filename or "\0" in filename:
        raise ValueError(f"Maildir file name contains '/' or NUL: {filename!r}")
    head, colon, info = filename.partition(":")
    head, vsize = _split_tail_field(head, "W")
    head, size = _split_tail_field(head, "S")
    flags = ""
    if colon and info.startswith("2,"):
        # maildir.html: flags "must be stored in ASCII order"; we sort and de-duplicate when
        # reading too, since other writers are not always careful.  Unknown characters are
        # kept: this reports what is on disk, flags.with_flags validates what we write.
        flags = "".join(sorted(set(info[2:])))
    return MaildirName(
        base=head,
        size=size,
        vsize=vsize,
        flags=flags,
        info=info if colon else None,
    )
