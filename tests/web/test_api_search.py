"""The JSON API's search, totals, summaries, billing CDRs and one call
whole (issue 14), through StubTreq on the real resource, over memory and
SQLite."""

import csv
import io

import pytest
import pytest_twisted

from cdrd.accounting.packets import Payload
from cdrd.interfaces import OutboxItem, WriteBatch
from cdrd.values import call_id
from cdrd.web import query as web_query
from tests.web import fixtures as F

GW = F.GW
DAY = "from=2026-11-22&to=2026-11-22"
C75 = call_id(GW, "b1", 75)


@pytest.fixture(params=["memory:", "sqlite"])
def database(request, tmp_path):
    return f"sqlite:{tmp_path}/cdrd.sqlite" if request.param == "sqlite" else request.param


async def refs(site, query):
    body = await site.json("/api/calls?" + query)
    return [r["ref"] for r in body["records"]]


@pytest.mark.parametrize("query, want", [
    ("number=2252", [75, 77]),  # dialed "2252, 3" and "2252"
    ("number=0207", [77]),  # PSTN Caller ID
    ("number=0800", [82]),  # Caller ID
    ("number=script", [81]),
    ("number=555", [91]),
    ("number=9999", []),
    ("cui=CARRIER", [77]),  # by a CDR's CUI, prefix
    ("cui=ACME", [91]),  # "ACME, Ltd"; not "CARRIER-ACME"
    ("cui=442079460201", [75]),
    ("min_duration=100", [75, 81]),  # seconds of talk
    ("max_duration=100", [91, 76, 77, 82, 83, 84]),  # unanswered: 0 s
    ("min_duration=60&max_duration=150", [91, 75]),
    ("cause=busy", [76]),
    ("cause=no-port", [82]),
    ("time_from=10:00&time_to=11:00", [75, 76, 77]),
    ("time_from=11:30", [82, 83, 84]),  # to the day's end
    ("time_to=10:05", [91, 75]),  # from midnight, to excluded
    ("time_from=12:15&time_to=09:30", [84]),  # over midnight, this day only
    ("filter=out-failed&number=2252", [77]),
    (f"gateway={F.GW2}&number=555&min_duration=90", [91]),
])
@pytest_twisted.ensureDeferred
async def test_call_search_terms(make_site, query, want):
    site = await make_site()
    body = await site.json(f"/api/calls?{DAY}&{query}")
    assert [r["ref"] for r in body["records"]] == want
    assert body["filtered"] == len(want)
    assert body["total"] == (1 if "gateway" in query else 8)  # the day, not the search terms


@pytest_twisted.ensureDeferred
async def test_time_of_day_is_local_and_spans_days(make_site):
    site = await make_site()
    # 12:15 to 09:30 next morning, on each of the 20th..22nd: the 22nd 09:00 is
    # in the 21st's range, the 20th 09:00 in none
    assert await refs(site, "from=2026-11-20&to=2026-11-22&time_from=12:15&time_to=09:30") == [91, 84]
    # Kolkata, UTC+05:30: 15:30-16:30 there is 10:00-11:00Z
    site = await make_site(timezone="Asia/Kolkata")
    assert await refs(site, f"{DAY}&time_from=15:30&time_to=16:30") == [75, 76, 77]


@pytest.mark.parametrize("query, want", [
    ("sort=talk&order=desc", [81, 75, 91]),  # then the unanswered
    ("sort=talk", [76, 77, 82]),  # unanswered first
    ("sort=begin&order=desc", [84, 83, 82]),
    ("sort=cli&order=desc", [81, 82, 91]),  # "" ties: id descending
    ("sort=dialed&order=desc", [91, 76, 75]),
    ("sort=cause", [75, 81, 83]),  # "" first, id order
    ("sort=gateway&order=desc", [91, 84, 83]),
])
@pytest_twisted.ensureDeferred
async def test_sorting(make_site, query, want):
    site = await make_site()
    assert (await refs(site, f"{DAY}&{query}"))[:3] == want


@pytest_twisted.ensureDeferred
async def test_paging_counts_the_search(make_site):
    site = await make_site()
    body = await site.json(f"/api/calls?{DAY}&max_duration=100&limit=4&offset=4")
    assert (body["filtered"], body["offset"], body["limit"]) == (6, 4, 4)
    assert [r["ref"] for r in body["records"]] == [83, 84]


@pytest_twisted.ensureDeferred
async def test_totals(make_site):
    site = await make_site()
    body = await site.json(f"/api/totals?gateway={GW}&{DAY}")
    # attempts: out 75, out failed 76 77, in 81, in reject 82; answered 75 81
    assert body == {"calls": 7, "answered": 2, "attempts": 5, "attempts_answered": 2,
                    "minutes": 4.917, "asr": 40.0, "acd": 147.5,
                    "total_scope": "all", "counted_up_to": None}
    assert (await site.json(f"/api/totals?{DAY}&number=555"))["acd"] == 90.0
    none = await site.json("/api/totals?from=2026-11-01&to=2026-11-01")
    assert (none["calls"], none["asr"], none["acd"]) == (0, None, None)


@pytest_twisted.ensureDeferred
async def test_a_number_search_counts_up_to_the_stores_cap(make_site):
    # "2252" matches 75 and 77 (dialed "2252, 3" and "2252")
    site = await make_site()
    site.store.number_count_cap = 2  # at the cap: exact
    body = await site.json(f"/api/calls?{DAY}&number=2252")
    assert (body["filtered"], body["total_scope"], body["counted_up_to"]) == (2, "all", None)
    totals = await site.json(f"/api/totals?{DAY}&number=2252")
    assert (totals["calls"], totals["total_scope"], totals["counted_up_to"]) == (2, "all", None)
    site.store.number_count_cap = 1  # beyond it: the count stops, the rows stay exact
    body = await site.json(f"/api/calls?{DAY}&number=2252")
    assert (body["filtered"], body["total_scope"], body["counted_up_to"]) == (1, "capped", 1)
    assert [r["ref"] for r in body["records"]] == [75, 77]
    totals = await site.json(f"/api/totals?{DAY}&number=2252")
    assert totals == {
        "calls": None, "answered": None, "attempts": None, "attempts_answered": None,
        "minutes": None, "asr": None, "acd": None, "total_scope": "capped", "counted_up_to": 1,
    }
    # the export pages by keyset: every matching call
    r, csv_body = await site.get(f"/report.csv?{DAY}&number=2252")
    assert r.code == 200 and len(list(csv.reader(io.StringIO(csv_body.decode())))) == 3


@pytest_twisted.ensureDeferred
async def test_summary_groups_with_links(make_site):
    site = await make_site()
    by_gw = await site.json(f"/api/summary?group=gateway&{DAY}")
    assert [(r["key"], r["calls"], r["answered"]) for r in by_gw["rows"]] == [(GW, 7, 2), (F.GW2, 1, 1)]
    assert by_gw["rows"][0]["search"] == {"gateway": GW, "from": "2026-11-22", "to": "2026-11-22"}
    assert by_gw["rows"][0]["link"] == f"/report?from=2026-11-22&to=2026-11-22&gateway={GW}"

    dest = await site.json(f"/api/summary?group=destination&prefix=3&{DAY}&gateway={GW}")
    assert [(r["key"], r["calls"]) for r in dest["rows"]] == [("", 4), ("225", 3)]
    assert dest["rows"][1]["search"]["number"] == "225" and dest["rows"][1]["label"] == "225…"
    assert "number" not in dest["rows"][0]["search"]  # no number: nothing to search by

    callers = await site.json(f"/api/summary?group=caller&{DAY}&filter=in-reject")
    assert [(r["key"], r["calls"], r["search"]["filter"]) for r in callers["rows"]] == [("0800", 1, "in-reject")]

    cuis = await site.json(f"/api/summary?group=cui&{DAY}")
    assert [(r["key"], r["calls"], r["answered"], r["minutes"]) for r in cuis["rows"]] == [
        ("442079460201", 1, 1, 2.0), ("ACME, Ltd", 1, 1, 1.5), ("CARRIER-ACME", 1, 0, 0.0)]
    assert cuis["rows"][0]["link"].startswith("/cdrs?") and cuis["rows"][0]["search"]["cui"] == "442079460201"

    hours = await site.json(f"/api/summary?group=hour&{DAY}")
    assert [(r["label"], r["calls"]) for r in hours["rows"]] == [
        ("2026-11-22 09:00", 1), ("2026-11-22 10:00", 3), ("2026-11-22 11:00", 2), ("2026-11-22 12:00", 2)]
    assert hours["rows"][1]["search"] | {} == {
        "from": "2026-11-22", "to": "2026-11-22", "time_from": "10:00", "time_to": "11:00"}
    # a row's search finds its calls
    assert len(await refs(site, hours["rows"][1]["link"].split("?", 1)[1])) == 3

    days = await site.json("/api/summary?group=day&from=2026-11-20&to=2026-11-22")
    assert [(r["key"][:10], r["calls"]) for r in days["rows"]] == [("2026-11-20", 1), ("2026-11-22", 8)]


@pytest_twisted.ensureDeferred
async def test_summary_hours_and_days_are_local(make_site):
    # Kolkata: 10:00Z is 15:30 there; hours there start at :00 local
    site = await make_site(timezone="Asia/Kolkata")
    hours = await site.json(f"/api/summary?group=hour&{DAY}")
    assert [(r["label"], r["calls"]) for r in hours["rows"]] == [
        ("2026-11-22 14:00", 1), ("2026-11-22 15:00", 3), ("2026-11-22 16:00", 1),
        ("2026-11-22 17:00", 2), ("2026-11-22 18:00", 1)]
    for row in hours["rows"]:
        assert len(await refs(site, row["link"].split("?", 1)[1])) == row["calls"]


@pytest_twisted.ensureDeferred
async def test_summary_pages_and_sorts(make_site):
    site = await make_site()
    # ten callers more on the day: 13 groups in all
    await site.store.write(WriteBatch(records=F.callers(10)))
    every = await site.json(f"/api/summary?group=caller&{DAY}&limit=1000")
    keys = [r["key"] for r in every["rows"]]
    assert every["groups"] == len(keys) == 13 and (every["offset"], every["limit"]) == (0, 1000)
    assert every["rows"][0]["calls"] >= every["rows"][-1]["calls"]  # busiest first
    first = await site.json(f"/api/summary?group=caller&{DAY}")
    assert (first["groups"], first["limit"], len(first["rows"])) == (13, 100, 13)  # 100 a page
    page = await site.json(f"/api/summary?group=caller&{DAY}&limit=5&offset=10")
    assert (page["groups"], page["offset"], page["limit"]) == (13, 10, 5)
    assert [r["key"] for r in page["rows"]] == keys[10:13]
    beyond = await site.json(f"/api/summary?group=caller&{DAY}&limit=5&offset=40")
    assert (beyond["groups"], beyond["rows"]) == (13, [])
    # sorted by the key or a total, both ways; the rows' links carry no sort
    by_key = await site.json(f"/api/summary?group=caller&{DAY}&sort=key&limit=1000")
    assert [r["key"] for r in by_key["rows"]] == sorted(keys)
    down = await site.json(f"/api/summary?group=caller&{DAY}&sort=key&order=desc&limit=3")
    assert [r["key"] for r in down["rows"]] == sorted(keys, reverse=True)[:3]
    assert all("sort" not in r["search"] and "order" not in r["search"] for r in down["rows"])
    for sort in ("calls", "answered", "minutes", "asr", "acd"):
        rows = (await site.json(f"/api/summary?group=caller&{DAY}&sort={sort}&order=desc&limit=1000"))["rows"]
        values = [r[sort] for r in rows]
        known = [v for v in values if v is not None]
        assert known == sorted(known, reverse=True) and values[:len(known)] == known, (sort, values)
    hours = await site.json(f"/api/summary?group=hour&{DAY}&sort=calls&order=desc&limit=2")
    assert [(r["label"], r["calls"]) for r in hours["rows"]] == [("2026-11-22 13:00", 10), ("2026-11-22 10:00", 3)]
    assert hours["groups"] == 5
    cuis = await site.json(f"/api/summary?group=cui&{DAY}&sort=minutes&order=desc&limit=2&offset=1")
    assert (cuis["groups"], [r["key"] for r in cuis["rows"]]) == (3, ["ACME, Ltd", "CARRIER-ACME"])
    # the CSV has every group, whatever limit and offset say
    _, body = await site.get(f"/api/summary.csv?group=caller&{DAY}&sort=key&limit=2&offset=3")
    assert [row[1] for row in csv.reader(io.StringIO(body.decode()))][1:] == sorted(keys)


@pytest_twisted.ensureDeferred
async def test_summary_by_day_over_a_change_of_summer_time(make_site):
    # London: 2026-03-29 01:00Z clocks go forward; 2026-10-25 01:00Z back.
    # A local day is 23 h or 25 h there, and calls at 23:30Z fall on the next
    # local day in summer only.
    site = await make_site(timezone="Europe/London")
    at = [("2026-03-28", "23:30:00"), ("2026-03-29", "22:30:00"), ("2026-03-29", "23:30:00"),
          ("2026-10-24", "23:30:00"), ("2026-10-25", "23:30:00")]
    await site.store.write(WriteBatch(records=[
        F.record(300 + i, "Call in", F.t(hms, day), F.t(hms, day) + 1000, cli="0700")
        for i, (day, hms) in enumerate(at)
    ]))
    days = await site.json("/api/summary?group=day&from=2026-03-01&to=2026-10-31")
    assert [(r["label"], r["calls"]) for r in days["rows"]] == [
        ("2026-03-28", 1), ("2026-03-29", 1), ("2026-03-30", 1), ("2026-10-25", 2)]
    assert [r["key"] for r in days["rows"]][1:] == [
        "2026-03-29T00:00:00+00:00", "2026-03-30T00:00:00+01:00", "2026-10-25T00:00:00+01:00"]
    for row in days["rows"]:
        assert len(await refs(site, row["link"].split("?", 1)[1])) == row["calls"]
    hours = await site.json("/api/summary?group=hour&from=2026-10-24&to=2026-10-25")
    assert [(r["label"], r["calls"]) for r in hours["rows"]] == [("2026-10-25 00:00", 1), ("2026-10-25 23:00", 1)]


@pytest_twisted.ensureDeferred
async def test_summary_csv(make_site):
    site = await make_site()
    r, body = await site.get(f"/api/summary.csv?group=gateway&{DAY}")
    assert r.code == 200 and r.headers.getRawHeaders("content-type") == ["text/csv; charset=utf-8"]
    rows = list(csv.reader(io.StringIO(body.decode())))
    assert rows[0] == ["group", "key", "label", "calls", "answered", "minutes", "asr_percent",
                       "acd_seconds", "link"]
    assert rows[1][:6] == ["gateway", GW, GW, "7", "2", "4.917"]
    _, same = await site.get(f"/api/summary?group=gateway&{DAY}&format=csv")
    assert same == body
    # a caller id that looks like a formula is text in a spreadsheet
    await site.store.write(WriteBatch(records=[F.record(95, "Call in", F.t("12:40:00"), F.t("12:41:00"),
                                                        cli="=1+2")]))
    _, body = await site.get(f"/api/summary.csv?group=caller&{DAY}")
    assert "'=1+2" in body.decode()


@pytest_twisted.ensureDeferred
async def test_a_wide_cdr_search_totals_the_cuis_of_its_page(make_site, monkeypatch):
    # beyond CUI_TOTALS_ALL CDRs, the totals cover the page's CUIs (each over
    # the whole search), not every CUI: a month of every gateway stays cheap
    monkeypatch.setattr(web_query, "CUI_TOTALS_ALL", 2)
    site = await make_site()
    body = await site.json(f"/api/cdrs?{DAY}&limit=1")
    assert body["total"] == 3 and body["cui_totals_scope"] == "page"
    assert [c["cui"] for c in body["cdrs"]] == [F.GW2_CDR.cui]
    assert body["cui_totals"] == [{"cui": F.GW2_CDR.cui, "cdrs": 1, "answered": 1, "minutes": 1.5}]
    _, page = await site.get(f"/cdrs?{DAY}&limit=1")
    assert "the CUIs of this page, over all 3 CDRs" in page.decode()
    body = await site.json(f"/api/cdrs?{DAY}&limit=3")
    assert body["cui_totals_scope"] == "page" and len(body["cui_totals"]) == 3


@pytest_twisted.ensureDeferred
async def test_cdrs_search_order_and_totals_per_cui(make_site):
    site = await make_site()
    body = await site.json(f"/api/cdrs?{DAY}")
    assert [c["call"] for c in body["cdrs"]] == [F.GW2_CDR.call, F.E1_CDR.call, F.E3_CDR.call]  # by start
    c = body["cdrs"][1]
    assert (c["start"], c["ringing"], c["duration"], c["status"], c["cui"], c["dialled"], c["cli"],
            c["gateway"], c["call"]) == ("2026-11-22T10:00:07.250Z", 4.25, 120.0, "", "442079460201",
                                         "2252", "442079460201", GW, C75)
    assert c["line"] == F.E1_CDR.line
    assert body["cui_totals"] == [
        {"cui": "442079460201", "cdrs": 1, "answered": 1, "minutes": 2.0},
        {"cui": "ACME, Ltd", "cdrs": 1, "answered": 1, "minutes": 1.5},
        {"cui": "CARRIER-ACME", "cdrs": 1, "answered": 0, "minutes": 0.0},
    ]
    assert body["cui_totals_scope"] == "all"
    async def ids(q):
        return [c["id"] for c in (await site.json("/api/cdrs?" + q))["cdrs"]]
    assert await ids("cui=CARRIER") == [F.E3_CDR.id]
    assert await ids("number=2252") == [F.E1_CDR.id, F.E3_CDR.id]
    assert await ids("number=0207") == [F.E3_CDR.id]  # its CLI
    assert await ids("min_duration=100") == [F.E1_CDR.id]
    assert await ids("max_duration=100") == [F.GW2_CDR.id, F.E3_CDR.id]
    assert await ids("cause=cancelled") == [F.E3_CDR.id]
    assert await ids(f"{DAY}&time_from=10:00&time_to=10:05") == [F.E1_CDR.id]
    assert await ids("sort=duration&order=desc") == [F.E1_CDR.id, F.GW2_CDR.id, F.E3_CDR.id]
    assert await ids("sort=cui") == [F.E1_CDR.id, F.GW2_CDR.id, F.E3_CDR.id]
    assert await ids(f"call={C75}") == [F.E1_CDR.id]


@pytest_twisted.ensureDeferred
async def test_one_call_whole(make_site):
    site = await make_site()
    body = await site.json(f"/api/call?id={C75}")
    assert body["record"]["ref"] == 75 and body["record"]["id"] == C75
    assert [e["type"] for e in body["events"]] == ["HOOK_OFF", "DIAL", "RING_BACK", "TALK", "DIAL", "HOOK_ON"]
    assert [c["id"] for c in body["cdrs"]] == [F.E1_CDR.id]
    assert body["radius"] is False
    legs = body["legs"]
    assert [(leg["direction"], leg["dialled"], leg["answer"]) for leg in legs] == [
        ("inbound", "2252", "2026-11-22T10:00:07.250Z"), ("outbound", "2252", "2026-11-22T10:00:07.250Z")]
    assert all(leg["requests"] == [] for leg in legs)  # no RADIUS configured
    assert "error" in await site.json("/api/call?id=8200_000C2A020082/b1/1", code=404)


@pytest_twisted.ensureDeferred
async def test_one_call_radius_delivery_state(make_site):
    site = await make_site(status={"radius": lambda: {"state": "up"}})
    leg = f"{C75}/1"
    stop = Payload("req", leg, "Stop", F.t("10:02:07.250"), (("Acct-Status-Type", "Stop"),))
    other = Payload("req", f"{call_id(GW, 'b1', 76)}/1", "Start", F.t("10:05:00"))
    await site.store.write(WriteBatch(outbox=[
        OutboxItem(sink="radius", payload=stop.to_bytes(), created=F.t("10:02:08")),
        OutboxItem(sink="radius", payload=other.to_bytes(), created=F.t("10:05:01")),
    ]))
    body = await site.json(f"/api/call?id={C75}")
    assert body["radius"] is True
    states = {leg["id"]: [(r["status"], r["state"]) for r in leg["requests"]] for leg in body["legs"]}
    assert states == {
        f"{C75}/0": [("Start", "answered"), ("Stop", "answered")],
        leg: [("Start", "answered"), ("Stop", "spooled")],
    }


@pytest.mark.parametrize("query, word", [
    ("/api/calls?cli=201", "unknown parameter: cli"),
    ("/api/calls?month=2026-11", "unknown parameter: month"),
    ("/api/cdrs?filter=in", "unknown parameter: filter"),
    ("/api/events?number=1", "unknown parameter: number"),
    ("/api/log?ref=1", "unknown parameter: ref"),
    ("/api/totals?limit=5", "unknown parameter: limit"),
    ("/api/summary?group=caller&month=2026-11", "unknown parameter: month"),
    ("/api/summary?group=caller&page=2", "unknown parameter: page"),
    ("/api/gateways?x=1", "unknown parameter: x"),
    ("/api/calendar?from=2026-11-01", "unknown parameter: from"),
    ("/api/status?verbose=1", "unknown parameter: verbose"),
    ("/api/call?id=x&ref=1", "unknown parameter: ref"),
    ("/api/calls?min_duration=x", "min_duration:"),
    ("/api/calls?min_duration=-1", "min_duration:"),
    ("/api/calls?max_duration=1.5", "max_duration:"),
    ("/api/calls?min_duration=10&max_duration=5", "min_duration:"),
    ("/api/calls?from=2026-11-22&to=2026-11-22&time_from=25:00", "time_from:"),
    ("/api/calls?from=2026-11-22&to=2026-11-22&time_from=9:00", "time_from:"),
    ("/api/calls?from=2026-11-22&to=2026-11-22&time_to=10:60", "time_to:"),
    ("/api/calls?from=2026-11-22&to=2026-11-22&time_from=24:00", "time_from:"),
    ("/api/calls?time_from=10:00", "time_from:"),  # no days to apply it to
    ("/api/calls?from=2024-01-01&to=2026-01-01&time_to=10:00", "time_to:"),
    ("/api/calls?sort=password", "sort:"),
    ("/api/calls?sort=start", "sort:"),  # a CDR column
    ("/api/cdrs?sort=talk", "sort:"),
    ("/api/calls?order=up", "order:"),
    ("/api/calls?number=" + "1" * 65, "number:"),
    ("/api/calls?cause=" + "x" * 65, "cause:"),
    ("/api/calls?cui=" + "x" * 65, "cui:"),
    ("/api/summary", "group:"),
    ("/api/summary?group=callee", "group:"),
    ("/api/summary?group=caller&prefix=3", "prefix:"),
    ("/api/summary?group=destination&prefix=0", "prefix:"),
    ("/api/summary?group=destination&prefix=x", "prefix:"),
    ("/api/summary?group=hour", "group:"),  # hours need the days
    ("/api/summary?group=day&from=2020-01-01&to=2026-01-01", "group:"),
    ("/api/summary?group=caller&format=xml", "format:"),
    ("/api/summary.csv?group=caller&format=json", "format:"),
    ("/api/summary?group=caller&filter=nope", "filter:"),
    ("/api/summary?group=caller&sort=begin", "sort:"),
    ("/api/summary?group=caller&sort=Calls", "sort:"),
    ("/api/summary?group=day&from=2026-11-01&to=2026-11-22&order=up", "order:"),
    ("/api/summary?group=caller&limit=0", "limit:"),
    ("/api/summary?group=caller&limit=1001", "limit:"),
    ("/api/summary?group=caller&limit=ten", "limit:"),
    ("/api/summary?group=caller&offset=-1", "offset:"),
    ("/api/summary.csv?group=caller&offset=x", "offset:"),
    ("/api/totals?number=" + "1" * 65, "number:"),
    ("/api/call", "id:"),
    ("/api/call?id=" + "x" * 201, "id:"),
])
@pytest_twisted.ensureDeferred
async def test_bad_parameters_are_400_naming_them(make_site, query, word):
    site = await make_site()
    body = await site.json(query, code=400)
    assert set(body) == {"error"} and body["error"].startswith(word), body
