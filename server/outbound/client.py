"""One outbound SMTP delivery attempt for one message to one destination (a domain's MX
hosts, or the smarthost), with a result per recipient.

TLS: STARTTLS whenever offered. Unverified by default (opportunistic, RFC 3207 §4.1 and what
every MTA does, since most MX certificates would not verify); verified — certificate chain and
host name — when the domain's MTA-STS policy says enforce (RFC 8461 §4.2) and for the
smarthost, where plaintext is then refused instead of falling back.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiosmtplib

from server.outbound.conncache import ConnectionCache
from server.outbound.route import MXHost

log = logging.getLogger("mailstead.outbound")


@dataclass(frozen=True)
class Outcome:
    code: int
    text: str
    remote: str = ""  # the host that answered, for the DSN's Remote-MTA

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600

    def reply(self) -> str:
        return f"{self.code} {self.text}".strip()


@dataclass(frozen=True)
class TLSPolicy:
    required: bool  # no STARTTLS, or a failed handshake, is a failure (no plaintext)
    context: ssl.SSLContext


def tls_contexts(ca_file: str = "") -> tuple[TLSPolicy, TLSPolicy]:
    """(opportunistic, verified) policies; ``ca_file`` adds trusted CAs (tests)."""
    loose = ssl.create_default_context()
    loose.check_hostname = False
    loose.verify_mode = ssl.CERT_NONE
    strict = ssl.create_default_context()
    if ca_file:
        strict.load_verify_locations(ca_file)
    return TLSPolicy(False, loose), TLSPolicy(True, strict)


class AttemptFailed(Exception):
    """This host could not take the message; try the next one."""


class TLSFailed(AttemptFailed):
    """The STARTTLS handshake failed."""


# RFC 5321 §4.5.3.2: how long to wait for each reply. The one after the final dot gets 10
# minutes because the receiver may be scanning the message; giving up sooner means sending it
# again, a duplicate.
COMMAND_TIMEOUT = 300.0
DATA_END_TIMEOUT = 600.0


@dataclass
class Transaction:
    sender: str
    recipients: Sequence[str]
    message: bytes
    helo: str
    port: int
    connect_timeout: float
    tls: TLSPolicy
    implicit_tls: bool = False
    username: str = ""
    password: str = ""
    # Called with the results once the reply to the final dot is in, before QUIT: the queue
    # records them durably there, so a crash re-sends only what was in flight (RFC 1047).
    on_result: Callable[[dict[str, Outcome]], Awaitable[None]] | None = None
    # Connections kept for the next message to the same host (conncache.py); None: one each.
    cache: ConnectionCache | None = None


class RecordFailed(Exception):
    """``on_result`` raised: the message was sent, so no other host may be tried."""


async def send(hosts: Sequence[MXHost], txn: Transaction) -> dict[str, Outcome]:
    """Try each host and address in order until one takes the transaction (RFC 5321 §5.1)."""
    last = "no host to try"
    for host in hosts:
        for address in host.addresses:
            try:
                try:
                    return await _attempt(host.name, address, txn)
                except TLSFailed as err:
                    if txn.tls.required:
                        raise
                    log.info("%s[%s]: %s; sending without TLS", host.name, address, err)
                    # Opportunistic TLS that fails is retried in the clear at once, as Exim's
                    # tls_tempfail_tryclear does: a broken TLS stack must not block mail that
                    # would otherwise go unencrypted anyway.
                    return await _attempt(host.name, address, txn, plaintext=True)
            except AttemptFailed as err:
                last = f"{host.name}[{address}]: {err}"
                log.info("delivery to %s failed: %s", host.name, last)
    return {rcpt: Outcome(451, f"4.4.1 {last}") for rcpt in txn.recipients}


def _needs_utf8(txn: Transaction) -> bool:
    return not txn.sender.isascii() or any(not r.isascii() for r in txn.recipients)


async def _attempt(name: str, address: str, txn: Transaction,
                   plaintext: bool = False) -> dict[str, Outcome]:
    key = (name, address, txn.port, txn.implicit_tls, plaintext, id(txn.tls.context),
           txn.tls.required, txn.username)
    client = await _reused(txn.cache, key)
    keep = False
    try:
        if client is None:
            client = aiosmtplib.SMTP(
                hostname=name if txn.implicit_tls else address, port=txn.port,
                local_hostname=txn.helo, timeout=COMMAND_TIMEOUT, use_tls=txn.implicit_tls,
                start_tls=False, tls_context=txn.tls.context if txn.implicit_tls else None)
            try:
                await client.connect(timeout=txn.connect_timeout)
                await client.ehlo()
            except aiosmtplib.SMTPHeloError:
                await client.helo()
            if not txn.implicit_tls and not plaintext:
                await _starttls(client, name, txn.tls)
            if txn.username:
                await client.login(txn.username, txn.password)
        results, reusable = await _transaction(client, name, txn, txn.cache is not None)
        keep = reusable and txn.cache.give_back(key, client)
        if reusable and not keep:
            await _quit(client)
        return results
    except aiosmtplib.SMTPAuthenticationError as err:
        raise AttemptFailed(f"login refused: {err.code} {err.message}") from None
    except AttemptFailed:
        raise
    except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as err:
        raise AttemptFailed(str(err) or type(err).__name__) from None
    finally:
        if client is not None and not keep:
            if txn.cache is not None:
                txn.cache.forget(client)
            client.close()


async def _reused(cache: ConnectionCache | None, key) -> aiosmtplib.SMTP | None:
    """A kept connection to the same host that still answers RSET, or None."""
    while cache is not None and (client := cache.take(key)) is not None:
        try:
            await client.rset()
            return client
        except (aiosmtplib.SMTPException, OSError):
            cache.forget(client)
            client.close()
    return None


async def _starttls(client: aiosmtplib.SMTP, name: str, tls: TLSPolicy) -> None:
    if not client.supports_extension("starttls"):
        if tls.required:
            raise AttemptFailed("STARTTLS not offered but TLS is required")
        return
    try:
        await client.starttls(server_hostname=name, tls_context=tls.context)
    except (aiosmtplib.SMTPException, ssl.SSLError, OSError) as err:
        raise TLSFailed(f"TLS handshake failed: {err}") from None
    await client.ehlo()


async def _transaction(client: aiosmtplib.SMTP, name: str, txn: Transaction,
                       keep: bool = False) -> tuple[dict[str, Outcome], bool]:
    """The outcome per recipient, and whether the connection may carry another message
    (``keep``: the caller would keep it; then no QUIT is sent after the final dot)."""
    options = []
    encoding = "ascii"
    if _needs_utf8(txn):
        if not client.supports_extension("smtputf8"):
            # RFC 6531 §3.2: without SMTPUTF8 these addresses cannot be sent at all.
            await _quit(client)
            return {r: Outcome(553, "5.6.7 The receiving server does not support SMTPUTF8",
                               name) for r in txn.recipients}, False
        options.append("SMTPUTF8")
        encoding = "utf-8"
    if client.supports_extension("size"):
        options.append(f"SIZE={len(txn.message)}")
    if client.supports_extension("8bitmime") and not txn.message.isascii():
        options.append("BODY=8BITMIME")
    try:
        await client.mail(txn.sender, options=options, encoding=encoding)
    except aiosmtplib.SMTPSenderRefused as err:
        return {r: Outcome(err.code, err.message, name) for r in txn.recipients}, False
    results: dict[str, Outcome] = {}
    accepted = []
    for rcpt in txn.recipients:
        try:
            response = await client.rcpt(rcpt, encoding=encoding)
            accepted.append(rcpt)
            results[rcpt] = Outcome(response.code, response.message, name)
        except aiosmtplib.SMTPRecipientRefused as err:
            results[rcpt] = Outcome(err.code, err.message, name)
    if not accepted:
        await _quit(client)
        return results, False
    reusable = keep
    try:
        response = await client.data(txn.message, timeout=DATA_END_TIMEOUT)
        outcome = Outcome(response.code, response.message, name)
    except aiosmtplib.SMTPDataError as err:
        outcome = Outcome(err.code, err.message, name)
    except (aiosmtplib.SMTPTimeoutError, aiosmtplib.SMTPServerDisconnected, OSError) as err:
        # The message may have arrived: try later rather than another host right now, so a
        # slow receiver does not get a copy from every attempt in a row.
        outcome = Outcome(451, f"4.4.2 Connection lost after sending the message: {err}", name)
        reusable = False
    for rcpt in accepted:
        results[rcpt] = outcome
    if txn.on_result is not None:
        try:
            await txn.on_result(results)
        except Exception as err:
            # Not AttemptFailed: the next MX host would get a second copy.
            raise RecordFailed(f"recording the results failed: {err!r}") from err
    # RFC 5321 §6.1: the 250 to DATA is where the receiver takes responsibility; QUIT adds
    # nothing to it, so a receiver slow to answer QUIT costs us time, never a duplicate.
    if not reusable:
        await _quit(client)
    return results, reusable


async def _quit(client: aiosmtplib.SMTP) -> None:
    try:
        await client.quit()
    except (aiosmtplib.SMTPException, OSError):
        pass
