"""Parser test helpers: one command line in, the event the reader gives for it out."""

from __future__ import annotations

from server.imap.parser import Command, CommandReader, NeedLiteral, ParseError


def _event(line: bytes):
    reader = CommandReader()
    reader.feed(line + b"\r\n")
    while isinstance(event := reader.next(), NeedLiteral):
        pass
    return event


def parse(line: bytes) -> Command:
    event = _event(line)
    assert isinstance(event, Command), event
    return event


def error(line: bytes) -> ParseError:
    event = _event(line)
    assert isinstance(event, ParseError), event
    return event
