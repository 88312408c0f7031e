"""ACME (RFC 8555) certificate issuance: the protocol client and the challenge responder.

``client.ACMEClient`` talks to the CA in a worker thread; ``responder.ChallengeResponder`` holds
the pending http-01 and tls-alpn-01 (RFC 8737) answers that mailstead's listeners serve;
``manager.CertificateManager`` decides when to issue and installs the result.
"""
