"""The spam filter against a real rspamd (Debian's package, run privately on loopback by
tests/support/rspamd.py): GTUBE, a clean message, our thresholds, Bayes training, and an IMAP
move into Junk that teaches it."""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import re

import pytest

from maildir import create_maildir
from maildir.index import MailboxIndex
from server.config import parse_config
from server.spam import ACCEPT, JUNK, REJECT, SpamFilter
from server.spam.rspamd import RspamdClient, RspamdError
from server.spam.training import JunkTrainer
from tests.conftest import require_tool
from tests.support import imap
from tests.support.instance import Instance
from tests.support.rspamd import GTUBE, GTUBE_ADD_HEADER, GTUBE_REWRITE_SUBJECT, Rspamd

pytestmark = pytest.mark.e2e


def message(body: str, mid: str, subject: str = "Hello") -> bytes:
    return (f"From: Bob <bob@remote.test>\r\nTo: alice@example.test\r\nSubject: {subject}\r\n"
            f"Date: Sat, 28 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{mid}@remote.test>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
            f"{body}\r\n").encode()


# Enough distinct words for rspamd's Bayes tokenizer (it skips messages of < 11 tokens).
PROSE = ("Hi Alice, the quarterly budget review moved to Thursday afternoon. Could you bring "
         "the printed figures for the northern region and the notes from last week's meeting "
         "with the suppliers? Lunch afterwards is on me. Best regards, Bob")


@pytest.fixture(scope="module")
def rspamd(tmp_path_factory, dns_server):
    require_tool("rspamd")
    with Rspamd(tmp_path_factory.mktemp("rspamd"), dns_server.nameserver) as server:
        yield server


def config(tmp_path, rspamd: Rspamd, **spam):
    text = (f'[server]\nhostname = "mail.example.test"\ndata_dir = "{tmp_path}"\n'
            + rspamd.spam_toml(**spam))
    return parse_config(text, tmp_path / "mailstead.toml")


def spam_filter(tmp_path, rspamd: Rspamd, **spam) -> SpamFilter:
    return SpamFilter(config(tmp_path, rspamd, **spam))


def scan(spam: SpamFilter, data: bytes, **envelope):
    async def main():
        try:
            return await spam.scan(data, **{
                "ip": "203.0.113.5", "helo": "mx.remote.test", "sender": "bob@remote.test",
                "rcpts": ["alice@example.test"], "queue_id": "E2E1", **envelope})
        finally:
            await spam.close()
    return asyncio.run(main())


def headers(result) -> email.message.Message:
    return email.message_from_bytes(b"".join(result.headers) + b"\r\n",
                                    policy=email.policy.default)


def test_fixture_starts_fast(rspamd):
    assert rspamd.started_in < 10, rspamd.started_in


def test_gtube_is_refused(tmp_path, rspamd):
    result = scan(spam_filter(tmp_path, rspamd), message(GTUBE, "gtube"))
    assert result.action == REJECT
    hdr = headers(result)
    assert hdr["X-Spam-Status"].startswith("Yes, score=15.00")
    assert "GTUBE" in str(hdr["X-Spamd-Result"])


def test_gtube_add_header_and_rewrite_subject_go_to_junk(tmp_path, rspamd):
    # rspamd's "add header" (score 6) and "rewrite subject" (score 0) both mean Junk for us.
    result = scan(spam_filter(tmp_path, rspamd), message(GTUBE_ADD_HEADER, "gtube-y"))
    assert (result.action, result.score) == (JUNK, 6.0)
    result = scan(spam_filter(tmp_path, rspamd), message(GTUBE_REWRITE_SUBJECT, "gtube-z"))
    assert result.action == JUNK


def test_gtube_refused_whatever_our_reject_score(tmp_path, rspamd):
    result = scan(spam_filter(tmp_path, rspamd, reject_score=100.0), message(GTUBE, "g2"))
    assert result.action == REJECT  # rspamd's own reject action


def test_clean_message_is_accepted(tmp_path, rspamd):
    result = scan(spam_filter(tmp_path, rspamd), message(PROSE, "clean"))
    assert result.action == ACCEPT, result.reason
    hdr = headers(result)
    assert re.fullmatch(r"No, score=-?\d+\.\d\d required=6\.00", hdr["X-Spam-Status"])
    # The envelope reached rspamd as headers: its rules compared them with the message.
    spamd = str(hdr["X-Spamd-Result"])
    assert "RCPT_COUNT_ONE" in spamd and "FROM_EQ_ENVFROM" in spamd


def test_our_junk_score_applies(tmp_path, rspamd):
    # No Date, no Message-ID: rspamd scores it above zero but far below its own thresholds.
    data = b"From: bob@remote.test\r\nTo: alice@example.test\r\nSubject: hi\r\n\r\nhello\r\n"
    score = scan(spam_filter(tmp_path, rspamd), data).score
    assert 0 < score < 6
    assert scan(spam_filter(tmp_path, rspamd), data).action == ACCEPT
    assert scan(spam_filter(tmp_path, rspamd, junk_score=score), data).action == JUNK
    assert scan(spam_filter(tmp_path, rspamd, junk_score=score / 2,
                            reject_score=score), data).action == REJECT


def test_rspamd_down_accepts_unscored(tmp_path, rspamd):
    spam = spam_filter(tmp_path, rspamd, rspamd_url="http://127.0.0.1:9")
    result = scan(spam, message(GTUBE, "down"))
    assert result.action == ACCEPT and not result.scanned
    assert headers(result)["X-Spam-Status"] == "unknown (rspamd unreachable)"


def learn(rspamd: Rspamd, spam: bool, data: bytes, password: str | None = None):
    async def main():
        client = RspamdClient(rspamd.url, controller_url=rspamd.controller_url,
                              password=rspamd.password if password is None else password)
        try:
            return await client.learn(spam, data)
        finally:
            await client.aclose()
    return asyncio.run(main())


def test_learning_needs_the_password(rspamd):
    with pytest.raises(RspamdError, match="HTTP 401"):
        learn(rspamd, True, message(PROSE, "pw"), password="wrong")


def test_learning_spam_and_ham(rspamd):
    require_tool("redis-server")
    assert learn(rspamd, True, message("Cheap pills! " + PROSE, "spam-1", "WIN")) is True
    # rspamd remembers what it learned (by Message-ID digest) and says so: 208.
    assert learn(rspamd, True, message("Cheap pills! " + PROSE, "spam-1", "WIN")) is False
    assert learn(rspamd, False, message(PROSE, "ham-1")) is True


def test_learning_without_redis_is_refused(tmp_path, dns_server):
    """Without Redis, rspamd's Bayes classifier has no backend and refuses every lesson (204);
    the trainer logs that like any other failure (test_training_errors_are_logged)."""
    require_tool("rspamd")
    with Rspamd(tmp_path, dns_server.nameserver, redis=False) as bare, \
            pytest.raises(RspamdError, match="learn conditions denied"):
        learn(bare, True, message(PROSE, "no-redis"))


@pytest.fixture
def instance(tmp_path, dns_server, rspamd):
    inst = Instance(tmp_path, dns_server.nameserver)
    inst.append_config(rspamd.spam_toml())
    inst.add_user("alice@example.test")
    inst.start()
    yield inst
    inst.stop()


def test_imap_moves_into_and_out_of_junk_teach_rspamd(instance, rspamd):
    require_tool("redis-server")
    imap.deliver(instance, "alice@example.test", "Act now", "Cheap pills, " + PROSE,
                 extra="Message-ID: <move-spam@remote.test>\r\n")
    imap.deliver(instance, "alice@example.test", "Budget", PROSE,
                 extra="Message-ID: <move-ham@remote.test>\r\n")
    c = imap.client(instance, "alice@example.test")
    try:
        c.select("INBOX")
        assert c.uid("MOVE", "1", "Junk")[0] == "OK"
        instance.wait_for_log("spam training: spam learned from alice@example.test")
        c.select("Junk")
        assert c.uid("COPY", "1", "INBOX")[0] == "OK"   # back out: it was ham after all
        instance.wait_for_log("spam training: ham learned from alice@example.test")
        c.select("INBOX")
        assert c.uid("MOVE", "2", "Trash")[0] == "OK"   # teaches nothing
    finally:
        c.logout()
    # rspamd has the Junk copy as ham now (the second lesson replaced the first).
    junk = instance.maildir("alice@example.test", "Junk")
    [stored] = [junk.get_bytes(k) for k in junk.iterkeys()]
    assert learn(rspamd, False, stored) is False
    assert instance.log().count("spam training:") == 2


def test_training_errors_are_logged(tmp_path, rspamd, caplog):
    """Our learn call is made and its failure logged (here: a wrong password)."""
    trainer = JunkTrainer.from_config(config(tmp_path, rspamd, rspamd_password="wrong"))
    create_maildir(tmp_path / "alice")
    index = MailboxIndex(tmp_path / "alice")
    junk = index.folder("Junk")
    uid = junk.append(message(PROSE, "err"))

    async def main():
        trainer.observe("alice@example.test", "INBOX", "Junk", junk, [uid])
        await trainer.drain()
        await trainer.stop()

    with caplog.at_level(logging.WARNING, "mailstead.spam"):
        asyncio.run(main())
    index.close()
    assert trainer.failed == 1
    assert "not learned: learnspam: HTTP 401" in caplog.text
