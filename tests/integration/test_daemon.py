"""
cdrd as operators run it: ``twistd -n cdrd`` on loopback, real TCP, real
SQLite file, kill -9.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.integration.daemon import ROOT, TWISTD, Daemon, GatewayClient

pytestmark = pytest.mark.integration

PORTS = """
[gateways."8200_000C2A020082"]
ports = { 1 = { exten = "201", ddi = "442079460201" }, 2 = { exten = "202", ddi = "442079460202", cui = "ACCT-202" } }
lines = { 1 = { cui = "CARRIER-ACME" } }
"""

# E4 of call-records.md: 201 calls 202, which forwards on no answer
E4 = [
    ("10:20:00.000", "HOOK_OFF", {"port": "1"}),
    ("10:20:02.000", "DIAL", {"digits": "202"}),
    ("10:20:02.100", "RING_BACK", {}),
    ("10:20:12.100", "DIVERT", {"to": "07700900123", "by": "202", "port": "2", "cause": "cfnr"}),
    ("10:20:13.000", "RING_BACK", {}),
    ("10:20:18.000", "TALK", {}),
    ("10:25:18.000", "REMOTE_HOOK_ON", {}),
    ("10:25:18.200", "HOOK_ON", {"port": "1"}),
]
E4_CDRS = [
    "2026-11-22T10:20:18.000Z,15.900,300.000,442079460201,202,442079460201",
    "2026-11-22T10:20:18.000Z,5.000,300.000,ACCT-202,07700900123,442079460201",
]


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path, PORTS)
    yield d
    d.stop()


def send_events(client, first_seq, events, ref=78):
    for i, (t, etype, fields) in enumerate(events):
        client.send("EV", seq=str(first_seq + i), ref=str(ref), t=f"2026-11-22T{t}", type=etype, **fields)


def read_until_ack(client, seq):
    while True:
        msg = client.read()
        assert msg.verb in ("ACK", "PONG"), msg
        if msg.verb == "ACK" and int(msg.fields["seq"]) >= seq:
            return int(msg.fields["seq"])


def test_config_error_is_one_line_naming_the_setting(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[radius]\ninterim_interval = 30\n")
    r = subprocess.run(
        [str(TWISTD), "-n", "--pidfile=", "cdrd", "--config", str(bad)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines == ["cdrd: config error: radius.interim_interval: 30 is below 60 (0 turns it off)"]


def test_help_documents_every_option():
    r = subprocess.run([str(TWISTD), "cdrd", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    for option in ("--config", "--gateway-endpoint", "--web-endpoint", "--database", "--timezone"):
        assert option in r.stdout


def test_kill_9_right_after_ack_loses_no_acknowledged_event(daemon):
    daemon.start()
    client = GatewayClient(daemon.gateway_port)
    ok = client.login()
    assert (ok.verb, ok.fields["last"]) == ("OK", "0")
    # a burst of 500 events, then kill -9 the moment the last ACK arrives
    for i in range(500):
        client.send("EV", seq=str(i + 1), ref=str(1000 + i // 5), t="2026-11-22T10:00:00.000",
                    type="HOOK_OFF" if i % 5 == 0 else "RING_BACK", **({"port": "1"} if i % 5 == 0 else {}))
    acked = read_until_ack(client, 500)
    daemon.kill9()
    client.close()
    assert acked == 500

    daemon.start()
    again = GatewayClient(daemon.gateway_port)
    ok = again.login(callref=1100)  # above its open calls: no reboot
    assert ok.fields["last"] == "500"
    stored = daemon.api("/api/events?gateway=8200_000C2A020082&limit=1000")["events"]
    assert sorted(e["seq"] for e in stored) == list(range(1, 501))
    again.send("LOGOUT")
    assert again.read().verb == "BYE"


def test_call_open_across_kill_9_gets_the_same_cdrs(daemon):
    daemon.start()
    client = GatewayClient(daemon.gateway_port)
    client.login()
    send_events(client, 1, E4[:4])  # up to the divert
    read_until_ack(client, 4)
    daemon.kill9()
    client.close()

    daemon.start()
    client = GatewayClient(daemon.gateway_port)
    ok = client.login(callref=80)
    assert ok.fields["last"] == "4"
    send_events(client, 5, E4[4:])
    read_until_ack(client, 8)
    cdrs = daemon.wait_for(
        lambda: [c["line"] for c in daemon.api("/api/cdrs?gateway=8200_000C2A020082")["cdrs"]],
        what="CDRs of E4",
    )
    assert cdrs == E4_CDRS
    (record,) = daemon.api("/api/calls?gateway=8200_000C2A020082&from=2026-11-22&to=2026-11-22")["records"]
    assert (record["ref"], record["notation"], record["dialed"]) == (78, "Call out", "202")


def test_resent_events_never_duplicate_a_cdr(daemon):
    daemon.start()
    client = GatewayClient(daemon.gateway_port)
    client.login()
    send_events(client, 1, E4)
    read_until_ack(client, 8)
    client.close()
    again = GatewayClient(daemon.gateway_port)
    again.login()
    send_events(again, 1, E4)  # a gateway that lost track resends everything
    read_until_ack(again, 8)
    daemon.stop()
    daemon.start()
    cdrs = daemon.wait_for(
        lambda: daemon.api("/api/cdrs?gateway=8200_000C2A020082")["cdrs"], what="CDRs"
    )
    assert [c["line"] for c in cdrs] == E4_CDRS
