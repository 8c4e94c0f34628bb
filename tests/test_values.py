"""The shared values' text forms."""

import csv
import io
from datetime import UTC, datetime

import pytest
from attrs import astuple, evolve, field, frozen
from attrs.exceptions import FrozenInstanceError
from hypothesis import given
from hypothesis import strategies as st

from cdrd.values import (
    MAX_MS,
    CallEvent,
    GatewayState,
    Leg,
    csv_line,
    parse_rfc3339,
    rfc3339,
    stored_event,
    unchecked,
    unchecked_leg,
)


def test_rfc3339_examples():
    assert rfc3339(1795341607250) == "2026-11-22T10:00:07.250Z"
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(MAX_MS) == "9999-12-31T23:59:59.999Z"


def test_rfc3339_is_total_outside_the_range():
    assert rfc3339(-1) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(MAX_MS + 1) == rfc3339(10**18) == "9999-12-31T23:59:59.999Z"


@given(st.integers(min_value=0, max_value=MAX_MS))
def test_rfc3339_round_trips_and_has_a_fixed_width(ms):
    text = rfc3339(ms)
    assert len(text) == 24
    assert parse_rfc3339(text) == ms
    assert text[:19] == datetime.fromtimestamp(ms // 1000, UTC).isoformat()[:19]


# -- the unchecked constructors of the ingest path (issue 15) ------------------


def test_unchecked_builds_what_the_class_builds_without_its_checks():
    fields = {"digits": "123"}
    built = stored_event("8200_000C2A020082", 5, 7, "DIAL", 10, 11, "r0", fields, 3)
    assert built == CallEvent("8200_000C2A020082", 5, 7, "DIAL", 10, 11, "r0", {"digits": "123"}, 3)
    assert type(built) is CallEvent
    assert built.fields is fields  # handed over, not copied
    with pytest.raises(FrozenInstanceError):
        built.id = 4
    # no converter ran: what the caller passes is what the event holds
    assert stored_event("g", None, 1, "STALE", 0, 0, "", None, None).fields is None


def test_unchecked_takes_every_field_in_order():
    @frozen
    class Checked:
        a: int = field(validator=lambda *_: pytest.fail("validated"))
        b: tuple = field(default=(), converter=tuple)

    build = unchecked(Checked)
    assert build.__name__ == "unchecked_Checked"
    built = build(1, [2])
    assert (built.a, built.b) == (1, [2])  # no validator, no converter
    with pytest.raises(TypeError):
        build(1)  # no defaults either


@given(st.dictionaries(st.sampled_from(["port", "cli", "to"]), st.text(max_size=4)), st.integers(1, 10**9))
def test_with_id_equals_evolve(fields, id_):
    event = CallEvent("g_000000000000", 1, 2, "RING", 3, 4, "r0", fields)
    assert event.with_id(id_) == evolve(event, id=id_)
    assert event.with_id(id_).fields == event.fields


@given(st.integers(0, 10**12), st.none() | st.integers(0, 10**13))
def test_progressed_equals_evolve(last_seq, last_heard):
    state = GatewayState(
        key="8200_000C2A020082", id="8200", mac="000C2A020082", last_seq=5, boot="b1",
        boot_token="b1", restarts=2, fxs=2, fxo=1, isdn=0, callref=9, firmware="V1",
        peer="127.0.0.1:5", login=7, skew_ms=-3, last_heard=8, online=True,
    )
    assert state.progressed(last_seq, last_heard) == evolve(state, last_seq=last_seq, last_heard=last_heard)


@given(st.text(max_size=4), st.text(max_size=4))
def test_leg_with_values_equals_evolve(cui, dialled):
    leg = Leg("g/b1/7/0", "g/b1/7", "g", 7, "inbound", 1, None, "ACCT-1", "201", "", "127.0.0.1:5")
    assert leg.with_values(cui=cui, dialled=dialled) == evolve(leg, cui=cui, dialled=dialled)
    assert unchecked_leg(*astuple(leg, recurse=False)) == leg


def _csv_writer_line(fields) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(fields)
    return out.getvalue()[:-2]


@given(st.lists(
    st.text(alphabet=st.sampled_from(["a", "7", " ", ",", '"', "\r", "\n", "\t", "é"]))
    | st.sampled_from(["", "2026-11-22T10:00:07.250Z", "-busy"])
    | st.integers()
    | st.none(),
    max_size=8,
))
def test_csv_line_is_what_the_csv_writer_writes(fields):
    # the plain-text shortcut and the writer agree on every row, quoted or not
    assert csv_line(fields) == _csv_writer_line(fields)
    assert csv_line(tuple(fields)) == _csv_writer_line(fields)


def test_csv_line_quotes_as_rfc_4180_requires():
    assert csv_line(["a", "b,c", 'say "hi"', "x\ny"]) == 'a,"b,c","say ""hi""","x\ny"'
    assert csv_line(["", ""]) == ","
    assert csv_line([""]) == '""'
