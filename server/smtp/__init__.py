"""SMTP on aiosmtpd: the MX receiver (and, later, submission). Behaviour lives in handler classes;
``protocol.SMTPProtocol`` adds only what aiosmtpd's handler hooks cannot reach."""
