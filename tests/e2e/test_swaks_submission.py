"""swaks as the mail app: AUTH on both submission ports, and the refusals a user would hit."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import require_tool
from tests.support.instance import PASSWORD

pytestmark = pytest.mark.e2e


def swaks(inst, *args: str) -> subprocess.CompletedProcess:
    cert = inst.data_dir / "tls" / "cert.pem"
    return subprocess.run(
        [require_tool("swaks"), "--server", "127.0.0.1", "--tls-verify", "--tls-ca-path",
         str(cert), "--tls-sni", "mail.example.test", "--helo", "laptop.example.test", *args],
        capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def users(mx):
    mx.add_user("sue@example.test")
    mx.add_user("tom@example.test")
    return mx


@pytest.mark.parametrize(("port_kind", "tls", "mech"), [
    ("submission", "--tls", "PLAIN"), ("submission", "--tls", "LOGIN"),
    ("submissions", "--tlsc", "PLAIN"), ("submissions", "--tlsc", "LOGIN"),
])
def test_swaks_sends_with_auth(users, port_kind, tls, mech):
    inst = users
    before = len(inst.messages("tom@example.test"))
    port = inst.submission_port if port_kind == "submission" else inst.submissions_port
    proc = swaks(inst, "--port", str(port), tls, "--auth", mech, "--auth-user",
                 "sue@example.test", "--auth-password", PASSWORD, "--from", "sue@example.test",
                 "--to", "tom@example.test", "--header", f"Subject: via {port_kind} {mech}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "235 2.7.0 Authentication successful" in proc.stdout
    stored = inst.messages("tom@example.test")
    assert len(stored) == before + 1
    [mine] = [m for m in stored if f"Subject: via {port_kind} {mech}\r\n".encode() in m]
    assert b"DKIM-Signature: v=1; a=rsa-sha256" in mine
    assert PASSWORD not in inst.log()


def test_swaks_wrong_password(users):
    proc = swaks(users, "--port", str(users.submissions_port), "--tlsc", "--auth", "PLAIN",
                 "--auth-user", "sue@example.test", "--auth-password", "wrong password",
                 "--from", "sue@example.test", "--to", "tom@example.test")
    assert proc.returncode == 28  # swaks: authentication failed
    assert "535 5.7.8" in proc.stdout


def test_swaks_spoofed_sender(users):
    proc = swaks(users, "--port", str(users.submission_port), "--tls", "--auth", "PLAIN",
                 "--auth-user", "sue@example.test", "--auth-password", PASSWORD,
                 "--from", "tom@example.test", "--to", "tom@example.test")
    assert proc.returncode != 0
    assert "553 5.7.1" in proc.stdout


def test_swaks_auth_before_starttls_refused(users):
    proc = subprocess.run(
        [require_tool("swaks"), "--server", "127.0.0.1", "--port", str(users.submission_port),
         "--auth", "PLAIN", "--auth-user", "sue@example.test", "--auth-password", PASSWORD,
         "--from", "sue@example.test", "--to", "tom@example.test"],
        capture_output=True, text=True, timeout=60)
    # AUTH is not even offered in the clear, so swaks gives up before sending a password.
    assert proc.returncode == 28, proc.stdout
    assert "Host did not advertise authentication" in proc.stderr + proc.stdout
