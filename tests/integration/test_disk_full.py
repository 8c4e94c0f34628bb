"""
A store outage the gateways ride out (issue 11 point 4): the SQLite store
lives on a small tmpfs of its own, `cdrd-sim load` runs against a real
cdrd, the filesystem fills up under the load, and space comes back when
the test deletes a ballast file it placed there.

What must hold, whatever the machine's load:
- nothing acknowledged is lost: the simulator's counts equal the store's,
  every gateway's seqs 1..n once, one call record per call, no call split
  by a "Gateway Restart" (a reconnect is not a reboot);
- no gateway gives up: every LOGIN during the outage is answered OK or
  ERR unavailable, never a rejection, and the simulator retries;
- once space is back, a gateway's next attempt gets in: no attempt begun
  after the ballast was deleted failed, so a gateway is back within the
  backoff it was waiting out (bounded by 60 s) plus one login;
- cdrd logs the outage as one line when it begins and one when it clears
  (not a traceback per write).

How long each gateway took to resume is measured (printed with -s).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import tempfile
import time
from contextlib import closing
from pathlib import Path

import pytest

from tests.integration.daemon import ROOT, Daemon
from tests.integration.test_simulator import assert_whole, sim, stored_sequences

pytestmark = pytest.mark.integration

TMPFS_SIZE = "24m"
HEADROOM = 1_500_000  # bytes left free beside the ballast: a few seconds of the load
CALLS = 3000  # several times what fits in HEADROOM (a call is ~2-3 kB in the store)
RATE = 150  # calls per second: placing them all takes 20 s
HOLD = 6.0  # seconds the disk stays full once cdrd says so (backoffs grow to 4-8 s)
GRACE = 30.0  # seconds for one connect + login + first stored event on a busy machine


@pytest.fixture
def small_disk():
    """A tmpfs of TMPFS_SIZE at a fresh directory under /tmp, unmounted after the test."""
    mount = Path(tempfile.mkdtemp(prefix="cdrd-tmpfs-", dir="/tmp"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        mount.rmdir()
        pytest.fail(f"cannot mount a tmpfs (the test needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        done = subprocess.run(["umount", str(mount)], capture_output=True, text=True)
        if done.returncode != 0:  # still busy: detach it so that nothing leaks, then say so
            subprocess.run(["umount", "--lazy", str(mount)], check=False)
        mount.rmdir()
        assert done.returncode == 0, f"umount {mount}: {done.stderr.strip()}"


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(mount: Path, leave: int) -> Path:
    """A ballast file taking all but `leave` bytes of the filesystem."""
    ballast = mount / "ballast"
    size = free_bytes(mount) - leave
    assert size > 0, f"only {free_bytes(mount)} bytes free on {mount}"
    with open(ballast, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, size)
    return ballast


def wait_for(predicate, timeout: float, what: str, output=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{output()}")


def test_a_full_disk_under_load_loses_nothing_and_every_gateway_resumes(tmp_path, small_disk):
    daemon = Daemon(tmp_path, database=f"sqlite:{small_disk / 'cdrd.sqlite'}").start()
    run = None
    try:
        ballast = fill(small_disk, HEADROOM)
        run = subprocess.Popen(
            sim("load", "--server", f"tcp:127.0.0.1:{daemon.gateway_port}", "--gateways", "20",
                "--rate", str(RATE), "--calls", str(CALLS), "--window", "16", "--drain-timeout", "300",
                "--json"),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        began = time.time()
        wait_for(lambda: "the store refuses writes" in daemon.log_text() or run.poll() is not None,
                 120, "the disk to fill", daemon.output)
        assert run.poll() is None, "the load ended before the disk filled"
        time.sleep(HOLD)
        ballast.unlink()
        space_back = time.time()
        print(f"\nfull after {space_back - HOLD - began:.1f} s, space back after {space_back - began:.1f} s")
        out, err = run.communicate(timeout=400)
        assert run.returncode == 0, err + daemon.output()
        summary = json.loads(out)
        log = daemon.log_text()
    finally:
        if run is not None and run.poll() is None:
            run.kill()
            run.wait()
        daemon.stop()

    # nothing acknowledged is lost, nothing stored twice
    assert summary["complete"] and summary["acked"] == summary["events"] and summary["calls"] == CALLS
    assert summary["errors"] == 0  # no bad packet: the resends are well formed
    assert summary["unavailable"] > 0  # the outage reached the gateways ...
    assert_whole(stored_sequences(daemon), gateways=20, events=summary["events"])
    with closing(sqlite3.connect(daemon.database[len("sqlite:"):])) as db:
        calls, distinct = db.execute("SELECT COUNT(*), COUNT(DISTINCT gateway || ' ' || boot || ' ' || ref)"
                                     " FROM calls").fetchone()
        causes = dict(db.execute("SELECT cause, COUNT(*) FROM calls GROUP BY cause").fetchall())
        rejected = db.execute("SELECT COUNT(*) FROM log WHERE event IN ('Login Rejected', 'Gateway Restart')"
                              ).fetchone()[0]
        first_after = dict(db.execute(
            "SELECT gateway, MIN(received) FROM events WHERE seq IS NOT NULL AND received >= ?"
            " GROUP BY gateway", (int(space_back * 1000),)).fetchall())
    assert calls == distinct == CALLS, causes  # one record per call
    assert "gateway-restart" not in causes and "stale" not in causes
    assert rejected == 0  # ... and no LOGIN was rejected, no gateway declared rebooted

    # every gateway back within the backoff it was waiting out, plus one login
    outages = [dict(zip(("gateway", "began", "resumed", "failed", "last_failed", "delay"), o, strict=True))
               for o in summary["outages"]]
    # the outage reached every gateway, and every one stored events again
    # after it (the load places calls for CALLS / RATE = 20 s; the disk is
    # full after 1-2 s and space is back HOLD s later)
    assert len({o["gateway"] for o in outages}) == len(first_after) == 20, (outages, first_after)
    spanning = {o["gateway"]: o for o in outages if o["began"] < space_back <= o["resumed"]}
    for o in spanning.values():
        # the property: no attempt that began once space was back failed
        assert o["last_failed"] is None or o["last_failed"] < space_back, o
    resumed_after = {gw: first_after[gw] / 1000 - space_back for gw in first_after}
    for gw, seconds in resumed_after.items():
        waited = spanning[gw]["delay"] if gw in spanning else 0.0
        assert seconds <= waited + GRACE, (gw, seconds, spanning.get(gw))
    print(f"\nresumed after space came back: {len(resumed_after)} gateways, "
          f"min {min(resumed_after.values()):.2f} s, max {max(resumed_after.values()):.2f} s; "
          f"longest backoff waited {max((o['delay'] for o in spanning.values()), default=0):.2f} s; "
          f"ERR unavailable {summary['unavailable']}, failed attempts {summary['connect_failures']}, "
          f"outages {len(outages)}")

    # the outage is said when it begins and when it clears, by the writer; not
    # a traceback per write, not a line per gateway or per retry
    refuses = log.count("the store refuses writes")
    assert refuses >= 1 and refuses == log.count("the store takes writes again")
    assert "#warn] store write failed (" not in log  # the protocol's line per gateway
    assert log.count("#error] calls: writing") <= refuses  # the call service's first failure of each
    assert "Traceback" not in log, log[log.index("Traceback") - 2000:][:6000]
