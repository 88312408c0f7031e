"""server/abuse: bans, connection limits, sending limits, and the fail2ban log and filter."""

from __future__ import annotations

import configparser
import json
import logging
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from server.abuse import BANNED, BUSY, RATE, Guard, Refused
from server.abuse.bans import BanList
from server.abuse.events import auth_failure_line
from server.authlimit import WINDOW, AuthThrottle
from server.config import AbuseSection
from tests.conftest import require_tool

FILTER = Path(__file__).parents[2] / "ansible/roles/mailstead/files/fail2ban-filter.conf"
# fail2ban's <HOST> with usedns = no (fail2ban/server/failregex.py, 1.0).
F2B_HOST = (r"(?:(?:::f{4,6}:)?(?P<ip4>(?:\d{1,3}\.){3}\d{1,3})|\[?(?P<ip6>(?:[0-9a-fA-F]{1,4}"
            r"::?|::){1,7}(?:[0-9a-fA-F]{1,4}|(?<=:):))\]?)")


class Clock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def guard(tmp_path: Path | None = None, clock: Clock | None = None, **settings) -> Guard:
    settings.setdefault("allow", ())
    clock = clock or Clock()
    return Guard(AbuseSection(**settings), tmp_path, clock=clock, monotonic=clock)


def fail(g: Guard, ip: str, n: int, service: str = "imap") -> None:
    for _ in range(n):
        g.auth_failure(ip, "ann@example.test", service)


def refusal(g: Guard, ip: str, service: str = "imap") -> str | None:
    try:
        g.admit(ip, service).release()
    except Refused as err:
        return err.reason
    return None


# --- bans ---


def test_ban_after_n_failures_on_any_service():
    g = guard(ban_after=3)
    g.auth_failure("192.0.2.7", "ann@example.test", "imap")
    g.auth_failure("192.0.2.7", "bob@example.test", "submission")
    assert not g.is_banned("192.0.2.7") and refusal(g, "192.0.2.7") is None
    g.auth_failure("192.0.2.7", "ann@example.test", "admin")
    assert g.is_banned("192.0.2.7")
    for service in ("mx", "submission", "imaps", "pop3", "admin"):
        assert refusal(g, "192.0.2.7", service) == BANNED
    assert not g.is_banned("192.0.2.8")


def test_ban_expires_and_old_failures_are_forgotten():
    clock = Clock()
    g = guard(clock=clock, ban_after=3, ban_time=60)
    fail(g, "192.0.2.7", 3)
    with pytest.raises(Refused) as err:
        g.admit("192.0.2.7", "imap")
    assert 55 <= err.value.retry_after <= 61
    clock.now += 59
    assert g.is_banned("192.0.2.7")
    clock.now += 2
    assert not g.is_banned("192.0.2.7") and refusal(g, "192.0.2.7") is None
    fail(g, "192.0.2.7", 2)  # counting starts afresh after a ban...
    clock.now += WINDOW + 1  # ...and forgets what is older than the window
    fail(g, "192.0.2.7", 2)
    assert not g.is_banned("192.0.2.7")


def test_zero_never_bans():
    g = guard(ban_after=0)
    fail(g, "192.0.2.7", 50)
    assert not g.is_banned("192.0.2.7")


def test_allow_list_is_never_banned_nor_limited():
    g = guard(ban_after=2, allow=("192.0.2.0/24", "2001:db8:aa::/48"),
              max_connections_per_ip=1, connection_rate_per_ip=1)
    for ip in ("192.0.2.7", "::ffff:192.0.2.7", "2001:db8:aa:1::5"):
        fail(g, ip, 10)
        assert not g.is_banned(ip)
        slots = [g.admit(ip, "imap") for _ in range(5)]  # neither concurrency nor rate
        for slot in slots:
            slot.release()
    fail(g, "198.51.100.1", 2)
    assert g.is_banned("198.51.100.1")


def test_allow_added_on_reload_lifts_a_ban():
    g = guard(ban_after=2)
    fail(g, "192.0.2.7", 2)
    assert g.is_banned("192.0.2.7")
    g.update_config(AbuseSection(ban_after=2, allow=("192.0.2.7",)))
    assert not g.is_banned("192.0.2.7")


def test_ipv6_failures_and_bans_group_by_64_and_mapped_ipv4_is_ipv4():
    g = guard(ban_after=3)
    for ip in ("2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff:1:2:3"):
        g.auth_failure(ip, "ann@example.test", "imap")
    assert g.is_banned("2001:db8:1:2:abcd::77")
    assert not g.is_banned("2001:db8:1:3::1")
    fail(g, "::ffff:198.51.100.4", 3)
    assert g.is_banned("198.51.100.4")


def test_bans_survive_a_restart_but_not_their_end(tmp_path):
    clock = Clock()
    g = guard(tmp_path, clock, ban_after=2, ban_time=100)
    fail(g, "192.0.2.7", 2)
    clock.now += 50
    fail(g, "2001:db8::1", 2)
    saved = json.loads((tmp_path / "abuse-bans.json").read_text())["bans"]
    assert set(saved) == {"ip:192.0.2.7", "net:2001:db8::/64"}
    again = guard(tmp_path, clock, ban_after=2, ban_time=100)
    assert again.is_banned("192.0.2.7") and again.is_banned("2001:db8::99")
    clock.now += 60  # the first ban has ended, the second has not
    later = guard(tmp_path, clock, ban_after=2, ban_time=100)
    assert not later.is_banned("192.0.2.7") and later.is_banned("2001:db8::1")


def test_a_damaged_ban_file_starts_without_bans(tmp_path, caplog):
    (tmp_path / "abuse-bans.json").write_text("{not json")
    b = BanList(2, 60, (), tmp_path / "abuse-bans.json")
    assert b.bans() == {}
    assert "starting without bans" in caplog.text


# --- connection limits ---


def test_concurrent_connections_per_ip_and_service():
    g = guard(max_connections_per_ip=2, connection_rate_per_ip=100)
    a, b = g.admit("192.0.2.7", "imap"), g.admit("192.0.2.7", "imap")
    assert refusal(g, "192.0.2.7", "imap") == BUSY
    assert refusal(g, "192.0.2.7", "pop3") is None  # each service counts for itself
    assert refusal(g, "192.0.2.8", "imap") is None
    a.release()
    a.release()  # twice is harmless
    c = g.admit("192.0.2.7", "imap")
    assert refusal(g, "192.0.2.7", "imap") == BUSY
    b.release()
    c.release()
    assert g.connections.open_count("imap", "ip:192.0.2.7") == 0


def test_connection_rate_per_minute_slides():
    clock = Clock()
    g = guard(clock=clock, connection_rate_per_ip=3)
    for _ in range(3):
        g.admit("2001:db8::1", "submission").release()
    assert refusal(g, "2001:db8::2", "submission") == RATE  # the same /64
    assert refusal(g, "2001:db8::2", "imap") is None
    clock.now += 30
    assert refusal(g, "2001:db8::1", "submission") == RATE  # refusals do not count...
    clock.now += 31
    assert refusal(g, "2001:db8::1", "submission") is None  # ...so a minute later it is in


# --- sending limits ---


def test_messages_and_recipients_per_hour_slide():
    clock = Clock()
    g = guard(clock=clock, max_messages_per_hour=2, max_recipients_per_hour=5)
    s = g.sending
    assert s.may_send("ann@example.test")
    s.sent("ann@example.test", 3)
    clock.now += 1000
    assert s.may_add_recipient("ann@example.test", 1)  # 3 sent + 1 pending + this one
    assert not s.may_add_recipient("ann@example.test", 2)
    s.sent("ann@example.test", 1)
    assert not s.may_send("ann@example.test") and s.may_send("bob@example.test")
    assert s.usage("ann@example.test") == (2, 4)
    clock.now += 2601  # the first message leaves the hour
    assert s.may_send("ann@example.test") and s.usage("ann@example.test") == (1, 1)
    clock.now += 1000  # and then the second: nothing is kept for her
    assert s.usage("ann@example.test") == (0, 0) and "ann@example.test" not in s._sent
    s.sent("ann@example.test", 4)
    assert s.usage("ann@example.test") == (1, 4)


# --- logs and the fail2ban filter ---


def test_log_lines_and_fail2ban_file(tmp_path, caplog):
    clock = Clock(1_735_732_800.0)  # 2025-01-01 12:00:00 UTC
    g = guard(tmp_path, clock, ban_after=2, ban_time=3600, fail2ban_log="f2b.log")
    caplog.set_level(logging.INFO, logger="mailstead.abuse")
    g.auth_failure("192.0.2.7", "alice@example.com", "imap", "3f2a9")
    g.auth_failure("192.0.2.7", "x rhost=198.51.100.1\nrhost=6.6.6.6", "pop3", "3f2aa")
    lines = (tmp_path / "f2b.log").read_text().splitlines()
    assert lines == [
        '2025-01-01T12:00:00+00:00 mailstead[abuse]: conn=3f2a9 auth failure service=imap '
        'rhost=192.0.2.7 user="alice@example.com"',
        '2025-01-01T12:00:00+00:00 mailstead[abuse]: conn=3f2aa auth failure service=pop3 '
        'rhost=192.0.2.7 user="x rhost=198.51.100.1\\nrhost=6.6.6.6"',
        "2025-01-01T12:00:00+00:00 mailstead[abuse]: conn=3f2aa ban rhost=192.0.2.7 "
        "net=192.0.2.7 until=2025-01-01T13:00:00+00:00 failures=2",
    ]
    records = [r for r in caplog.records if r.name == "mailstead.abuse"]
    assert [r.getMessage() for r in records[:3]] == [line.split(": ", 1)[1] for line in lines]
    refusal(g, "192.0.2.7")
    assert "conn=- refused service=imap rhost=192.0.2.7 reason=banned" in caplog.text
    assert len((tmp_path / "f2b.log").read_text().splitlines()) == 3  # refusals are not in it


def test_user_names_are_quoted_and_cut():
    line = auth_failure_line("imap", "192.0.2.7", "é\x00" + "a" * 500)
    assert line.endswith('user="\\u00e9\\u0000' + "a" * 98 + '"')


def _filter_regex() -> re.Pattern:
    """The filter's failregex as fail2ban would build it for a line whose date it removed;
    common.conf's ``__prefix_line`` (syslog host and daemon) is empty for our own lines."""
    parser = configparser.RawConfigParser()
    parser.read(FILTER)
    section = parser["Definition"]
    regex = section["failregex"].replace("%(__prefix_line)s", "")
    regex = regex.replace("%(_head)s", section["_head"]).replace("<HOST>", F2B_HOST)
    return re.compile(regex)


def _without_date(line: str) -> str:
    return re.sub(r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:[+-]\d\d:\d\d)?\s*", "",
                  line)


def test_filter_matches_failures_with_the_right_host(tmp_path):
    g = guard(tmp_path, ban_after=2, fail2ban_log="f2b.log")
    g.auth_failure("192.0.2.7", "alice@example.com", "imap", "1")
    g.auth_failure("2001:db8::7", 'evil" rhost=198.51.100.1 user="x', "submission", "2")
    g.auth_failure("2001:db8::7", "rhost=198.51.100.1", "admin")  # and the ban line
    regex = _filter_regex()
    lines = (tmp_path / "f2b.log").read_text().splitlines()
    hosts = []
    for line in lines:
        m = regex.search(_without_date(line))
        hosts.append(m and (m["ip4"] or m["ip6"]))
    assert hosts == ["192.0.2.7", "2001:db8::7", "2001:db8::7", None]
    journal = ("2025-01-01 12:00:03,123 WARNING mailstead.abuse: conn=3f2ab auth failure "
               'service=pop3 rhost=192.0.2.8 user="bob"')
    assert regex.search(_without_date(journal))["ip4"] == "192.0.2.8"
    # A login name smuggled into another logger's line is no failure of that address.
    injected = ("2025-01-01 12:00:04,123 INFO mailstead.submission: conn=abc auth failed "
                "user=' mailstead.abuse: conn=1 auth failure service=imap rhost=6.6.6.6 user='")
    assert regex.search(_without_date(injected)) is None


def test_fail2ban_regex_on_a_real_log(tmp_path):
    """fail2ban itself, on the file mailstead writes (and its journal form)."""
    tool = require_tool("fail2ban-regex")
    common = Path("/etc/fail2ban/filter.d/common.conf")
    if not common.exists():
        pytest.skip("fail2ban's common.conf is missing")
    shutil.copy(common, tmp_path / "common.conf")
    shutil.copy(FILTER, tmp_path / "mailstead.conf")
    g = guard(tmp_path, ban_after=3, fail2ban_log="f2b.log")
    g.auth_failure("192.0.2.7", "alice@example.com", "imap", "1")
    g.auth_failure("2001:db8::7", "x rhost=198.51.100.1", "submission", "2")
    g.auth_failure("192.0.2.7", "alice@example.com", "pop3", "3")
    g.auth_failure("192.0.2.7", "alice@example.com", "admin")  # the third: a ban line too
    log = tmp_path / "f2b.log"
    with open(log, "a") as f:
        f.write("Jan  1 12:00:03 mail mailstead[812]: 2025-01-01 12:00:03,123 WARNING "
                'mailstead.abuse: conn=3f2ab auth failure service=pop3 rhost=192.0.2.10 '
                'user="bob"\n')
    proc = subprocess.run([tool, "-r", "-o", "ip", str(log), str(tmp_path / "mailstead.conf")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["192.0.2.7", "2001:db8::7", "192.0.2.7", "192.0.2.7",
                                   "192.0.2.10"]


def test_throttle_reports_failures_to_the_guard(caplog):
    g = guard(ban_after=2)
    throttle = AuthThrottle(0.01, g)
    caplog.set_level(logging.INFO, logger="mailstead.abuse")
    throttle.failure("192.0.2.7", "ann@example.test", service="pop3", conn_id="c1")
    throttle.failure("192.0.2.7", "ann@example.test", service="pop3", conn_id="c2")
    assert g.is_banned("192.0.2.7")
    assert 'conn=c1 auth failure service=pop3 rhost=192.0.2.7 user="ann@example.test"' \
        in caplog.text
