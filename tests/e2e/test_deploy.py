"""The deployment (ansible/, Vagrantfile), checked by the tools that run it.

Lint and syntax first, then the systemd units, then the real thing: the playbook applied
to a Debian 12 root made by debootstrap, through Ansible's chroot connection, twice (the
second run must change nothing). Nothing is started inside the root: systemd does not run
there, and its network would be this machine's.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import time

import pytest

from tests.conftest import IN_CI, require_tool
from tests.support import deploy

pytestmark = pytest.mark.e2e

VARIABLES = {
    "mailstead_domain": "example.test",
    "mailstead_hostname": "mail.example.test",
    "mailstead_admin_email": "admin@example.test",
    "mailstead_acme_enabled": False,
    "mailstead_public_ipv4": "203.0.113.7",
    "mailstead_public_ipv6": "2001:db8::7",
}


def _require_root() -> None:
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("debootstrap and chroot need root")
        pytest.skip("debootstrap and chroot need root")


def test_playbook_syntax():
    require_tool("ansible-playbook")
    result = subprocess.run(
        ["ansible-playbook", "--syntax-check", "-i", "inventory.example.ini", "site.yml"],
        cwd=deploy.ANSIBLE_DIR, env=deploy.ansible_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ansible_lint_production_profile():
    require_tool("ansible-lint")
    # settings (profile: production) in ansible/.ansible-lint
    result = subprocess.run(["ansible-lint", "--offline", "--nocolor"], cwd=deploy.ANSIBLE_DIR,
                            env=deploy.ansible_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Passed with production profile" in result.stdout + result.stderr


@pytest.mark.parametrize("template, unit", [
    ("mailstead.service.j2", "mailstead.service"),
    ("mailstead-firewall.service.j2", "mailstead-firewall.service"),
])
def test_systemd_unit_verifies(tmp_path, template, unit):
    require_tool("ansible")
    require_tool("systemd-analyze")
    # verify insists that ExecStart= binaries exist: stand-ins for the venv and nft
    stub = tmp_path / "venv" / "bin" / "mailstead"
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    (tmp_path / "data").mkdir()
    rendered = deploy.render_template(template, tmp_path / unit, {
        "mailstead_venv": str(tmp_path / "venv"),
        "mailstead_data_dir": str(tmp_path / "data"),
        "mailstead_nft": str(stub),
    })
    result = subprocess.run(["systemd-analyze", "verify", rendered.name], cwd=tmp_path,
                            capture_output=True, text=True)
    # verify exits 0 on unknown keys and bad values, with a warning: none is allowed
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if unit in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_mailstead_unit_hardening(tmp_path):
    require_tool("ansible")
    text = deploy.render_template("mailstead.service.j2", tmp_path / "mailstead.service",
                                  {}).read_text()
    for line in ("User=mailstead", "AmbientCapabilities=CAP_NET_BIND_SERVICE",
                 "CapabilityBoundingSet=CAP_NET_BIND_SERVICE", "NoNewPrivileges=true",
                 "ProtectSystem=strict", "PrivateTmp=true", "ReadWritePaths=/var/lib/mailstead",
                 "LogsDirectory=mailstead", "Restart=on-failure",
                 "ExecStart=/opt/mailstead/venv/bin/mailstead -c /etc/mailstead/mailstead.toml run",
                 "WantedBy=multi-user.target"):
        assert line in text.splitlines(), line
    assert [ln for ln in text.splitlines() if ln.startswith("ReadWritePaths=")] == [
        "ReadWritePaths=/var/lib/mailstead"]


@pytest.mark.parametrize("ipv4, ipv6, scope, expected", [
    ("198.51.100.4", "2001:db8::4", "global", ("198.51.100.4", "2001:db8::4")),
    ("10.0.2.15", "fe80::1", "link", ("", "")),        # a VM behind NAT (Vagrant)
    ("172.20.1.1", "fd00::1", "global", ("", "")),     # private v4, unique-local v6
    ("100.70.0.1", "", "", ("", "")),                  # carrier-grade NAT
])
def test_public_addresses_default_from_facts(tmp_path, ipv4, ipv6, scope, expected):
    """[server] public_ipv4/6 come from the default route's addresses only when they are
    public ones; DNS must never be told to point at a private address."""
    require_tool("ansible")
    facts = {"default_ipv4": {"address": ipv4}, "default_ipv6": {"address": ipv6, "scope": scope}}
    text = deploy.render_template("mailstead.toml.j2", tmp_path / "mailstead.toml",
                                  {"ansible_facts": facts}).read_text()
    assert f'public_ipv4 = "{expected[0]}"' in text.splitlines()
    assert f'public_ipv6 = "{expected[1]}"' in text.splitlines()


def test_vagrantfile(tmp_path):
    require_tool("ruby")
    vagrantfile = deploy.REPO / "Vagrantfile"
    result = subprocess.run(["ruby", "-c", str(vagrantfile)], capture_output=True, text=True)
    assert result.returncode == 0 and "Syntax OK" in result.stdout, result.stderr
    if not shutil.which("vagrant"):
        return  # not packaged everywhere (Ubuntu 24.04 has none); ruby -c is the check then
    # validate loads the config (provisioner, forwarded ports) without a provider; in a
    # copy, since vagrant writes .vagrant/ next to the Vagrantfile
    shutil.copy(vagrantfile, tmp_path / "Vagrantfile")
    env = {**os.environ, "VAGRANT_HOME": str(tmp_path / "vagrant.d"),
           "VAGRANT_CHECKPOINT_DISABLE": "1"}
    result = subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the playbook, applied for real ---


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A debootstrapped Debian 12 root after one run of site.yml; yields (root, inventory,
    first run's output)."""
    _require_root()
    for tool in ("debootstrap", "ansible-playbook", "chroot"):
        require_tool(tool)
    work = tmp_path_factory.mktemp("deploy")
    started = time.monotonic()
    wheel = deploy.build_wheel(work / "dist")
    root = deploy.make_root(work / "root")
    prepared = time.monotonic()
    try:
        inventory = deploy.write_inventory(work / "inventory.json", root,
                                           {**VARIABLES, "mailstead_wheel": str(wheel)})
        first = deploy.run_playbook(inventory)
        deploy.save_caches(root)
        print(f"\nroot ready in {prepared - started:.0f}s, "
              f"first run {time.monotonic() - prepared:.0f}s")
        assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-3000:]
        yield root, inventory, first.stdout
    finally:
        deploy.remove_root(root)
        assert not deploy.mounts_below(work)


@pytest.mark.timeout(1200)
def test_first_run_sets_up_everything(deployed):
    _, _, output = deployed
    counts = deploy.recap(output)
    assert counts["failed"] == 0 and counts["unreachable"] == 0
    # the generated admin password is shown once, and the DNS records at the end
    assert "admin login: admin@example.test" in output
    assert "DNS records to publish for example.test:" in output
    assert re.search(r"mail\.example\.test\s+A\s+203\.0\.113\.7", output)
    assert re.search(r"mail\.example\.test\s+AAAA\s+2001:db8::7", output)


@pytest.mark.timeout(300)
def test_config_check_passes_in_the_root(deployed):
    root, _, _ = deployed
    for argv in (["/opt/mailstead/venv/bin/mailstead", "-c", "/etc/mailstead/mailstead.toml",
                  "config", "check"],
                 ["runuser", "-u", "mailstead", "--", "/opt/mailstead/venv/bin/mailstead", "-c",
                  "/etc/mailstead/mailstead.toml", "config", "check"]):
        result = deploy.in_root(root, *argv)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "/etc/mailstead/mailstead.toml: ok" in result.stdout
        assert "mx           *:25" in result.stdout
    users = deploy.in_root(root, "runuser", "-u", "mailstead", "--",
                           "/opt/mailstead/venv/bin/mailstead", "-c",
                           "/etc/mailstead/mailstead.toml", "user", "list")
    assert users.stdout.split()[0] == "admin@example.test" and "admin" in users.stdout.split()


def _owner(root, path):
    st = (root / path.lstrip("/")).stat()
    passwd = deploy.in_root(root, "getent", "passwd", str(st.st_uid)).stdout.split(":")[0]
    group = deploy.in_root(root, "getent", "group", str(st.st_gid)).stdout.split(":")[0]
    return passwd, group, stat.S_IMODE(st.st_mode)


@pytest.mark.timeout(300)
def test_files_users_and_modes(deployed):
    root, _, _ = deployed
    account = deploy.in_root(root, "getent", "passwd", "mailstead").stdout.strip().split(":")
    assert account[5:] == ["/var/lib/mailstead", "/usr/sbin/nologin"]
    assert int(account[2]) < 1000  # a system user
    assert _owner(root, "/etc/mailstead") == ("root", "mailstead", 0o750)
    assert _owner(root, "/etc/mailstead/mailstead.toml") == ("root", "mailstead", 0o640)
    assert _owner(root, "/var/lib/mailstead") == ("mailstead", "mailstead", 0o700)
    assert _owner(root, "/var/lib/mailstead/accounts.sqlite3")[0] == "mailstead"
    assert _owner(root, "/var/log/mailstead") == ("mailstead", "mailstead", 0o750)
    assert _owner(root, "/root/mailstead-admin-password") == ("root", "root", 0o600)
    assert _owner(root, "/opt/mailstead/venv/bin/mailstead")[0] == "root"
    # one config: init's copy in the data dir is gone
    assert not (root / "var/lib/mailstead/mailstead.toml").exists()

    config = (root / "etc/mailstead/mailstead.toml").read_text()
    for line in ('hostname = "mail.example.test"', 'data_dir = "/var/lib/mailstead"',
                 'public_ipv4 = "203.0.113.7"', 'public_ipv6 = "2001:db8::7"',
                 "enabled = false", 'email = "admin@example.test"',
                 'fail2ban_log = "/var/log/mailstead/auth.log"', 'mx = "*:25"'):
        assert line in config.splitlines(), line

    unit = (root / "etc/systemd/system/mailstead.service").read_text()
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in unit
    assert _owner(root, "/etc/systemd/system/mailstead.service") == ("root", "root", 0o644)
    # enabled offline: the wants links exist
    wants = root / "etc/systemd/system"
    assert (wants / "multi-user.target.wants/mailstead.service").is_symlink()
    assert (wants / "sysinit.target.wants/mailstead-firewall.service").is_symlink()

    journald = (root / "etc/systemd/journald.conf.d/mailstead.conf").read_text()
    assert "SystemMaxUse=1G" in journald and "Storage=persistent" in journald
    # no MTA came in with the packages (logrotate's recommended mailx would bring exim4)
    assert not (root / "etc/init.d/exim4").exists()


@pytest.mark.timeout(300)
def test_logrotate_and_firewall_rules_parse(deployed):
    root, _, _ = deployed
    # a dry run of the logrotate config, with a log file to rotate
    log = root / "var/log/mailstead/auth.log"
    log.write_text("x\n")
    try:
        result = deploy.in_root(root, "logrotate", "--debug", "--force",
                                "/etc/logrotate.d/mailstead")
    finally:
        log.unlink()
    assert result.returncode == 0, result.stderr
    assert "rotating pattern: /var/log/mailstead/*.log" in result.stderr
    assert "error" not in result.stderr.lower(), result.stderr

    rules = (root / "etc/mailstead/firewall.nft").read_text()
    assert "table inet mailstead" in rules and "flush ruleset" not in rules
    assert 'tcp dport { 25, 80, 110, 143, 443, 465, 587, 993, 995 } accept' in rules
    assert "tcp dport 22 accept" in rules
    # `nft -c` only checks (against the kernel); skip where nftables is not available
    check = deploy.in_root(root, "nft", "-c", "-f", "/etc/mailstead/firewall.nft")
    if check.returncode != 0 and ("Operation not permitted" in check.stderr
                                  or "No such file or directory" in check.stderr
                                  or "Protocol not supported" in check.stderr):
        pytest.skip(f"nft -c needs nftables in the kernel: {check.stderr.strip()}")
    assert check.returncode == 0, check.stderr


@pytest.mark.timeout(600)
def test_second_run_changes_nothing(deployed):
    root, inventory, _ = deployed
    started = time.monotonic()
    second = deploy.run_playbook(inventory)
    print(f"\nsecond run {time.monotonic() - started:.0f}s")
    assert second.returncode == 0, second.stdout[-6000:] + second.stderr[-3000:]
    counts = deploy.recap(second.stdout)
    assert counts["changed"] == 0, deploy.changed_tasks(second.stdout)
    assert "admin login:" not in second.stdout  # the password was shown once
    assert "DNS records to publish for example.test:" in second.stdout


@pytest.mark.timeout(600)
def test_ufw_host_gets_ufw_rules(deployed):
    """On a host that has ufw, the ports are opened there and mailstead's own nftables table is
    turned off (its drop policy would overrule ufw); again idempotent."""
    root, inventory, _ = deployed
    install = deploy.in_root(root, "apt-get", "install", "-y", "-q", "--no-install-recommends",
                             "ufw", env_extra={"DEBIAN_FRONTEND": "noninteractive"})
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr
    deploy.save_caches(root)
    first = deploy.run_playbook(inventory)
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-3000:]
    assert set(deploy.changed_tasks(first.stdout)) == {
        "mailstead : Open the ports with ufw", "mailstead : Turn mailstead's nftables table off"}
    added = deploy.in_root(root, "ufw", "show", "added").stdout
    for port in (25, 80, 110, 143, 443, 465, 587, 993, 995):
        assert f"ufw allow {port}/tcp comment 'mailstead'" in added
    assert not (root / "etc/systemd/system/sysinit.target.wants/mailstead-firewall.service"
                ).exists()
    again = deploy.run_playbook(inventory)
    assert deploy.recap(again.stdout)["changed"] == 0, deploy.changed_tasks(again.stdout)
