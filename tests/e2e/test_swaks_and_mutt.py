"""Real tools: swaks delivers through STARTTLS; Python's mailbox and mutt read the Maildir."""

from __future__ import annotations

import mailbox
import subprocess
import time

from tests.conftest import require_tool


def test_swaks_delivers_over_starttls_byte_for_byte(mx, tmp_path):
    swaks = require_tool("swaks")
    mx.add_user("sam@example.test")
    body = (b"From: Bob <bob@remote.test>\r\nTo: Sam <sam@example.test>\r\n"
            b"Subject: swaks e2e\r\nDate: Sat, 28 Nov 2026 12:00:00 +0000\r\n"
            b"Message-ID: <swaks-e2e@remote.test>\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
            + "Grüße, ünïcödé.\r\n..a line starting with a dot\r\n.\r\nlast\r\n".encode())
    data_file = tmp_path / "message.eml"
    # swaks ends the data with CRLF "." CRLF itself, so the file has no final line end.
    data_file.write_bytes(body.replace(b"\r\n", b"\n").removesuffix(b"\n"))
    cert = mx.data_dir / "tls" / "cert.pem"
    proc = subprocess.run(
        [swaks, "--server", "127.0.0.1", "--port", str(mx.mx_port), "--tls",
         "--tls-verify", "--tls-ca-path", str(cert), "--tls-sni", "mail.example.test",
         "--helo", "client.remote.test", "--from", "bob@remote.test",
         "--to", "sam@example.test", "--data", f"@{data_file}"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "<-  220 2.0.0 Ready to start TLS" in proc.stdout
    assert "250 2.0.0 Ok: delivered as" in proc.stdout

    box = mailbox.Maildir(mx.data_dir / "mail" / "example.test" / "sam", factory=None,
                          create=False)
    [key] = box.keys()
    stored = box.get_bytes(key)
    # swaks sends the file with CRLF line ends and dot-stuffing; what is stored is exactly what
    # it meant to send, after our trace headers.
    trace, _, message = stored.partition(b"From: Bob")
    assert b"From: Bob" + message == body
    assert trace.startswith(b"Return-Path: <bob@remote.test>\r\nDelivered-To: sam@example.test\r\n"
                            b"Received: from client.remote.test ")
    assert b"with ESMTPS id" in trace
    assert box.get_message(key)["Subject"] == "swaks e2e"


def test_swaks_unknown_user_and_relay_refused(mx):
    swaks = require_tool("swaks")
    for rcpt, code in (("nobody@example.test", "550 5.1.1"), ("x@remote.test", "554 5.7.1")):
        proc = subprocess.run(
            [swaks, "--server", "127.0.0.1", "--port", str(mx.mx_port), "--tls",
             "--from", "bob@remote.test", "--to", rcpt],
            capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0
        assert f"<~* {code}" in proc.stdout


def test_mutt_reads_the_maildir(mx, tmp_path):
    mutt = require_tool("mutt")
    tmux = require_tool("tmux")
    mx.add_user("mia@example.test")
    subjects = [f"mutt check {i}" for i in range(3)]
    for subject in subjects:
        mx.send("mia@example.test",
                f"From: bob@remote.test\r\nSubject: {subject}\r\n\r\nbody {subject}\r\n".encode())
    maildir = mx.data_dir / "mail" / "example.test" / "mia"
    muttrc = tmp_path / "muttrc"
    muttrc.write_text('set mbox_type = Maildir\nset header_cache = ""\nset sort = date\n'
                      "set confirmcreate = no\nset confirmappend = no\nset quit = yes\n")
    saved = tmp_path / "saved.mbox"
    session = f"mutt{mx.mx_port}"
    # mutt needs a terminal for its index; it runs in a detached tmux session, copies every
    # message to an mbox and quits by itself.
    command = (f"{mutt} -n -F {muttrc} -f {maildir} -e 'set mbox_type=mbox' -e "
               f"'push \"<tag-pattern>~A<enter><tag-prefix><copy-message>{saved}<enter><quit>\"'")
    subprocess.run([tmux, "new-session", "-d", "-s", session, "-x", "150", "-y", "30", command],
                   check=True, timeout=30)
    deadline = time.monotonic() + 20
    screen = ""
    while time.monotonic() < deadline:
        capture = subprocess.run([tmux, "capture-pane", "-p", "-t", session],
                                 capture_output=True, text=True)
        if capture.returncode != 0:
            break  # the session ended: mutt quit
        screen = capture.stdout
        time.sleep(0.1)
    else:
        subprocess.run([tmux, "kill-session", "-t", session])
        raise AssertionError(f"mutt did not finish:\n{screen}")
    got = mailbox.mbox(saved)
    assert sorted(m["Subject"] for m in got) == subjects, f"mutt's last screen:\n{screen}"
    for message in got:
        assert message["Return-Path"] == "<bob@remote.test>"
        assert f"body {message['Subject']}" in message.get_payload()
