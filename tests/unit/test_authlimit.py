from __future__ import annotations

from server.authlimit import MAX_DELAY, WINDOW, AuthThrottle, client_key


def test_free_failures_then_doubling_before_the_check():
    t = AuthThrottle(base_delay=1.0)
    waits = []
    for i in range(8):
        waits.append(t.delay("192.0.2.1", "ann@example.test", now=i))
        t.failure("192.0.2.1", "ann@example.test", now=i)
    assert waits == [0, 0, 1, 2, 4, 8, 16, MAX_DELAY]


def test_right_password_waits_too_while_throttled():
    """The wait comes before the check, so a quick success cannot reveal the password."""
    t = AuthThrottle(base_delay=1.0)
    for i in range(3):
        t.failure("192.0.2.1", "ann@example.test", now=i)
    assert t.delay("192.0.2.1", "ann@example.test", now=3) == 2


def test_per_account_across_clients_and_per_client_across_accounts():
    t = AuthThrottle()
    for i in range(3):
        t.failure(f"198.51.100.{i}", "ann@example.test", now=0)  # a botnet on one account
    assert t.delay("203.0.113.9", "ann@example.test", now=1) > 0
    for i in range(3):
        t.failure("192.0.2.7", f"user{i}@example.test", now=0)  # spraying from one client
    assert t.delay("192.0.2.7", "someone@example.test", now=1) > 0


def test_ipv6_counts_per_64_and_mapped_ipv4_as_ipv4():
    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9")
    assert client_key("2001:db8:1:2::1") != client_key("2001:db8:1:3::1")
    assert client_key("::ffff:192.0.2.1") == client_key("192.0.2.1")


def test_window_forgets_and_success_clears_only_the_account():
    t = AuthThrottle()
    for i in range(4):
        t.failure("192.0.2.1", "ann@example.test", now=i)
    assert t.delay("192.0.2.1", "ann@example.test", now=WINDOW + 10) == 0
    for i in range(4):
        t.failure("192.0.2.1", "ann@example.test", now=i)
    t.success("192.0.2.1", "ann@example.test")
    assert t.delay("192.0.2.99", "ann@example.test", now=5) == 0
    assert t.delay("192.0.2.1", "bob@example.test", now=5) > 0  # the client's count stays
