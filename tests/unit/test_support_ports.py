"""The port picker the fixtures use stays out of the kernel's ephemeral range."""

import socket

from tests.support import ports


def test_ports_are_distinct_free_and_below_the_ephemeral_range():
    picked = ports.free_ports(20)
    assert len(set(picked)) == 20
    low = ports._ephemeral_low()
    assert all(ports.LOWEST <= p < low for p in picked)
    for port in picked:
        with socket.socket() as s:
            s.bind((ports.HOST, port))


def test_a_port_in_use_is_skipped():
    with socket.socket() as held:
        held.bind((ports.HOST, ports.free_port()))
        taken = held.getsockname()[1]
        assert not ports._bindable(taken)
