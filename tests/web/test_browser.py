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
from pathlib import Path

import pytest

from tests.web import fixtures as F

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


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    portfile = tmp_path_factory.mktemp("web") / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.web.serve", str(portfile)],
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
def browser():
    assert os.path.exists(CHROMIUM), "Debian's chromium is not installed"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    yield page
    context.close()
    assert not errors, f"browser errors: {errors}"


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


def test_readable_on_a_phone(server, browser):
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    page = context.new_page()
    try:
        for name, path in (
            ("report", "/report"),
            ("dashboard", "/"),
            ("live-events", f"/gateways/{F.GW}/events"),
        ):
            page.goto(server + path)
            # the page itself does not scroll sideways: wide tables scroll in their box
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"{path} is {width} px wide on a phone"
            shot(page, f"phone-{name}")
    finally:
        context.close()
