"""
End to end in real headless Chromium (Debian's /usr/bin/chromium): the
pages served by a real WebApp in its own process (tests/web/serve.py).
Each page's screenshot goes to test-artifacts/screenshots/ for review.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import expect  # locator waits: the pages' CSP forbids eval

from tests.web import fixtures as F
from tests.web import serve

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@contextmanager
def serving(tmp_path_factory, *flags):
    portfile = tmp_path_factory.mktemp("web") / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.web.serve", str(portfile), *flags],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(200):  # 20 s at most
            if portfile.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert portfile.exists(), (
            f"web server did not start: {proc.stderr.read1().decode() if proc.poll() is not None else 'timeout'}"
        )
        yield f"http://127.0.0.1:{portfile.read_text()}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serving(tmp_path_factory) as url:
        yield url


@pytest.fixture(scope="module")
def server_with_outputs(tmp_path_factory):
    """The dashboard with a RADIUS and a syslog status (problems included)."""
    with serving(tmp_path_factory, "--outputs") as url:
        yield url


@pytest.fixture(scope="module")
def server_with_users(tmp_path_factory):
    """Behind HTTP Basic auth (serve.USER / serve.PASSWORD)."""
    with serving(tmp_path_factory, "--users") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    assert os.path.exists(CHROMIUM), "Debian's chromium is not installed"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


def watched(context, allowed=()):
    """A page whose JavaScript errors and CSP violations fail the test
    (`allowed`: console texts a test provokes on purpose)."""
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on(
        "console",
        lambda m: m.type == "error"
        and not any(a in m.text for a in allowed)
        and errors.append(m.text),
    )
    page.errors = errors
    return page


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = watched(context)
    yield page
    context.close()
    assert not page.errors, f"browser errors: {page.errors}"


@pytest.fixture
def phone(browser):
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    page = watched(context)
    yield page
    context.close()
    assert not page.errors, f"browser errors: {page.errors}"


def shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def rows(page, tbody):
    return page.locator(f"#{tbody} tr:not(.empty)")


def test_report_search_and_filter(server, page):
    page.goto(f"{server}/report")
    # opens on today (the fixture day) for all gateways
    assert page.locator("#from").input_value() == F.DAY
    assert page.locator("#total").inner_text() == "8"
    page.select_option("#gateway", F.GW)  # searches at once
    page.wait_for_url("**gateway=8200_000C2A020082**")
    assert page.locator("#total").inner_text() == "7"
    assert page.locator("#filtered").inner_text() == "7"
    # the XSS-shaped caller id is shown as text
    assert page.get_by_text("<script>alert(1)</script>").count() == 1
    shot(page, "report")

    page.click("a[data-filter=out-failed]")
    page.wait_for_url("**filter=out-failed**")
    assert page.locator("#total").inner_text() == "7"
    assert page.locator("#filtered").inner_text() == "2"
    assert rows(page, "records").count() == 2
    assert sorted(
        rows(page, "records").locator("td:nth-child(2)").all_inner_texts()
    ) == ["76", "77"]
    shot(page, "report-filtered")

    # the calendar marks the days with records and a day is a search
    assert page.locator(".calendar td.has a").all_inner_texts() == ["20", "22"]
    page.click(".calendar td.has a >> text=20")
    page.wait_for_url("**from=2026-11-20**")
    assert (
        page.locator("#total").inner_text(),
        page.locator("#filtered").inner_text(),
    ) == ("1", "0")
    page.click("a[data-filter=all]")
    page.wait_for_url(lambda url: "filter=" not in url)
    assert page.locator("#filtered").inner_text() == "1"
    assert page.locator("#records td:nth-child(6)").inner_text() == "100"

    # a search through the form: a range of dates
    page.fill("#from", "2026-11-20")
    page.fill("#to", "2026-11-22")
    page.click("#search")
    page.wait_for_url("**to=2026-11-22**")
    assert (
        page.locator("#total").inner_text(),
        page.locator("#filtered").inner_text(),
    ) == ("8", "8")
    # CSV export of the same search
    csv = page.request.get(server + page.locator("#csv").get_attribute("href")).text()
    lines = csv.strip().split("\r\n")
    assert len(lines) == 9 and lines[0].startswith("#,Call-Ref,Port,Date,Notation")
    assert lines[1].startswith("1,90,1,2026-11-20,Call out,100,00:00:50,09:00:00")


def test_live_event_appears_without_reload(server, page):
    page.goto(f"{server}/gateways/{F.GW}/events")
    assert rows(page, "events").count() == len(F.EVENTS)
    page.wait_for_selector("#live.on", timeout=10_000)
    marker = page.evaluate("window.__marker = Math.random()")
    new_id = page.request.post(
        f"{server}/_test/event?ref=92&type=DIAL&digits=07700900123"
    ).text()
    row = page.locator(f'#events tr[data-id="{new_id}"]')
    row.wait_for(timeout=10_000)
    assert row.locator("td:nth-child(5)").inner_text() == "07700900123"
    assert row.locator("td:nth-child(4)").inner_text() == "DIAL"
    assert (
        rows(page, "events").first.get_attribute("data-id") == new_id
    )  # newest on top
    assert page.evaluate("window.__marker") == marker  # no reload happened
    shot(page, "live-events")


def test_dashboard_log_and_cdrs(server, page):
    page.goto(f"{server}/")
    assert page.locator("#online").inner_text() == "1"
    assert page.locator("#gateways tr").count() == 2
    assert page.locator("svg.chart rect.bar-ans").count() > 0
    shot(page, "dashboard")

    page.goto(f"{server}/log")
    assert rows(page, "log").count() == 2
    assert page.get_by_text("<b>not a verb</b>").count() == 1
    shot(page, "log")
    page.fill("#gateway", "8200")
    page.click("form.search button")
    page.wait_for_url("**gateway=8200**")
    assert rows(page, "log").count() == 1

    page.goto(f"{server}/cdrs")
    assert page.locator("#total").inner_text() == "3"
    page.fill("#cui", "CARRIER-ACME")
    page.click("form.search button")
    page.wait_for_url("**cui=CARRIER-ACME**")
    assert page.locator("#cdrs td.line").all_inner_texts() == [F.E3_CDR.line]
    shot(page, "cdrs")


def card(row) -> dict:
    """What a row shows as a card: {label: text} of its visible cells."""
    return row.evaluate(
        """tr => Object.fromEntries([...tr.cells]
            .filter(td => getComputedStyle(td).display !== 'none')
            .map(td => [td.dataset.label, td.innerText]))"""
    )


def no_sideways_scroll(page, width):
    scroll = page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= width, f"{page.url} is {scroll} px wide"


def test_readable_on_a_phone(server, phone):
    """Every page at 390 px: the page never scrolls sideways; wide tables
    become a card per row with each value labelled, empty ones left out."""
    for name, path, tbody in (
        ("report", "/report", "records"),
        ("dashboard", "/", "gateways"),
        ("live-events", f"/gateways/{F.GW}/events", "events"),
        ("log", "/log", "log"),
        ("cdrs", "/cdrs", "cdrs"),
        ("gateways", "/gateways", None),
    ):
        phone.goto(server + path)
        no_sideways_scroll(phone, 390)
        if tbody:
            assert not phone.locator(f"#{tbody}").locator("xpath=..").locator(
                "thead").is_visible()
            first = phone.locator(f"#{tbody} tr").first
            box = first.bounding_box()
            assert box["width"] <= 372, (name, box)  # a card, not a wide row
            label = first.locator("td").first.evaluate(
                "td => getComputedStyle(td, '::before').content")
            assert label not in ("none", "normal", '""'), (name, label)
        shot(phone, f"phone-{name}")

    # the report's card says what matters: every filled field, labelled
    phone.goto(f"{server}/report?gateway={F.GW}")
    shown = card(phone.locator("#records tr").first)
    assert shown["Call-Ref"] == "75" and shown["Notation"] == "Call out"
    assert shown["Dialed"] == "2252, 3" and shown["End"] == "10:02:07"
    assert "PSTN Dial" not in shown  # empty: left out
    # the dashboard: every gateway column is there, and the chart is legible
    phone.goto(f"{server}/")
    gw = card(phone.locator("#gateways tr").first)
    assert gw["Last login"] == "2026-11-22 08:00:00" and gw["ASR"] == "40%"
    assert gw["Open"] == "0" and gw["ACD"] == "00:02:27"
    assert phone.locator("svg.chart.wide").is_hidden()
    label = phone.locator("svg.chart.narrow text.axis").first
    height = label.bounding_box()["height"]
    assert height >= 11, f"chart labels are {height:.1f} px tall"
    # the live page: a new event arrives as a card too
    phone.goto(f"{server}/gateways/{F.GW}/events")
    phone.wait_for_selector("#live.on", timeout=10_000)
    new_id = phone.request.post(
        f"{server}/_test/event?ref=93&type=RING_BACK&port=2").text()
    row = phone.locator(f'#events tr[data-id="{new_id}"]')
    row.wait_for(timeout=10_000)
    shown = card(row)
    assert shown["Event"] == "RING_BACK" and shown["#"] == "2", shown
    no_sideways_scroll(phone, 390)


def test_cdrs_line_visible_at_1280(server, page):
    """Billing's column, the FireBrick line, is whole without scrolling."""
    page.goto(f"{server}/cdrs?from=2026-11-20&to=2026-11-22")
    box = page.locator(".scroll").first
    assert box.evaluate("b => b.scrollWidth <= b.clientWidth")
    for cell in page.locator("#cdrs td.line").all():
        right = cell.bounding_box()["x"] + cell.bounding_box()["width"]
        assert right <= 1280 - 16, right
        assert cell.evaluate("td => td.scrollWidth <= td.clientWidth")
    assert page.locator("#cdrs td.line").first.inner_text() in (
        F.E1_CDR.line, F.E3_CDR.line, F.GW2_CDR.line)


def test_report_has_no_empty_band_at_1280(server, page):
    page.goto(f"{server}/report")
    counts = page.locator(".counts").bounding_box()
    table = page.locator(".scroll").first.bounding_box()
    gap = table["y"] - (counts["y"] + counts["height"])
    assert gap <= 40, f"{gap:.0f} px of nothing between the counts and the table"


def test_dashboard_shows_the_outputs_as_an_operator_needs(server_with_outputs, page):
    page.goto(f"{server_with_outputs}/")
    radius = page.locator("#output-radius")
    syslog = page.locator("#output-syslog")
    assert radius.locator("h3 .pill").inner_text() == "behind"
    assert "warn" in radius.get_attribute("class")
    assert page.locator("#radius-age b").inner_text() == "00:01:35"
    assert "warn" in page.locator("#radius-age").get_attribute("class")
    servers = page.locator("#radius-servers tr")
    assert servers.count() == 2
    assert "down" in servers.nth(0).inner_text() and "2.7 ms" in servers.nth(1).inner_text()
    assert syslog.locator("h3 .pill").inner_text() == "stalled"
    assert "bad" in syslog.get_attribute("class")
    assert "did not confirm" in page.locator("#syslog-problem").inner_text()
    # problems are coloured: the stalled card's border is the "bad" red
    border = syslog.evaluate("s => getComputedStyle(s).borderTopColor")
    assert border == "rgb(179, 38, 30)", border
    page.locator("h2", has_text="Outputs").scroll_into_view_if_needed()
    shot(page, "dashboard-outputs")


def test_dashboard_outputs_on_a_phone(server_with_outputs, phone):
    phone.goto(f"{server_with_outputs}/")
    no_sideways_scroll(phone, 390)
    assert phone.locator("#output-syslog h3 .pill").inner_text() == "stalled"
    shot(phone, "phone-dashboard-outputs")


def test_live_badge_says_when_the_stream_is_refused_for_good(server, browser):
    """A 401 or 400 ends an EventSource for good: no "reconnecting…" forever."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = watched(context, allowed=("401",))
    try:
        page.route("**/events/stream*", lambda route: route.fulfill(
            status=401, body="authentication required\n", content_type="text/plain"))
        page.goto(f"{server}/gateways/{F.GW}/events")
        page.wait_for_selector("#live.off", timeout=10_000)
        assert page.locator("#live").inner_text() == "live updates stopped: reload the page"
        assert not page.errors, page.errors
    finally:
        context.close()


def test_behind_basic_auth_the_live_page_streams(server_with_users, browser):
    """Every request, the EventSource's too, carries the browser's
    credentials: the live page goes live and shows a new event."""
    url = server_with_users
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        anonymous = context.new_page()
        for path in ("/report", f"/gateways/{F.GW}/events/stream", "/static/cdrd.js"):
            assert anonymous.request.get(url + path).status == 401, path
    finally:
        context.close()
    context = browser.new_context(
        viewport={"width": 1280, "height": 900},
        http_credentials={"username": serve.USER, "password": serve.PASSWORD},
    )
    page = watched(context)
    try:
        r = page.goto(f"{url}/gateways/{F.GW}/events")
        assert r.status == 200
        page.wait_for_selector("#live.on", timeout=10_000)
        new_id = page.request.post(f"{url}/_test/event?ref=94&type=DIAL&digits=555").text()
        row = page.locator(f'#events tr[data-id="{new_id}"]')
        row.wait_for(timeout=10_000)
        assert row.locator("td:nth-child(5)").inner_text() == "555"
        page.goto(f"{url}/report")
        assert page.locator("#total").inner_text() == "8"
        shot(page, "auth-live-events")
        assert not page.errors, page.errors
    finally:
        context.close()


# -- issue 14: search, summary, one call, dashboard at scale, 404 ----------------------


def test_report_search_totals_sort_and_links(server, page):
    page.goto(f"{server}/report?gateway={F.GW}")
    assert page.locator("#t-calls").inner_text() == "7"
    # a number is a link to its search
    page.locator("#records td[data-label='Dialed'] a").first.click()
    page.wait_for_url("**number=2252**")
    assert int(page.locator("#filtered").inner_text()) >= 1
    # sort by Caller ID, then the other way
    page.goto(f"{server}/report?gateway={F.GW}")
    page.click("th a.sort >> text=Caller ID")
    page.wait_for_url("**sort=cli**")
    assert page.locator("th[aria-sort=ascending]").inner_text() == "Caller ID"
    shot(page, "report-sorted")
    # a call ref opens the call whole
    page.locator("#records td[data-label='Call-Ref'] a").first.click()
    page.wait_for_url("**/call?id=**")
    assert page.locator("#record").is_visible()
    assert rows(page, "call-events").count() >= 1
    shot(page, "call")
    page.goto(f"{server}/summary?group=destination&from=2026-11-20&to=2026-11-22")
    assert rows(page, "groups").count() >= 1
    shot(page, "summary")
    assert page.goto(f"{server}/nowhere").status == 404
    assert page.locator("#problem").is_visible() and page.locator("form.search").is_visible()
    shot(page, "404")
    page.errors[:] = [e for e in page.errors if "status of 404" not in e]  # the one asked for


def test_summary_pages_and_sorts(server, page):
    page.goto(f"{server}/summary?group=caller&from=2026-11-20&to=2026-11-22&limit=2")
    assert rows(page, "groups").count() == 2
    count = page.locator("#groups-count").inner_text()
    groups = int(count.split()[0])
    assert groups > 2 and "the CSV has every one" in count
    # busiest first until a header says otherwise
    assert page.locator("th[aria-sort=descending]").inner_text() == "Calls"
    page.locator("#last-page").click()
    page.wait_for_url("**offset=**")
    assert rows(page, "groups").count() == groups - (groups - 1) // 2 * 2
    # a header sorts from the first page, the sorted one again the other way
    page.click("th a.sort >> text=Caller")
    page.wait_for_url("**sort=key**")
    assert "offset" not in page.url
    first = [rows(page, "groups").nth(i).locator("td").first.inner_text() for i in range(2)]
    assert first == sorted(first)
    page.click("th a.sort >> text=Caller")
    page.wait_for_url("**order=desc**")
    assert page.locator("th[aria-sort=descending]").inner_text() == "Caller"
    again = [rows(page, "groups").nth(i).locator("td").first.inner_text() for i in range(2)]
    assert again == sorted(again, reverse=True) and again != first
    shot(page, "summary-paged")
    # the search form keeps the sort and the page size
    page.click("#search")
    page.wait_for_url("**order=desc**")
    assert "limit=2" in page.url and rows(page, "groups").count() == 2


def test_new_pages_on_a_phone(server, phone):
    for name, path in (
        ("summary", "/summary?from=2026-11-20&to=2026-11-22&limit=2"),
        ("call", "/call?id=" + F.E1_CDR.call.replace("/", "%2F")),
        ("live-all", "/live"),
        ("404", "/nowhere"),
        ("400", "/report?from=nope"),
    ):
        phone.goto(server + path)
        no_sideways_scroll(phone, 390)
        shot(phone, f"phone-{name}")
    # the 404 and 400 asked for
    phone.errors[:] = [e for e in phone.errors if "status of 40" not in e]


@pytest.fixture
def own_server(tmp_path_factory):
    """A server of its own: a test that writes to the gateway log (the
    other tests count its entries)."""
    with serving(tmp_path_factory) as url:
        yield url


def test_dashboard_chart_first_ranges_and_gateway_table(own_server, page):
    server = own_server
    page.goto(f"{server}/")
    chart = page.locator("#chart").bounding_box()
    table = page.locator("#gateways").bounding_box()
    assert chart["y"] < table["y"]  # the chart comes first
    # the y-axis labels are whole: none starts left of the chart
    for label in page.locator("svg.chart.wide text.axis[text-anchor=end]").all():
        assert label.bounding_box()["x"] >= chart["x"], label.inner_text()
    page.click("a[data-range='7d']")
    page.wait_for_url("**range=7d**")
    assert "last 7 d" in page.locator("#chart h2").inner_text()
    page.fill("#gw-q", "8300")
    page.click("#gw-filter button")
    page.wait_for_url("**q=8300**")
    assert page.locator("#gateways tr").count() == 1
    page.goto(f"{server}/")
    # live: a gateway that sends turns online without a reload
    marker = page.evaluate("window.__marker = 1")
    page.request.post(f"{server}/_test/event?ref=95&type=DIAL&digits=1")
    # (locator waits, not wait_for_function: the page's CSP rightly forbids eval)
    row = page.locator('#gateways tr[data-id="8200_000C2A020082"]')
    expect(row.locator("td.heard")).not_to_have_text("", timeout=10_000)
    # the gateway log moves the table too: a logout, bad packets, a restart
    assert row.locator("td.state .pill").inner_text() == "online"
    page.request.post(f"{server}/_test/log?event=Logout&gateway=8200&mac=000C2A020082")
    expect(row.locator("td.state .pill")).to_have_text("offline", timeout=10_000)
    assert page.locator("#online").inner_text() == "0"
    for event in ("Bad Packet", "Bad Packet", "Gateway Restart"):
        page.request.post(f"{server}/_test/log?event={event}&gateway=8200&mac=000C2A020082")
    expect(row.locator("td.restarts")).to_have_text("1", timeout=10_000)
    assert row.locator("td.bad-packets").inner_text() == "2"
    page.request.post(f"{server}/_test/log?event=Login&gateway=8200&mac=000C2A020082")
    expect(page.locator("#online")).to_have_text("1", timeout=10_000)
    assert page.evaluate("window.__marker") == marker
    shot(page, "dashboard-chart-first")
