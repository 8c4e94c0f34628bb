"""
Reading FreeRADIUS's detail file strictly (tests/accounting/freeradius.py):
a record that does not parse whole is an error naming its line, never a
half record handed on.  The flaky test of issue 11 read a Stop whose bytes
another FreeRADIUS thread had cut in two (``locking = no``): it came out
with no Acct-Session-Id and a Unix time as its Acct-Delay-Time.

The unit tests build detail text by hand; the integration test makes a
real FreeRADIUS write 40 Stops of over 4 kB each at once.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from attrs import evolve
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor, task

from tests.accounting import examples
from tests.accounting.freeradius import DetailCorrupt, FreeRadius, parse_detail

HEADER = "Sun Dec  6 20:44:01 2026"


def record(session: str, *extra: str, timestamp: int = 1796589841) -> str:
    lines = [HEADER, "\tAcct-Status-Type = Stop", f'\tAcct-Session-Id = "{session}"', *extra,
             "\tAcct-Delay-Time = 0", f"\tTimestamp = {timestamp}"]
    return "\n".join(lines) + "\n\n"


def test_whole_records_are_read_and_the_one_being_written_is_left():
    text = record("a", '\tcdrd-CDR = "x \\"q\\" \\\\ y"', "\tNAS-Port = 1") + record("b")
    partial = record("c")[:60]  # FreeRADIUS is still writing it
    got = parse_detail(text + partial)
    assert [r["Acct-Session-Id"] for r in got] == [["a"], ["b"]]
    assert got[0]["cdrd-CDR"] == ['x "q" \\ y'] and got[0]["NAS-Port"] == ["1"]
    assert got[0]["Timestamp"] == ["1796589841"]
    assert parse_detail("") == [] and parse_detail(partial) == []


def test_a_record_cut_by_another_names_the_line():
    a, b = record("a", '\tcdrd-CDR = "' + "x" * 40 + '"'), record("b")
    cut = a.index("xxxx")
    with pytest.raises(DetailCorrupt, match=r"detail file line 4: not an attribute line: "):
        parse_detail(a[:cut] + b + a[cut:])


def test_the_issue_11_shape_a_stop_without_its_head_is_refused():
    """What the flaky test read: the tail of a Stop, no header, no session id."""
    a = record("a")
    tail = a[a.index("\tAcct-Delay-Time"):]
    with pytest.raises(DetailCorrupt, match=r"line 1: not a record's header line"):
        parse_detail(tail + record("b"))


@pytest.mark.parametrize(("text", "why"), [
    (record("a").replace("\tTimestamp = 1796589841\n", ""), "line 1: a record that does not end with its Timestamp"),
    (record("a").replace("\tAcct-Status-Type = Stop\n", ""), "line 1: a record without Acct-Status-Type"),
    (record("a").replace("\n\n", "\n\tTimestamp = 1\n\n"), "line 6: a second Timestamp"),
    ("\n" + record("a"), "line 1: an empty line outside a record"),
    (record("a").replace("Stop", "Stop Stop"), "line 2: not an attribute line"),
    (record("a").replace('"a"', '"a'), "line 3: not an attribute line"),
])
def test_what_is_not_a_whole_record(text, why):
    with pytest.raises(DetailCorrupt, match=why):
        parse_detail(text)


@given(st.integers(1, 10**6), st.data())
def test_a_record_written_into_another_anywhere_is_always_caught(size, data):
    a = record("a", '\tcdrd-CDR = "' + "7" * (size % 300) + '"', "\tNAS-Port = 12")
    b = record("b", '\tcdrd-CDR = "' + "x" * (size % 17) + '"')
    cut = data.draw(st.integers(1, len(a) - 1))  # anywhere strictly inside `a`
    with pytest.raises(DetailCorrupt):
        parse_detail(record("before") + a[:cut] + b + a[cut:] + record("after"))


# -- a real FreeRADIUS ---------------------------------------------------------

SECRET = "s3cret-cdrd"


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_forty_large_stops_written_at_once_arrive_whole(tmp_path):
    """40 Stops of over 4 kB each (stdio's buffer), sent in one window, so that
    FreeRADIUS's threads write them at the same time: every record reads
    back whole (the reader is strict) and carries its own CDRs."""
    from cdrd.values import LegStart
    from tests.accounting.test_freeradius import config, service, spool

    radius = FreeRadius(tmp_path / "radius", secret=SECRET)
    radius.start()
    leg, stop = examples.largest_stop()
    stops = []
    for n in range(40):
        call = f"{leg.call[:-3]}{n:03d}"
        mine = evolve(leg, id=f"{call}/0", call=call)
        cdrs = tuple(evolve(c, id=f"{n:02d}{c.id[2:]}", call=call, dialled=f"{n:02d}" + c.dialled[2:])
                     for c in stop.cdrs)
        stops.append(evolve(stop, leg=mine, cdrs=cdrs))
    svc, store = service(config(radius))
    try:
        svc.startService()
        try:
            spool(svc, store, [LegStart(s.leg, s.answered) for s in stops] + stops)
            for _ in range(600):
                if not store.items:
                    break
                await task.deferLater(reactor, 0.05, lambda: None)
            assert not store.items
        finally:
            await svc.stopService()
        records = radius.wait_records(lambda r: len(r) >= 80)
        text = radius.detail_path.read_text()
    finally:
        radius.stop()
    got = {r["Acct-Session-Id"][0]: r for r in records if r["Acct-Status-Type"] == ["Stop"]}
    assert len(got) == 40
    for s in stops:
        assert got[s.leg.id]["cdrd-CDR"] == [c.line for c in s.cdrs]
    sizes = [len(chunk) for chunk in text.split("\n\n") if "Acct-Status-Type = Stop" in chunk]
    assert len(sizes) >= 40 and min(sizes) > 4096, sizes
