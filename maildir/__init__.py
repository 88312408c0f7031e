"""mailstead's on-disk mail store: Maildir with the Maildir++ folder layout and quota.

Every daemon (SMTP delivery, IMAP, POP3, the admin panel) reads and writes mail through this
package and nothing else.  Messages are stored byte-exact as received, with CRLF line ends,
so IMAP and POP3 serve them without conversion and the ``,S=``/``,W=`` sizes in file names
are exact.  The layout is plain Maildir++ (INBOX at the root, folders in ``.Name``
directories, a ``maildirsize`` quota file), readable by Python's ``mailbox.Maildir``, mutt
and Dovecot.  The package does storage only: no sockets, no configuration, no logging setup.
"""

from maildir.naming import MaildirName, new_unique_name, parse_name

__all__ = [
    "MaildirName",
    "new_unique_name",
    "parse_name",
]
