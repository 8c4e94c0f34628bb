"""The JSON API of interfaces.md, through StubTreq on the real resource."""

import pytest
import pytest_twisted

from cdrd.calls.model import OpenCall
from cdrd.web.query import day_start_ms
from tests.web import fixtures as F

GW = F.GW


@pytest.fixture(params=["memory:", "sqlite"])
def database(request, tmp_path):
    """The API over the in-memory store and over SQLite, cdrd's default."""
    return (
        f"sqlite:{tmp_path}/cdrd.sqlite" if request.param == "sqlite" else request.param
    )


@pytest_twisted.ensureDeferred
async def test_gateways(make_site):
    site = await make_site()
    body = await site.json("/api/gateways")
    assert [g["key"] for g in body["gateways"]] == [F.GW, F.GW2]
    g = body["gateways"][0]
    assert set(g) >= {
        "key",
        "id",
        "mac",
        "online",
        "peer",
        "fxs",
        "fxo",
        "isdn",
        "callref",
        "login",
        "skew_ms",
    }
    assert (g["id"], g["mac"], g["online"], g["fxs"], g["callref"]) == (
        "8200",
        "000C2A020082",
        True,
        2,
        84,
    )
    assert g["login"] == "2026-11-22T08:00:00.000Z"
    assert body["gateways"][1]["skew_ms"] == -3_600_000


@pytest_twisted.ensureDeferred
async def test_calls_counts_and_fields(make_site):
    site = await make_site()
    body = await site.json(
        f"/api/calls?gateway={GW}&from=2026-11-22&to=2026-11-22&filter=out-failed"
    )
    assert (body["total"], body["filtered"]) == (7, 2)
    r = body["records"][1]
    assert set(r) >= {
        "id",
        "gateway",
        "ref",
        "port",
        "pport",
        "notation",
        "dialed",
        "begin",
        "connect",
        "end",
        "talk",
        "pstn_dial",
        "pstn_time",
        "cli",
        "pstn_cli",
        "cause",
    }
    assert (
        r["ref"],
        r["notation"],
        r["port"],
        r["pport"],
        r["pstn_cli"],
        r["cause"],
    ) == (77, "Call out failed", None, 1, "02071234567", "cancelled")
    assert (
        r["begin"] == "2026-11-22T10:10:00.000Z"
        and r["pstn_time"] == 19.4
        and r["talk"] is None
    )

    e1 = (await site.json(f"/api/calls?gateway={GW}&filter=out"))["records"]
    assert [x["ref"] for x in e1] == [90, 75]  # no dates: every day, by begin
    assert (
        e1[1]["talk"] == 120.0
        and e1[1]["dialed"] == "2252, 3"
        and e1[1]["connect"] == "2026-11-22T10:00:07.250Z"
    )


@pytest.mark.parametrize(
    "filt, refs",
    [
        ("all", [75, 76, 77, 81, 82, 83, 84]),
        ("in", [81]),
        ("out", [75]),
        ("pstn", [77]),
        ("out-failed", [76, 77]),
        ("in-reject", [82]),
        ("other", [84]),
    ],
)
@pytest_twisted.ensureDeferred
async def test_every_filter(make_site, filt, refs):
    site = await make_site()
    body = await site.json(
        f"/api/calls?gateway={GW}&from=2026-11-22&to=2026-11-22&filter={filt}"
    )
    assert [r["ref"] for r in body["records"]] == refs
    assert (body["total"], body["filtered"]) == (7, len(refs))


@pytest_twisted.ensureDeferred
async def test_paging(make_site):
    site = await make_site()
    a = await site.json(
        f"/api/calls?gateway={GW}&from=2026-11-22&to=2026-11-22&limit=3"
    )
    b = await site.json(
        f"/api/calls?gateway={GW}&from=2026-11-22&to=2026-11-22&limit=3&offset=3"
    )
    assert [r["ref"] for r in a["records"]] == [75, 76, 77]
    assert [r["ref"] for r in b["records"]] == [81, 82, 83]
    assert a["filtered"] == b["filtered"] == 7


@pytest_twisted.ensureDeferred
async def test_dates_are_days_of_the_configured_zone(make_site):
    # Kolkata is UTC+05:30: 2026-11-22 there is [11-21T18:30Z, 11-22T18:30Z)
    site = await make_site(timezone="Asia/Kolkata")
    assert day_start_ms(F.date(2026, 11, 22), site.web.zone) == F.t(
        "18:30:00", "2026-11-21"
    )
    body = await site.json("/api/calls?from=2026-11-22&to=2026-11-22")
    assert body["total"] == 8  # 7 of GW, 1 of GW2
    # the 20th 09:00Z is 14:30 there: still the 20th
    body = await site.json("/api/calls?from=2026-11-20&to=2026-11-20")
    assert [r["ref"] for r in body["records"]] == [90]


@pytest_twisted.ensureDeferred
async def test_cdrs_lines_and_search(make_site):
    site = await make_site()
    # ordered by start (issue 14); sort=written gives the billing feed's order
    body = await site.json("/api/cdrs?sort=written")
    assert [c["line"] for c in body["cdrs"]] == [
        F.E1_CDR.line,
        F.E3_CDR.line,
        F.GW2_CDR.line,
    ]
    by_start = await site.json("/api/cdrs")
    assert [c["id"] for c in by_start["cdrs"]] == [F.GW2_CDR.id, F.E1_CDR.id, F.E3_CDR.id]
    c = body["cdrs"][0]
    assert (
        c["line"]
        == "2026-11-22T10:00:07.250Z,4.250,120.000,442079460201,2252,442079460201"
    )
    assert set(c) >= {
        "id",
        "line",
        "start",
        "ringing",
        "duration",
        "status",
        "cui",
        "dialled",
        "cli",
        "gateway",
        "call",
    }
    assert (c["ringing"], c["duration"], c["start"]) == (
        4.25,
        120.0,
        "2026-11-22T10:00:07.250Z",
    )
    assert (
        body["cdrs"][1]["duration"] is None and body["cdrs"][1]["status"] == "cancelled"
    )
    assert body["cdrs"][2]["line"].endswith(',"ACME, Ltd",555,201')
    only = await site.json("/api/cdrs?cui=CARRIER-ACME")
    assert [c["id"] for c in only["cdrs"]] == [F.E3_CDR.id]
    by_gw = await site.json(f"/api/cdrs?gateway={F.GW2}&from=2026-11-22&to=2026-11-22")
    assert [c["id"] for c in by_gw["cdrs"]] == [F.GW2_CDR.id]
    assert (await site.json("/api/cdrs?from=2026-11-21&to=2026-11-21"))["cdrs"] == []


@pytest_twisted.ensureDeferred
async def test_events_and_log(make_site):
    site = await make_site()
    body = await site.json(f"/api/events?gateway={GW}&ref=75&limit=2")
    assert [e["type"] for e in body["events"]] == ["HOOK_ON", "DIAL"]  # newest first
    e = body["events"][0]
    assert (e["seq"], e["ref"], e["port"], e["time"], e["digits"]) == (
        6,
        75,
        1,
        "2026-11-22T10:02:07.250Z",
        None,
    )
    assert (await site.json(f"/api/events?gateway={GW}&ref=1"))["events"] == []

    log = await site.json("/api/log?gateway=8200")
    assert [x["event"] for x in log["entries"]] == ["Login", "Logout"]
    assert set(log["entries"][0]) >= {
        "time",
        "gateway",
        "mac",
        "peer",
        "event",
        "detail",
    }
    day = await site.json("/api/log?from=2026-11-22&to=2026-11-22")
    assert [x["event"] for x in day["entries"]] == ["Bad Packet", "Login"]


@pytest.mark.parametrize(
    "query, word",
    [
        ("/api/calls?gateway=nope", "gateway"),
        ("/api/calls?gateway=8200_000C2A02008", "gateway"),
        ("/api/calls?from=2026-13-01", "from"),
        ("/api/calls?from=22-11-2026", "from"),
        ("/api/calls?to=tomorrow", "to"),
        ("/api/calls?from=2026-11-23&to=2026-11-22", "from"),
        ("/api/calls?filter=missed", "filter"),
        ("/api/calls?limit=0", "limit"),
        ("/api/calls?limit=100000", "limit"),
        ("/api/calls?offset=-1", "offset"),
        ("/api/events?ref=x", "ref"),
        ("/api/cdrs?limit=abc", "limit"),
        ("/api/log?gateway=a%20b", "gateway"),
        ("/api/calendar?month=2026-1", "month"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_parameters_are_400_with_error(make_site, query, word):
    site = await make_site()
    body = await site.json(query, code=400)
    assert set(body) == {"error"} and body["error"].startswith(word + ":")


@pytest_twisted.ensureDeferred
async def test_unknown_api_path_is_json_404(make_site):
    site = await make_site()
    assert "error" in await site.json("/api/nothing", code=404)


class Calls:
    def open_calls(self):
        return [OpenCall(F.GW, "b1", 93, F.t("12:59:00"), 2)]


@pytest_twisted.ensureDeferred
async def test_status_and_accounting(make_site):
    radius = {"state": "up", "depth": 0, "server": "127.0.0.1:1813"}
    site = await make_site(
        calls=Calls(),
        status={"radius": lambda: radius, "syslog": lambda: {"connected": True}},
    )
    body = await site.json("/api/status")
    assert body["open_calls"] == [
        {
            "gateway": F.GW,
            "boot": "b1",
            "ref": 93,
            "begin": "2026-11-22T12:59:00.000Z",
            "port": 2,
        }
    ]
    assert body["outputs"] == {"radius": radius, "syslog": {"connected": True}}
    assert await site.json("/api/accounting") == radius
    # without RADIUS: a clear 404
    site = await make_site()
    assert (await site.json("/api/status"))["outputs"] == {}
    assert "error" in await site.json("/api/accounting", code=404)


@pytest_twisted.ensureDeferred
async def test_calendar_marks_local_days(make_site):
    site = await make_site()
    assert (await site.json("/api/calendar?month=2026-11"))["days"] == [
        "2026-11-20",
        "2026-11-22",
    ]
    assert (await site.json(f"/api/calendar?month=2026-11&gateway={F.GW2}"))[
        "days"
    ] == ["2026-11-22"]
    assert (await site.json("/api/calendar?month=2026-10"))["days"] == []
    # Honolulu is UTC-10: 09:00Z is 23:00 the day before, 10:00Z-12:30Z stay on the 22nd
    site = await make_site(timezone="Pacific/Honolulu")
    assert (await site.json("/api/calendar?month=2026-11"))["days"] == [
        "2026-11-19",
        "2026-11-21",
        "2026-11-22",
    ]
