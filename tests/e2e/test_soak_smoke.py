"""A 20-second soak: 50 SMTP sessions deliver continuously while 200 IMAP sessions IDLE.
Every message that got 250 is collected exactly once, every IDLE session hears of new mail,
nothing errs. ``make soak`` runs the real one (200 SMTP, 1,000 IDLE, SOAK_SECONDS, default
600) and also holds the server's RSS to < 5 % growth over the second half."""

from __future__ import annotations

from tests.stress.soak import run_soak


def test_soak_smoke(tmp_path, dns_server):
    report = run_soak(tmp_path, dns_server.nameserver, seconds=20, smtp=50, idle=200,
                      users=20, sample_every=2, log=lambda line: None)
    print(report.summary())
    assert report.problems(check_growth=False) == [], report.summary()
    assert report.sent >= 100, report.summary()
