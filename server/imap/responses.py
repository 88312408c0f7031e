"""IMAP responses: typed errors that carry their answer, and the lines we write.

Command methods raise ``No``/``Bad`` (with an optional response code, RFC 3501 §7.1 and RFC
5530); the session turns them into the tagged reply in one place. An unexpected exception
becomes ``NO [SERVERBUG]`` and a logged traceback, never a dropped connection.
"""

from __future__ import annotations


class ImapError(Exception):
    status = "NO"

    def __init__(self, text: str, code: str | None = None):
        super().__init__(text)
        self.text = text
        self.code = code

    def tagged(self, tag: str) -> bytes:
        return tagged(tag, self.status, self.text, self.code)


class No(ImapError):
    """The command was understood but cannot be done (RFC 3501 §7.1.2)."""


class Bad(ImapError):
    """The command was not understood or is not allowed now (RFC 3501 §7.1.3)."""

    status = "BAD"


def _text(text: str) -> bytes:
    # Response text is one line: a CR or LF from an error message must not split it.
    return text.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace")


def tagged(tag: str, status: str, text: str, code: str | None = None) -> bytes:
    prefix = f"[{code}] " if code else ""
    return f"{tag} {status} ".encode() + prefix.encode() + _text(text) + b"\r\n"


def untagged(text: str | bytes) -> bytes:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return b"* " + data + b"\r\n"


def ok(text: str, code: str | None = None) -> bytes:
    prefix = f"[{code}] " if code else ""
    return b"* OK " + prefix.encode() + _text(text) + b"\r\n"
