"""Outbound delivery: routing (MX lookup), the SMTP client transaction, and the queue runner
that retries, bounces and forgets messages in the spool (``server.queue``)."""
