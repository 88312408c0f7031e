"""A real, private Postfix on loopback acting as the remote MX for a test domain.

``PostfixPeer(root)`` writes a complete Postfix instance under ``root`` and starts it with
``postfix -c ROOT/conf start``::

    root/conf/      main.cf, master.cf, recipient_access (texthash), tls-key.pem, tls-cert.pem
    root/queue/     queue_directory (pid/, public/, private/, incoming/, ... made by Postfix)
    root/data/      data_directory (master.lock)
    root/mail/Maildir/  every accepted ``*@<domain>`` recipient, one shared Maildir
    root/maillog    Postfix's log (maillog_file, written by the postlogd service)

The instance shares nothing writable with a system Postfix: its own config, queue and data
directories, its own port on 127.0.0.1, ``syslog_name = postfix-peer`` and no ``pickup``
service. As root, ``postfix -c DIR`` needs no ``alternate_config_directories`` in
``/etc/postfix/main.cf`` (Postfix only checks that list for non-root callers of its
set-gid commands), and the system ``main.cf`` need not even exist.

What it does with mail: ``virtual(8)`` delivers every recipient in ``domain`` into the one
Maildir (``Delivered-To:`` tells the copies apart; a message to two recipients is stored
twice). Recipients in ``reject`` get ``550 5.1.1``. Nothing is relayed (``554 5.7.1 Relay
access denied``) and nothing can leave: master.cf has no ``smtp``, ``lmtp``, ``relay`` or
``local`` service at all, every outbound transport is ``error:``, DNS lookups are disabled.
STARTTLS is offered with a self-signed certificate (``cert_file``, ``CA:FALSE``, SANs
``mx.<domain>`` and ``IP:127.0.0.1``; point ``cert_file``/``key_file`` elsewhere before
``start()`` to serve another one, e.g. issued by a test CA).

What Postfix changes in a message: it prepends ``Return-Path:``, ``Delivered-To:``,
``X-Original-To:`` and its ``Received:`` header, and stores lines with LF endings
(``as_sent()`` undoes both). ``local_header_rewrite_clients`` is empty so it adds no
Message-ID/Date/From and rewrites no addresses; lines over ``line_length_limit`` (2048) would
still be split.

Needs root (the master daemon starts as root and drops to the ``postfix`` user), the
``postfix`` package (its ``postfix`` user and ``postdrop`` group) and ``cryptography``.
Outside ``root`` it changes one thing: the postfix user and the Maildir owner (``nobody``)
must reach ``root`` by absolute paths, so a directory above ``root`` that lacks the
other-search bit (pytest's 0700 temp directories) gets ``o+x`` -- search only, no listing --
and only inside the system temp directory (``granted`` lists them).

Processes: ``start()`` runs ``postfix -c ROOT/conf start`` (Postfix's own checks create the
queue and data directories with the right owners; ``master -w`` returns once the listener is
bound, ~0.2 s). ``stop()`` sends SIGTERM to this instance's master (pid from its own
``queue/pid/master.pid``), which terminates its children, and waits until no process started
with ``MAIL_CONFIG=ROOT/conf`` (``pids()``) is left; an ``atexit`` hook stops a peer a test
forgot. A restart keeps the port, the queue and the Maildir.

Usage as a pytest fixture::

    from tests.support.postfix import PostfixPeer, require_postfix

    @pytest.fixture
    def remote_mx(tmp_path):
        require_postfix()
        with PostfixPeer(tmp_path / "postfix", reject=["bounce@remote.test"]) as peer:
            yield peer        # peer.port, peer.messages(timeout=20), peer.restart()

``main_cf`` adds or overrides main.cf parameters (e.g. ``{"virtual_transport": "discard"}``
or process limits for a benchmark); ``reject`` may be changed before ``restart()``.
"""

from __future__ import annotations

import atexit
import datetime
import grp
import ipaddress
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from tests.support.ports import free_port

HOST = "127.0.0.1"
MAIL_OWNER = "postfix"
SETGID_GROUP = "postdrop"
# The services an inbound-only Postfix needs. Deliberately absent: smtp, relay, lmtp (no SMTP
# or LMTP client exists, so nothing can be sent anywhere), local and pipe (no local delivery),
# pickup (nothing is submitted through the maildrop).
MASTER_CF = """\
# service      type  private unpriv chroot wakeup maxproc command
{listen}       inet  n       -      n      -      -       smtpd
cleanup        unix  n       -      n      -      0       cleanup
qmgr           unix  n       -      n      300    1       qmgr
tlsmgr         unix  -       -      n      1000?  1       tlsmgr
rewrite        unix  -       -      n      -      -       trivial-rewrite
bounce         unix  -       -      n      -      0       bounce
defer          unix  -       -      n      -      0       bounce
trace          unix  -       -      n      -      0       bounce
verify         unix  -       -      n      -      1       verify
flush          unix  n       -      n      1000?  0       flush
proxymap       unix  -       -      n      -      -       proxymap
proxywrite     unix  -       -      n      -      1       proxymap
showq          unix  n       -      n      -      -       showq
error          unix  -       -      n      -      -       error
retry          unix  -       -      n      -      -       error
discard        unix  -       -      n      -      -       discard
virtual        unix  -       n      n      -      -       virtual
anvil          unix  -       -      n      -      1       anvil
scache         unix  -       -      n      -      1       scache
postlog        unix-dgram n  -      n      -      1       postlogd
"""


def postfix_unavailable_reason() -> str | None:
    """Why a PostfixPeer cannot run here, or None when it can."""
    if shutil.which("postfix") is None:
        return "postfix is not installed"
    if os.geteuid() != 0:
        return "a private Postfix instance must be started as root"
    try:
        pwd.getpwnam(MAIL_OWNER)
        grp.getgrnam(SETGID_GROUP)
    except KeyError:
        return f"the {MAIL_OWNER} user or {SETGID_GROUP} group is missing"
    return None


def postfix_available() -> bool:
    return postfix_unavailable_reason() is None


def require_postfix() -> None:
    """For tests: fails in CI (``make test`` installs Postfix), skips elsewhere, when a
    PostfixPeer cannot run here (no ``postfix`` binary, or not root)."""
    import pytest

    from tests.conftest import IN_CI, require_tool

    require_tool("postfix")
    reason = postfix_unavailable_reason()
    if reason:
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)


class PostfixPeer:
    """A private Postfix instance: the MX of ``domain`` on 127.0.0.1:``port``."""

    def __init__(self, root: Path, domain: str = "remote.test", port: int | None = None,
                 reject: Iterable[str] = (), *, hostname: str | None = None,
                 mailbox_owner: str = "nobody", main_cf: Mapping[str, str] | None = None):
        self.root = Path(os.path.abspath(root))
        self.domain = domain.lower()
        self.hostname = hostname or f"mx.{self.domain}"
        self.port = port or free_port()
        # Recipients answered with 550; rewritten on every start(), so change it and restart().
        self.reject = {addr.lower() for addr in reject}
        # Extra or overriding main.cf parameters (benchmarks: process limits and the like).
        self.main_cf = dict(main_cf or {})
        owner = pwd.getpwnam(mailbox_owner)
        self.mailbox_uid, self.mailbox_gid = owner.pw_uid, owner.pw_gid
        self.config_dir = self.root / "conf"
        self.queue_dir = self.root / "queue"
        self.data_dir = self.root / "data"
        self.mail_base = self.root / "mail"
        self.maildir = self.mail_base / "Maildir"
        self.log_path = self.root / "maillog"
        self.cert_file = self.config_dir / "tls-cert.pem"
        self.key_file = self.config_dir / "tls-key.pem"
        self.granted: list[Path] = []
        self.master_pid: int | None = None
        self._seen: set[str] = set()  # Maildir file names messages() returned

    # --- configuration ---

    def main_cf_params(self) -> dict[str, str]:
        error = "error:5.7.1 the test peer {} sends no mail".format
        params = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": MAIL_OWNER,
            "setgid_group": SETGID_GROUP,
            "syslog_name": "postfix-peer",
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.root),
            "myhostname": self.hostname,
            "mydomain": self.domain,
            "myorigin": "$myhostname",
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            # Loopback only, and no DNS: not for clients, not for (nonexistent) SMTP clients.
            "inet_interfaces": HOST,
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_peername_lookup": "no",
            "smtp_dns_support_level": "disabled",
            "lmtp_dns_support_level": "disabled",
            "disable_dns_lookups": "yes",
            # No outbound transport: anything not for `domain` fails at once, and bounces and
            # postmaster notices have nowhere to go either.
            "relayhost": "",
            "relay_domains": "",
            "transport_maps": "",
            "default_transport": error("relays"),
            "relay_transport": error("relays"),
            "local_transport": error("delivers no local"),
            "notify_classes": "",
            # Every recipient in `domain` goes to one Maildir, owned by `mailbox_owner`.
            "virtual_mailbox_domains": self.domain,
            "virtual_mailbox_base": str(self.mail_base),
            "virtual_mailbox_maps": "static:Maildir/",
            "virtual_uid_maps": f"static:{self.mailbox_uid}",
            "virtual_gid_maps": f"static:{self.mailbox_gid}",
            "virtual_minimum_uid": "1",
            # Accept `domain` from anyone (no permit_mynetworks: loopback relays nothing either).
            "smtpd_relay_restrictions": "reject_unauth_destination",
            "smtpd_recipient_restrictions":
                f"check_recipient_access texthash:{self.config_dir / 'recipient_access'}",
            "smtpd_banner": "$myhostname ESMTP Postfix (mailstead test peer)",
            "smtpd_error_sleep_time": "0s",
            "smtpd_tls_security_level": "may",
            "smtpd_tls_chain_files": f"{self.key_file}, {self.cert_file}",
            "smtpd_tls_received_header": "yes",
            "smtpd_tls_loglevel": "1",
            # Store what the client sent: no header or address rewriting, no added headers.
            "local_header_rewrite_clients": "",
            "in_flow_delay": "0s",
            "biff": "no",
        }
        params.update(self.main_cf)
        return params

    def write_config(self) -> None:
        for path in (self.root, self.config_dir, self.queue_dir):
            path.mkdir(parents=True, exist_ok=True)
            # Postfix wants its root-owned directories neither group- nor world-writable.
            os.chmod(path, 0o755)
        self.mail_base.mkdir(exist_ok=True)
        for sub in ("", "tmp", "new", "cur"):
            (self.maildir / sub).mkdir(exist_ok=True)
        for path in (self.mail_base, *(self.maildir / s for s in ("", "tmp", "new", "cur"))):
            os.chown(path, self.mailbox_uid, self.mailbox_gid)
            os.chmod(path, 0o700)
        if not self.cert_file.exists():
            self._write_certificate()
        files = {
            "recipient_access": "".join(f"{addr} 550 5.1.1 User unknown (rejected by the test "
                                        f"peer)\n" for addr in sorted(self.reject)),
            "main.cf": "".join(f"{k} = {v}\n" for k, v in self.main_cf_params().items()),
            "master.cf": MASTER_CF.format(listen=f"{HOST}:{self.port}"),
        }
        # Postfix re-reads a file modified within the last second every 300 ms until it is
        # older ("wait until the file is stable"): that costs ~2 s per start, so backdate.
        past = time.time() - 60
        for name, text in files.items():
            (self.config_dir / name).write_text(text)
            os.utime(self.config_dir / name, (past, past))
        self._grant_search()

    def _write_certificate(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.hostname)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder()
                .subject_name(name).issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName([
                    x509.DNSName(self.hostname),
                    x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        self.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def _grant_search(self) -> None:
        """Let the postfix user and the Maildir owner traverse the directories above root."""
        tmp = Path(os.path.realpath(tempfile.gettempdir()))
        for directory in reversed(self.root.parents):
            st = directory.stat()
            if st.st_mode & stat.S_IXOTH:
                continue
            real = Path(os.path.realpath(directory))
            if real == tmp or tmp not in real.parents or st.st_uid != os.geteuid():
                raise RuntimeError(
                    f"{directory} is not searchable by the postfix user; put the PostfixPeer "
                    f"root below a world-searchable directory or inside {tmp}")
            os.chmod(directory, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
            self.granted.append(directory)

    # --- process ---

    def _postfix(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(["postfix", "-c", str(self.config_dir), *args],
                              capture_output=True, text=True, timeout=timeout)

    def start(self) -> PostfixPeer:
        if self.running():
            return self
        self.write_config()
        # "start" runs Postfix's own checks (which create the queue and data directories with
        # the right owners) and `master -w`, which returns once the listener is bound.
        proc = self._postfix("start")
        if proc.returncode != 0:
            raise RuntimeError(f"postfix start failed ({proc.returncode}): "
                               f"{proc.stdout}{proc.stderr}\n{self.log()}")
        self.master_pid = self._read_master_pid()
        if self.master_pid is None:
            raise RuntimeError(f"postfix started but wrote no master.pid:\n{self.log()}")
        atexit.register(self.stop)
        return self

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM the master (it terminates its children); wait until none is left."""
        atexit.unregister(self.stop)
        pid = self.master_pid or self._read_master_pid()
        self.master_pid = None
        if pid is not None and pid in self.pids():
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.pids():
            if time.monotonic() > deadline:
                for left in self.pids():
                    os.kill(left, signal.SIGKILL)
                time.sleep(0.1)
                break
            time.sleep(0.02)
        if self.pids():
            raise RuntimeError(f"Postfix processes {self.pids()} survived stop()")

    def restart(self) -> PostfixPeer:
        self.stop()
        return self.start()

    def running(self) -> bool:
        return self.master_pid is not None and self.master_pid in self.pids()

    def pids(self) -> list[int]:
        """Live processes of this instance: everything Postfix started with our MAIL_CONFIG."""
        marker = f"MAIL_CONFIG={self.config_dir}\0".encode()
        found = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/environ", "rb") as f:
                    environ = f.read()
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    state = f.read().rpartition(b")")[2].split()[0]
            except OSError:
                continue
            if state != b"Z" and (environ.startswith(marker) or b"\0" + marker in environ):
                found.append(int(entry.name))
        return found

    def _read_master_pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None

    def __enter__(self) -> PostfixPeer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- what arrived ---

    def _files(self) -> list[Path]:
        files = [*(self.maildir / "new").iterdir(), *(self.maildir / "cur").iterdir()]
        return sorted(files, key=lambda p: _delivery_order(p.name))

    def messages(self, timeout: float = 0) -> list[bytes]:
        """Every delivered message, in delivery order, as stored (LF line ends).

        With a timeout, first waits up to that long until a message not returned by an
        earlier call has arrived (and then returns them all anyway if none did).
        """
        deadline = time.monotonic() + timeout
        files = self._files()
        while timeout and not {p.name for p in files} - self._seen \
                and time.monotonic() < deadline:
            time.sleep(0.02)
            files = self._files()
        self._seen.update(p.name for p in files)
        return [p.read_bytes() for p in files]

    def wait_for(self, predicate: Callable[[bytes], object], timeout: float = 20,
                 count: int = 1) -> list[bytes]:
        """Wait until at least ``count`` delivered messages satisfy ``predicate``; those."""
        deadline = time.monotonic() + timeout
        while True:
            matching = [m for m in self.messages() if predicate(m)]
            if len(matching) >= count:
                return matching
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(matching)} of {count} expected messages arrived at the Postfix peer "
                    f"within {timeout}s; log:\n{self.log()[-4000:]}")
            time.sleep(0.05)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, timeout: float = 10) -> str:
        """Postfix logs through postlogd, a moment after the fact: wait for ``text``."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in the Postfix peer's log:\n{log[-4000:]}")
            time.sleep(0.02)
        return log

    @staticmethod
    def as_sent(message: bytes) -> bytes:
        """A stored message without the headers this peer prepended, with CRLF line ends."""
        lines = message.split(b"\n")
        i = 0
        trace = (b"return-path:", b"delivered-to:", b"x-original-to:", b"received:")
        while i < len(lines) and lines[i].lower().startswith(trace):
            received = lines[i].lower().startswith(b"received:")
            i += 1
            while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
                i += 1
            if received:
                break  # only our own Received:; the ones the message arrived with stay
        return b"\r\n".join(lines[i:])


def _delivery_order(name: str) -> tuple[int, int, str]:
    # Postfix names Maildir files "<sec>.V<dev>I<inode>M<usec>.<host>"; usec is not padded.
    match = re.match(r"(\d+)\.\S*?M(\d+)\.", name)
    if match is None:
        return 0, 0, name
    return int(match[1]), int(match[2]), name
