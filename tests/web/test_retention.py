"""What the store keeps ([retention]) on the dashboard and at /api/retention (StubTreq)."""

import pytest_twisted
from attrs import evolve

from cdrd import config as C
from cdrd.values import rfc3339
from tests.web import fixtures as F


def _day(ms, zone="UTC"):
    from datetime import datetime
    from zoneinfo import ZoneInfo

    return f"{datetime.fromtimestamp(ms / 1000, ZoneInfo(zone)):%Y-%m-%d}"


OLDEST = {
    "events": min(e.time for e in F.EVENTS),
    "log": min(e.time for e in F.LOG),
    "records": min(r.begin for r in F.RECORDS),
}


@pytest_twisted.ensureDeferred
async def test_api_says_forever_by_default_and_the_oldest_held(make_site):
    site = await make_site()
    got = (await site.json("/api/retention"))["retention"]
    assert got == {
        kind: {"days": 0, "kept": "forever", "oldest": rfc3339(ms), "oldest_day": _day(ms)}
        for kind, ms in OLDEST.items()
    }


@pytest_twisted.ensureDeferred
async def test_api_gives_the_days_and_nothing_held_as_null(make_site):
    config = evolve(F.config(), retention=C.RetentionConfig(events_days=1, log_days=7, records_days=400))
    site = await make_site(config=config)
    await site.store.expire("log", OLDEST["log"] + 1, 100)
    await site.store.expire("log", 2**62, 100)
    got = (await site.json("/api/retention"))["retention"]
    assert {k: (v["days"], v["kept"]) for k, v in got.items()} == {
        "events": (1, "1 day"), "log": (7, "7 days"), "records": (400, "400 days")}
    assert got["log"]["oldest"] is None and got["log"]["oldest_day"] is None
    assert got["records"]["oldest_day"] == _day(OLDEST["records"])
    r, _ = await site.get("/api/retention?kind=log")
    assert r.code == 400  # no parameters


@pytest_twisted.ensureDeferred
async def test_dashboard_shows_what_is_kept_and_the_oldest_day(make_site):
    site = await make_site(timezone="Pacific/Kiritimati")  # UTC+14: local days differ
    html = (await site.get("/"))[1].decode()
    box = html.split('<section class="card retention" id="retention">', 1)[1].split("</section>", 1)[0]
    for kind, name in (("events", "Raw events"), ("log", "Gateway log"), ("records", "Call records and CDRs")):
        assert (
            f'<div class="figure" id="retention-{kind}"><span>{name}</span><b>forever</b>'
            f"<small>oldest {_day(OLDEST[kind], 'Pacific/Kiritimati')}</small></div>"
        ) in box
    assert "days before the oldest show no calls" not in box

    config = evolve(F.config(), retention=C.RetentionConfig(records_days=90))
    site = await make_site(config=config)
    html = (await site.get("/"))[1].decode()
    assert '<div class="figure" id="retention-records"><span>Call records and CDRs</span><b>90 days</b>' in html
    assert "days before the oldest show no calls" in html
