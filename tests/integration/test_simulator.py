"""
The real simulator (the installed ``cdrd-sim``) over loopback TCP against
a running ``twistd -n cdrd``: replay and load, every event acknowledged
and stored exactly once, and the resend after cdrd is killed -9 and
started again mid-run.  What is stored is read from the SQLite file once
cdrd has stopped.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from tests.integration.daemon import ROOT, Daemon

pytestmark = pytest.mark.integration

SIM = Path(sys.executable).with_name("cdrd-sim")


def sim(*args: str) -> list[str]:
    return [str(SIM), *args]


def stored_sequences(daemon: Daemon) -> dict[str, tuple[int, int, int, int]]:
    """Per gateway: (events, distinct seqs, lowest seq, highest seq), checked
    against the gateways' last_seq and stored in seq order."""
    # closing(): a sqlite3 connection's own `with` commits, it does not close
    with closing(sqlite3.connect(daemon.database[len("sqlite:"):])) as db:
        rows = db.execute(
            "SELECT gateway, COUNT(*), COUNT(DISTINCT seq), MIN(seq), MAX(seq) FROM events"
            " WHERE seq IS NOT NULL GROUP BY gateway"
        ).fetchall()
        last = dict(db.execute("SELECT key, last_seq FROM gateways").fetchall())
        in_order = db.execute("SELECT gateway, seq FROM events WHERE seq IS NOT NULL ORDER BY id").fetchall()
    # a gateway's events are stored in seq order: the store reads them by
    # seq as by id (docs/store.md, "Events by gateway")
    previous: dict[str, int] = {}
    for gateway, seq in in_order:
        assert seq > previous.get(gateway, 0), f"{gateway}: seq {seq} stored after seq {previous[gateway]}"
        previous[gateway] = seq
    out = {}
    for gateway, count, distinct, low, high in rows:
        assert last[gateway] == high, f"{gateway}: last_seq {last[gateway]}, stored up to {high}"
        out[gateway] = (count, distinct, low, high)
    return out


def stored_events(daemon: Daemon) -> int:
    with closing(sqlite3.connect(daemon.database[len("sqlite:"):], timeout=10)) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        except sqlite3.OperationalError:  # not created yet
            return 0


def unread_bytes(port: int) -> int:
    """Bytes the gateways sent that cdrd's sockets on `port` have not read (ss's Recv-Q)."""
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    return sum(int(line.split()[0]) for line in out.splitlines() if line.strip())


def assert_whole(stored: dict, gateways: int, events: int) -> None:
    assert len(stored) == gateways
    for gateway, (count, distinct, low, high) in stored.items():
        assert (count, distinct, low) == (high, high, 1), f"{gateway}: {count} events, seq {low}..{high}"
    assert sum(high for *_, high in stored.values()) == events


def test_replay_of_the_worked_examples_is_acked_and_stored(tmp_path):
    daemon = Daemon(tmp_path).start()
    try:
        done = subprocess.run(
            sim("replay", "--server", f"tcp:127.0.0.1:{daemon.gateway_port}", "--gw", "8200",
                "--mac", "000C2A020082", "example:all"),
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stderr + daemon.output()
        assert "37 events (seq 1..37) acked" in done.stdout
        cdrs = daemon.wait_for(lambda: daemon.api("/api/cdrs?gateway=8200_000C2A020082")["cdrs"],
                               what="CDRs")
        assert len(cdrs) >= 5
    finally:
        daemon.stop()
    assert_whole(stored_sequences(daemon), gateways=1, events=37)


def test_load_is_acked_and_stored_whole(tmp_path):
    daemon = Daemon(tmp_path).start()
    try:
        done = subprocess.run(
            sim("load", "--server", f"tcp:127.0.0.1:{daemon.gateway_port}", "--gateways", "10",
                "--rate", "100", "--duration", "2", "--window", "16", "--json"),
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stderr + daemon.output()
        summary = json.loads(done.stdout)
        assert summary["complete"] and summary["errors"] == 0
        assert summary["acked"] == summary["events"] > 0
    finally:
        daemon.stop()
    assert_whole(stored_sequences(daemon), gateways=10, events=summary["events"])


def test_load_across_a_kill_9_and_restart_is_resent_and_stored_once(tmp_path):
    daemon = Daemon(tmp_path).start()
    run = subprocess.Popen(
        sim("load", "--server", f"tcp:127.0.0.1:{daemon.gateway_port}", "--gateways", "10",
            "--rate", "100", "--duration", "6", "--window", "16", "--drain-timeout", "60", "--json"),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        daemon.wait_for(lambda: stored_events(daemon) >= 200, timeout=60, what="the load under way")
        # freeze it first, so that events are surely in flight (sent, not
        # acknowledged) when it dies: they are lost with it and resent
        daemon.proc.send_signal(signal.SIGSTOP)
        daemon.wait_for(lambda: unread_bytes(daemon.gateway_port) > 0, timeout=60,
                        what="events sent to the frozen cdrd")
        daemon.kill9()
        daemon.start()
        out, err = run.communicate(timeout=150)
        assert run.returncode == 0, err + daemon.output()
        summary = json.loads(out)
        assert summary["complete"] and summary["acked"] == summary["events"]
        assert summary["logins"] >= 20  # every gateway logged in again
        assert summary["resent"] > 0  # what the dead cdrd had not acknowledged
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        daemon.stop()
    assert_whole(stored_sequences(daemon), gateways=10, events=summary["events"])


MID_CALL = """\
# date: 2026-11-22
75 10:00:00.000 HOOK_OFF port=1
75 10:00:02.000 DIAL digits=2252
75 10:00:03.000 RING_BACK
75 10:00:08.000 TALK
75 10:02:08.000 HOOK_ON port=1
"""


def test_a_cdrd_restart_mid_call_does_not_split_the_call(tmp_path):
    """
    cdrd is killed -9 and started again while a call is open; the replay
    (no boot token: the server tells a reboot by callref) reconnects with
    the callref of the open call, not the one it started with, so cdrd
    sees a reconnect, not a reboot: one record, no Gateway Restart.
    """
    script = tmp_path / "call.gwp"
    script.write_text(MID_CALL)
    daemon = Daemon(tmp_path).start()
    replay = subprocess.Popen(
        sim("replay", "--server", f"tcp:127.0.0.1:{daemon.gateway_port}", "--gw", "8200",
            "--mac", "000C2A020082", "--speed", "10", str(script)),  # HOOK_ON 12.8 s in
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        daemon.wait_for(lambda: stored_events(daemon) >= 4, timeout=60, what="the call answered")
        daemon.proc.send_signal(signal.SIGSTOP)
        assert stored_events(daemon) == 4, "the call ended before cdrd could be killed mid-call"
        daemon.kill9()
        daemon.start()
        out, err = replay.communicate(timeout=120)
        assert replay.returncode == 0, err + daemon.output()
        assert "5 events (seq 1..5)" in out and "logins 2" in out, out
    finally:
        if replay.poll() is None:
            replay.kill()
            replay.wait()
        daemon.stop()
    with closing(sqlite3.connect(daemon.database[len("sqlite:"):])) as db:
        calls = db.execute("SELECT ref, cause, talk FROM calls").fetchall()
        logins = db.execute("SELECT detail FROM log WHERE event = 'Login' ORDER BY id").fetchall()
        restarts = db.execute("SELECT COUNT(*) FROM log WHERE event = 'Gateway Restart'").fetchone()[0]
    assert restarts == 0
    assert [(ref, talk) for ref, _, talk in calls] == [(75, 120_000)], calls
    assert ["CallRef(74)" in logins[0][0], "CallRef(75)" in logins[1][0]] == [True, True], logins
