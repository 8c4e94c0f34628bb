"""
One store, several cdrd processes: one cdrd per SQLite file; on PostgreSQL
every node active, each gateway owned by the node holding its lease
(docs/store.md, "Several nodes").
"""

from __future__ import annotations

import time

import pytest

from cdrd.gateway.codec import format_gateway_time
from tests.integration.daemon import Daemon, GatewayClient
from tests.integration.test_daemon import read_until_ack

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


#: [cluster] of the nodes below: leases renewed every 2/3 s
CLUSTER = "\n[cluster]\nlease_seconds = 2\n"

CALL = [
    (0, "HOOK_OFF", {"port": "1"}), (2500, "DIAL", {"digits": "2252"}),
    (3000, "RING_BACK", {}), (7250, "TALK", {}),
]


def nodes(tmp_path, url, names=("a", "b")) -> list[Daemon]:
    out = []
    for name in names:
        (tmp_path / name).mkdir()
        out.append(Daemon(tmp_path / name, database=url, extra_config=CLUSTER + f'node = "{name}"\n'))
    return out


@pytest.fixture
def running(tmp_path, pg_database):
    """Nodes a and b on one database, both started (every node active)."""
    a, b = nodes(tmp_path, pg_database[1])
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        a.stop()
        b.stop()


def open_call(client, t0: int) -> None:
    assert client.login().fields["last"] == "0"
    for seq, (dt, etype, extra) in enumerate(CALL, start=1):
        client.send("EV", seq=str(seq), ref="75", t=format_gateway_time(t0 + dt), type=etype, **extra)
    read_until_ack(client, 4)


def end_call_and_check(client, t0: int, *readers: Daemon) -> None:
    """The call's last event on its new node; then every node shows one record and one CDR."""
    client.send("EV", seq="5", ref="75", t=format_gateway_time(t0 + 127_250), type="HOOK_ON", port="1")
    read_until_ack(client, 5)
    client.close()
    for node in readers:
        cdrs = node.wait_for(lambda n=node: n.api("/api/cdrs")["cdrs"], what="the CDR")
        assert [c["line"].split(",", 1)[1] for c in cdrs] == [
            "4.250,120.000,8200_000C2A020082-1,2252,8200_000C2A020082-1"]
        records = node.api("/api/calls")["records"]
        assert [(r["ref"], r["notation"], r["talk"]) for r in records] == [(75, "Call out", 120.0)]
        events = node.api("/api/events?gateway=8200_000C2A020082&limit=100")["events"]
        assert sorted(e["seq"] for e in events) == [1, 2, 3, 4, 5]


def test_a_gateway_moves_to_another_live_node_with_its_open_call(running):
    """A LOGIN on b takes the gateway from a: a's connection is kicked out,
    b carries the open call on, and a can store nothing more for it."""
    a, b = running  # both active: no standby
    t0 = int(time.time() * 1000)
    old = GatewayClient(a.gateway_port)
    open_call(old, t0)

    client = GatewayClient(b.gateway_port)
    ok = client.login(callref=76)
    assert (ok.verb, ok.fields["last"]) == ("OK", "4")
    # a lets go: its renewal finds the lease taken, closes the connection
    with pytest.raises(ConnectionError):
        while True:
            old.read()
    old.close()
    a.wait_for(lambda: "was taken by another cdrd node" in a.log_text(), what="a letting go")
    end_call_and_check(client, t0, a, b)
    assert "Relogin Kickout" in str(a.api("/api/log?limit=50"))


def test_a_dead_nodes_gateway_carries_on_at_another_node(running):
    a, b = running
    t0 = int(time.time() * 1000)
    client = GatewayClient(a.gateway_port)
    open_call(client, t0)
    a.kill9()
    client.close()
    # the gateway's reconnect (its second address) takes the lease at once
    client = GatewayClient(b.gateway_port)
    ok = client.login(callref=76)  # its counter moved on with call 75: no reboot
    assert (ok.verb, ok.fields["last"]) == ("OK", "4")
    end_call_and_check(client, t0, b)


def test_a_dead_nodes_gateway_that_never_returns_is_adopted(tmp_path, pg_database):
    """Its open call must still end (stale) somewhere: once a's lease expired,
    the node doing the cluster's work adopts the gateway and shows it offline."""
    _, url = pg_database
    a, b = nodes(tmp_path, url)
    try:
        a.start()
        t0 = int(time.time() * 1000)
        client = GatewayClient(a.gateway_port)
        open_call(client, t0)
        b.start()
        assert [g["online"] for g in b.api("/api/gateways")["gateways"]] == [True]
        a.kill9()
        b.wait_for(lambda: "adopting gateway 8200_000C2A020082" in b.log_text(), what="the adoption")
        b.wait_for(lambda: [g["online"] for g in b.api("/api/gateways")["gateways"]] == [False],
                   what="the gateway offline")
        assert "gateway 8200_000C2A020082 recovered: 4 events replayed" in b.log_text()
    finally:
        a.stop()
        b.stop()


class Stream:
    """A server-sent events stream read off a raw socket: (event, data) pairs."""

    def __init__(self, port: int, path: str):
        import socket

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:  # the response has begun: subscribed
            self.buf += self.sock.recv(65536)

    def until(self, predicate) -> list[tuple[str, dict]]:
        """Read messages until `predicate(messages)`; the messages."""
        import json

        deadline = time.monotonic() + 15
        while True:
            messages = []
            for block in self.buf.split(b"\n\n"):
                fields = dict(line.split(": ", 1) for line in block.decode().splitlines() if ": " in line)
                if "data" in fields and fields["data"].startswith("{"):
                    messages.append((fields.get("event", "message"), json.loads(fields["data"])))
            if predicate(messages):
                return messages
            assert time.monotonic() < deadline, messages
            self.buf += self.sock.recv(65536)

    def close(self):
        self.sock.close()


def test_every_node_streams_what_another_node_stored(running):
    """The live feeds hear the other nodes' commits (LISTEN/NOTIFY cdrd_feed)."""
    a, b = running
    b.wait_for(lambda: "listening for the other nodes' commits" in b.log_text(), what="b's LISTEN")
    events = Stream(b.web_port, "/api/events/stream")
    dashboard = Stream(b.web_port, "/dashboard/stream")
    t0 = int(time.time() * 1000)
    client = GatewayClient(a.gateway_port)  # on a, not b
    open_call(client, t0)
    client.send("EV", seq="5", ref="75", t=format_gateway_time(t0 + 127_250), type="HOOK_ON", port="1")
    read_until_ack(client, 5)
    client.close()
    got = events.until(lambda m: sum(1 for _, d in m if d.get("gateway") == "8200_000C2A020082") >= 5)
    assert [d["seq"] for _, d in got if d.get("gateway") == "8200_000C2A020082"] == [1, 2, 3, 4, 5]
    kinds = dashboard.until(lambda m: any(kind == "call" for kind, _ in m))
    assert {"heard", "log", "call"} <= {kind for kind, _ in kinds}
    (call,) = [d for kind, d in kinds if kind == "call"]
    assert (call["gateway"], call["answered"], call["talk"]) == ("8200_000C2A020082", True, 120_000)
    events.close()
    dashboard.close()
