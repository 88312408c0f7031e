"""IMAP4rev1/rev2 server: a sans-I/O parser (``parser``), response encoding (``encode``),
message structure (``mime``), a state machine with one method per command (``session``) and a
thin asyncio connection layer (``connection``), over the index in ``maildir/``."""
