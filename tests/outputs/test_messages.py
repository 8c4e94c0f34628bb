"""Unit: CDR entries, RFC 5424 / RFC 3164 messages, RFC 6587 framing."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdrd.outputs import messages
from cdrd.outputs.messages import CdrEntry
from cdrd.values import Leg, LegStart
from tests.outputs.cdrs import E1_LINE, E4_LINES, e1, e4, t

LOCAL0 = 16


def test_spool_one_entry_per_cdr_in_written_order():
    ends = [e1(), e4()]
    entries = messages.spool(ends)
    assert [e.line for e in entries] == [E1_LINE, *E4_LINES]
    assert [e.id for e in entries] == [c.id for end in ends for c in end.cdrs]
    # the timestamp is the End of the call that wrote the CDR
    assert [e.time for e in entries] == [t("10:02:07.250"), t("10:25:18.200"), t("10:25:18.200")]
    assert entries[0].gateway == "8200_000C2A020082"
    assert entries[0].call == "8200_000C2A020082/b1/75"


def test_spool_ignores_everything_but_call_ends():
    leg = Leg(id="x/0", call="x", gateway="g", ref=1, direction="inbound")
    assert messages.spool([LegStart(leg, 5)]) == []


def test_rfc5424_of_worked_example_e1():
    entry = messages.spool([e1()])[0]
    msg = messages.rfc5424(entry, LOCAL0, "pbx1", "cdrd")
    sd = '[cdr@32473 call="8200_000C2A020082/b1/75"]'
    assert msg == (
        f"<134>1 2026-11-22T10:02:07.250Z pbx1 cdrd - {entry.id} {sd} {E1_LINE}".encode()
    )
    assert len(entry.id) == 32


def test_rfc5424_structured_data_names_both_calls_escaped():
    """A transferred CDR (E5's second): the call that created it and the
    call that billed it, as the JSON API names them; PARAM-VALUE escapes."""
    entry = messages.CdrEntry(
        id="0" * 32, time=0, line="x", call='g/b"]\\/80', billed_call="g/b/79"
    )
    msg = messages.rfc5424(entry, LOCAL0, "h", "a")
    assert b' [cdr@32473 call="g/b\\"\\]\\\\/80" billed_call="g/b/79"] x' in msg
    assert messages.CdrEntry.from_bytes(entry.to_bytes()) == entry
    old = messages.CdrEntry(id="0" * 32, time=0, line="x")
    assert messages.rfc5424(old, LOCAL0, "h", "a").endswith(b" - x")


def test_rfc5424_priority_is_facility_and_informational():
    entry = messages.spool([e1()])[0]
    assert messages.rfc5424(entry, 23, "h", "a").startswith(b"<190>1 ")  # local7.info
    assert messages.rfc5424(entry, 3, "h", "a").startswith(b"<30>1 ")  # daemon.info


def test_rfc5424_header_fields_are_printable_ascii():
    entry = messages.spool([e1()])[0]
    msg = messages.rfc5424(entry, LOCAL0, "my host", "")
    assert msg.startswith(b"<134>1 2026-11-22T10:02:07.250Z my_host - - ")  # no app name
    msg = messages.rfc5424(entry, LOCAL0, "h", "a" * 60)
    assert b" " + b"a" * 48 + b" - " in msg


def test_rfc3164_of_worked_example_e1():
    entry = messages.spool([e1()])[0]
    msg = messages.rfc3164(entry, LOCAL0, "pbx1", "cdrd")
    assert msg == f"<134>Nov 22 10:02:07 pbx1 cdrd[{entry.id}]: {E1_LINE}".encode()


def test_rfc3164_pads_the_day_and_leaves_out_the_hostname_locally():
    entry = CdrEntry(id="ab" * 16, time=t("10:00:00.000") - 20 * 86400_000, line="x")
    assert messages.rfc3164(entry, LOCAL0, None, "cdrd") == (
        b"<134>Nov  2 10:00:00 cdrd[" + b"ab" * 16 + b"]: x"
    )


def test_octet_counting_and_lf_framing():
    assert messages.octet_counted(b"<134>1 x") == b"8 <134>1 x"
    assert messages.octet_counted("é".encode()) == b"2 \xc3\xa9"
    assert messages.lf_framed(b"a,\"b\nc\"") == b"a,\"b c\"\n"


def test_payload_round_trip_and_rejects():
    entry = messages.spool([e1()])[0]
    assert CdrEntry.from_bytes(entry.to_bytes()) == entry
    for bad in (b"", b"\xff", b"[]", b'{"v":2}', b'{"v":1,"id":"x"}',
                b'{"v":1,"id":"x","time":"now","line":"l"}',
                b'{"v":1,"id":1,"time":1,"line":"l"}'):
        with pytest.raises(ValueError):
            CdrEntry.from_bytes(bad)


def test_entries_an_older_cdrd_stored_are_read_as_before():
    # before orjson, the stdlib wrote the outbox: non-ASCII as \u escapes
    entry = CdrEntry(id="0" * 32, time=1, line="2026-11-22T10:00:00.000Z,0.000,-busy,Zoë,,")
    older = json.dumps({"v": 1, "id": entry.id, "time": 1, "line": entry.line}).encode()
    assert b"\\u00eb" in older and "ë".encode() in entry.to_bytes()
    assert CdrEntry.from_bytes(older) == CdrEntry.from_bytes(entry.to_bytes()) == entry


LINE_CHARS = st.text(st.characters(blacklist_categories=("Cs",)), max_size=250)


@given(
    line=LINE_CHARS,
    ident=st.text("0123456789abcdef", min_size=32, max_size=32),
    time=st.integers(0, 4102444800000),
    facility=st.integers(0, 23),
)
def test_rfc5424_message_parses_back_to_the_exact_line(line, ident, time, facility):
    entry = CdrEntry(id=ident, time=time, line=line)
    assert CdrEntry.from_bytes(entry.to_bytes()) == entry
    framed = messages.octet_counted(messages.rfc5424(entry, facility, "pbx1", "cdrd"))
    length, _, rest = framed.partition(b" ")
    assert int(length) == len(rest)
    m = re.fullmatch(rb"<(\d+)>1 (\S+) pbx1 cdrd - ([0-9a-f]{32}) (?:-|\[cdr@32473 [^]]*\]) (.*)", rest, re.S)
    assert m is not None
    assert int(m.group(1)) == facility * 8 + 6
    assert m.group(3).decode() == ident
    assert m.group(4).decode() == line
