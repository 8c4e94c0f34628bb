"""The shared values' text forms."""

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from cdrd.values import MAX_MS, parse_rfc3339, rfc3339


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
