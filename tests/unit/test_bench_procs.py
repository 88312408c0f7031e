"""bench.procs.wait_idle: the benchmark times a server only once it is done starting."""

from __future__ import annotations

import subprocess
import sys

from bench import procs


def test_an_idle_process_is_idle_at_once_and_a_busy_one_is_waited_for():
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        procs.wait_idle(idle.pid)  # let the interpreter finish starting
        assert procs.wait_idle(idle.pid, window=0.1) < 0.5
        assert procs.wait_idle(busy.pid, window=0.1, timeout=0.6) >= 0.6  # gave up
        assert procs.cpu_seconds([busy.pid]) > procs.cpu_seconds([idle.pid])
    finally:
        for proc in (idle, busy):
            proc.kill()
            proc.wait()
