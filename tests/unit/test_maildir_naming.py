"""maildir.naming: unique names and lossless parsing of Maildir file names."""

from __future__ import annotations

import re
import socket
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maildir.naming import MaildirName, new_unique_name, parse_name

UNIQUE_RE = re.compile(r"(\d+)\.M(\d+)P(\d+)Q(\d+)R([0-9a-f]{16})\.(.+)")


def test_unique_name_format():
    m = UNIQUE_RE.fullmatch(new_unique_name("mx.example.org"))
    assert m is not None
    assert 0 <= int(m.group(2)) < 1_000_000
    assert m.group(6) == "mx.example.org"


def test_unique_name_defaults_to_gethostname():
    assert new_unique_name().endswith("." + socket.gethostname())
    assert new_unique_name("").endswith("." + socket.gethostname())


def test_unique_name_escapes_host():
    # maildir.html's escapes for / and :, and ours for the comma that starts ,S=.
    name = new_unique_name("a/b:c,S=1")
    assert name.endswith(".a\\057b\\072c\\054S=1")
    assert "/" not in name and ":" not in name
    assert parse_name(name) == MaildirName(base=name)


def test_unique_names_distinct_in_one_thread():
    names = [new_unique_name("h") for _ in range(20_000)]
    assert len(set(names)) == len(names)


def test_unique_names_distinct_across_threads():
    results: list[list[str]] = [[] for _ in range(8)]
    barrier = threading.Barrier(8)

    def work(out: list[str]) -> None:
        barrier.wait()  # start together so names are generated in the same microseconds
        out.extend(new_unique_name("h") for _ in range(3000))

    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = [n for out in results for n in out]
    assert len(names) == 24_000
    assert len(set(names)) == len(names)
    # Q counters are distinct too: the counter alone separates same-microsecond names.
    counters = [UNIQUE_RE.fullmatch(n).group(4) for n in names]
    assert len(set(counters)) == len(counters)


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("1.M2P3.host", MaildirName("1.M2P3.host")),
        ("1.M2P3.host,S=10", MaildirName("1.M2P3.host", size=10)),
        ("1.M2P3.host,S=10,W=12", MaildirName("1.M2P3.host", size=10, vsize=12)),
        (
            "1.M2P3.host,S=10,W=12:2,SF",
            MaildirName("1.M2P3.host", size=10, vsize=12, flags="FS", info="2,SF"),
        ),
        ("1.M2P3.host:2,", MaildirName("1.M2P3.host", info="2,")),
        ("1.M2P3.host:2,SSaS", MaildirName("1.M2P3.host", flags="Sa", info="2,SSaS")),
        # Experimental or unknown info: kept raw, no flags.
        ("1.M2P3.host:1,xyz", MaildirName("1.M2P3.host", info="1,xyz")),
        ("1.M2P3.host:", MaildirName("1.M2P3.host", info="")),
        # Only the part before the first ":" holds sizes.
        ("1.h:2,S,S=5", MaildirName("1.h", flags=",5=S", info="2,S,S=5")),
        # Unknown fields stay in base; sizes are only taken from the tail, S before W.
        ("1.h,U=7,FMD5=ab:2,S", MaildirName("1.h,U=7,FMD5=ab", flags="S", info="2,S")),
        ("1.h,U=7,S=5,W=6", MaildirName("1.h,U=7", size=5, vsize=6)),
        ("1.h,S=5,U=7", MaildirName("1.h,S=5,U=7")),
        ("1.h,W=6,S=5", MaildirName("1.h,W=6", size=5)),
        ("1.h,S=5,S=6", MaildirName("1.h,S=5", size=6)),
        # Non-canonical numbers are not sizes (they would not rebuild to the same text).
        ("1.h,S=007", MaildirName("1.h,S=007")),
        ("1.h,S=-1", MaildirName("1.h,S=-1")),
        ("1.h,S=\u0663", MaildirName("1.h,S=\u0663")),
        ("1.h,S=" + "9" * 20, MaildirName("1.h,S=" + "9" * 20)),
        ("1.h,S=0", MaildirName("1.h", size=0)),
        (",S=5", MaildirName("", size=5)),
        (".hidden", MaildirName(".hidden")),
    ],
)
def test_parse_examples(filename, expected):
    parsed = parse_name(filename)
    assert parsed == expected
    assert parsed.filename() == filename


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "/", "a\0b", "\0"])
def test_parse_rejects_non_file_names(bad):
    with pytest.raises(ValueError):
        parse_name(bad)


def _is_rejected(name: str) -> bool:
    return name in ("", ".", "..") or "/" in name or "\0" in name


@given(st.text())
def test_parse_never_raises_else_and_round_trips(name):
    try:
        parsed = parse_name(name)
    except ValueError:
        assert _is_rejected(name)
        return
    assert not _is_rejected(name)
    assert parsed.filename() == name
    assert parse_name(parsed.filename()) == parsed
    assert parsed.flags == "".join(sorted(set(parsed.flags)))


# Names built from the pieces that matter: commas, "=", ":" and digits are over-represented.
_pieces = st.lists(
    st.sampled_from([",", "S=", "W=", ":", "2,", "0", "1", "07", "x", "M", ".", "é"]),
    max_size=12,
).map("".join)


@given(_pieces)
def test_parse_round_trips_tricky_names(name):
    if _is_rejected(name):
        return
    assert parse_name(name).filename() == name


_base = st.text(
    alphabet=st.characters(blacklist_characters="/:,\0", blacklist_categories=("Cs",)),
    min_size=3,
)
_size = st.none() | st.integers(min_value=0, max_value=10**15)


@given(_base, _size, _size, st.none() | st.text(alphabet="DFPRSTabz", max_size=8))
def test_fields_round_trip(base, size, vsize, flags):
    info = None if flags is None else "2," + flags
    name = MaildirName(
        base=base,
        size=size,
        vsize=vsize,
        flags="".join(sorted(set(flags or ""))),
        info=info,
    )
    assert parse_name(name.filename()) == name
