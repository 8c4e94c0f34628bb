"""cdrd.web.query: the search parameters the API and the pages share."""

from datetime import date, time
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.web.test.requesthelper import DummyRequest

from cdrd.web.query import (
    CALL_PARAMS,
    BadParameter,
    call_query,
    cdr_query,
    check_allowed,
    parse_search,
    parse_time_of_day,
    time_windows,
)

UTC = ZoneInfo("UTC")
LONDON = ZoneInfo("Europe/London")
H = 3_600_000


def request(**args):
    r = DummyRequest([b""])
    r.args = {k.encode(): [v.encode()] for k, v in args.items()}
    return r


def test_unknown_parameter_names_it():
    with pytest.raises(BadParameter, match="^unknown parameter: cli$"):
        check_allowed(request(cli="201"), CALL_PARAMS)
    check_allowed(request(number="201", gateway=""), CALL_PARAMS)


def test_time_of_day():
    assert parse_time_of_day("09:05", "t") == time(9, 5)
    assert parse_time_of_day("24:00", "t") == time(0)
    for bad in ("9:05", "24:01", "12:60", "ab:cd", "12-00"):
        with pytest.raises(BadParameter, match="^t: "):
            parse_time_of_day(bad, "t")


def test_windows_follow_the_zone_over_a_dst_change():
    # London went to summer time on 2026-03-29: 09:00 local is 09:00Z before, 08:00Z after
    days = time_windows(date(2026, 3, 28), date(2026, 3, 29), time(9), time(10), LONDON)
    start = 1774656000000  # 2026-03-28T00:00Z
    assert days == ((start + 9 * H, start + 10 * H), (start + 24 * H + 8 * H, start + 24 * H + 9 * H))
    # over midnight, and to the day's end
    assert time_windows(date(2026, 3, 28), date(2026, 3, 28), time(22), time(2), UTC) == (
        (start + 22 * H, start + 26 * H),)
    assert time_windows(date(2026, 3, 28), date(2026, 3, 28), time(22), None, UTC) == (
        (start + 22 * H, start + 24 * H),)
    assert time_windows(date(2026, 3, 28), date(2026, 3, 28), None, time(0), UTC) == (
        (start, start + 24 * H),)
    assert time_windows(date(2026, 3, 28), date(2026, 3, 28), time(5), time(5), UTC) == ()


@given(st.fixed_dictionaries({}, optional={
    "gateway": st.just("8200_000C2A020082"),
    "number": st.from_regex(r"\A[0-9+*#]{1,12}\Z"),
    "cui": st.from_regex(r"\A[A-Z0-9-]{1,10}\Z"),
    "min_duration": st.integers(0, 100).map(str),
    "cause": st.sampled_from(["busy", "cancelled"]),
    "filter": st.sampled_from(["in", "out", "pstn"]),
    "sort": st.sampled_from(["talk", "cli", "begin"]),
    "order": st.just("desc"),
    "time_from": st.sampled_from(["00:00", "09:30", "23:59"]),
    "time_to": st.sampled_from(["01:00", "24:00", "09:30"]),
}))
def test_params_give_the_search_again(args):
    args = dict(args, **{"from": "2026-11-20", "to": "2026-11-22"})
    s = parse_search(request(**args), UTC, allowed=CALL_PARAMS)
    again = parse_search(request(**s.params()), UTC, allowed=CALL_PARAMS)
    assert again == s


def test_queries_of_a_search():
    s = parse_search(request(**{"from": "2026-11-22", "to": "2026-11-22", "min_duration": "60",
                                "max_duration": "90", "sort": "talk", "order": "desc"}), UTC)
    q = call_query(s)
    assert (q.min_talk, q.max_talk, q.sort, q.descending) == (60_000, 90_000, "talk", True)
    # an export pages by keyset: begin order whatever the sort
    assert (call_query(s, keyset=True).sort, call_query(s, after=(1, "x")).descending) == ("begin", False)
    s = parse_search(request(), UTC)
    assert cdr_query(s).sort == "written" and cdr_query(s, default_sort="start").sort == "start"
    assert cdr_query(s, default_sort="start", keyset=True).sort == "written"
