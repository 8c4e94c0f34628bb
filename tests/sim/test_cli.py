"""
cdrd-sim as installed, over real loopback TCP: against bench/bare_server.py
(a GWP/1 server that stores nothing) and against a real cdrd process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.daemon import Daemon, GatewayClient

ROOT = Path(__file__).resolve().parents[2]
SIM = Path(sys.executable).with_name("cdrd-sim")

pytestmark = pytest.mark.integration


@pytest.fixture
def bare():
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "bare_server.py"), "--lifetime", "120"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        line = proc.stdout.readline().decode()
        assert line.startswith("listening on "), line
        yield int(line.split()[2])
    finally:
        proc.terminate()
        proc.wait(10)


def sim(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(SIM), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_replay_example_against_bare_server(bare):
    done = sim("replay", "--server", f"tcp:127.0.0.1:{bare}", "--gw", "8200", "--mac", "000C2A020082",
               "--secret", "s", "--window", "3", "example:all")
    assert done.returncode == 0, done.stderr
    assert "37 events (seq 1..37) acked" in done.stdout
    assert "resent 0, logins 1, ERR 0" in done.stdout


def test_replay_file_with_date_option(bare, tmp_path):
    script = tmp_path / "call.gwp"
    script.write_text("75 10:00:00.000 HOOK_OFF port=1\n75 10:00:09.000 HOOK_ON port=1\n")
    done = sim("replay", "--server", f"tcp:127.0.0.1:{bare}", "--gw", "1", "--mac", "000000000001",
               "--date", "2026-11-22", str(script))
    assert done.returncode == 0, done.stderr
    assert "2 events (seq 1..2)" in done.stdout


def test_replay_script_error_is_a_usage_error(tmp_path):
    script = tmp_path / "bad.gwp"
    script.write_text("75 10:00:00.000 HOOK_OFF port=1\n")
    done = sim("replay", "--server", "tcp:127.0.0.1:9", "--gw", "1", "--mac", "000000000001", str(script))
    assert done.returncode == 2
    assert "line 1: time of day without a date" in done.stderr


def test_load_against_bare_server_stops_by_itself(bare):
    done = sim("load", "--server", f"tcp:127.0.0.1:{bare}", "--gateways", "20", "--rate", "200",
               "--duration", "2", "--window", "16", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["complete"] and summary["gateways"] == 20 and summary["logins"] == 20
    # calls are placed by the clock: at most rate x duration (+1 at the start),
    # fewer where a busy machine delayed the last ticks; never a figure a
    # loaded machine misses
    assert 0 < summary["calls"] <= 200 * 2 + 1 and summary["placing_s"] >= 2.0
    assert summary["acked"] == summary["events"] == summary["sent"] > 4 * summary["calls"]
    assert 0 < summary["ack_p50_ms"] <= summary["ack_p99_ms"] <= summary["ack_max_ms"]


def test_replay_worked_examples_into_real_cdrd(tmp_path):
    daemon = Daemon(tmp_path).start()
    try:
        port = str(daemon.gateway_port)
        done = sim("replay", "--server", f"tcp:127.0.0.1:{port}", "--gw", "8200",
                   "--mac", "000C2A020082", "example:all")
        assert done.returncode == 0, done.stderr + daemon.output()
        assert "37 events (seq 1..37) acked" in done.stdout
        # a second run continues at the server's last + 1 (a gateway that lost its counter)
        again = sim("replay", "--server", f"tcp:127.0.0.1:{port}", "--gw", "8200",
                    "--mac", "000C2A020082", "--boot", "second", "example:e1")
        assert again.returncode == 0, again.stderr
        assert "6 events (seq 38..43)" in again.stdout
        client = GatewayClient(daemon.gateway_port)
        ok = client.login()
        assert ok.verb == "OK" and ok.fields["last"] == "43"  # stored durably, all of them
        client.close()
    finally:
        daemon.stop()


def test_replay_rejected_by_real_cdrd(tmp_path):
    daemon = Daemon(tmp_path, '[gateways."8200_000C2A020082"]\nsecret = "right"\n').start()
    try:
        done = sim("replay", "--server", f"tcp:127.0.0.1:{daemon.gateway_port}", "--gw", "8200",
                   "--mac", "000C2A020082", "--secret", "wrong", "example:e2")
        assert done.returncode == 1
        assert "code=auth" in done.stderr
        ok = sim("replay", "--server", f"tcp:127.0.0.1:{daemon.gateway_port}", "--gw", "8200",
                 "--mac", "000C2A020082", "--secret", "right", "example:e2")
        assert ok.returncode == 0, ok.stderr
    finally:
        daemon.stop()


def test_load_against_real_cdrd(tmp_path):
    daemon = Daemon(tmp_path).start()
    try:
        done = sim("load", "--server", f"tcp:127.0.0.1:{daemon.gateway_port}", "--gateways", "10",
                   "--rate", "50", "--duration", "2", "--json", timeout=120)
        assert done.returncode == 0, done.stderr + daemon.output()
        summary = json.loads(done.stdout)
        assert summary["complete"] and summary["errors"] == 0 and summary["calls"] >= 95
        assert summary["acked"] == summary["events"]
    finally:
        daemon.stop()


def test_load_without_a_server_retries_until_its_connect_timeout(tmp_path):
    from tests.integration.daemon import free_port

    done = sim("load", "--server", f"tcp:127.0.0.1:{free_port()}", "--gateways", "3", "--calls", "1",
               "--connect-timeout", "2.5")
    assert done.returncode == 1
    assert "cdrd-sim: 3 of 3 gateways not logged in after 2.5 s (is the server up?)" in done.stderr
    bad = sim("load", "--server", "tcp:127.0.0.1:9", "--calls", "1", "--connect-timeout", "0")
    assert bad.returncode == 2 and "--connect-timeout" in bad.stderr
