"""
Integration: alert lines of a real ``twistd -n cdrd``: the only RADIUS
server (a real FreeRADIUS) down while requests wait, then up: one line
each, whatever the retransmissions; a flood of bad packets from one
address over real TCP: one line.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests.accounting.freeradius import FreeRadius
from tests.integration.daemon import ROOT, Daemon, environment

pytestmark = pytest.mark.integration

SECRET = "alert-secret"


def alert_lines(daemon: Daemon, name: str) -> list[str]:
    return [line for line in daemon.log_text().splitlines() if name in line]


@pytest.mark.parametrize("delivery", ["inline", "process"])
def test_the_only_radius_server_down_then_up_is_two_lines(tmp_path, delivery):
    radius = FreeRadius(tmp_path / "radius", secret=SECRET)  # down for now
    daemon = Daemon(tmp_path, extra_config=(
        f'\n[outputs]\ndelivery = "{delivery}"\n'
        "\n[radius]\ninterim_interval = 0\ninitial_timeout = 0.5\nmax_timeout = 1\n"
        f'[[radius.servers]]\naddress = "{radius.address}"\nsecret = "{SECRET}"\n'
    ))
    daemon.start()
    try:
        replay = subprocess.run(
            [sys.executable, "-m", "cdrd.sim.cli", "replay", "--server", f"tcp:127.0.0.1:{daemon.gateway_port}",
             "--gw", "8200", "--mac", "000C2A020082", "--date", "2026-11-22", "example:e1"],
            cwd=ROOT, env=environment(), capture_output=True, timeout=60,
        )
        assert replay.returncode == 0, replay.stdout + replay.stderr
        down = f"RADIUS server {radius.address} not answering"
        daemon.wait_for(lambda: alert_lines(daemon, down), what="the RADIUS-down line")
        # many more retransmissions (every 1 s at most): still one line
        daemon.wait_for(lambda: "cdrd_radius_timeouts_total" in (m := metrics(daemon)) and
                        timeouts(m, radius.address) >= 10, what="ten timeouts")
        assert len(alert_lines(daemon, down)) == 1
        radius.start()
        up = f"RADIUS server {radius.address} answers again"
        daemon.wait_for(lambda: alert_lines(daemon, up), what="the RADIUS-up line")
        radius.wait_records(lambda recs: any(r.get("cdrd-CDR") for r in recs))
        assert len(alert_lines(daemon, down)) == 1 and len(alert_lines(daemon, up)) == 1
    finally:
        daemon.stop()
        radius.stop()


def metrics(daemon: Daemon) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.web_port}/metrics", timeout=10) as r:
        return r.read().decode()


def timeouts(page: str, server: str) -> float:
    prefix = f'cdrd_radius_timeouts_total{{server="{server}"}} '
    return next((float(line[len(prefix):]) for line in page.splitlines() if line.startswith(prefix)), 0.0)


def test_a_flood_of_bad_packets_from_one_address_is_one_line(tmp_path):
    daemon = Daemon(tmp_path, server="bad_packet_flood = 20\n")
    daemon.start()
    try:
        for _ in range(60):  # each connection: HELLO, a bad line, ERR, closed
            with socket.create_connection(("127.0.0.1", daemon.gateway_port), timeout=10) as s:
                s.sendall(b"GARBAGE\n")
                while s.recv(4096):
                    pass
        daemon.wait_for(lambda: "cdrd_bad_packets_total 60.0" in metrics(daemon), what="60 bad packets counted")
        lines = alert_lines(daemon, "bad packet flood from 127.0.0.1")
        assert len(lines) == 1 and "20 bad packets within 60 s" in lines[0]
    finally:
        daemon.stop()
