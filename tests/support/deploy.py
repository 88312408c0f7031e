"""Helpers for the deployment tests: a Debian root to apply ansible/site.yml to.

The root comes from ``debootstrap --variant=minbase`` (plus python3, which Ansible needs on
the target, as on any real host). Making it takes a minute or two, so the finished root is
kept as a tarball in the cache directory (``$MAILSTEAD_TEST_CACHE``, default
``~/.cache/mailstead-tests``) and unpacked for each run in seconds. The .debs apt downloads
and pip's wheel cache are carried between runs the same way: copied into the root before a
run and back out after it, so no bind mounts are needed (and none can be left behind).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
ROLE_DIR = ANSIBLE_DIR / "roles" / "mailstead"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Bump to rebuild every cached root (e.g. after changing what goes into it).
ROOT_VERSION = 1


def cache_dir() -> Path:
    path = Path(os.environ.get("MAILSTEAD_TEST_CACHE")
                or Path.home() / ".cache" / "mailstead-tests")
    path.mkdir(parents=True, exist_ok=True)
    return path


def debian_mirror() -> str:
    """The Debian archive this machine's apt uses (it is known to be reachable from here)."""
    if os.environ.get("MAILSTEAD_DEBIAN_MIRROR"):
        return os.environ["MAILSTEAD_DEBIAN_MIRROR"]
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        if not path.name.endswith((".list", ".sources")) or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        # one-line format: deb [opts] URI SUITE ...; deb822: URIs: URI
        uris = re.findall(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+\S+", text, re.MULTILINE)
        uris += re.findall(r"^URIs:\s*(\S+)", text, re.MULTILINE)
        for uri in uris:
            if uri.startswith(("http://", "https://")) and uri.rstrip("/").endswith("/debian"):
                return uri.rstrip("/")
    return DEFAULT_MIRROR


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def base_root_tarball() -> Path:
    """A tarball of a fresh minbase bookworm root with python3; made once, then cached."""
    cache = cache_dir()
    tarball = cache / f"{SUITE}-minbase-python3-v{ROOT_VERSION}.tar"
    with _locked(cache / ".root.lock"):
        if tarball.exists():
            return tarball
        with tempfile.TemporaryDirectory(dir=cache, prefix="debootstrap.") as tmp:
            root = Path(tmp) / "root"
            subprocess.run(
                ["debootstrap", "--variant=minbase", "--include=python3", SUITE, str(root),
                 debian_mirror()],
                check=True, capture_output=True, text=True)
            # the base system's .debs: not needed again
            for deb in (root / "var/cache/apt/archives").glob("*.deb"):
                deb.unlink()
            part = Path(f"{tarball}.part")
            subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(part), "."],
                           check=True)
            part.replace(tarball)
        return tarball


def mounts_below(root: Path) -> list[str]:
    prefix = str(root.resolve()).rstrip("/") + "/"
    with open("/proc/self/mounts") as fh:
        points = [line.split()[1].replace("\\040", " ") for line in fh]
    return [p for p in points if (p + "/").startswith(prefix)]


def remove_root(root: Path) -> None:
    """Delete a root, unmounting anything a package script may have mounted in it first."""
    for point in sorted(mounts_below(root), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False)
    shutil.rmtree(root, ignore_errors=True)


def make_root(dest: Path) -> Path:
    """Unpack the cached base root into ``dest``, ready for a first playbook run."""
    dest.mkdir(parents=True)
    subprocess.run(["tar", "--numeric-owner", "-C", str(dest), "-xpf",
                    str(base_root_tarball())], check=True)
    # Trust what this machine trusts (a TLS-inspecting proxy's CA, say): the playbook's
    # ca-certificates install picks up /usr/local/share/ca-certificates.
    local_cas = dest / "usr/local/share/ca-certificates"
    local_cas.mkdir(parents=True, exist_ok=True)
    for crt in Path("/usr/local/share/ca-certificates").glob("*.crt"):
        shutil.copy2(crt, local_cas / crt.name)
    _copy_tree(cache_dir() / "apt-archives", dest / "var/cache/apt/archives", "*.deb")
    _copy_tree(cache_dir() / "pip", dest / "root/.cache/pip")
    return dest


def save_caches(root: Path) -> None:
    """Keep what a run downloaded for the next run."""
    _copy_tree(root / "var/cache/apt/archives", cache_dir() / "apt-archives", "*.deb")
    _copy_tree(root / "root/.cache/pip", cache_dir() / "pip")


def _copy_tree(src: Path, dst: Path, pattern: str | None = None) -> None:
    if not src.is_dir():
        return
    dst.mkdir(parents=True, exist_ok=True)
    if pattern:
        for path in src.glob(pattern):
            if not (dst / path.name).exists():
                shutil.copy2(path, dst / path.name)
    else:
        shutil.copytree(src, dst, dirs_exist_ok=True)


def build_wheel(out_dir: Path) -> Path:
    """A wheel of this checkout, built from the same packed source the role would ship
    (so no build/ or *.egg-info appears in the checkout)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = out_dir / "mailstead-src.tar.gz"
    subprocess.run([sys.executable, str(ROLE_DIR / "files" / "pack_source.py"), str(REPO),
                    str(archive), "pyproject.toml", "README.md", "LICENSE", "server", "admin",
                    "maildir"], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--wheel-dir", str(out_dir), str(archive)],
                   check=True, capture_output=True, text=True)
    (wheel,) = out_dir.glob("mailstead-*.whl")
    return wheel


def _http_only(value: str) -> str:
    return " ".join(v for v in value.split() if v.startswith(("http://", "https://")))


def ansible_env() -> dict[str, str]:
    """The environment for ansible-playbook. The chroot connection hands it to the commands
    it runs in the root, pip included: package indexes configured here pass through when
    they are http(s) (a file:// index or find-links directory exists only on this machine)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "ANSIBLE_"))}
    pip_conf = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                              capture_output=True, text=True).stdout
    settings = dict(re.findall(r"^[\w.]+\.([\w-]+)='(.*)'$", pip_conf, re.MULTILINE))
    for key, var in (("index-url", "PIP_INDEX_URL"), ("extra-index-url", "PIP_EXTRA_INDEX_URL"),
                     ("find-links", "PIP_FIND_LINKS")):
        value = _http_only(os.environ.get(var) or settings.get(key, ""))
        if value:
            env[var] = value
    env.update(ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_RETRY_FILES_ENABLED="0", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def write_inventory(path: Path, root: Path, variables: dict) -> Path:
    """An inventory with the root as the one host of group mailstead, reached by chroot."""
    path.write_text(json.dumps({"mailstead": {"hosts": {str(root): {
        "ansible_connection": "community.general.chroot", **variables}}}}))
    return path


def run_playbook(inventory: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ansible-playbook", "-i", str(inventory), "site.yml", *args],
                          cwd=ANSIBLE_DIR, env=ansible_env(), capture_output=True, text=True)


def recap(output: str) -> dict[str, int]:
    """The PLAY RECAP counters of the (single) host: {'ok': 33, 'changed': 0, ...}."""
    line = output[output.rindex("PLAY RECAP"):].splitlines()[1]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


def changed_tasks(output: str) -> list[str]:
    """Names of the tasks that reported a change (for a readable failure)."""
    names, current = [], ""
    for line in output.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            current = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif line.startswith("changed:") and current not in names:
            names.append(current)
    return names


def render_template(template: str, dest: Path, overrides: dict) -> Path:
    """Render one of the role's templates with its defaults (and ``overrides``) by Ansible."""
    subprocess.run(
        ["ansible", "localhost", "-c", "local", "-m", "template",
         "-a", f"src={ROLE_DIR / 'templates' / template} dest={dest}",
         "-e", f"@{ROLE_DIR / 'defaults' / 'main.yml'}",
         "-e", f"@{ROLE_DIR / 'vars' / 'main.yml'}", "-e", json.dumps(overrides)],
        cwd=ANSIBLE_DIR, env=ansible_env(), check=True, capture_output=True, text=True)
    return dest


def in_root(root: Path, *argv: str, env_extra: dict[str, str] | None = None,
            **kwargs) -> subprocess.CompletedProcess:
    """Run a command inside the root (as root), with a plain environment."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root",
           **(env_extra or {})}
    return subprocess.run(["chroot", str(root), *argv], env=env, capture_output=True,
                          text=True, **kwargs)
