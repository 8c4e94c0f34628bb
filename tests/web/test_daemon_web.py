"""
The web side of a real cdrd (``twistd -n cdrd``, tests/integration/daemon.py)
in real headless Chromium: a gateway logs in and sends events over GWP/1;
the live page shows them as they are stored, without a reload, and the
dashboard, report and API show the gateway and its call.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from tests.integration.daemon import Daemon, GatewayClient
from tests.web.test_browser import ARGS, CHROMIUM, shot

pytestmark = pytest.mark.integration

GW = "8200_000C2A020082"


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path).start()
    try:
        yield d
    finally:
        d.stop()


def now_text(offset_ms=0):
    ms = int(time.time() * 1000) + offset_ms
    dt = datetime.fromtimestamp(ms / 1000, UTC)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}"


def test_live_page_and_report_of_a_real_cdrd(daemon):
    from playwright.sync_api import sync_playwright

    base = f"http://127.0.0.1:{daemon.web_port}"
    gateway = GatewayClient(daemon.gateway_port)
    ok = gateway.login()
    assert ok.verb == "OK", ok
    daemon.wait_for(lambda: any(g["online"] for g in daemon.api("/api/gateways")["gateways"]),
                    what="the gateway online")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{base}/gateways/{GW}/events")
            page.wait_for_selector("#live.on", timeout=10_000)
            assert page.locator("#events tr:not(.empty)").count() == 0
            page.evaluate("window.__marker = 42")

            events = [("HOOK_OFF", {"port": "1"}), ("DIAL", {"digits": "2252"}),
                      ("BUSY", {}), ("HOOK_ON", {"port": "1"})]
            day = now_text()[:10]  # the pages' zone is UTC here
            for seq, (etype, fields) in enumerate(events, start=1):
                gateway.send("EV", seq=str(seq), ref="75", t=now_text(), type=etype, **fields)
            ack = gateway.read()
            while ack.verb == "ACK" and ack.fields["seq"] != "4":
                ack = gateway.read()
            assert ack.verb == "ACK"

            # (no wait_for_function: the page's CSP rightly forbids eval)
            page.locator("#events tr:not(.empty)").nth(3).wait_for(timeout=10_000)
            assert page.locator("#events tr").count() == 4  # the "no events yet" row is gone
            types = page.locator("#events td:nth-child(4)").all_inner_texts()
            assert types == ["HOOK_ON", "BUSY", "DIAL", "HOOK_OFF"]  # newest on top
            assert page.locator("#events td:nth-child(5)").all_inner_texts()[2] == "2252"
            assert page.evaluate("window.__marker") == 42  # no reload
            shot(page, "daemon-live-events")

            # the call model recorded the call: the report shows it
            daemon.wait_for(lambda: daemon.api(f"/api/calls?gateway={GW}")["records"], what="the record")
            page.goto(f"{base}/report?gateway={GW}&from={day}&to={day}&filter=out-failed")
            assert page.locator("#filtered").inner_text() == "1"
            assert page.locator("#records td:nth-child(6)").inner_text() == "2252"
            assert page.locator("#records td:nth-child(14)").inner_text() == "busy"
            shot(page, "daemon-report")

            page.goto(f"{base}/")
            assert page.locator("#online").inner_text() == "1"
            assert page.locator("#gateways .pill.on").count() == 1
            shot(page, "daemon-dashboard")
            assert not errors, errors
        finally:
            browser.close()
            gateway.close()
