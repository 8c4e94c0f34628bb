"""The operator pages and CSV exports, through StubTreq on the real resource."""

import csv
import io

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
    assert "<td>15:30:00</td>" in html and "<td>00:02:00</td>" in html
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
        assert f"<th>{column}</th>" in html


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
        and "&quot;&gt;&lt;script&gt;" in text(body)
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
    assert html.count("<tr><td>") == 3 and "<td>4</td><td>81</td>" in html


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
    from cdrd.web import app

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
    _, body = await site.get("/cdrs.csv")
    assert text(body) == "".join(
        c.line + "\r\n" for c in (F.E1_CDR, F.E3_CDR, F.GW2_CDR)
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
        calls=Calls(), status={"radius": lambda: {"depth": 3, "state": "failing-over"}}
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
    assert "<svg" in html and "failing-over" in html and "<h3>radius</h3>" in html
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
