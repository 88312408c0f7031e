"""Modified UTF-7 for IMAP mailbox names (RFC 3501 §5.1.3).

Printable US-ASCII (0x20-0x7e) stands for itself, except ``&`` which is written ``&-``. Any
other run of characters is UTF-16BE, in base64 with ``,`` for ``/`` and no ``=`` padding,
between ``&`` and ``-``: "~peter/mail/台北/日本語" is ``~peter/mail/&U,BTFw-/&ZeVnLIqe-``.

``decode`` is strict: it accepts only the one encoding ``encode`` produces, so that two
spellings can never name the same mailbox (``&AGE-`` for "a", a shift split in two, non-zero
padding bits and lone surrogates are all refused with ``ValueError``).
"""

from __future__ import annotations

import base64
import binascii
import re

_B64_CHARS = re.compile(r"[A-Za-z0-9+,]*")


def _printable(ch: str) -> bool:
    return " " <= ch <= "~"


def _shift(run: str) -> str:
    # UnicodeEncodeError (a ValueError) for lone surrogates: they have no UTF-16 form.
    data = run.encode("utf-16-be")
    return "&" + base64.b64encode(data).decode("ascii").rstrip("=").replace("/", ",") + "-"


def encode(name: str) -> str:
    """A Unicode mailbox name in modified UTF-7 (pure ASCII)."""
    out: list[str] = []
    start = None  # where the current run of non-printable characters began
    for i, ch in enumerate(name):
        if _printable(ch):
            if start is not None:
                out.append(_shift(name[start:i]))
                start = None
            out.append("&-" if ch == "&" else ch)
        elif start is None:
            start = i
    if start is not None:
        out.append(_shift(name[start:]))
    return "".join(out)


def _unshift(b64: str) -> str:
    if not _B64_CHARS.fullmatch(b64):
        raise ValueError(f"invalid character in base64 shift &{b64}-")
    # Each UTF-16 unit is 16 bits: 1, 2, 3 units take 3, 6, 8 base64 characters.
    if len(b64) % 8 not in (0, 3, 6):
        raise ValueError(f"base64 shift &{b64}- is not a whole number of UTF-16 units")
    std = b64.replace(",", "/")
    try:
        data = base64.b64decode(std + "=" * (-len(std) % 4), validate=True)
    except binascii.Error as err:
        raise ValueError(f"invalid base64 shift &{b64}-: {err}") from None
    if base64.b64encode(data).decode("ascii").rstrip("=") != std:
        raise ValueError(f"base64 shift &{b64}- has non-zero padding bits")
    text = data.decode("utf-16-be")  # UnicodeDecodeError for lone surrogates
    if any(_printable(ch) for ch in text):
        # RFC 3501 §5.1.3: printable US-ASCII "MUST NOT be encoded in modified BASE64".
        raise ValueError(f"base64 shift &{b64}- encodes printable US-ASCII")
    return text


def decode(text: str) -> str:
    """A modified UTF-7 name as Unicode; ``ValueError`` if it is not canonical mUTF-7."""
    out: list[str] = []
    i = 0
    last_shift_end = -1
    while i < len(text):
        ch = text[i]
        if not _printable(ch):
            raise ValueError(f"character {ch!r} must be base64-encoded")
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = text.find("-", i + 1)
        if end < 0:
            raise ValueError("'&' shift not closed by '-'")
        b64 = text[i + 1 : end]
        if not b64:
            out.append("&")
        else:
            if last_shift_end == i:
                # Two shifts in a row would be a second spelling of one shift.
                raise ValueError("adjacent base64 shifts must be written as one")
            out.append(_unshift(b64))
            last_shift_end = end + 1
        i = end + 1
    return "".join(out)
