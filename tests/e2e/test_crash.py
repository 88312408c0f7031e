"""The crash test, small: 8 clients send 200 numbered messages (local mailboxes and remote
recipients through the queue) while the server is kill -9-ed three times and restarted.
Nothing that got 250 is lost or doubled, UIDs stay, the index matches a rebuild; remote
duplicates only in the RFC 1047 window (see tests/stress/crash.py). ``make crashtest`` runs
the full size (20 clients, 2,000 messages)."""

from __future__ import annotations

from tests.stress.crash import run_crash


def test_kill_9_three_times_loses_and_doubles_nothing(tmp_path, dns_server):
    report = run_crash(tmp_path, dns_server.nameserver, clients=8, messages=200, kills=3,
                       log=lambda line: None)
    print(report.summary())
    assert report.problems == [], report.summary()
    assert report.outcomes["ok"] >= 150, report.summary()  # the kills hit, but not everything
    assert len(report.restart_seconds) == 3
