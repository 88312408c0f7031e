"""A private rspamd (and, for Bayes training, a private Redis) on loopback ports.

    with DNSTestServer(DEFAULT_ZONE) as dns, Rspamd(tmp_path, dns.nameserver) as rspamd:
        instance.append_config(rspamd.spam_toml())   # rspamd_url, controller URL, password
        ... send GTUBE_ADD_HEADER: it lands in Junk; GTUBE: 550 5.7.1 ...

Debian's rspamd package, driven with a config of our own (``rspamd.conf`` in ``root``) instead
of /etc/rspamd/rspamd.conf: it takes rspamd's symbols, scores, actions (reject 15, add header 6,
greylist 4) and its rules (``rspamd.lua``), but loads no plugin module (``modules.conf`` not
included), because the stock modules would fetch maps from maps.rspamd.com, resolve
fuzzy*.rspamd.com and ask public RBLs. rspamd's own DNS goes to our test DNS server only, and
the TLD list is five lines instead of the public suffix list (compiling that takes ~13 s), so
it starts in about a second. ``enable_test_patterns`` turns on GTUBE and its variants.

Two workers: normal (scans, ``url``) and controller (learning, ``controller_url``) with a
password; ``secure_ip`` is an address no test uses, so loopback needs the password like any
client would. The Bayes classifier keeps its statistics in Redis: with ``redis-server``
installed the fixture runs one (no persistence) and learning works; without it rspamd refuses
to learn and says why. Everything lives in ``root/rspamd``; rspamd's log is ``log()``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.instance import _toml, free_ports

START_TIMEOUT = 20.0
PASSWORD = "controller-test-password"

# The GTUBE strings rspamd 3.4 knows with enable_test_patterns: the standard X one gets
# "reject" (score 15), Y "add header" (score 6: our verdict files it into Junk), Z "rewrite
# subject" (score 0, also Junk for us).
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
GTUBE_ADD_HEADER = "YJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
GTUBE_REWRITE_SUBJECT = "ZJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

_CONFIG = """\
lua = "$RULESDIR/rspamd.lua";
.include "$CONFDIR/metrics.conf"
.include "$CONFDIR/actions.conf"
.include "$CONFDIR/groups.conf"
.include "$CONFDIR/composites.conf"
.include "$CONFDIR/statistic.conf"
options {{
    filters = "regexp";
    url_tld = "{root}/tld.dat";
    cache_file = "$DBDIR/symbols.cache";
    hs_cache_dir = "$DBDIR/";
    control_socket = "$DBDIR/rspamd.sock mode=0600";
    dynamic_conf = "$DBDIR/rspamd_dynamic";
    history_file = "$DBDIR/rspamd.history";
    stats_file = "$DBDIR/stats.ucl";
    tempdir = "{root}/tmp";
    enable_test_patterns = true;
    dns {{ nameserver = ["{nameserver}"]; timeout = 1s; retransmits = 1; }}
}}
modules {{ path = "$PLUGINSDIR"; }}
logging {{
    type = "file";
    filename = "{root}/rspamd.log";
    level = "info";
}}
worker "normal" {{
    bind_socket = "127.0.0.1:{normal}";
    mime = true;
    count = 1;
}}
worker "controller" {{
    bind_socket = "127.0.0.1:{controller}";
    count = 1;
    password = "{password}";
    secure_ip = "192.0.2.255";
}}
{redis}
"""


def rspamd_available() -> bool:
    return shutil.which("rspamd") is not None


class Rspamd:
    def __init__(self, root: Path, nameserver: str, *, redis: bool = True,
                 password: str = PASSWORD):
        self.root = Path(root) / "rspamd"
        self.nameserver = nameserver
        self.password = password
        self.use_redis = redis and shutil.which("redis-server") is not None
        self.normal_port, self.controller_port, self.redis_port = free_ports(3)
        self.procs: list[subprocess.Popen] = []
        self.started_in = 0.0  # seconds rspamd took to answer /ping

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.normal_port}"

    @property
    def controller_url(self) -> str:
        return f"http://127.0.0.1:{self.controller_port}"

    def spam_config(self, **extra) -> dict:
        """The ``[spam]`` keys that point mailstead at this rspamd."""
        return {"rspamd_url": self.url, "rspamd_controller_url": self.controller_url,
                "rspamd_password": self.password, **extra}

    def spam_toml(self, **extra) -> str:
        """The same as a ``[spam]`` table, e.g. for ``Instance.append_config`` (an MX test
        sending GTUBE_ADD_HEADER expects it in Junk, GTUBE a 550 5.7.1)."""
        keys = "".join(f"{k} = {_toml(v)}\n" for k, v in self.spam_config(**extra).items())
        return f"[spam]\n{keys}"

    def _write_config(self) -> Path:
        for sub in ("db", "run", "tmp", "local"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "tld.dat").write_text("com\nnet\norg\ntest\nexample\n")
        redis = (f'redis {{ servers = "127.0.0.1:{self.redis_port}"; }}'
                 if self.use_redis else "")
        conf = self.root / "rspamd.conf"
        conf.write_text(_CONFIG.format(root=self.root, nameserver=self.nameserver,
                                       normal=self.normal_port, controller=self.controller_port,
                                       password=self.password, redis=redis))
        return conf

    def start(self) -> Rspamd:
        conf = self._write_config()
        if self.use_redis:
            self._spawn(["redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port),
                         "--save", "", "--appendonly", "no", "--dir", str(self.root / "db")],
                        "redis.out")
        cmd = ["rspamd", "-f", "-c", str(conf),
               f"--var=LOCAL_CONFDIR={self.root / 'local'}", f"--var=DBDIR={self.root / 'db'}",
               f"--var=RUNDIR={self.root / 'run'}", f"--var=LOGDIR={self.root}"]
        if os.geteuid() == 0:
            cmd[2:2] = ["-i", "-u", "root", "-g", "root"]  # its default user would be _rspamd
        began = time.monotonic()
        self._spawn(cmd, "rspamd.out")
        deadline = began + START_TIMEOUT
        for port in (self.normal_port, self.controller_port):
            while not self._ping(port):
                if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                    out = self.log()[-3000:]
                    self.stop()
                    raise RuntimeError(f"rspamd did not start:\n{out}")
                time.sleep(0.05)
        self.started_in = time.monotonic() - began
        return self

    def _spawn(self, cmd: list[str], out: str) -> None:
        with open(self.root / out, "wb") as f:
            self.procs.append(subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL,
                                               start_new_session=True))

    @staticmethod
    def _ping(port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        for proc in reversed(self.procs):  # rspamd before Redis
            if proc.poll() is None:
                # The main process stops its workers on SIGTERM; the session group catches
                # a worker left behind.
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
        self.procs = []

    def log(self) -> str:
        out = ""
        for name in ("rspamd.out", "rspamd.log"):
            path = self.root / name
            if path.exists():
                out += path.read_text(errors="replace")
        return out

    def __enter__(self) -> Rspamd:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
