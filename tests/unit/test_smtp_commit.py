"""What happens after a message is stored must never fail the transaction."""

from __future__ import annotations

import mailbox

from maildir import Delivery, create_maildir, quota
from server.smtp.commit import deliver_and_count

MSG = b"Subject: x\r\n\r\nbody\r\n"


def test_quota_bookkeeping_failure_does_not_fail_delivery(tmp_path):
    root = tmp_path / "box"
    create_maildir(root)
    quota.usage(root, 10_000)  # creates maildirsize
    (root / "maildirsize").unlink()
    (root / "maildirsize").mkdir()  # appending to it now fails with EISDIR
    (root / "maildirsize" / "x").write_text("keeps rmdir from succeeding")
    deliver_and_count([Delivery(root, (MSG,))], [root], "mail.example.test")
    box = mailbox.Maildir(root, factory=None, create=False)
    assert [box.get_bytes(k) for k in box.iterkeys()] == [MSG]


def test_quota_usage_is_counted(tmp_path):
    root = tmp_path / "box"
    create_maildir(root)
    assert quota.usage(root, 10_000) == (0, 0)
    deliver_and_count([Delivery(root, (MSG,))], [root], "mail.example.test")
    assert quota.usage(root, 10_000) == (len(MSG), 1)
