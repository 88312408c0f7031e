"""The IMAP and POP3 anchor: a private Dovecot on loopback, serving copies of the same Maildirs.

``Dovecot(root, cert, key)`` writes ``root/dovecot.conf`` and runs ``dovecot -F -c`` as a child
process (its master; stopped by that PID, which takes its children along). Its own
``base_dir`` and ``instance_name``, so it coexists with a system Dovecot; IMAPS and POP3S on
loopback ports only (the plaintext listeners are off), with the certificate and key mailstead
serves, so both pay for the same TLS. Users are a ``passwd-file`` in ``root`` (PLAIN
passwords: the anchor's logins cost nothing; mailstead's argon2 is set to the tests' 1 MiB /
1 pass). Mail processes run as uid/gid 5000 (no passwd entry needed); ``add_user`` links the
Maildir into ``root/home/<user>/Maildir`` and hands the directories to that uid.

Everything else is Dovecot 2.3's defaults, in particular ``mail_fsync = optimized`` (fsync
after writing mail and the uidlist, not after index updates), the high-security login
model (one ``imap-login`` process per connection, which with TLS stays as the connection's
proxy: two processes per session), and index files in the Maildir. Only the limits that
would refuse the benchmark's own connections are raised (process limits, connections per
user and IP).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from bench import maildata, procs

UID = GID = 5000
PASSWORD = "bench password"

CONFIG = """\
instance_name = mailstead-bench-{tag}
base_dir = {root}/run
state_dir = {root}/state
listen = 127.0.0.1
protocols = imap pop3
log_path = {root}/dovecot.log
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
first_valid_uid = {uid}
mail_max_userip_connections = 5000
pop3_uidl_format = %08Xu%08Xv
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {root}/passwd
}}
service imap-login {{
  process_limit = 3000
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = 0
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {pop3s}
    ssl = yes
  }}
}}
service imap {{
  process_limit = 3000
}}
"""


def available() -> str | None:
    """Why Dovecot cannot run here, or None."""
    if shutil.which("dovecot") is None:
        return "dovecot is not installed (Debian: dovecot-imapd dovecot-pop3d)"
    if os.geteuid() != 0:
        return "a private Dovecot must be started as root"
    return None


class Dovecot:
    password = PASSWORD

    def __init__(self, root: Path, cert: Path, key: Path):
        self.root = Path(root)
        self.cert, self.key = cert, key
        self.imaps, self.pop3s = procs.free_ports(2)
        self.proc: subprocess.Popen | None = None
        self.users: list[str] = []
        for sub in ("run", "state", "home"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # Mail processes (uid 5000) and login processes (dovenull) must reach their files.
        for directory in (self.root, *self.root.parents):
            if directory == Path("/"):
                break
            mode = directory.stat().st_mode
            if not mode & 0o001:
                os.chmod(directory, (mode & 0o7777) | 0o711)

    def add_user(self, user: str, template: Path) -> Path:
        home = self.root / "home" / user
        home.mkdir(parents=True, exist_ok=True)
        os.chown(home, UID, GID)
        maildata.copy_tree(template, home / "Maildir", UID, GID)
        self.users.append(user)
        return home / "Maildir"

    def start(self) -> Dovecot:
        passwd = self.root / "passwd"
        passwd.write_text("".join(f"{u}:{{PLAIN}}{PASSWORD}:{UID}:{GID}::"
                                  f"{self.root / 'home' / u}::\n" for u in self.users))
        conf = self.root / "dovecot.conf"
        conf.write_text(CONFIG.format(tag=os.getpid(), root=self.root, cert=self.cert,
                                      key=self.key, uid=UID, imaps=self.imaps,
                                      pop3s=self.pop3s))
        procs.raise_fd_limit()
        self.proc = subprocess.Popen(["dovecot", "-F", "-c", str(conf)],
                                     stdout=open(self.root / "stdout.log", "wb"),  # noqa: SIM115
                                     stderr=subprocess.STDOUT)
        try:
            procs.wait_port(self.imaps, proc=self.proc)
            procs.wait_port(self.pop3s, proc=self.proc)
        except RuntimeError as err:
            raise RuntimeError(f"{err}\n{self.log()}") from None
        return self

    def stop(self) -> None:
        procs.stop(self.proc)

    def log(self) -> str:
        out = []
        for name in ("stdout.log", "dovecot.log"):
            try:
                out.append((self.root / name).read_text(errors="replace")[-3000:])
            except FileNotFoundError:
                pass
        return "\n".join(out)

    def memory(self) -> dict[str, int]:
        """The master and everything it started: login, imap/pop3, auth, config, log, anvil."""
        return procs.memory(procs.tree(self.proc.pid))

    def __enter__(self) -> Dovecot:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
