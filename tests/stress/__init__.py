"""Stress drivers run against a real instance: the crash test (``crash.py``, ``make crashtest``)
and the load/soak run (``soak.py``, ``make soak``). Short versions run in ``make test`` from
tests/e2e (test_crash.py, test_soak_smoke.py); both modules also run on their own
(``python -m tests.stress.crash --help``)."""
