"""Pausing Python's cyclic garbage collector while a call builds and drops many tuples.

A STORE on 30,000 messages of a 100,000-message folder makes some 200,000 short-lived
tuples (rows, renames, parameters, results).  None of them is part of a cycle, so the
collector can free none of them, but their count alone sets it off: measured in the IMAP
server, ~250 collections, two of them full ones that walk every object of the process,
55 ms of a 750 ms STORE.  Reference counting frees the tuples as before; the collector
simply runs after the call instead of during it.

A first sync of a big folder is the same case (a few tuples per new file).

``gc.disable`` is process-wide, so the pause is for big calls only (a fraction of a second,
rarely), and the switch is left alone when someone else turned the collector off.  With
two pauses overlapping, the first to end turns it back on: the second then runs with the
collector, which costs time, never correctness.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

# Items (messages) from which a call is worth pausing the collector for.
MIN_ITEMS = 2000


@contextmanager
def paused(items: int) -> Iterator[None]:
    """Run the block with the collector off if it handles ``items`` >= MIN_ITEMS."""
    if items < MIN_ITEMS or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
