"""The MTA-STS policy we publish for our own domains (RFC 8461 §3.2), served by the HTTPS
listener at ``https://mta-sts.<domain>/.well-known/mta-sts.txt``.

Every domain gets the same policy: its one MX is our hostname. The mode is the owner's choice
(``testing`` until the certificate is a real one, then ``enforce``), so it is passed in rather
than guessed here. (``server/mtasts.py`` is the other side: fetching other domains' policies.)
"""

from __future__ import annotations

MODES = ("enforce", "testing", "none")
# RFC 8461 §3.2: max_age is at most 31557600 seconds (about one year).
MAX_AGE_LIMIT = 31557600
DEFAULT_MODE = "testing"
DEFAULT_MAX_AGE = 604800  # one week: long enough to matter, short enough to change one's mind


def check_policy(mode: str, max_age: int) -> None:
    """Raise ValueError for a mode or max_age that RFC 8461 §3.2 does not allow."""
    if mode not in MODES:
        raise ValueError(f"MTA-STS mode must be one of {', '.join(MODES)}; got {mode!r}")
    if isinstance(max_age, bool) or not isinstance(max_age, int) or \
            not 0 <= max_age <= MAX_AGE_LIMIT:
        raise ValueError(f"MTA-STS max_age must be 0-{MAX_AGE_LIMIT} seconds; got {max_age!r}")


def policy_text(hostname: str, mode: str, max_age: int) -> str:
    """The policy body: ``key: value`` lines ending in CRLF (RFC 8461 §3.2 allows LF too, but
    CRLF is what the ABNF names first and what every parser accepts)."""
    check_policy(mode, max_age)
    lines = ["version: STSv1", f"mode: {mode}"]
    # RFC 8461 §3.2: "mx" lines are required in every mode but "none", where they may be absent;
    # listing our host there too is harmless and makes switching modes a one-word change.
    lines.append(f"mx: {hostname}")
    lines.append(f"max_age: {max_age}")
    return "".join(line + "\r\n" for line in lines)
