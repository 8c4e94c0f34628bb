"""
Database failover (docs/store.md, "Database failover"): cdrd on a libpq
multi-host URL (primary, replica; target_session_attrs=read-write), the
replica streaming synchronously; the primary crashes while gateways send,
the replica is promoted.  No acknowledged event is lost, the gateways see
ERR code=unavailable or a closed connection meanwhile and never a
rejection, and ingest is back within seconds of the promotion.
"""

from __future__ import annotations

import threading
import time

import pytest

from cdrd.gateway.codec import format_gateway_time
from tests.integration.daemon import Daemon, GatewayClient
from tests.integration.pgcluster import PgCluster

pytestmark = pytest.mark.integration


class Gateway(threading.Thread):
    """
    A gateway that never gives up (gateway-protocol.md, LOGIN step 3): one
    event in flight, calls of two events (HOOK_OFF, HOOK_ON: seq 2k-1 and
    2k are call k); on ERR code=unavailable or a closed connection it
    reconnects and resends from the server's `last`.
    """

    def __init__(self, port: int, gw: str, mac: str):
        super().__init__(daemon=True)
        self.port, self.gw, self.mac = port, gw, mac
        self.key = f"{gw}_{mac}"
        self.acked = 0
        self.acks: list[tuple[float, int]] = []  # (monotonic time, seq)
        self.rejections: list[str] = []
        self.unavailable = self.closed = 0
        self.stopping = threading.Event()
        self.done = threading.Event()

    def event(self, client, seq: int) -> None:
        ref = (seq + 1) // 2
        kind = "HOOK_OFF" if seq % 2 else "HOOK_ON"
        client.send("EV", seq=str(seq), ref=str(ref), t=format_gateway_time(int(time.time() * 1000)),
                    type=kind, port="1")

    def run(self) -> None:
        try:
            while not (self.stopping.is_set() and self.acked % 2 == 0):
                try:
                    self.session()
                except (OSError, ConnectionError):
                    self.closed += 1
                    time.sleep(0.2)
        finally:
            self.done.set()

    def session(self) -> None:
        client = GatewayClient(self.port)
        try:
            ok = client.login(gw=self.gw, mac=self.mac, callref=(self.acked + 2) // 2, boot="b1")
            if ok.verb == "ERR":
                if ok.fields.get("code") != "unavailable":
                    self.rejections.append(str(ok.fields))
                    self.stopping.set()
                    return
                self.unavailable += 1
                time.sleep(0.2)
                return
            self.acked = max(self.acked, int(ok.fields["last"]))
            while not (self.stopping.is_set() and self.acked % 2 == 0):
                seq = self.acked + 1
                self.event(client, seq)
                reply = client.read()
                while reply.verb == "PONG":
                    reply = client.read()
                if reply.verb == "ERR":
                    self.unavailable += reply.fields.get("code") == "unavailable"
                    if reply.fields.get("code") != "unavailable":
                        self.rejections.append(str(reply.fields))
                    return
                assert (reply.verb, reply.fields.get("seq")) == ("ACK", str(seq)), reply
                self.acked = seq
                self.acks.append((time.monotonic(), seq))
                time.sleep(0.01)
        finally:
            client.close()

    def wait_acked(self, seq: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.acked < seq:
            assert time.monotonic() < deadline, (self.key, self.acked, seq)
            time.sleep(0.05)


def test_a_promoted_replica_loses_no_acknowledged_event(tmp_path):
    primary, replica = PgCluster("primary"), PgCluster("replica")
    daemon = None
    gateways: list[Gateway] = []
    try:
        primary.create().start()
        primary.sql("CREATE DATABASE cdrd")
        replica.create().replica_of(primary).start()
        primary.wait_for("SELECT state FROM pg_stat_replication", [("streaming",)])
        # synchronous: a commit (so an ACK) waits until the replica has it
        primary.sql("ALTER SYSTEM SET synchronous_standby_names = '*'")
        primary.sql("SELECT pg_reload_conf()")
        primary.wait_for("SELECT sync_state FROM pg_stat_replication", [("sync",)])

        url = (f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{replica.port}/cdrd"
               "?target_session_attrs=read-write&connect_timeout=3")
        daemon = Daemon(tmp_path, database=url, extra_config="\n[cluster]\nlease_seconds = 2\n")
        daemon.start()
        gateways = [Gateway(daemon.gateway_port, f"82{n:02d}", f"000C2A0200{n:02d}") for n in range(3)]
        for g in gateways:
            g.start()
        for g in gateways:
            g.wait_acked(40, timeout=60)

        primary.crash()
        time.sleep(1.0)  # the gateways meet the outage
        acked_before = {g.key: g.acked for g in gateways}
        replica.promote()
        promoted = time.monotonic()
        for g in gateways:
            g.wait_acked(acked_before[g.key] + 40, timeout=90)
        for g in gateways:
            g.stopping.set()
        for g in gateways:
            assert g.done.wait(60), g.key

        back = [next(t for t, seq in g.acks if seq > acked_before[g.key]) - promoted for g in gateways]
        print(f"\nfailover: ingest back {min(back):.2f} s (first gateway) .. {max(back):.2f} s (last)"
              f" after the promotion; unavailable {sum(g.unavailable for g in gateways)},"
              f" closed {sum(g.closed for g in gateways)}")
        assert [g.rejections for g in gateways] == [[], [], []]
        assert sum(g.unavailable + g.closed for g in gateways) > 0  # the outage was met

        # every acknowledged event is on the promoted replica, once, and
        # in seq order by id (the store reads a gateway's events by seq as
        # by id: docs/store.md, "Events by gateway")
        for g in gateways:
            seqs = replica.sql("SELECT seq FROM events WHERE gateway = %s AND seq IS NOT NULL ORDER BY id",
                               db="cdrd", params=(g.key,))
            assert [s for (s,) in seqs] == list(range(1, g.acked + 1)), g.key
        calls = sum(g.acked // 2 for g in gateways)
        daemon.wait_for(lambda: replica.sql("SELECT COUNT(*) FROM calls", db="cdrd") == [(calls,)],
                        timeout=60, what="every call's record")
        assert replica.sql("SELECT COUNT(*) FROM events WHERE type = 'GATEWAY_RESTART'", db="cdrd") == [(0,)]
        assert "Traceback" not in daemon.log_text()
    finally:
        for g in gateways:
            g.stopping.set()
        if daemon is not None:
            daemon.stop()
        primary.drop()
        replica.drop()
