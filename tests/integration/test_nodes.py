"""
One store, several cdrd processes: one cdrd per SQLite file; on PostgreSQL
an active node and a standby that takes over, open calls and all, when the
active one is killed -9.
"""

from __future__ import annotations

import time

import pytest

from cdrd.gateway.codec import format_gateway_time
from tests.integration.daemon import Daemon, GatewayClient
from tests.integration.test_daemon import read_until_ack
from tests.integration.test_lifecycle import connect_as_soon_as_listening

pytestmark = pytest.mark.integration


def test_a_second_cdrd_on_the_same_sqlite_file_stops_with_one_line(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    database = f"sqlite:{tmp_path / 'cdrd.sqlite'}"
    first = Daemon(tmp_path / "a", database=database)
    second = Daemon(tmp_path / "b", database=database)
    try:
        first.start()
        second.spawn()
        assert second.proc.wait(60) == 1
        log = second.log_text()
        (failed,) = [line for line in log.splitlines() if "could not start" in line]
        assert "server.database" in failed and "in use by another cdrd" in failed
        assert f"pid {first.proc.pid}" in failed
        assert "Traceback" not in log
        first.api("/api/gateways")  # the first one serves on
    finally:
        first.stop()
        second.stop()


def listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def test_a_standby_takes_over_an_open_call_when_the_active_node_is_killed(tmp_path, pg_database):
    _, url = pg_database
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    active = Daemon(tmp_path / "a", database=url)
    standby = Daemon(tmp_path / "b", database=url)
    try:
        active.start()
        standby.spawn()
        standby.wait_for(lambda: "standing by" in standby.log_text(), what="the standby")
        assert not listening(standby.gateway_port) and not listening(standby.web_port)

        t0 = int(time.time() * 1000)
        client = GatewayClient(active.gateway_port)
        assert client.login().fields["last"] == "0"
        for seq, (dt, etype, extra) in enumerate([
            (0, "HOOK_OFF", {"port": "1"}), (2500, "DIAL", {"digits": "2252"}),
            (3000, "RING_BACK", {}), (7250, "TALK", {}),
        ], start=1):
            client.send("EV", seq=str(seq), ref="75", t=format_gateway_time(t0 + dt), type=etype, **extra)
        read_until_ack(client, 4)
        active.kill9()
        client.close()

        # the standby takes over within a few of its 2 s polls; the gateway
        # finds it (here: its second configured address) and resends nothing
        sock = connect_as_soon_as_listening(standby.gateway_port, timeout=30)
        sock.close()
        client = GatewayClient(standby.gateway_port)
        ok = client.login(callref=76)  # its counter moved on with call 75: no reboot
        assert (ok.verb, ok.fields["last"]) == ("OK", "4")
        client.send("EV", seq="5", ref="75", t=format_gateway_time(t0 + 127_250), type="HOOK_ON", port="1")
        read_until_ack(client, 5)
        client.close()

        cdrs = standby.wait_for(lambda: standby.api("/api/cdrs")["cdrs"], what="the CDR")
        assert [c["line"].split(",", 1)[1] for c in cdrs] == [
            "4.250,120.000,8200_000C2A020082-1,2252,8200_000C2A020082-1"]
        records = standby.api("/api/calls")["records"]
        assert [(r["ref"], r["notation"], r["talk"]) for r in records] == [(75, "Call out", 120.0)]
        events = standby.api("/api/events?gateway=8200_000C2A020082&limit=100")["events"]
        assert sorted(e["seq"] for e in events) == [1, 2, 3, 4, 5]
    finally:
        active.stop()
        standby.stop()
