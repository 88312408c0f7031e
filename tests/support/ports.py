"""Ports for the servers tests start, taken from below the kernel's ephemeral range.

A port from ``bind(("127.0.0.1", 0))`` is free only at that moment: once the probe socket is
closed, any outgoing connection (the server under test's own, Pebble's, a client's) may get it
as its local port before the server binds it. CI failed once on exactly that ("cannot listen
on 127.0.0.1:55107: Address already in use"). The kernel never picks a port below
``ip_local_port_range`` on its own, so a port checked free there stays free unless a test
takes it; this module hands each one out once per cycle, and each pytest-xdist worker (if any)
draws from its own block.
"""

from __future__ import annotations

import itertools
import os
import random
import socket

HOST = "127.0.0.1"
LOWEST = 10000


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _block() -> range:
    low = _ephemeral_low()
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    size = (low - LOWEST) // max(workers, 1)
    if size < 200:  # a range so wide there is no room below it: the kernel's choice it is
        return range(0)
    start = LOWEST + index * size
    return range(start, start + size)


_BLOCK = _block()
_cursor = itertools.count(random.randrange(len(_BLOCK))) if _BLOCK else None


def _bindable(port: int) -> bool:
    # No SO_REUSEADDR: a port with a connection in TIME_WAIT is skipped too, to be safe.
    with socket.socket() as tcp, socket.socket(type=socket.SOCK_DGRAM) as udp:
        try:
            tcp.bind((HOST, port))
            udp.bind((HOST, port))  # test DNS servers listen on both
        except OSError:
            return False
    return True


def free_ports(n: int) -> list[int]:
    """``n`` different ports, free now and outside the range the kernel hands out."""
    if _cursor is None:
        return _kernel_ports(n)
    ports: list[int] = []
    for _ in range(len(_BLOCK)):
        port = _BLOCK[next(_cursor) % len(_BLOCK)]
        if port not in ports and _bindable(port):
            ports.append(port)
            if len(ports) == n:
                return ports
    raise RuntimeError(f"no {n} free ports in {_BLOCK.start}-{_BLOCK.stop - 1}")


def free_port() -> int:
    return free_ports(1)[0]


def _kernel_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            socks.append(s)
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
