"""
Integration: the CUI from RADIUS (RFC 4372) with the whole daemon and a real
FreeRADIUS whose `authorize` runs the stock `files` module on a users file
that answers with Chargeable-User-Identity (or rejects).

- an incoming PSTN call on the carrier line (cui=CARRIER-ACME) gets RADIUS's
  CUI in its sticky CDR; the answer is a RADIUS_CUI event in the log, so
  after a kill -9 and a restart (the call still open) the CDR is the same;
- a rejected caller keeps its record, with cause `cui-rejected`;
- a dead auth server delays nothing: every event is acknowledged at once,
  the call keeps the line's CUI, and the timeout is in the log.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.accounting.freeradius import FreeRadius, free_udp_port
from tests.integration.daemon import ROOT, Daemon, environment

pytestmark = pytest.mark.integration

SECRET = "authorize-secret"
GW = "8200_000C2A020082"
USERS = (
    "02071234567 Auth-Type := Accept\n"
    '\tChargeable-User-Identity := "RADIUS-0207"\n'
    "\n"
    "02070000000 Auth-Type := Reject\n"
)
GATEWAY = (
    f'\n[gateways."{GW}"]\n'
    'ports = { 1 = { exten = "201", ddi = "442079460201" } }\n'
    'lines = { 1 = { cui = "CARRIER-ACME" }, 2 = { cui = "CARRIER-TWO", authorize = false } }\n'
)


def config(auth_address: str, acct: FreeRadius | None = None, timeout=0.5, retries=1) -> str:
    out = (
        "\n[radius]\n"
        "interim_interval = 0\n"
        'nas_ip = "127.0.0.1"\n'
        "authorize = true\n"
        f"auth_timeout = {timeout}\n"
        f"auth_retries = {retries}\n"
        "[[radius.auth_servers]]\n"
        f'address = "{auth_address}"\n'
        f'secret = "{SECRET}"\n'
    )
    if acct is not None:
        out += f'[[radius.servers]]\naddress = "{acct.address}"\nsecret = "{SECRET}"\n'
    return out + GATEWAY


def replay(daemon, text, tmp_path, name):
    script = tmp_path / f"{name}.gwp"
    script.write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "cdrd.sim.cli", "replay",
         "--server", f"tcp:127.0.0.1:{daemon.gateway_port}", "--gw", "8200",
         "--mac", "000C2A020082", "--date", "2026-11-22", "--boot", "auth1", str(script)],
        cwd=ROOT, env=environment(), capture_output=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def answers(daemon, ref):
    events = daemon.api(f"/api/events?gateway={GW}&ref={ref}&from=2026-11-22&to=2026-11-22")
    return [e for e in events["events"] if e["type"] == "RADIUS_CUI"]


def cdr_lines(daemon, ref):
    cdrs = daemon.api(f"/api/cdrs?gateway={GW}&from=2026-11-22&to=2026-11-22")["cdrs"]
    return [c["line"] for c in cdrs if c["call"].endswith(f"/{ref}")]


def test_cui_from_freeradius_reject_and_replay_after_kill_9(tmp_path):
    radius = FreeRadius(tmp_path / "radius", secret=SECRET, users=USERS)
    radius.start()
    daemon = Daemon(tmp_path, extra_config=config(f"127.0.0.1:{radius.auth_port}", radius))
    daemon.start()
    try:
        replay(daemon, (
            "77 10:10:00.000 PSTN_CALL_IN cli=02071234567 pport=1\n"
            "77 10:10:00.500 PSTN_HOOK_OFF pport=1\n"
            "78 10:11:00.000 PSTN_CALL_IN cli=02070000000 pport=1\n"
        ), tmp_path, "begin")
        got = daemon.wait_for(lambda: answers(daemon, 77) or None, what="the answer about 77")
        assert [(a["result"], a["cui"], a["seq"]) for a in got] == [("accept", "RADIUS-0207", None)]
        daemon.wait_for(lambda: answers(daemon, 78) or None, what="the answer about 78")
        daemon.kill9()  # the calls are open; the answers are in the log
        daemon.start()
        replay(daemon, (
            "77 10:10:01.000 DIAL digits=2252\n"
            "77 10:10:02.000 RING_BACK\n"
            "78 10:11:01.000 DIAL digits=2253\n"
            "78 10:11:03.000 TALK\n"
            "77 10:10:20.000 PSTN_HOOK_ON pport=1\n"
            "77 10:10:20.000 HOOK_ON\n"
            "78 10:12:03.000 HOOK_ON\n"
        ), tmp_path, "end")
        lines = daemon.wait_for(lambda: cdr_lines(daemon, 77) or None, what="the CDR of 77")
        calls = daemon.api(f"/api/calls?gateway={GW}&from=2026-11-22&to=2026-11-22")["records"]
        rejected = daemon.wait_for(lambda: cdr_lines(daemon, 78) or None, what="the CDR of 78")
        recs = daemon.wait_for(
            lambda: (radius.records() if any("cdrd-CDR" in r for r in radius.records()) else None),
            what="the Stop with the CDR",
        )
    finally:
        daemon.stop()
        radius.stop()
    # RADIUS's CUI, ahead of the line's CARRIER-ACME, in the sticky CDR
    assert lines == ["2026-11-22T10:10:00.000Z,18.000,-cancelled,RADIUS-0207,2252,02071234567"]
    # the caller's accounting session has it too: its Start waited for the
    # DIAL, which came after the answer (and after the restart, which
    # rebuilt the call from the log, the answer included)
    start = next(r for r in recs if r["Acct-Session-Id"][0].endswith("/77/0")
                 and r["Acct-Status-Type"] == ["Start"])
    assert start["User-Name"] == ["RADIUS-0207"]
    # rejected: the line's CUI, and the record, with the cause
    assert rejected == ["2026-11-22T10:11:03.000Z,0.000,60.000,CARRIER-ACME,2253,02070000000"]
    by_ref = {c["ref"]: c for c in calls}
    assert by_ref[78]["cause"] == "cui-rejected" and by_ref[78]["talk"] == 60.0


def test_a_dead_auth_server_delays_nothing_and_the_line_cui_stays(tmp_path):
    dead = f"127.0.0.1:{free_udp_port()}"  # nothing answers there
    # 2 tries of 8 s: everything below happens while cdrd still waits
    daemon = Daemon(tmp_path, extra_config=config(dead, timeout=8, retries=1))
    daemon.start()
    try:
        # the whole call, E3, acknowledged event by event without waiting
        replay(daemon, (
            "77 10:10:00.000 PSTN_CALL_IN cli=02071234567 pport=1\n"
            "77 10:10:01.000 DIAL digits=2252\n"
            "77 10:10:02.000 RING_BACK\n"
            "77 10:10:20.000 HOOK_ON\n"
            "79 10:20:00.000 PSTN_CALL_IN cli=02071234567 pport=2\n"
            "79 10:20:05.000 HOOK_ON\n"
        ), tmp_path, "e3")
        lines = daemon.wait_for(lambda: cdr_lines(daemon, 77) or None, what="the CDR")
        waiting = daemon.api("/api/status")
        assert answers(daemon, 77) == []  # still unanswered: nothing waited for it
        got = daemon.wait_for(lambda: answers(daemon, 77) or None, timeout=60, what="the timeout")
        time_out = answers(daemon, 79)
    finally:
        daemon.stop()
    assert lines == ["2026-11-22T10:10:00.000Z,18.000,-cancelled,CARRIER-ACME,2252,02071234567"]
    assert [a["result"] for a in got] == ["timeout"]
    assert time_out == []  # line 2 opted out: never asked
    assert waiting["outputs"]["radius_authorize"]["in_flight"] == 1
