"""mailstead's on-disk mail store: Maildir with the Maildir++ folder layout and quota.

Every daemon (SMTP delivery, IMAP, POP3, the admin panel) reads and writes mail through this
package and nothing else.  Messages are stored byte-exact as received, with CRLF line ends,
so IMAP and POP3 serve them without conversion and the ``,S=``/``,W=`` sizes in file names
are exact.  The layout is plain Maildir++ (INBOX at the root, folders in ``.Name``
directories, a ``maildirsize`` quota file), readable by Python's ``mailbox.Maildir``, mutt
and Dovecot.  The package does storage only: no sockets, no configuration, no logging setup.
"""

from maildir.deliver import TMP_MAX_AGE, Delivery, DeliveryError, cleanup_tmp, deliver
from maildir.flags import VALID_FLAGS, flags_of, normalize_flags, set_flags, with_flags
from maildir.folders import (
    DEFAULT_FOLDERS,
    INBOX,
    create_folder,
    create_maildir,
    folder_path,
    is_inbox,
    list_folders,
    validate_folder_name,
)
from maildir.naming import MaildirName, new_unique_name, parse_name
from maildir.quota import invalidate, recalculate, record, usage

__all__ = [
    "DEFAULT_FOLDERS",
    "INBOX",
    "TMP_MAX_AGE",
    "VALID_FLAGS",
    "Delivery",
    "DeliveryError",
    "MaildirName",
    "cleanup_tmp",
    "create_folder",
    "create_maildir",
    "deliver",
    "flags_of",
    "folder_path",
    "invalidate",
    "is_inbox",
    "list_folders",
    "new_unique_name",
    "normalize_flags",
    "parse_name",
    "recalculate",
    "record",
    "set_flags",
    "usage",
    "validate_folder_name",
    "with_flags",
]

# The IMAP index (index.py) and its uidlist, appended after the storage API above.
from maildir.index import (  # noqa: E402
    Changes,
    FolderIndex,
    FolderStatus,
    MailboxIndex,
    MessageGone,
    MessageInfo,
    SyncResult,
)
from maildir.uidlist import UidList  # noqa: E402

__all__ += [
    "Changes",
    "FolderIndex",
    "FolderStatus",
    "MailboxIndex",
    "MessageGone",
    "MessageInfo",
    "SyncResult",
    "UidList",
]
