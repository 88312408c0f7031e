"""Inbound trust on the MX: SPF, DKIM, DMARC and ARC verdicts for each received message.

``verdict.evaluate`` is the one entry point; the MX (``server/smtp/mx.py``) calls it at the end
of DATA and gets back the ``Authentication-Results`` header to add and what to do with the
message (accept, file into Junk, reject, or ask the client to retry). Every DNS lookup goes
through the resolver built from ``[dns]`` (``dnsfunc.py``); the libraries (pyspf, dkimpy) never
reach the system resolver.
"""
