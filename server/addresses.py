"""E-mail address parsing and normalisation (RFC 5321 §4.1.2 Mailbox, RFC 6531 for UTF-8).

Pure functions, no I/O. Two rules every caller relies on:
- the domain is compared case-insensitively, as IDNA 2008 A-labels (UTS 46 mapping, as
  browsers and mail clients do), without a trailing dot;
- the local part is compared ASCII-case-insensitively (``Alice@`` and ``alice@`` are one
  mailbox), which is what users expect even though RFC 5321 §2.4 lets a server treat them
  apart. Only ASCII letters fold: Unicode case rules would make e.g. the Kelvin sign "K" equal
  to "k" and let look-alike addresses reach a mailbox.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import idna

# RFC 5321 §4.5.3.1.1-3: size limits of the parts.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256

# RFC 6531 §3.3 extends atext with UTF-8; surrogates (undecodable bytes) are not UTF-8.
_ATEXT = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\x80-\ud7ff\ue000-\U0010ffff]+")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
# Mailbox names we create: plain, unambiguous, safe as a directory name.
_MAILBOX_LOCAL = re.compile(r"[a-z0-9](?:[a-z0-9_-]|\.(?!\.))*(?<!\.)")


class AddressError(ValueError):
    """The text is not a valid address; the message says why."""


@dataclass(frozen=True, slots=True)
class Address:
    local: str
    """Local part, unquoted, case as given."""
    domain: str
    """Normalised domain (lower-case A-labels), or an address literal such as ``[127.0.0.1]``."""

    @property
    def is_literal(self) -> bool:
        return self.domain.startswith("[")

    @property
    def folded_local(self) -> str:
        return fold_local(self.local)

    @property
    def key(self) -> str:
        """The case-insensitive form used to look the address up."""
        return f"{self.folded_local}@{self.domain}"

    def __str__(self) -> str:
        return f"{quote_local(self.local)}@{self.domain}"


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold_local(local: str) -> str:
    """Lower-case the ASCII letters of a local part, and nothing else."""
    return local.translate(_ASCII_LOWER)


def quote_local(local: str) -> str:
    """The local part as it must be written in a path: dot-string if possible, else quoted."""
    atoms = local.split(".")
    if all(_ATEXT.fullmatch(atom) for atom in atoms):
        return local
    escaped = local.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def normalize_domain(text: str) -> str:
    """Lower-case, IDNA-encode and validate a domain name (no trailing dot in the result)."""
    name = text.strip()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise AddressError("empty domain")
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError) as err:
            raise AddressError(f"invalid internationalised domain {text!r}: {err}") from None
    name = name.lower()
    if len(name) > MAX_DOMAIN:
        raise AddressError(f"domain longer than {MAX_DOMAIN} octets")
    labels = name.split(".")
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise AddressError(f"invalid domain {text!r}")
    if labels[-1].isdigit():
        raise AddressError(f"invalid domain {text!r}: top-level label is numeric")
    return name


def _parse_literal(text: str) -> str:
    inner = text[1:-1]
    if inner.lower().startswith("ipv6:"):
        try:
            return f"[IPv6:{ipaddress.IPv6Address(inner[5:]).compressed}]"
        except ValueError as err:
            raise AddressError(f"invalid IPv6 address literal {text!r}") from err
    try:
        return f"[{ipaddress.IPv4Address(inner)}]"
    except ValueError as err:
        raise AddressError(f"invalid address literal {text!r}") from err


def _parse_local(text: str) -> str:
    if text.startswith('"'):
        if len(text) < 2 or not text.endswith('"'):
            raise AddressError("unterminated quoted local part")
        out, i, body = [], 0, text[1:-1]
        while i < len(body):
            ch = body[i]
            if ch == "\\":
                if i + 1 == len(body):
                    raise AddressError("dangling backslash in quoted local part")
                ch = body[i + 1]
                i += 1
            elif ch == '"':
                raise AddressError("unescaped quote in quoted local part")
            if ord(ch) < 32 or ord(ch) == 127 or 0xD800 <= ord(ch) <= 0xDFFF:
                raise AddressError("control character or invalid UTF-8 in local part")
            out.append(ch)
            i += 1
        return "".join(out)
    if not all(_ATEXT.fullmatch(atom) for atom in text.split(".")):
        raise AddressError(f"invalid local part {text!r}")
    return text


def parse_address(text: str) -> Address:
    """Parse an RFC 5321 Mailbox (no angle brackets), e.g. ``alice@Example.TEST``."""
    at = text.rfind("@[") if text.endswith("]") else text.rfind("@")
    if at <= 0 or at == len(text) - 1:
        raise AddressError(f"{text!r} is not of the form local@domain")
    local_text, domain_text = text[:at], text[at + 1 :]
    local = _parse_local(local_text)
    if not local or _octets(local) > MAX_LOCAL_PART:
        raise AddressError(f"local part must be 1 to {MAX_LOCAL_PART} octets")
    if any(ch.isspace() for ch in domain_text):
        raise AddressError(f"white space in domain {domain_text!r}")
    if domain_text.startswith("["):
        domain = _parse_literal(domain_text)
    else:
        domain = normalize_domain(domain_text)
    address = Address(local, domain)
    # RFC 5321 §4.5.3.1.3: the path, angle brackets included, is at most 256 octets. Checked
    # on the normalised form (IDNA can make a domain longer) so every parsed address re-parses.
    if _octets(str(address)) > MAX_PATH - 2:
        raise AddressError(f"address longer than {MAX_PATH - 2} octets")
    return address


def _octets(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def split_tag(local: str, delimiter: str) -> tuple[str, str | None]:
    """``("bob+lists", "+")`` -> ``("bob", "lists")``; no delimiter configured -> no tag."""
    if delimiter and delimiter in local[1:]:
        base, _, tag = local.partition(delimiter)
        if base:
            return base, tag
    return local, None


def validate_mailbox_local(local: str) -> str:
    """Check a local part we are about to create a mailbox or alias for; return it lower-cased.

    Stricter than RFC 5321 on purpose: the name becomes a directory, must not contain the
    plus-address delimiter, and must survive every client and every peer MTA unquoted.
    """
    lowered = fold_local(local)
    if len(lowered) > MAX_LOCAL_PART or not _MAILBOX_LOCAL.fullmatch(lowered):
        raise AddressError(
            f"invalid mailbox name {local!r}: use letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, at most 64 characters"
        )
    return lowered


def parse_path(text: str, *, allow_postmaster: bool = False) -> tuple[str, str]:
    """Parse an SMTP path argument (RFC 5321 §4.1.2) into ``(mailbox, parameters)``.

    ``mailbox`` is the normalised ``local@domain``, ``""`` for the null path ``<>``, or
    ``"Postmaster"`` for ``<Postmaster>`` when ``allow_postmaster`` (RCPT, §4.1.1.3). A source
    route (``<@a,@b:user@c>``) is checked and dropped, as §4.1.1.3 and Appendix C require.
    Angle brackets may be missing, as many clients send them so. Unlike RFC 5322 header parsing
    there are no comments, no folding and no encoded words here.
    """
    text = text.lstrip(" ")
    bracketed = text.startswith("<")
    if bracketed:
        end = _closing_bracket(text)
        inner, rest = text[1:end], text[end + 1 :]
    else:
        inner, _, rest = text.partition(" ")
        rest = " " + rest if rest else ""
    if rest and not rest.startswith(" "):
        raise AddressError("expected a space between the path and its parameters")
    if inner.startswith("@"):
        route, colon, inner = inner.partition(":")
        if not colon:
            raise AddressError("source route without ':'")
        for hop in route.split(","):
            if not hop.startswith("@") or len(hop) < 2:
                raise AddressError(f"invalid source route {route!r}")
            if hop[1] == "[":
                _parse_literal(hop[1:])
            else:
                normalize_domain(hop[1:])
    if not inner:
        if bracketed and not text[1:].startswith("@"):
            return "", rest.strip()
        raise AddressError("empty path")
    if allow_postmaster and inner.lower() == "postmaster":
        return "Postmaster", rest.strip()
    return str(parse_address(inner)), rest.strip()


def _closing_bracket(text: str) -> int:
    """Index of the ``>`` closing ``text[0] == "<"``, skipping quoted strings."""
    quoted = escaped = False
    for i in range(1, len(text)):
        ch = text[i]
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ">" and not quoted:
            return i
    raise AddressError("missing '>'")
