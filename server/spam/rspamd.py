"""A client for rspamd's HTTP protocol: scan a message, teach the Bayes classifier.

https://rspamd.com/doc/developers/protocol.html: ``POST /checkv2`` on the normal worker (port
11333) with the message as the body and the SMTP envelope in request headers answers a JSON
object with ``score``, ``required_score``, ``action`` and ``symbols``. ``POST /learnspam`` and
``/learnham`` go to the controller (port 11334) with its ``Password`` header; it answers 200
when learned and 208 when it had already learned that message the same way.

Callers decide what an unreachable rspamd means; this module only raises ``RspamdError``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

log = logging.getLogger("mailstead.spam")

# rspamd answers "already learned" with 208 and the reason in the status line.
ALREADY_LEARNED = 208


class RspamdError(Exception):
    """rspamd could not be reached, timed out, or refused the request; the text says which."""


@dataclass(frozen=True, slots=True)
class Symbol:
    name: str
    score: float
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ScanReply:
    """The parts of a ``/checkv2`` answer we act on."""

    score: float
    required_score: float
    action: str  # "no action", "greylist", "add header", "rewrite subject", "soft reject", "reject"
    symbols: tuple[Symbol, ...] = ()
    message: str = ""  # rspamd's smtp_message, if a rule set one

    @classmethod
    def from_json(cls, data: object) -> ScanReply:
        if not isinstance(data, dict):
            raise RspamdError(f"unexpected reply: {str(data)[:200]}")
        if "error" in data and "action" not in data:
            raise RspamdError(f"rspamd: {data['error']}")
        try:
            score = _finite(data["score"])
            required = _finite(data.get("required_score", math.inf))
            action = str(data["action"])
        except (KeyError, TypeError, ValueError) as err:
            raise RspamdError(f"malformed reply ({err!r}): {str(data)[:200]}") from None
        symbols = []
        raw = data.get("symbols")
        for name, sym in (raw.items() if isinstance(raw, dict) else ()):
            if not isinstance(sym, dict):
                continue
            try:
                value = _finite(sym.get("score", 0.0))
            except (TypeError, ValueError):
                value = 0.0
            opts = sym.get("options")
            options = tuple(str(o) for o in opts) if isinstance(opts, list) else ()
            symbols.append(Symbol(str(name), value, options))
        symbols.sort(key=lambda s: (-abs(s.score), s.name))
        messages = data.get("messages")
        text = messages.get("smtp_message", "") if isinstance(messages, dict) else ""
        return cls(score, required, action, tuple(symbols), str(text))


def _finite(value) -> float:
    out = float(value)
    if math.isnan(out):
        raise ValueError("NaN")
    return out


def _header(value: str) -> bytes:
    """A request header value: UTF-8 (SMTPUTF8 addresses), never CR/LF/NUL, which would let a
    client-chosen HELO name or address add headers of its own to our request."""
    clean = "".join(" " if ch in "\r\n\x00" else ch for ch in value).strip()
    return clean.encode("utf-8", "surrogateescape")


class RspamdClient:
    """One HTTP connection pool per process; ``aclose()`` at shutdown."""

    def __init__(self, url: str, *, controller_url: str = "", password: str = "",
                 timeout: float = 20.0):
        self.url = url.rstrip("/")
        self.controller_url = (controller_url or url).rstrip("/")
        self.password = password
        self.timeout = timeout
        self._http: httpx.AsyncClient | None = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            # trust_env=False: an HTTP(S)_PROXY meant for the admin's shell must not route
            # every message through a proxy.
            self._http = httpx.AsyncClient(timeout=self.timeout, trust_env=False)
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def check(self, message: bytes, *, ip: str | None, helo: str | None, sender: str,
                    rcpts: Sequence[str], hostname: str | None = None, queue_id: str = "",
                    user: str | None = None, mta_name: str = "") -> ScanReply:
        """Scan ``message``; ``sender`` "" is the null reverse-path, ``hostname`` the client's
        verified reverse name (omitted when it has none), ``user`` the signed-in account."""
        headers: list[tuple[bytes, bytes]] = [(b"From", _header(sender or "<>"))]
        headers += [(b"Rcpt", _header(r)) for r in rcpts]
        for name, value in ((b"IP", ip), (b"Helo", helo), (b"Hostname", hostname),
                            (b"Queue-Id", queue_id), (b"User", user), (b"MTA-Name", mta_name)):
            if value:
                headers.append((name, _header(value)))
        if self.password:
            headers.append((b"Password", _header(self.password)))
        response = await self._post(f"{self.url}/checkv2", message, headers)
        if response.status_code != 200:
            raise RspamdError(f"checkv2: HTTP {response.status_code} {_error_text(response)}")
        try:
            data = json.loads(response.content)
        except ValueError:
            raise RspamdError(f"checkv2: not JSON: {response.content[:200]!r}") from None
        return ScanReply.from_json(data)

    async def learn(self, spam: bool, message: bytes) -> bool:
        """Teach the Bayes classifier; True if learned now, False if rspamd already had."""
        path = "learnspam" if spam else "learnham"
        headers = [(b"Password", _header(self.password))] if self.password else []
        response = await self._post(f"{self.controller_url}/{path}", message, headers)
        if response.status_code == 200:
            return True
        if response.status_code == ALREADY_LEARNED:
            return False
        if response.status_code in (401, 403):
            raise RspamdError(f"{path}: HTTP {response.status_code} (check [spam] "
                              "rspamd_password and rspamd_controller_url)")
        raise RspamdError(f"{path}: HTTP {response.status_code} {_error_text(response)}")

    async def _post(self, url: str, body: bytes, headers) -> httpx.Response:
        try:
            return await self._client().post(url, content=body, headers=headers)
        except httpx.TimeoutException:
            raise RspamdError(f"{url}: timed out after {self.timeout:g} s") from None
        except httpx.HTTPError as err:
            raise RspamdError(f"{url}: {type(err).__name__}: {err}") from None


def _error_text(response: httpx.Response) -> str:
    try:
        data = json.loads(response.content)
        if isinstance(data, dict) and "error" in data:
            return str(data["error"])[:300]
    except ValueError:
        pass
    return response.reason_phrase or response.content[:200].decode("utf-8", "replace")


def close_later(client: RspamdClient | None, timeout: float) -> None:
    """Close a client replaced by a reload once a scan it may be serving has timed out."""
    if client is None:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    loop.call_later(timeout + 1, lambda: loop.create_task(client.aclose()))
