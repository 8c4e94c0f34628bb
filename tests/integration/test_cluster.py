"""
Three cdrd nodes on one PostgreSQL behind a real HAProxy (etc/haproxy.cfg
on loopback), `cdrd-sim load` through it, one node killed -9 mid-run; then
every call and CDR is checked end to end: in the store and in a real
FreeRADIUS's detail file (docs/store.md, "Several nodes").
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from cdrd.store.sql import CDR_COLS, _cdr
from tests.accounting.freeradius import FreeRadius, distinct, duplicates
from tests.integration.daemon import Daemon
from tests.integration.haproxy import HAProxy

pytestmark = pytest.mark.integration

SIM = Path(sys.executable).with_name("cdrd-sim")
SECRET = "s3cret-cluster"


def rows(url, statement, params=()):
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(statement, params).fetchall()


def three_nodes(tmp_path, url, radius) -> list[Daemon]:
    out = []
    for n in (1, 2, 3):
        (tmp_path / f"n{n}").mkdir()
        out.append(Daemon(tmp_path / f"n{n}", database=url, extra_config=(
            f'\n[cluster]\nlease_seconds = 2\nnode = "n{n}"\n'
            "\n[radius]\ninterim_interval = 0\ninitial_timeout = 0.5\n"
            f'[[radius.servers]]\naddress = "{radius.address}"\nsecret = "{SECRET}"\n'
        )))
    return out


def test_three_nodes_behind_haproxy_lose_nothing_when_one_is_killed(tmp_path, pg_database):
    _, url = pg_database
    radius = FreeRadius(tmp_path / "radius", secret=SECRET)
    radius.start()
    nodes = three_nodes(tmp_path, url, radius)
    proxy = HAProxy(tmp_path / "haproxy", [(n.gateway_port, n.web_port) for n in nodes])
    sim = None
    try:
        for n in nodes:
            n.start()
        proxy.start()
        sim = subprocess.Popen(
            [str(SIM), "load", "--server", f"tcp:127.0.0.1:{proxy.port}", "--gateways", "24",
             "--rate", "20", "--duration", "16", "--drain-timeout", "90", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        # mid-run, the node doing the cluster's work (so its outboxes move
        # too) is killed, once it owns gateways
        deadline = time.monotonic() + 60
        while True:
            owners = dict(rows(url, "SELECT gateway, node FROM gateway_leases"))
            work = owners.get("#work")
            theirs = sorted(g for g, node in owners.items() if node == work and not g.startswith("#"))
            if theirs and len(owners) > 20 and rows(url, "SELECT COUNT(*) FROM calls")[0][0] > 20:
                break
            assert time.monotonic() < deadline and sim.poll() is None, owners
            time.sleep(0.2)
        victim = nodes[int(work[1:]) - 1]
        killed_ms = int(time.time() * 1000)
        victim.kill9()

        out, err = sim.communicate(timeout=300)
        assert sim.returncode == 0, err.decode()
        summary = json.loads(out.decode().strip().splitlines()[-1])
        assert summary["complete"] and summary["acked"] == summary["events"] == summary["sent"], summary

        # seconds until each of the dead node's gateways had an event stored again
        back = [
            (rows(url, "SELECT MIN(received) FROM events WHERE gateway = %s AND received > %s",
                  (g, killed_ms))[0][0] - killed_ms) / 1000
            for g in theirs
        ]
        print(f"\ncluster: killed {work} with {len(theirs)} of {summary['gateways']} gateways;"
              f" they ingested again after {min(back):.2f} s (first), {statistics.median(back):.2f} s"
              f" (median), {max(back):.2f} s (last)")

        live = [n for n in nodes if n is not victim]
        # every event once, no reboot invented by a takeover
        assert rows(url, "SELECT COUNT(*), COUNT(DISTINCT (gateway, seq)) FROM events WHERE seq IS NOT NULL") == [
            (summary["events"], summary["events"])]
        assert rows(url, "SELECT COUNT(*) FROM events WHERE type = 'GATEWAY_RESTART'") == [(0,)]
        # every call one record (the model's products of the dead node's
        # acknowledged events are made by the new owner)
        for n in live:
            n.wait_for(lambda: rows(url, "SELECT COUNT(*) FROM calls")[0][0] >= summary["calls"],
                       timeout=60, what="every call's record")
        assert rows(url, "SELECT COUNT(*), COUNT(DISTINCT (gateway, boot, ref)) FROM calls") == [
            (summary["calls"], summary["calls"])]
        # every pending accounting request delivered by the new #work holder
        live[0].wait_for(lambda: rows(url, "SELECT COUNT(*) FROM outbox")[0][0] == 0,
                         timeout=90, what="the outboxes drained")
        cdrs = [_cdr(r) for r in rows(url, f"SELECT {CDR_COLS} FROM cdrs")]
        assert len({c.id for c in cdrs}) == len(cdrs) > 0

        recs = radius.wait_records(lambda r: False, timeout=1)
        first = distinct(recs)
        # each leg's Start and Stop, with the same Acct-Session-Id
        sessions: dict[str, set[str]] = {}
        for session, status, *_ in first:
            sessions.setdefault(session, set()).add(status)
        assert sessions and all(kinds == {"Start", "Stop"} for kinds in sessions.values()), [
            (s, k) for s, k in sessions.items() if k != {"Start", "Stop"}][:5]
        calls_of_legs = {s.rsplit("/", 1)[0] for s in sessions}
        stored_calls = {f"{g}/{b}/{r}" for g, b, r in rows(url, "SELECT gateway, boot, ref FROM calls")}
        assert calls_of_legs <= stored_calls
        # every CDR once in a Stop, none but the stored ones
        sent = [line for r in first.values() for line in r.get("cdrd-CDR", [])]
        assert sorted(sent) == sorted(c.line for c in cdrs)
        # duplicates only as retransmissions (the dead node's in flight)
        duplicates(recs, retransmissions=len(recs))
        # every node serves every page from the shared store
        for n in live:
            assert len(n.api("/api/gateways")["gateways"]) == summary["gateways"]
    finally:
        if sim is not None and sim.poll() is None:
            sim.kill()
            sim.wait(10)
        proxy.stop()
        for n in nodes:
            n.stop()
        radius.stop()
