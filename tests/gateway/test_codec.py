"""GWP/1 framing and grammar (gateway-protocol.md, "Transport and framing")."""

from __future__ import annotations

import hashlib
import hmac
import string

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cdrd.gateway.codec import (
    MAX_LINE,
    BadPacket,
    Message,
    escape,
    format_gateway_time,
    format_message,
    login_auth,
    parse_gateway_time,
    parse_line,
    split_auth,
    unescape,
)

SPEC_LINES = [
    b"HELLO proto=1 nonce=5f0c3b9d2e8a4f61a7b3c2d1e0f9a8b7 time=2026-11-22T10:00:00.000Z",
    b"LOGIN proto=1 gw=8200 mac=000C2A020082 fxs=2 fxo=2 isdn=0 callref=74 time=2000-01-02T08:17:38 auth=9a1c",
    b"OK session=7f3a last=1041",
    b"EV seq=1042 ref=75 t=2000-01-02T08:17:40.120 type=HOOK_OFF port=1",
    b"EV seq=1043 ref=75 t=2000-01-02T08:17:42.500 type=DIAL digits=2252",
    b"ACK seq=1043",
    b"PING",
    b"PONG",
    b"LOGOUT",
    b"BYE",
]


@pytest.mark.parametrize("line", SPEC_LINES)
def test_spec_session_lines_parse(line):
    m = parse_line(line)
    assert m is not None and m.raw == line.decode()
    assert format_message(m.verb, m.fields) == line + b"\n"


def test_fields_unescaped_in_order():
    m = parse_line(b"EV seq=1 ref=75 type=TALK info=C(18)%20M(17) cli=a%3db%25c%0A")
    assert m == Message("EV", {"seq": "1", "ref": "75", "type": "TALK",
                               "info": "C(18) M(17)", "cli": "a=b%c\n"},
                        "EV seq=1 ref=75 type=TALK info=C(18)%20M(17) cli=a%3db%25c%0A")
    assert list(m.fields) == ["seq", "ref", "type", "info", "cli"]


def test_cr_dropped_and_empty_lines():
    assert parse_line(b"PING\r") == Message("PING", {}, "PING")
    assert parse_line(b"") is None
    assert parse_line(b"\r") is None


def test_utf8_values_and_escaped_utf8():
    assert parse_line("EV name=Zoë".encode()).fields["name"] == "Zoë"
    assert parse_line(b"EV name=Zo%C3%ab").fields["name"] == "Zoë"


def test_max_line_is_exact():
    head = b"EV seq=7 x="
    ok = head + b"a" * (MAX_LINE - len(head))
    assert len(ok) == MAX_LINE and parse_line(ok) is not None
    assert parse_line(ok + b"\r") is not None  # the CR does not count
    with pytest.raises(BadPacket) as e:
        parse_line(ok + b"a")
    assert e.value.reason == "line longer than 1024 bytes" and e.value.seq == 7


@pytest.mark.parametrize(
    "line, reason, seq",
    [
        (b"EV seq=3 x=\xff", "not UTF-8", 3),
        (b"ev seq=1", "bad verb 'ev'", 1),
        (b"E1 seq=1", "bad verb 'E1'", 1),
        (b"_EV", "bad verb '_EV'", None),
        (b" EV", "empty verb", None),
        (b"EV X=1 seq=2", "bad key 'X'", 2),
        (b"EV 1x=1", "bad key '1x'", None),
        (b"EV =1", "bad key ''", None),
        (b"EV seq=4 seq=5", "duplicate key 'seq'", 4),
        (b"EV seq=9 cli=%4", "bad escape in 'cli'", 9),
        (b"EV seq=9 cli=%zz", "bad escape in 'cli'", 9),
        (b"EV seq=9 cli=%ff", "escaped bytes are not UTF-8 in 'cli'", 9),
        (b"EV seq=1 x=", "empty value for 'x'", 1),
        (b"EV seq=1  x=1", "empty field (double or trailing space)", 1),
        (b"EV seq=1 ", "empty field (double or trailing space)", 1),
        (b"EV seq=1 flag", "field 'flag' without '='", 1),
        (b"EV seq=1 x=a=b", "unescaped '=' in 'x'", 1),
        (b"EV seq=1 x=a\tb", "unescaped control byte in 'x'", 1),
        (b"EV seq=1 x=a\x7fb", "unescaped control byte in 'x'", 1),
        (b"EV seq=x1 y=\x00", "unescaped control byte in 'y'", None),
    ],
)
def test_bad_packet_reasons(line, reason, seq):
    with pytest.raises(BadPacket) as e:
        parse_line(line)
    assert (e.value.reason, e.value.seq) == (reason, seq)
    assert isinstance(e.value, ValueError)


def test_escape_and_unescape():
    assert escape("2252") == "2252"
    assert escape("a b%c=d\x01\x7fé") == "a%20b%25c%3Dd%01%7Fé"
    assert unescape("a%20b%25c%3dd%01%7Fé") == "a b%c=d\x01\x7fé"
    with pytest.raises(ValueError):
        unescape("%g0")


def test_format_leaves_empty_values_out():
    assert format_message("ERR", [("code", "bad"), ("reason", ""), ("seq", None)]) == b"ERR code=bad\n"
    assert format_message("ACK", {"seq": 5}) == b"ACK seq=5\n"


def test_gateway_time():
    assert parse_gateway_time("2026-11-22T10:00:07.250") == 1795341607250
    assert parse_gateway_time("2000-01-02T08:17:38") == 946801058000
    assert format_gateway_time(1795341607250) == "2026-11-22T10:00:07.250"
    assert format_gateway_time(946801058000) == "2000-01-02T08:17:38.000"
    for bad in ["2026-11-22 10:00:07", "2026-11-22T10:00:07Z", "2026-11-22T10:00:07.25",
                "2026-13-22T10:00:07", "2026-02-30T10:00:07", "2026-11-22T24:00:00",
                "２０２６-11-22T10:00:07", ""]:
        with pytest.raises(ValueError):
            parse_gateway_time(bad)


@given(st.integers(min_value=0, max_value=253402300799999))
def test_gateway_time_round_trip(ms):
    assert parse_gateway_time(format_gateway_time(ms)) == ms


def test_login_auth_and_split():
    nonce = "5f0c3b9d2e8a4f61a7b3c2d1e0f9a8b7"
    before = "LOGIN proto=1 gw=8200 mac=000C2A020082 fxs=2 fxo=2 isdn=0 callref=74 time=2000-01-02T08:17:38"
    auth = login_auth("s3cret", nonce, before)
    expected = hmac.new(b"s3cret", f"{nonce} {before}".encode(), hashlib.sha256).hexdigest()
    assert auth == expected and auth == auth.lower() and len(auth) == 64
    assert split_auth(f"{before} auth={auth}") == (before, auth)
    assert split_auth(before) == (before, None)
    # auth must be the last field
    assert split_auth(f"{before} auth={auth} fw=1")[1] is None


@given(st.binary(max_size=1100))
def test_any_bytes_parse_or_bad_packet(data):
    try:
        m = parse_line(data)
    except BadPacket as e:
        assert e.reason
    else:
        assert m is None or isinstance(m, Message)


_ALPHABET = st.sampled_from(list(" =%\r\n\t\x00\x7fEVseq=1ABCazé€") + [chr(c) for c in range(0x20, 0x7f)])


@given(st.lists(st.text(_ALPHABET, max_size=40), max_size=12).map(lambda p: " ".join(p).encode()))
def test_near_miss_lines_parse_or_bad_packet(data):
    try:
        parse_line(data)
    except BadPacket as e:
        assert e.reason


_KEYS = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True)
_VALUES = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=20)


@given(
    st.from_regex(r"[A-Z][A-Z_]{0,10}", fullmatch=True),
    st.dictionaries(_KEYS, _VALUES, max_size=8),
)
def test_format_parse_round_trip(verb, fields):
    line = format_message(verb, fields)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    m = parse_line(line[:-1])
    assert m.verb == verb and m.fields == fields and list(m.fields) == list(fields)


@given(_VALUES)
def test_escape_round_trip(value):
    escaped = escape(value)
    assert not set(escaped) & set(" =\x7f" + "".join(map(chr, range(0x20))))
    assert unescape(escaped) == value


def test_printable_ascii_all_survive():
    fields = {"x": string.printable}
    assert parse_line(format_message("EV", fields)[:-1]).fields == fields


def _reference_gateway_time(text: str) -> int:
    """The obvious datetime-based reading, to check the fast one against."""
    import re
    from datetime import UTC, datetime

    m = re.fullmatch(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{3}))?", text, re.ASCII)
    if m is None:
        raise ValueError(text)
    y, mo, d, h, mi, s, ms = m.groups()
    dt = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=UTC)
    return int(dt.timestamp()) * 1000 + int(ms or 0)


@example("2026-11-22T10:00:60")  # the edges of the seconds
@example("2026-11-22T10:00:60.000")
@example("2026-11-22T10:00:59.999")
@given(st.one_of(
    st.integers(0, 253402300799999).map(format_gateway_time),
    st.integers(0, 253402300799999).map(lambda ms: format_gateway_time(ms)[:19]),
    st.from_regex(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,4})?", fullmatch=True),
    st.text(st.sampled_from("0123456789-T:.Z ٣"), max_size=24),
))
def test_gateway_time_matches_the_reference(text):
    try:
        expected = _reference_gateway_time(text)
    except ValueError:
        with pytest.raises(ValueError):
            parse_gateway_time(text)
    else:
        assert parse_gateway_time(text) == expected


@pytest.mark.parametrize(
    "line, seq",
    [
        (b"EV seq=7 ref=1 type=X", 7),
        (b"EVENT seq=12 x", 12),
        (b"EV seq=0 ref=1", None),
        (b"EV seq=7x ref=1", None),
        (b"EV seq=8 ref=1 type=DIAL digits=" + b"1" * 2000, 8),
        # the seq field is cut by the 1024-byte limit: not read
        (b"EV digits=" + b"1" * 1008 + b" seq=123456", None),
        (b"EV digits=" + b"1" * 2000 + b" seq=9", None),
    ],
)
def test_seq_hint_reads_the_prefix_only(line, seq):
    from cdrd.gateway.codec import seq_hint

    assert seq_hint(line) == seq
