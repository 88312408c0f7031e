"""Helpers for maildir tests that look past a running index: a Python child process (a
second program on the same Maildir, or one that dies at a chosen point) and the rows as
committed, read on a connection of our own rather than through the index's door."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, text=True,
                            stdout=subprocess.PIPE, **kwargs)


def committed_rows(fi, where: str = "1") -> int:
    """How many message rows of the index match ``where``, as committed."""
    with sqlite3.connect(fi.index.db_path) as conn:
        return conn.execute(f"SELECT count(*) FROM messages WHERE {where}").fetchone()[0]
