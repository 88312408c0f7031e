"""Junk moves as training: which moves teach what, and the queue that sends them to rspamd
(here a loopback stand-in for its controller; the real one is in tests/e2e/test_rspamd.py)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from maildir import create_maildir
from maildir.index import MailboxIndex
from server.config import parse_config
from server.spam.training import MAX_QUEUED, JunkTrainer, lesson
from tests.support.httpstub import HTTPStub

MESSAGE = b"From: a@remote.test\r\nSubject: cheap pills\r\n\r\nbuy now\r\n"


@pytest.mark.parametrize("source, dest, expected", [
    ("INBOX", "Junk", True),
    ("Archive", "Junk", True),
    (None, "Junk", True),         # APPEND into Junk (a client's local junk filter)
    ("Junk", "INBOX", False),
    ("Junk", "Archive", False),
    ("Junk", "Lists/python", False),
    ("Junk", "Trash", None),      # deleting spam is not calling it ham
    ("Junk", "Junk", None),
    ("INBOX", "Archive", None),
    ("INBOX", "Trash", None),
    (None, "Sent", None),
    ("INBOX", "junk", None),      # folder names are case-sensitive; only the special-use one
])
def test_lessons(source, dest, expected):
    assert lesson(source, dest) is expected


@pytest.fixture
def junk(tmp_path):
    root = tmp_path / "alice"
    create_maildir(root)
    index = MailboxIndex(root)
    yield index.folder("Junk"), index.folder("INBOX")
    index.close()


def _trainer(url: str, tmp_path, learn: bool = True) -> JunkTrainer:
    text = (f'[server]\nhostname = "mail.example.test"\ndata_dir = "{tmp_path}"\n'
            f'[spam]\nrspamd_url = "http://127.0.0.1:9"\nrspamd_controller_url = "{url}"\n'
            f'rspamd_password = "pw"\nlearn = {"true" if learn else "false"}\n')
    return JunkTrainer.from_config(parse_config(text, tmp_path / "mailstead.toml"))


async def _observe(trainer: JunkTrainer, *moves) -> None:
    for move in moves:
        trainer.observe("alice@example.test", *move)
    await trainer.drain()
    await trainer.stop()


def test_moves_are_learned(tmp_path, junk):
    junk_folder, inbox = junk
    spam_uid = junk_folder.append(MESSAGE)
    ham_uid = inbox.append(b"Subject: lunch\r\n\r\nsee you\r\n")
    with HTTPStub() as controller:
        controller.answer(200, b'{"success":true}')
        trainer = _trainer(controller.url, tmp_path)
        asyncio.run(_observe(trainer,
                             ("INBOX", "Junk", junk_folder, [spam_uid]),
                             ("Junk", "INBOX", inbox, [ham_uid]),
                             ("INBOX", "Archive", inbox, [ham_uid]),   # teaches nothing
                             ("Junk", "Trash", inbox, [ham_uid])))     # nor this
    assert [r.path for r in controller.requests] == ["/learnspam", "/learnham"]
    assert controller.requests[0].body == MESSAGE
    assert controller.requests[0].header("Password") == ["pw"]
    assert trainer.learned == 2 and trainer.failed == 0


def test_off_without_learn_or_rspamd(tmp_path, junk):
    junk_folder, _ = junk
    uid = junk_folder.append(MESSAGE)
    with HTTPStub() as controller:
        trainer = _trainer(controller.url, tmp_path, learn=False)
        asyncio.run(_observe(trainer, ("INBOX", "Junk", junk_folder, [uid])))
        text = f'[server]\nhostname = "mail.example.test"\ndata_dir = "{tmp_path}"\n'
        off = JunkTrainer.from_config(parse_config(text, tmp_path / "mailstead.toml"))
        asyncio.run(_observe(off, ("INBOX", "Junk", junk_folder, [uid])))
    assert controller.requests == []
    assert trainer.worker is None and off.worker is None  # no task was even started


def test_rspamd_errors_are_logged_not_raised(tmp_path, junk, caplog):
    junk_folder, _ = junk
    uid = junk_folder.append(MESSAGE)
    with HTTPStub() as controller, caplog.at_level(logging.INFO, "mailstead.spam"):
        controller.answer(401, b'{"error":"Unauthorized"}')
        trainer = _trainer(controller.url, tmp_path)
        asyncio.run(_observe(trainer, ("INBOX", "Junk", junk_folder, [uid]),
                             ("INBOX", "Junk", junk_folder, [uid + 100])))  # no such message
    assert trainer.failed == 1
    assert "spam from alice@example.test not learned: learnspam: HTTP 401" in caplog.text
    assert f"uid {uid + 100} of alice@example.test gone before it was read" in caplog.text


def test_queue_is_bounded(tmp_path, junk, caplog):
    junk_folder, _ = junk
    uid = junk_folder.append(MESSAGE)

    async def flood(trainer):
        # observe() runs on the loop without yielding, as in the IMAP session: the worker
        # cannot take anything off the queue meanwhile.
        trainer.observe("alice@example.test", "INBOX", "Junk", junk_folder,
                        [uid] * (MAX_QUEUED + 50))
        assert trainer.queue.qsize() == MAX_QUEUED
        await trainer.drain()
        await trainer.stop()

    with HTTPStub() as controller, caplog.at_level(logging.WARNING, "mailstead.spam"):
        controller.answer(208, b"{}", reason="already learned")
        trainer = _trainer(controller.url, tmp_path)
        asyncio.run(flood(trainer))
    assert len(controller.requests) == MAX_QUEUED
    assert "spam training queue full" in caplog.text
