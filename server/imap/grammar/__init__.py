"""The IMAP command grammar (RFC 3501 §9, RFC 9051 §9 and extensions), one module per concern.

Every parser has the shape ``parse_x(buf) -> (value, rest)``: ``buf`` is a ``memoryview`` of
the complete command (literal data included, final CRLF removed), ``rest`` what follows the
value; nothing is copied but the values themselves. Malformed input raises ``ParseError``
with a message naming what was expected; ``server.imap.parser`` adds the tag and the command
name and frames the bytes into commands.

``tokens``: atoms, strings, literals, numbers, flags, dates, mailbox names. ``seqset``:
sequence sets. ``client``: LOGIN AUTHENTICATE ENABLE ID. ``mailbox``: SELECT EXAMINE CREATE
DELETE RENAME SUBSCRIBE UNSUBSCRIBE LIST LSUB STATUS APPEND. ``messages``: FETCH STORE COPY
MOVE UID EXPUNGE. ``search``: SEARCH.
"""
