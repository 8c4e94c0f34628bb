"""
Integration, end to end: a real cdrd (`twistd -n cdrd`) with `[syslog]`
pointing at a real rsyslog, the worked examples of call-records.md sent as a
gateway sends them: rsyslog receives every CDR line the store holds, once,
in written order, with the store's CDR id as MSGID; and the lines that
arrive while rsyslog is down arrive after it is back.
"""

from __future__ import annotations

import time

import pytest

from tests.integration.daemon import Daemon, GatewayClient
from tests.integration.test_daemon import PORTS, read_until_ack
from tests.integration.test_worked_examples import CDRS, events
from tests.outputs.rsyslog import Rsyslog

pytestmark = pytest.mark.integration


def wait(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_worked_examples_reach_rsyslog(tmp_path):
    rsyslog = Rsyslog(tmp_path / "rsyslog")
    try:
        rsyslog.start()
        stored = run_examples(tmp_path, rsyslog)
    finally:
        rsyslog.stop()
    records = rsyslog.cdr_records()
    for r in records:
        assert r[:5] == ["local5", "info", "pbx-e2e", "cdrd", "-"], r
    assert len(records) == len(stored) == len(CDRS)
    # the lines are the store's (its times are the server's view of the
    # gateway's clock; the worked-example test checks them byte for byte)
    assert [(r[5], r[6]) for r in records] == [(c["id"], c["line"]) for c in stored]


def run_examples(tmp_path, rsyslog):
    """cdrd up; E1-E3 while rsyslog is down, E4-E5 after: the stored CDRs."""
    config = PORTS + (
        "\n[syslog]\n"
        f'target = "tcp:127.0.0.1:{rsyslog.tcp}"\n'
        'facility = "local5"\n'
        'hostname = "pbx-e2e"\n'
    )
    (tmp_path / "cdrd").mkdir()
    daemon = Daemon(tmp_path / "cdrd", config)
    try:
        daemon.start()
        rsyslog.stop()  # the first calls end while the collector is down
        client = GatewayClient(daemon.gateway_port)
        assert client.login().verb == "OK"
        all_events = list(events())
        half = next(i for i, e in enumerate(all_events) if e[0] == "78")  # E1-E3 first
        n = 0
        for n, (ref, t, etype, fields) in enumerate(all_events[:half], start=1):
            client.send("EV", seq=str(n), ref=ref, t=t, type=etype, **fields)
        read_until_ack(client, n)
        wait(lambda: daemon.api("/api/cdrs?limit=100")["cdrs"], what="the first CDRs")
        assert rsyslog.cdr_records() == []
        rsyslog.start()
        for seq, (ref, t, etype, fields) in enumerate(all_events[half:], start=n + 1):
            client.send("EV", seq=str(seq), ref=ref, t=t, type=etype, **fields)
        read_until_ack(client, seq)
        client.send("LOGOUT")
        assert client.read().verb == "BYE"

        stored = wait(lambda: (c := daemon.api("/api/cdrs?limit=100")["cdrs"])
                      and len(c) >= len(CDRS) and c, what="all CDRs stored")
        wait(lambda: len(rsyslog.cdr_records()) >= len(CDRS), what="all CDRs in rsyslog")
        time.sleep(1.0)  # nothing more should come
        return stored
    finally:
        daemon.stop()
