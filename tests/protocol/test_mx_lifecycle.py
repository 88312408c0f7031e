"""Process lifecycle: clean shutdown on SIGTERM, reload on SIGHUP, no half-configured start."""

from __future__ import annotations

import signal
import ssl
import subprocess
import time

from cryptography import x509

from server.tlscert import make_self_signed
from tests.support.instance import MAILSTEAD
from tests.support.rawsmtp import RawSMTP

MSG = b"From: bob@remote.test\r\nSubject: lifecycle\r\n\r\nbody\r\n"


def test_sigterm_closes_idle_connections_with_421_and_exits_0(fresh):
    fresh.start()
    with RawSMTP(fresh.mx_port) as c:
        c.reply()
        c.cmd("EHLO client.remote.test")
        fresh.signal(signal.SIGTERM)
        code, text = c.reply()
        assert (code, text[0][:5]) == (421, "4.3.2")
        assert c.closed()
    assert fresh.wait(10) == 0
    assert "stopped" in fresh.log()


def test_sigterm_lets_a_transaction_in_progress_finish(fresh):
    fresh.add_user("late@example.test")
    fresh.start()
    with RawSMTP(fresh.mx_port) as c:
        c.reply()
        c.cmd("EHLO client.remote.test")
        c.cmd("MAIL FROM:<bob@remote.test>")
        c.cmd("RCPT TO:<late@example.test>")
        assert c.cmd("DATA")[0] == 354
        c.send(MSG[:20])
        fresh.signal(signal.SIGTERM)
        time.sleep(0.5)
        assert fresh.proc.poll() is None  # waiting for us
        # New connections are no longer accepted.
        try:
            RawSMTP(fresh.mx_port, timeout=1).close()
            accepted = True
        except OSError:
            accepted = False
        assert not accepted
        c.send(MSG[20:] + b".\r\n")
        code, _ = c.reply()
        assert code == 250
        code, text = c.reply()  # then it says goodbye
        assert (code, text[0][:5]) == (421, "4.3.2")
    assert fresh.wait(10) == 0
    assert len(fresh.messages("late@example.test")) == 1


def test_sighup_reloads_config(fresh):
    fresh.append_config("[smtp]\nmax_message_size = 20000")
    fresh.start()
    with RawSMTP(fresh.mx_port) as c:
        c.reply()
        assert "SIZE 20000" in c.cmd("EHLO a.remote.test")[1]
    text = fresh.config_path.read_text().replace("max_message_size = 20000",
                                                 "max_message_size = 30000")
    fresh.config_path.write_text(text)
    fresh.signal(signal.SIGHUP)
    fresh.wait_for_log("reloaded")
    with RawSMTP(fresh.mx_port) as c:
        c.reply()
        assert "SIZE 30000" in c.cmd("EHLO a.remote.test")[1]

    # A broken config is refused and the running one kept.
    fresh.config_path.write_text(text.replace("max_message_size = 30000",
                                              "max_message_size = -1"))
    fresh.signal(signal.SIGHUP)
    log = fresh.wait_for_log("reload refused")
    assert "[smtp] max_message_size: must be at least 1024" in log
    with RawSMTP(fresh.mx_port) as c:
        c.reply()
        assert "SIZE 30000" in c.cmd("EHLO a.remote.test")[1]


def _peer_cert(port: int) -> x509.Certificate:
    with RawSMTP(port) as c:
        c.reply()
        c.cmd("EHLO a.remote.test")
        c.cmd("STARTTLS")
        ctx = ssl._create_unverified_context()
        c.starttls(ctx)
        return x509.load_der_x509_certificate(c.sock.getpeercert(binary_form=True))


def test_sighup_reloads_certificate_without_dropping_connections(fresh):
    fresh.start()
    before = _peer_cert(fresh.mx_port)
    # An open TLS session from before the reload.
    old = RawSMTP(fresh.mx_port)
    old.reply()
    old.cmd("EHLO a.remote.test")
    old.cmd("STARTTLS")
    old.starttls(ssl._create_unverified_context())
    cert_dir = fresh.data_dir / "tls"
    make_self_signed("mail2.example.test", cert_dir / "cert.pem", cert_dir / "key.pem")
    fresh.signal(signal.SIGHUP)
    fresh.wait_for_log("reloaded")
    after = _peer_cert(fresh.mx_port)
    assert after.serial_number != before.serial_number
    assert "mail2.example.test" in after.subject.rfc4514_string()
    assert old.cmd("EHLO a.remote.test")[0] == 250  # still alive
    old.close()


def test_refuses_to_start_on_bad_config(fresh):
    fresh.append_config("[smtp]\nmax_recipients = 0\n[bogus]\nx = 1")
    proc = subprocess.run([*MAILSTEAD, "-c", str(fresh.config_path), "run"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "[smtp] max_recipients: must be between 1 and 10000, got 0" in proc.stderr
    assert "[bogus]: unknown section" in proc.stderr


def test_refuses_to_start_when_port_taken(fresh):
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", fresh.mx_port))
        s.listen()
        proc = subprocess.run([*MAILSTEAD, "-c", str(fresh.config_path), "run"],
                              capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert f"[listen] mx: cannot listen on 127.0.0.1:{fresh.mx_port}" in proc.stderr


def test_refuses_to_start_without_certificate(fresh):
    (fresh.data_dir / "tls" / "key.pem").unlink()
    proc = subprocess.run([*MAILSTEAD, "-c", str(fresh.config_path), "run"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "[tls] cert_file/key_file: cannot load" in proc.stderr


def test_sighup_with_mismatched_certificate_keeps_serving_the_old_one(fresh, tmp_path):
    fresh.start()
    before = _peer_cert(fresh.mx_port)
    # A new certificate without its new key: what a reload mid-renewal would see.
    other = tmp_path / "other"
    other.mkdir()
    make_self_signed("mail3.example.test", other / "cert.pem", other / "key.pem")
    (fresh.data_dir / "tls" / "cert.pem").write_bytes((other / "cert.pem").read_bytes())
    fresh.signal(signal.SIGHUP)
    log = fresh.wait_for_log("reloaded")
    assert "cannot load certificate" in log
    after = _peer_cert(fresh.mx_port)  # handshakes still work, with the old certificate
    assert after.serial_number == before.serial_number


def test_sighup_applies_account_settings(fresh):
    fresh.add_user("tagged@example.test")
    fresh.start()
    msg = b"Subject: tag\r\n\r\nx\r\n"
    with RawSMTP(fresh.mx_port) as c:
        c.reply()
        c.cmd("EHLO a.remote.test")
        c.cmd("MAIL FROM:<bob@remote.test>")
        assert c.cmd("RCPT TO:<tagged-news@example.test>")[0] == 550
    text = fresh.config_path.read_text()
    fresh.config_path.write_text(
        text.replace("[accounts]\n", '[accounts]\nrecipient_delimiter = "-"\n', 1))
    fresh.signal(signal.SIGHUP)
    fresh.wait_for_log("reloaded")
    assert fresh.send("tagged-news@example.test", msg, starttls=False) == {}
    assert len(fresh.messages("tagged@example.test")) == 1
