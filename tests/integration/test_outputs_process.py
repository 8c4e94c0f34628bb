"""
Integration, ``[outputs] delivery = "process"``: a real ``twistd -n cdrd``
under load from cdrd-sim, a real FreeRADIUS and a real rsyslog; the outputs
process is killed with -9 in the middle of the load.  A new one is started,
reads the outboxes from their start, and every stored CDR reaches
FreeRADIUS and rsyslog; the outboxes end empty.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.accounting.freeradius import FreeRadius
from tests.integration.daemon import ROOT, Daemon, environment, free_port
from tests.outputs.rsyslog import Rsyslog

pytestmark = pytest.mark.integration


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (/proc/*/stat)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def query(database: Path, sql: str) -> list:
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_kill_9_of_the_outputs_process_under_load_loses_no_cdr(tmp_path):
    radius = FreeRadius(tmp_path / "radius")
    rsyslog = Rsyslog(tmp_path / "rsyslog")
    radius.start()
    rsyslog.start()
    daemon = Daemon(tmp_path, extra_config=(
        '\n[outputs]\ndelivery = "process"\n'
        "\n[radius]\ninterim_interval = 0\n"
        f'[[radius.servers]]\naddress = "{radius.address}"\nsecret = "{radius.secret}"\n'
        f'\n[syslog]\ntarget = "tcp:127.0.0.1:{rsyslog.tcp}"\n'
    ))
    database = tmp_path / "cdrd.sqlite"
    daemon.start()
    try:
        daemon.wait_for(lambda: children(daemon.proc.pid), what="the outputs process")
        [first] = children(daemon.proc.pid)
        load = subprocess.Popen(
            [sys.executable, "-m", "cdrd.sim.cli", "load", "--server", f"tcp:127.0.0.1:{daemon.gateway_port}",
             "--gateways", "10", "--rate", "100", "--duration", "6", "--json"],
            cwd=ROOT, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        # some CDRs delivered, more coming: then the outputs process dies
        daemon.wait_for(lambda: query(database, "SELECT count(*) FROM cdrs")[0][0] >= 50, what="50 CDRs")
        os.kill(first, signal.SIGKILL)
        out, err = load.communicate(timeout=120)
        assert load.returncode == 0, out + err
        daemon.wait_for(lambda: [p for p in children(daemon.proc.pid) if p != first], what="a new outputs process")
        daemon.wait_for(lambda: query(database, "SELECT count(*) FROM outbox")[0][0] == 0,
                        timeout=60, what="empty outboxes")
        cdrs = {r[0] for r in query(database, "SELECT id FROM cdrs")}
        deadline = time.monotonic() + 20  # FreeRADIUS and rsyslog write asynchronously
        while True:
            at_radius = {i for r in radius.records() for i in r.get("cdrd-CDR-Id", [])}
            at_syslog = {r[5] for r in rsyslog.cdr_records()}
            if cdrs <= at_radius and cdrs <= at_syslog or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        log = daemon.log_text()
    finally:
        daemon.stop()
        radius.stop()
        rsyslog.stop()
    assert len(cdrs) >= 100
    assert cdrs - at_radius == set()
    assert cdrs - at_syslog == set()
    assert f"outputs process {first} ended" in log
    assert log.count("outputs process started: radius, syslog") >= 2  # the child's own line, relayed


def alive(pid: int) -> bool:
    """`pid` runs (a zombie has exited: its parent has not reaped it yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_outputs_process_ends_when_cdrd_is_killed(tmp_path):
    # cdrd killed -9 (systemd starts a new one, with a new child): the old
    # child sees its stdin close and exits, its reading thread included,
    # instead of holding the database open for good
    daemon = Daemon(tmp_path, extra_config=(
        '\n[outputs]\ndelivery = "process"\n'
        f'\n[syslog]\ntarget = "udp:127.0.0.1:{free_port()}"\n'  # a durable sink: the child runs it
    ))
    daemon.start()
    child = None
    try:
        [child] = daemon.wait_for(lambda: children(daemon.proc.pid), what="the outputs process")
        # the child has started its sinks (it reads the outboxes) before cdrd dies
        daemon.wait_for(lambda: "outputs process started" in daemon.log_text(), what="the child's start")
        daemon.kill9()
        daemon.wait_for(lambda: not alive(child), timeout=30, what=f"the outputs process {child} to exit")
    finally:
        daemon.stop()
        if child is not None and alive(child):
            os.kill(child, signal.SIGKILL)


def test_the_outputs_process_runs_at_the_configured_niceness(tmp_path):
    # near the CPU's limit cdrd's ACKs go first: the child yields the CPU
    daemon = Daemon(tmp_path, extra_config=(
        '\n[outputs]\ndelivery = "process"\nnice = 15\n'
        f'\n[syslog]\ntarget = "udp:127.0.0.1:{free_port()}"\n'
    ))
    daemon.start()
    try:
        [child] = daemon.wait_for(lambda: children(daemon.proc.pid), what="the outputs process")
        daemon.wait_for(lambda: "outputs process started" in daemon.log_text(), what="the child's start")
        ours = os.getpriority(os.PRIO_PROCESS, daemon.proc.pid)
        assert os.getpriority(os.PRIO_PROCESS, child) == min(19, ours + 15)
    finally:
        daemon.stop()
