"""The MX with ``[smtp] workers``: mail received in worker processes, decided in the daemon.

Each test runs a real instance with two workers and checks one promise across the process
boundary: mail is stored and acknowledged, IDLE hears of it, forwarded mail leaves through the
daemon's queue, the daemon's bans and connection limits hold, a killed worker is replaced
(and the MX answers meanwhile), a killed daemon takes its workers with it, and SIGHUP and
SIGTERM reach them.
"""

from __future__ import annotations

import imaplib
import os
import re
import signal
import smtplib
import socket
import time

import pytest

from tests.support import abuse
from tests.support.imap import Raw
from tests.support.instance import Instance
from tests.support.sink import Sink

WORKERS = "[smtp]\nworkers = 2\n"


def message(n: int, to: str = "ann@example.test") -> bytes:
    return (f"From: bob@remote.test\r\nTo: {to}\r\nSubject: worker {n}\r\n"
            f"Message-ID: <w-{n}-{time.time_ns()}@remote.test>\r\n\r\nbody {n}\r\n").encode()


def worker_pids(inst: Instance, timeout: float = 20) -> list[int]:
    """The pids of the workers, once both said they are ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = re.findall(r"mx worker (\d+) ready \(pid (\d+)\)", inst.log())
        latest = {int(i): int(pid) for i, pid in ready}
        if len(latest) == 2 and all(_alive(pid) for pid in latest.values()):
            return [latest[0], latest[1]]
        time.sleep(0.05)
    raise AssertionError(f"workers not ready:\n{inst.log()}")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] not in "ZX"
    except FileNotFoundError:
        return False


@pytest.fixture
def workers(tmp_path, dns_server):
    inst = Instance(tmp_path / "inst", dns_server.nameserver, extra_config=WORKERS)
    inst.add_user("ann@example.test")
    inst.start()
    worker_pids(inst)
    yield inst
    inst.stop()


def test_workers_receive_and_store_and_each_takes_connections(workers):
    pids = worker_pids(workers)
    for n in range(20):
        assert workers.send("ann@example.test", message(n)) == {}
    subjects = sorted(m["Subject"] for m in workers.parsed("ann@example.test"))
    assert subjects == sorted(f"worker {n}" for n in range(20))
    # Every message was received by a worker (their log lines say which), none by the
    # daemon's own fallback listener, and both workers took their share.
    log = workers.log()
    by = re.findall(r"mailstead\.smtp(\[w\d\])?: conn=\w+ id=\S+ mx client=\S+ "
                    r"from=<bob@remote.test>", log)
    assert len(by) == 20 and "" not in by
    assert {"[w0]", "[w1]"} == set(by)
    assert all(_alive(pid) for pid in pids)


def test_workers_and_all_their_threads_run_as_sched_batch(workers):
    """A store thread's wake-up must not preempt the worker's event loop (worker.py,
    ``batch_scheduling``); the daemon, which answers IMAP clients, keeps the default."""
    pids = worker_pids(workers)
    for n in range(4):  # the store threads start with the first messages
        assert workers.send("ann@example.test", message(n)) == {}
    for pid in pids:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        assert len(tids) > 1
        assert {os.sched_getscheduler(t) for t in tids} == {os.SCHED_BATCH}
    assert os.sched_getscheduler(workers.proc.pid) == os.SCHED_OTHER


def test_idle_in_the_daemon_hears_a_delivery_made_by_a_worker(workers):
    with Raw(workers) as r:
        r.login("ann@example.test")
        r.cmd("s", "SELECT INBOX")
        r.send("i IDLE\r\n")
        assert r.line() == b"+ idling"
        started = time.monotonic()
        workers.send("ann@example.test", message(1))
        assert r.line() == b"* 1 EXISTS"
        assert time.monotonic() - started < 1.0
        r.send("DONE\r\n")
        r.until("i")


def test_forwarded_mail_leaves_through_the_daemons_queue(tmp_path, dns_server):
    sink = Sink().start()
    inst = Instance(tmp_path / "inst", dns_server.nameserver,
                    extra_config=f"{WORKERS}[outbound]\nmx_port = {sink.port}\n")
    inst.add_user("ann@example.test")
    inst.add_alias("fwd@example.test", "carol@remote.test")
    inst.start()
    try:
        worker_pids(inst)
        started = time.monotonic()
        assert inst.send("fwd@example.test", message(7, "fwd@example.test")) == {}
        [got] = sink.wait_for(1, timeout=10)
        assert b"Subject: worker 7" in got.data and got.recipients == ["carol@remote.test"]
        # Told at once by the worker, the queue does not wait for its next scan.
        assert time.monotonic() - started < 5
    finally:
        inst.stop()
        sink.stop()


def test_bans_and_connection_limits_are_the_daemons(tmp_path, dns_server):
    inst = Instance(tmp_path / "inst", dns_server.nameserver,
                    extra_config=abuse.CONFIG + WORKERS)
    inst.add_user("ann@example.test")
    inst.start()
    try:
        worker_pids(inst)
        # max_connections_per_ip = 3 counts connections held by both workers together.
        ip = abuse.source(31)
        held = [abuse.connect(inst, "mx", ip) for _ in range(3)]
        for conn in held:
            assert conn.recv(100).startswith(b"220 ")
        fourth = abuse.connect(inst, "mx", ip)
        assert fourth.recv(200).startswith(b"421 4.7.0 Too many connections")
        for conn in [*held, fourth]:
            conn.close()
        # Failed IMAP logins get an address banned; connections to the MX are refused too.
        ip = abuse.source(32)
        client = abuse.IMAP(inst, ip)
        for _ in range(abuse.BAN_AFTER):
            with pytest.raises(imaplib.IMAP4.error):
                client.login("ann@example.test", abuse.WRONG)
        assert abuse.first_line(inst, "mx", ip).startswith(b"421 4.7.0 Too many failed logins")
        # Another address is served by the workers as before.
        assert abuse.first_line(inst, "mx", abuse.source(33)).startswith(b"220 ")
    finally:
        inst.stop()


def test_connect_and_hang_up_gives_the_slot_back(tmp_path, dns_server):
    """Scanners connect and hang up before reading the greeting. Each such connection must
    end at once in the worker that took it, not hold a slot until the idle timeout."""
    inst = Instance(tmp_path / "inst", dns_server.nameserver,
                    extra_config="[smtp]\nworkers = 2\nmax_connections = 3\n")
    inst.start()
    try:
        worker_pids(inst)
        for _ in range(20):
            socket.create_connection(("127.0.0.1", inst.mx_port), timeout=5).close()
        deadline = time.monotonic() + 5
        while True:
            held = [socket.create_connection(("127.0.0.1", inst.mx_port), timeout=5)
                    for _ in range(3)]
            greetings = [c.recv(100)[:4] for c in held]
            for conn in held:
                conn.close()
            if greetings == [b"220 "] * 3:
                break
            assert time.monotonic() < deadline, f"slots still held: {greetings}\n{inst.log()}"
            time.sleep(0.2)
    finally:
        inst.stop()


def test_a_killed_worker_is_replaced_and_the_mx_answers_meanwhile(workers):
    first, second = worker_pids(workers)
    os.kill(first, signal.SIGKILL)
    # (Connections handed to it in the instant it died were dropped unanswered, as in any
    # crash: nothing was acknowledged, the client retries.) Once the daemon has seen the
    # exit, the other worker answers until the replacement is ready.
    workers.wait_for_log(f"mx worker 0 (pid {first}) exited")
    for n in range(5):
        assert workers.send("ann@example.test", message(n)) == {}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pids = re.findall(r"mx worker 0 ready \(pid (\d+)\)", workers.log())
        if len(pids) == 2:
            break
        time.sleep(0.05)
    assert len(pids) == 2 and int(pids[1]) != first and _alive(int(pids[1]))
    assert _alive(second)
    assert workers.send("ann@example.test", message(9)) == {}
    assert len(workers.messages("ann@example.test")) == 6


def test_a_killed_daemon_takes_its_workers_along(workers):
    pids = worker_pids(workers)
    workers.proc.kill()
    workers.proc.wait(10)
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)
    # Nothing holds the port: a new daemon starts on the same data dir at once.
    workers.log_file.close()
    workers.start()
    worker_pids(workers)
    assert workers.send("ann@example.test", message(1)) == {}


def test_sighup_reaches_the_workers(workers):
    worker_pids(workers)
    text = workers.config_path.read_text().replace("workers = 2\n",
                                                   "workers = 2\nmax_message_size = 2048\n")
    workers.config_path.write_text(text)
    workers.signal(signal.SIGHUP)
    workers.wait_for_log("reloaded")
    time.sleep(0.5)  # the workers read the file after the daemon
    big = message(1) + b"x" * 4096 + b"\r\n"
    for _ in range(4):  # whichever worker takes it (552 at MAIL, from SIZE=)
        with pytest.raises(smtplib.SMTPResponseException) as err, workers.smtp() as client:
            client.sendmail("bob@remote.test", ["ann@example.test"], big)
        assert err.value.smtp_code == 552


def test_sigterm_stops_the_workers_cleanly(workers):
    pids = worker_pids(workers)
    with workers.smtp() as client:
        client.ehlo()
        client.mail("bob@remote.test")
        client.rcpt("ann@example.test")
        workers.signal(signal.SIGTERM)
        # A transaction under way may finish (shutdown_grace), and is acknowledged.
        code, _ = client.data(message(1))
        assert code == 250
    assert workers.wait(30) == 0
    assert not any(_alive(p) for p in pids)
    assert len(workers.messages("ann@example.test")) == 1
