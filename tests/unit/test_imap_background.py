"""MailboxCommands.in_background: work the reply does not wait for (the WAL checkpoint after a
big STORE) runs in the server's executor; its failure is logged, never raised at the client."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

from server.imap.mailboxes import MailboxCommands


def commands(executor) -> MailboxCommands:
    cmds = MailboxCommands.__new__(MailboxCommands)
    cmds.ctx = SimpleNamespace(executor=executor)
    cmds.conn_id = 7
    return cmds


def test_work_runs_in_the_executor_and_a_failure_is_logged(caplog):
    ran = threading.Event()

    def checkpoint():
        raise OSError(28, "No space left on device")

    with ThreadPoolExecutor(1) as executor:
        cmds = commands(executor)
        cmds.in_background(ran.set)
        with caplog.at_level(logging.WARNING, "mailstead.imap"):
            cmds.in_background(checkpoint)
            executor.shutdown(wait=True)
    assert ran.is_set()
    assert "conn=7 background checkpoint failed" in caplog.text


def test_nothing_is_raised_once_the_executor_is_shut_down():
    executor = ThreadPoolExecutor(1)
    executor.shutdown()
    commands(executor).in_background(print, "never")
