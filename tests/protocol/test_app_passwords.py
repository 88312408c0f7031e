"""App passwords over the mail protocols: one logs in over IMAP, POP3 and submission like the
mailbox password, and stops working once revoked. Made through the account store while the
server runs in its own process, as the admin panel will."""

from __future__ import annotations

import imaplib
import poplib
import smtplib

import pytest

from tests.support.imap import client
from tests.support.instance import PASSWORD

USER = "ada@example.test"


@pytest.fixture(scope="module")
def app_password(mx):
    mx.add_user(USER)
    store = mx.accounts
    try:
        app_id, password = store.add_app_password(USER, "phone")
    finally:
        store.close()
    return app_id, password


def imap_login(mx, password: str) -> None:
    c = client(mx)
    try:
        c.login(USER, password)
        assert c.select("INBOX")[0] == "OK"
    finally:
        c.shutdown()


def pop_login(mx, password: str) -> None:
    p = poplib.POP3_SSL("127.0.0.1", mx.ports["pop3s"], context=mx.tls_context(), timeout=15)
    try:
        p.user(USER)
        p.pass_(password)
        assert p.stat() == (0, 0)
        p.quit()
    finally:
        p.close()


def submission_login(mx, password: str) -> None:
    with smtplib.SMTP("127.0.0.1", mx.submission_port, timeout=30) as s:
        s.starttls(context=mx.tls_context())
        s.login(USER, password)


LOGINS = [imap_login, pop_login, submission_login]


@pytest.mark.parametrize("login", LOGINS)
def test_app_password_logs_in(mx, app_password, login):
    login(mx, app_password[1])


@pytest.mark.parametrize("login", LOGINS)
def test_password_still_logs_in(mx, app_password, login):
    login(mx, PASSWORD)


def test_revoked_app_password_refused_everywhere(mx, app_password):
    # Last in the module: its failures slow later logins from 127.0.0.1 (authlimit).
    app_id, password = app_password
    store = mx.accounts
    try:
        store.revoke_app_password(USER, app_id)
    finally:
        store.close()
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        imap_login(mx, password)
    with pytest.raises(poplib.error_proto):
        pop_login(mx, password)
    with pytest.raises(smtplib.SMTPAuthenticationError):
        submission_login(mx, password)
    imap_login(mx, PASSWORD)
