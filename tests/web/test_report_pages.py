"""Issue 14's pages through StubTreq: search, totals, summary, one call,
billing CDRs as columns, the dashboard for many gateways, the live state."""

import json

import attrs
import pytest_twisted
from markupsafe import escape

from cdrd import config as C
from cdrd.interfaces import WriteBatch
from cdrd.values import LogEntry
from tests.web import fixtures as F
from tests.web.test_feed import Connection


def text(body: bytes) -> str:
    return body.decode("utf-8")


def section(html: str, tbody: str) -> str:
    start = html.index(f'id="{tbody}"')
    return html[start:html.index("</tbody>", start)]


@pytest_twisted.ensureDeferred
async def test_report_search_fields_totals_and_links(make_site):
    site = await make_site()
    r, body = await site.get(f"/report?gateway={F.GW}&number=2252&min_duration=60")
    html = text(body)
    assert r.code == 200
    assert 'Filter Record Count <b id="filtered">1</b>' in html  # 75: 2252, 3 and 2 min
    assert 'name="number" id="number" value="2252"' in html
    assert 'name="min_duration" id="min_duration" value="60"' in html
    assert '<b id="t-answered">1</b>' in html and '<b id="t-minutes">2.0</b>' in html
    assert '<b id="t-asr">100%</b>' in html and '<b id="t-acd">00:02:00</b>' in html
    rows = section(html, "records")
    # the call ref opens the call, a number is its search over the same days
    assert f'href="/call?id={F.GW}%2Fb1%2F75"' in rows
    assert 'href="/report?from=2026-11-22&amp;to=2026-11-22&amp;number=2252"' in rows
    # the links of the page keep the search
    assert (
        "/report.csv?gateway=8200_000C2A020082&amp;from=2026-11-22&amp;to=2026-11-22"
        "&amp;number=2252&amp;min_duration=60" in html
    )


@pytest_twisted.ensureDeferred
async def test_report_says_when_a_number_search_matches_more_calls_than_it_counts(make_site):
    site = await make_site()
    site.store.number_count_cap = 1  # "2252": 75 and 77
    r, body = await site.get(f"/report?gateway={F.GW}&number=2252&limit=1")
    html = text(body)
    assert r.code == 200
    assert 'Filter Record Count <b id="filtered">1+</b>' in html
    assert ('<span class="totals" id="totals-capped">more than 1 calls match;'
            ' narrow the dates or the number for exact totals</span>') in html
    assert 'id="t-answered"' not in html
    rows = section(html, "records")
    assert f"/call?id={F.GW}%2Fb1%2F75" in rows and "%2F77" not in rows  # the page: the first of the search
    assert '<span class="where">1–1 of 1+</span>' in html  # the pages go up to the cap
    site.store.number_count_cap = 2
    html = text((await site.get(f"/report?gateway={F.GW}&number=2252&limit=1"))[1])
    assert 'Filter Record Count <b id="filtered">2</b>' in html and 'id="t-answered"' in html


@pytest_twisted.ensureDeferred
async def test_report_sorts_by_a_header_and_pages_by_number(make_site):
    site = await make_site()
    _, body = await site.get(f"/report?gateway={F.GW}&sort=cli&order=desc&limit=2")
    html = text(body)
    assert '<th aria-sort="descending"><a class="sort on desc"' in html
    # the sorted header turns the order round; other headers sort ascending
    assert (
        'href="/report?gateway=8200_000C2A020082&amp;from=2026-11-22&amp;to=2026-11-22'
        '&amp;sort=cli&amp;limit=2">Caller ID</a>' in html
    )
    # 7 records, 2 a page: pages 1 2 … 4, the last one a link
    assert '<b class="page on" aria-current="page">1</b>' in html
    assert 'id="last-page">4</a>' in html and "offset=6" in html
    _, body = await site.get(f"/report?gateway={F.GW}&sort=cli&order=desc&limit=2&offset=6")
    assert '<b class="page on" aria-current="page">4</b>' in text(body)
    assert "7–7 of 7" in text(body)


@pytest_twisted.ensureDeferred
async def test_an_unknown_parameter_is_a_400_page_that_names_it(make_site):
    site = await make_site()
    for path, form in (
        ("/report?cli=2252", 'action="/report"'),
        ("/cdrs?dialed=1", 'action="/cdrs"'),
        ("/summary?group=caller&nope=1", 'action="/summary"'),
        ("/log?number=1", None),
    ):
        r, body = await site.get(path)
        html = text(body)
        assert r.code == 400, path
        name = path.split("?")[1].split("&")[-1].split("=")[0]
        assert name in html, path
        if form:
            assert form in html, path
    r, body = await site.get("/summary?group=week")
    assert r.code == 400 and "group: &#39;week&#39;" in text(body)


@pytest_twisted.ensureDeferred
async def test_summary_page_rows_link_to_their_report(make_site):
    site = await make_site()
    _, body = await site.get("/summary?group=gateway&from=2026-11-20&to=2026-11-22")
    html = text(body)
    rows = section(html, "groups")
    assert f'href="/report?from=2026-11-20&amp;to=2026-11-22&amp;gateway={F.GW}">{F.GW}</a>' in rows
    assert rows.count("<tr>") == 2
    assert 'href="/summary.csv?from=2026-11-20&amp;to=2026-11-22&amp;group=gateway"' in html
    assert '<b id="t-calls">9</b>' in html
    r, body = await site.get("/summary.csv?group=gateway&from=2026-11-20&to=2026-11-22")
    assert r.code == 200 and text(body).startswith("group,key,label,calls")
    # CUI rows list the billing CDRs of that CUI
    _, body = await site.get("/summary?group=cui&from=2026-11-20&to=2026-11-22")
    assert "/cdrs?" in section(text(body), "groups") and "CARRIER-ACME" in text(body)


@pytest_twisted.ensureDeferred
async def test_summary_page_is_paged_and_sortable(make_site):
    site = await make_site()
    await site.store.write(WriteBatch(records=F.callers(10)))
    day = "from=2026-11-22&to=2026-11-22"
    _, body = await site.get(f"/summary?group=caller&{day}&sort=key&limit=5")
    html = text(body)
    assert rows_of(html) == 5 and "13 groups, 5 on this page; the CSV has every one." in html
    assert '<b class="page on" aria-current="page">1</b>' in html
    assert 'id="last-page">3</a>' in html and "1–5 of 13" in html
    # the pages keep the group, the sort and the page size
    here = day.replace("&", "&amp;")
    assert f'href="/summary?{here}&amp;sort=key&amp;limit=5&amp;group=caller&amp;offset=10"' in html
    # the sorted column's header turns the order round; the CSV has every group
    assert 'aria-sort="ascending"><a class="sort on asc"' in html
    assert "sort=key&amp;limit=5&amp;group=caller&amp;order=desc\">Caller</a>" in html
    assert f'href="/summary.csv?{here}&amp;sort=key&amp;group=caller"' in html
    _, body = await site.get(f"/summary?group=caller&{day}&sort=key&limit=5&offset=10")
    html = text(body)
    assert rows_of(html) == 3 and "11–13 of 13" in html
    assert '<b class="page on" aria-current="page">3</b>' in html
    # no sort: the busiest first, shown as Calls descending
    _, body = await site.get(f"/summary?group=caller&{day}")
    html = text(body)
    assert 'aria-sort="descending"><a class="sort on desc" href="/summary?' in html
    assert "13 groups." in html and 'class="pager"' not in html
    r, body = await site.get(f"/summary?group=caller&{day}&sort=begin")
    assert r.code == 400 and "sort: &#39;begin&#39;" in text(body) and 'action="/summary"' in text(body)
    r, body = await site.get(f"/summary?group=caller&{day}&offset=x")
    assert r.code == 400 and "offset:" in text(body)


def rows_of(html: str) -> int:
    return section(html, "groups").count("<tr>")


@pytest_twisted.ensureDeferred
async def test_call_page_shows_the_call_whole(make_site):
    site = await make_site(status={"radius": lambda: {}})
    r, body = await site.get(f"/call?id={F.GW}/b1/75")
    html = text(body)
    assert r.code == 200
    assert "<th>Notation</th><td>Call out</td>" in html
    assert section(html, "call-events").count("<tr") == len(F.EVENTS)
    assert F.E1_CDR.line in section(html, "call-cdrs")
    legs = section(html, "call-legs")
    assert legs.count("<tr") == 2 and "Start answered" in legs and "Stop answered" in legs
    r, body = await site.get(f"/call?id={F.GW}/b1/999")
    assert r.code == 404 and "No record of this call" in text(body)
    r, _ = await site.get("/call")
    assert r.code == 400


@pytest_twisted.ensureDeferred
async def test_billing_cdrs_as_columns_with_totals_per_cui(make_site):
    site = await make_site()
    _, body = await site.get("/cdrs?from=2026-11-20&to=2026-11-22")
    html = text(body)
    rows = section(html, "cdrs")
    # ordered by start: GW2's 09:00:30, then 10:00:07, then 10:10:00
    first, second, third = (str(escape(c.line)) for c in (F.GW2_CDR, F.E1_CDR, F.E3_CDR))
    assert rows.index(first) < rows.index(second) < rows.index(third)
    assert (
        '<td data-label="Duration / status" class="cause">'
        '<a href="/cdrs?from=2026-11-22&amp;to=2026-11-22&amp;cause=cancelled">cancelled</a></td>' in rows
    )
    assert '<td data-label="Ringing">00:00:04</td>' in rows
    cui = section(html, "cui-totals")
    assert cui.count("<tr>") == 3 and ">CARRIER-ACME</a>" in cui


def many_gateways(n):
    keys = [f"{7000 + i}_000C2A02{i:04X}" for i in range(n)]
    data = {"server": {"timezone": "UTC"}, "gateways": {k: {} for k in [F.GW, F.GW2, *keys]}}
    return C.parse(data), keys


@pytest_twisted.ensureDeferred
async def test_dashboard_gateway_table_pages_sorts_and_filters_hundreds(make_site):
    config, keys = many_gateways(300)
    site = await make_site(config=config)
    _, body = await site.get("/")
    html = text(body)
    table = section(html, "gateways")
    assert table.count("<tr") == 50 and "302" in html  # 50 a page of 302
    assert 'id="last-page">7</a>' in html
    _, body = await site.get("/?page=7")
    assert section(text(body), "gateways").count("<tr") == 2
    _, body = await site.get("/?sort=calls&order=desc")
    first = section(text(body), "gateways").split("</tr>")[0]
    assert F.GW in first  # 7 calls: the most
    _, body = await site.get("/?q=7299")
    assert section(text(body), "gateways").count("<tr") == 1
    _, body = await site.get("/?state=online")
    assert section(text(body), "gateways").count("<tr") == 1
    r, body = await site.get("/?state=asleep")
    assert r.code == 400 and "state: " in text(body)


@pytest_twisted.ensureDeferred
async def test_dashboard_counts_bad_packets_and_restarts_and_sees_a_flood(make_site):
    site = await make_site()
    now = F.t("13:00:00")
    bad = [
        LogEntry(time=now - 1000 * i, event="Bad Packet", peer="127.0.0.1:2348", gateway="8200",
                 mac="000C2A020082", detail="junk")
        for i in range(12)
    ]
    restart = LogEntry(time=now - 3_600_000, event="Gateway Restart", peer="127.0.0.1:2348",
                       gateway="8200", mac="000C2A020082")
    await site.store.write(WriteBatch(log=(*bad, restart)))
    _, body = await site.get("/")
    row = section(text(body), "gateways").split("</tr>")[0]
    assert '<span class="pill warn">flooding</span>' in row
    assert '<td data-label="Bad packets" class="bad-packets cause">12</td>' in row
    assert '<td data-label="Restarts" class="restarts">1</td>' in row
    # the fixture's `???` bad packet came from 127.0.0.1, where both gateways
    # last were: it counts for neither
    other = section(text(body), "gateways").split("</tr>")[1]
    assert F.GW2 in other and '<td data-label="Bad packets" class="bad-packets">0</td>' in other


@pytest_twisted.ensureDeferred
async def test_dashboard_ranges(make_site):
    site = await make_site()
    for query, title, bars in (
        ("", "last 24 h", 24), ("?range=7d", "last 7 d", 28), ("?range=30d", "last 30 d", 30),
        ("?range=custom&from=2026-11-20&to=2026-11-22", "2026-11-20 – 2026-11-22", 12),
    ):
        r, body = await site.get("/" + query)
        html = text(body)
        assert r.code == 200 and title in html, query
        wide = html[html.index('<svg class="chart wide"'):]
        wide = wide[:wide.index("</svg>")]
        assert wide.count('class="bar-ans"') == bars, query
    r, _ = await site.get("/?range=1y")
    assert r.code == 400
    r, _ = await site.get("/?range=custom&from=2026-11-22&to=2026-11-20")
    assert r.code == 400


def test_chart_axis_labels_are_never_cut():
    """The left margin fits the widest label: "4736" shows whole."""
    from cdrd.web.pages import _bar_chart, _text_width

    rng = {"bucket_name": "hour", "title": "last 24 h"}
    for top in (3, 47, 4736, 1_234_567):
        chart = _bar_chart([top] + [0] * 23, [0] * 24, ["00:00"] * 24, "wide", 720, 180, 11, rng)
        label = str(chart["grid"][-1]["label"])
        assert int(label) >= top
        assert float(chart["lx"]) - _text_width(label, 11) >= 0, label


@pytest_twisted.ensureDeferred
async def test_live_header_says_online_while_the_gateway_is_connected(make_site):
    """The store says offline (as it does until the gateway's state is next
    written); the registry says connected: the page says online."""
    stale = attrs.evolve(F.GATEWAYS[1], online=False)
    site = await make_site(presence=lambda: [attrs.evolve(stale, peer="127.0.0.1:4000")])
    _, body = await site.get(f"/gateways/{F.GW2}/events")
    html = text(body)
    assert '<span id="gw-state-box"><span class="pill on">online</span></span>' in html
    assert "peer 127.0.0.1:4000" in html
    _, body = await site.get("/")
    assert '<b id="online">2</b>' in text(body)


@pytest_twisted.ensureDeferred
async def test_dashboard_stream_tells_log_entries_events_and_calls(make_site):
    site = await make_site()
    c = Connection(site, "/dashboard/stream")
    site.feed.log_stored([F.LOG[0]])
    site.feed.events_stored([F.EVENTS[0]])
    raw = c.transport.value().decode()
    assert "event: log\n" in raw and "event: heard\n" in raw
    messages = c.messages()
    assert messages[0]["event"] == "Login" and messages[0]["gateway"] == "8200"
    assert messages[1]["gateway"] == F.GW
    c.close()


@pytest_twisted.ensureDeferred
async def test_live_page_of_all_gateways(make_site):
    site = await make_site()
    _, body = await site.get("/live")
    html = text(body)
    assert 'data-url="/live/stream"' in html
    assert section(html, "events").count("<tr") == len(F.EVENTS)
    assert f'<td data-label="Gateway"><a href="/gateways/{F.GW}/events">{F.GW}</a></td>' in html
    events = section(html, "events")  # a call ref opens its call, a number its calls
    assert f'<td data-label="Call-Ref"><a href="/call?id={F.GW}%2Fb1%2F75">75</a></td>' in events
    assert '<td data-label="Dialed"><a href="/report?number=2252">2252</a></td>' in events
    c = Connection(site, "/live/stream")
    site.feed.events_stored([F.EVENTS[0]])
    assert c.messages()[0]["gateway"] == F.GW
    c.close()
    _, body = await site.get("/gateways")
    rows = section(text(body), "gateway-index")
    assert rows.count("<tr") == 2 and '<span class="pill on">online</span>' in rows
    assert json.dumps(F.GW)[1:-1] in rows


@pytest_twisted.ensureDeferred
async def test_repeats_stored_as_one_entry_count_whole_on_the_dashboard_log_page_and_api(make_site):
    from cdrd.interfaces import LogCount

    site = await make_site()
    now = F.t("13:00:00")
    flood = LogEntry(time=now - 30_000, event="Bad Packet", peer="203.0.113.9:40001", gateway="???",
                     detail="unknown verb GARBAGE")
    bad = LogEntry(time=now - 20_000, event="Bad Packet", peer="127.0.0.1:2348", gateway="8200",
                   mac="000C2A020082", detail="junk")
    await site.store.write(WriteBatch(log=(flood, bad)))
    await site.store.write(WriteBatch(log_counts=(LogCount(flood, 2_597), LogCount(bad, 11))))

    _, body = await site.get("/")
    row = section(text(body), "gateways").split("</tr>")[0]
    assert '<td data-label="Bad packets" class="bad-packets cause">11</td>' in row
    assert '<span class="pill warn">flooding</span>' in row  # 11 within the last minute

    _, body = await site.get("/log?from=2026-11-22&to=2026-11-22")
    html = text(body)
    assert "Bad Packet ×2,597 from 203.0.113.9" in html
    assert "Bad Packet ×11 from 127.0.0.1" in html
    assert ">Bad Packet</" in html  # the fixture's single one: as it was

    entries = (await site.json("/api/log?from=2026-11-22&to=2026-11-22"))["entries"]
    assert [(e["event"], e["peer"], e["count"]) for e in entries[:2]] == [
        ("Bad Packet", "127.0.0.1:2348", 11), ("Bad Packet", "203.0.113.9:40001", 2_597)]
    assert {e["count"] for e in entries[2:]} == {1}
