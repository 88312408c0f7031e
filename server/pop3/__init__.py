"""POP3 (RFC 1939) with CAPA (RFC 2449), STLS (RFC 2595) and SASL PLAIN (RFC 5034): the user's
INBOX as a maildrop, over the same index IMAP uses (``maildir.index``)."""
