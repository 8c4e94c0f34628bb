"""
Integration: a flood of garbage connections over real TCP against a real
``twistd -n cdrd`` on SQLite adds a bounded number of gateway log rows
(repeats are one row with a count, cdrd/gateway/coalesce.py), a logged-in
gateway is still acknowledged during it, and nothing counted is lost when
cdrd stops right after it.  Connections that close without a word
(`Gateway Disconnect`) are bounded alike.
"""

from __future__ import annotations

import signal
import socket
import sqlite3
import time

import pytest

from tests.integration.daemon import Daemon, GatewayClient

pytestmark = pytest.mark.integration

GARBAGE = 400
SILENT = 100


def test_a_garbage_flood_adds_one_row_a_minute_and_loses_no_count_at_stop(tmp_path):
    daemon = Daemon(tmp_path).start()
    try:
        gw = GatewayClient(daemon.gateway_port)
        assert gw.login().verb == "OK"
        began = time.monotonic()
        for n in range(GARBAGE):  # each: HELLO, a bad line, ERR, closed
            with socket.create_connection(("127.0.0.1", daemon.gateway_port), timeout=10) as s:
                s.sendall(b"GARBAGE\n")
                while s.recv(4096):
                    pass
            if n % 40 == 0:
                seq = n // 40 + 1
                gw.send("EV", seq=str(seq), ref="1", type="HOOK_OFF", port="1")
                ack = gw.read()
                assert (ack.verb, ack.fields.get("seq")) == ("ACK", str(seq))
        for _ in range(SILENT):  # each: HELLO, then closed by the client without a word
            with socket.create_connection(("127.0.0.1", daemon.gateway_port), timeout=10) as s:
                s.recv(4096)
        minutes = (time.monotonic() - began) / 60
        # the first row is written at once, as before
        daemon.wait_for(lambda: any(e["event"] == "Bad Packet" for e in daemon.api("/api/log")["entries"]),
                        what="the Bad Packet entry")
        gw.send("LOGOUT")
        assert gw.read().verb == "BYE"
        gw.close()
    finally:
        # a clean stop (twistd re-raises SIGTERM), at once: the last seconds' counts are only in memory
        assert daemon.stop() == -signal.SIGTERM

    db = sqlite3.connect(tmp_path / "cdrd.sqlite")

    def rows(event):
        return db.execute(
            "SELECT peer, count, length(event) + length(peer) + length(gateway) + length(mac) + length(detail)"
            " FROM log WHERE event = ? AND gateway = '???'", (event,)).fetchall()

    bad, silent = rows("Bad Packet"), rows("Gateway Disconnect")
    db.close()
    assert sum(count for _, count, _ in bad) == GARBAGE
    assert sum(count for _, count, _ in silent) == SILENT
    # one row per 60 s window: the flood straddles at most 1 + its minutes of them
    for stored in (bad, silent):
        assert 1 <= len(stored) <= 2 + int(minutes)
        assert all(peer.startswith("127.0.0.1:") for peer, _, _ in stored)
        assert max(size for *_, size in stored) < 200
