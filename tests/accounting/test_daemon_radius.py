"""
Integration, the whole daemon: `twistd -n cdrd` with [radius] pointing at a
FreeRADIUS that is down; cdrd-sim replays worked example E4; cdrd is killed
with -9 while retransmitting and restarted; then FreeRADIUS comes up and
gets every leg's Start and Stop and both CDRs, with Acct-Delay-Time.
"""

from __future__ import annotations

import calendar
import subprocess
import sys
import time

import pytest

from tests.accounting.freeradius import FreeRadius, distinct, duplicates
from tests.integration.daemon import ROOT, Daemon, environment

pytestmark = pytest.mark.integration

SECRET = "daemon-secret"
E4_CDRS = [
    "2026-11-22T10:20:18.000Z,15.900,300.000,442079460201,202,442079460201",
    "2026-11-22T10:20:18.000Z,5.000,300.000,ACCT-202,07700900123,442079460201",
]


def event_timestamp(record) -> int:
    """Event-Timestamp as FreeRADIUS writes it (`Nov 22 2026 10:20:00 UTC`)."""
    text = record["Event-Timestamp"][0]
    assert text.endswith(" UTC"), text
    return calendar.timegm(time.strptime(text[:-4], "%b %d %Y %H:%M:%S"))


@pytest.mark.parametrize("delivery", ["inline", "process"])
def test_kill_9_with_radius_down_then_everything_arrives(tmp_path, delivery):
    radius = FreeRadius(tmp_path / "radius", secret=SECRET)  # down for now
    daemon = Daemon(
        tmp_path,
        extra_config=(
            f'\n[outputs]\ndelivery = "{delivery}"\n'
            "\n[radius]\n"
            "interim_interval = 0\n"
            'nas_ip = "192.0.2.10"\n'
            "initial_timeout = 0.5\n"
            "max_timeout = 2.0\n"
            "[[radius.servers]]\n"
            f'address = "{radius.address}"\n'
            f'secret = "{SECRET}"\n'
            '\n[gateways."8200_000C2A020082"]\n'
            'ports = { 1 = { exten = "201", ddi = "442079460201" }, '
            '2 = { exten = "202", ddi = "442079460202", cui = "ACCT-202" } }\n'
            'lines = { 1 = { cui = "CARRIER-ACME" } }\n'
        ),
    )
    daemon.start()
    try:
        replay = subprocess.run(
            [
                sys.executable,
                "-m",
                "cdrd.sim.cli",
                "replay",
                "--server",
                f"tcp:127.0.0.1:{daemon.gateway_port}",
                "--gw",
                "8200",
                "--mac",
                "000C2A020082",
                "--date",
                "2026-11-22",
                "example:e4",
            ],
            cwd=ROOT,
            env=environment(),
            capture_output=True,
            timeout=60,
        )
        assert replay.returncode == 0, replay.stdout + replay.stderr
        # the call ended and is spooled; cdrd retransmits into the void
        daemon.wait_for(
            lambda: daemon.api("/api/accounting")["retransmissions"] >= 2,
            what="retransmissions",
        )
        assert daemon.api("/api/accounting")["spool_depth"] >= 1
        daemon.kill9()
        killed = time.time()
        daemon.start()
        time.sleep(1.0)
        up = time.time()  # nothing can reach FreeRADIUS before this
        radius.start()
        recs = radius.wait_records(
            lambda r: any(
                line in x.get("cdrd-CDR", []) for x in r for line in E4_CDRS[-1:]
            ),
            timeout=30,
        )
        daemon.wait_for(
            lambda: daemon.api("/api/accounting")["spool_depth"] == 0,
            what="empty spool",
        )
        retransmissions = daemon.api("/api/accounting")["retransmissions"]
        recs = radius.records()
    finally:
        daemon.stop()
        radius.stop()
    # E4's three legs (inbound, 202, 07700900123), a Start and a Stop each,
    # once; a duplicate only where the restarted cdrd's resend also arrived
    first = distinct(recs)
    legs = {k[0] for k in first}
    assert len(legs) == 3 and len(first) == 6
    assert {(k[0], k[1]) for k in first} == {
        (leg, s) for leg in legs for s in ("Start", "Stop")
    }
    duplicates(recs, retransmissions)
    with_cdrs = [r for r in first.values() if "cdrd-CDR" in r]
    assert len(with_cdrs) == 1 and with_cdrs[0]["cdrd-CDR"] == E4_CDRS
    assert all(r["NAS-Identifier"] == ["8200_000C2A020082"] for r in recs)
    assert all(r["cdrd-Gateway-Address"][0].startswith("127.0.0.1:") for r in recs)
    # Acct-Delay-Time is the real wait: from each event (the replay's time,
    # before the kill) to the packet that arrived, which is after FreeRADIUS
    # came up, and before FreeRADIUS wrote it down (its Timestamp; to the
    # second either way: how long the packet took does not matter)
    for r in recs:
        event = event_timestamp(r)
        delay = int(r["Acct-Delay-Time"][0])
        assert event < killed
        assert delay >= int(up) - event - 1, (delay, up - event)
        assert delay <= int(r["Timestamp"][0]) - event + 1, r
