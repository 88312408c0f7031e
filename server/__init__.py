"""mailstead daemons: SMTP MX and submission, outbound queue, IMAP, POP3, ACME, well-known HTTP
endpoints, plus the typed config, the account store and the ``mailstead`` command line."""
