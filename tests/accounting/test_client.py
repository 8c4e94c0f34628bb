"""Unit: RFC 5080 timing, Identifiers, verification, window, failover."""

from __future__ import annotations

import errno
import os
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyrad.packet import StatusServer

from cdrd.accounting.client import RadiusClient, retransmission_timeout
from cdrd.accounting.packets import load_dictionary, spool
from cdrd.config import RadiusServer
from tests.accounting import examples
from tests.accounting.fakes import FakeReactor, answer, decode

D = load_dictionary(32473)
SECRET = "sekrit"


@given(st.lists(st.floats(-0.1, 0.1), min_size=1, max_size=20))
def test_rfc5080_timeouts(rands):
    irt, mrt = 2.0, 64.0
    rt = None
    for r in rands:
        new = retransmission_timeout(rt, irt, mrt, r)
        if rt is None:
            assert 1.8 <= new <= 2.2
        else:
            assert new <= mrt * 1.1 + 1e-9
            if 2 * rt * 1.1 < mrt * 0.9:
                assert 1.9 * rt - 1e-9 <= new <= 2.1 * rt + 1e-9
        rt = new
    if len(rands) >= 12:
        assert rt >= mrt * 0.9


def make_client(n=1, window=128, failover_after=3, irt=2.0):
    reactor = FakeReactor()
    servers = [RadiusServer("127.0.0.1", 1813 + i, SECRET) for i in range(n)]
    c = RadiusClient(
        servers,
        D,
        reactor,
        reactor,
        window=window,
        initial_timeout=irt,
        max_timeout=16.0,
        failover_after=failover_after,
        rng=random.Random(1),
    )
    c.start()
    return c, reactor


def payloads(event=0, count=1):
    out = []
    for i in range(count):
        p = spool(examples.e1()[:1], 0, None, True)[0]
        out.append(type(p)(p.kind, f"leg{i}", p.status, event, p.attributes))
    return out


def test_answer_verified_and_round_trip():
    c, r = make_client()
    r.advance(1000)
    done = []
    c.send(payloads(event=1000_000)[0]).addCallback(done.append)
    port = r.ports[0]
    assert len(port.written) == 1
    raw, addr = port.written[0]
    assert addr == ("127.0.0.1", 1813)
    assert port.interface == "127.0.0.1"
    r.advance(0.004)
    answer(port, raw, b"wrong", D)  # bad authenticator: ignored
    assert done == []
    answer(port, raw, SECRET.encode(), D, corrupt=True)
    assert done == []
    answer(port, raw, SECRET.encode(), D)
    assert done == [None]
    s = c.status()[0]
    assert s["state"] == "up" and abs(s["rtt_ms"] - 4.0) < 0.01 and s["in_flight"] == 0
    assert c.retransmissions == 0


def test_retransmission_with_same_delay_keeps_identifier():
    c, r = make_client(irt=0.4)
    r.advance(1000)
    c.send(payloads(event=1000_000)[0])
    port = r.ports[0]
    r.advance(0.5)  # first timeout ~0.4 s: still Acct-Delay-Time 0
    assert len(port.written) == 2
    assert port.written[0][0] == port.written[1][0]
    assert c.retransmissions == 1


def test_changed_delay_is_a_new_identifier_and_authenticator():
    c, r = make_client()
    r.advance(1000)
    c.send(payloads(event=1000_000)[0])
    port = r.ports[0]
    r.advance(2.3)
    assert len(port.written) == 2
    first, second = (decode(w[0], D) for w in port.written)
    assert first["Acct-Delay-Time"] == [0] and second["Acct-Delay-Time"] == [2]
    assert first.id != second.id
    assert port.written[0][0][4:20] != port.written[1][0][4:20]
    done = []
    c.servers[0].inflight[second.id].deferred.addCallback(done.append)
    answer(port, port.written[1][0], SECRET.encode(), D)
    assert done == [None] and c.in_flight == 0


def test_answer_to_an_earlier_identifier_proves_delivery():
    """The server answered the first packet late, after the resend with a
    new Acct-Delay-Time: that answer (verified with the first packet's own
    authenticator) completes the request; the answer to the resend is then
    a duplicate, ignored."""
    c, r = make_client()
    r.advance(1000)
    done = []
    c.send(payloads(event=1000_000)[0]).addCallback(done.append)
    port = r.ports[0]
    r.advance(2.3)
    (old, _), (new, _) = port.written
    assert old[1] != new[1]
    # forged with the resend's authenticator under the old Identifier: refused
    forged = bytearray(old)
    forged[4:20] = new[4:20]
    answer(port, bytes(forged), SECRET.encode(), D)
    assert done == [] and c.in_flight == 1
    answer(port, old, SECRET.encode(), D)
    assert done == [None] and c.in_flight == 0 and c.pending == 0
    answer(port, new, SECRET.encode(), D)
    assert done == [None]
    assert not [t for t in r.getDelayedCalls() if t.active()]
    s = c.status()[0]
    assert s["answered"] == 2 and s["rtt_ms"] is None  # Karn: no sample


def test_identifier_of_a_replaced_packet_is_reused_last():
    """Until no other Identifier is left, a replaced packet's Identifier is
    not reused, so its late answer still counts."""
    c, r = make_client(window=255)
    r.advance(1000)
    done = []
    c.send(payloads(event=1000_000)[0]).addCallback(done.append)
    port = r.ports[0]
    r.advance(2.3)  # resent with a new Identifier
    old = port.written[0][0]
    # 253 more in flight, one of them answered: they take every other
    # Identifier first, the answered one included
    for p in payloads(event=1000_000, count=253):
        c.send(p)
    answer(port, port.written[2][0], SECRET.encode(), D)
    for p in payloads(event=1000_000, count=2):
        c.send(p)
    ids = [w[0][1] for w in port.written[2:]]
    assert old[1] not in ids and len(set(ids)) == 255 - 1
    assert c.in_flight == 255
    # the next resend finds no other: the old Identifier is reused, and the
    # old packet's answer no longer matches (verified against the new one)
    r.advance(2.5)
    assert port.written[257][0][1] == old[1]
    answer(port, old, SECRET.encode(), D)
    assert done == [] and c.in_flight == 255


def test_answer_from_the_server_failed_over_from_counts():
    c, r = make_client(n=2, failover_after=1)
    done = []
    c.send(payloads(event=0)[0]).addCallback(done.append)
    first, second = r.ports
    r.advance(2.3)  # fail over: resent to the second
    assert c.active == 1 and len(second.written) == 1
    answer(first, first.written[-1][0], SECRET.encode(), D)
    assert done == [None] and c.pending == 0
    assert c.status()[0]["state"] == "up"


def test_retries_until_answered_doubling_to_the_cap():
    c, r = make_client(failover_after=10**6)
    c.send(payloads(event=0)[0])
    port = r.ports[0]
    times = [0.0]
    for _ in range(4000):
        r.advance(0.25)
        if len(port.written) > len(times):
            times.append(r.seconds())
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert len(times) > 40  # ~1000 s: never gives up
    assert 1.75 <= gaps[0] <= 2.5  # IRT 2 s with jitter and tick
    assert 3.5 <= gaps[1] <= 4.75  # doubled
    assert max(gaps) <= 16 * 1.1 + 0.25
    assert min(gaps[-10:]) >= 16 * 0.9 - 0.25


def test_window_bounds_requests_in_flight():
    c, r = make_client(window=2)
    ds = [c.send(p) for p in payloads(count=5)]
    port = r.ports[0]
    assert len(port.written) == 2 and c.in_flight == 2 and len(c.queue) == 3
    answer(port, port.written[0][0], SECRET.encode(), D)
    assert ds[0].called and len(port.written) == 3
    ids = {decode(w[0], D).id for w in port.written}
    assert len(ids) == 3


def test_failover_in_order_and_back_after_status_server():
    c, r = make_client(n=3, failover_after=2)
    done = []
    c.send(payloads(event=0)[0]).addCallback(done.append)
    first, second, third = r.ports
    r.advance(2.3)  # timeout 1 on server 0: resent there
    assert len(first.written) == 2 and not second.written
    r.advance(4.5)  # timeout 2: fail over to server 1
    assert c.active == 1 and len(second.written) == 1
    assert c.status()[0]["state"] == "down"
    # server 1 answers: done
    answer(second, second.written[0][0], SECRET.encode(), D)
    assert done == [None]
    # new traffic goes to server 1, not 0 nor 2
    c.send(payloads(event=0)[0])
    assert len(second.written) == 2 and len(first.written) == 2 and not third.written
    # after PROBE_INTERVAL a Status-Server probes server 0
    r.advance(10)
    probes = [w for w in first.written if w[0][0] == StatusServer]
    assert len(probes) == 1
    answer(first, probes[0][0], SECRET.encode(), D)
    assert c.active == 0 and c.status()[0]["state"] == "up"
    # the next request goes to the first server again
    c.send(payloads(event=0)[0])
    assert first.written[-1][0][0] == 4  # Accounting-Request


def test_last_server_fails_over_to_the_first():
    c, r = make_client(n=2, failover_after=1)
    c.send(payloads(event=0)[0])
    r.advance(2.3)
    assert c.active == 1
    r.advance(5)
    assert c.active == 0


def test_socket_buffers_and_stop():
    c, r = make_client()
    assert all(p.open for p in r.ports)
    d = c.stop()
    assert d.called and not any(p.open for p in r.ports)


class FailingWrites:
    """A port whose write raises `errno` while `down` (ENETUNREACH, EPERM,
    ENOBUFS: what sendto gives when the route, the firewall or the buffers
    refuse), then passes writes on."""

    def __init__(self, port, error):
        self.port = port
        self.error = error
        self.down = True
        self.write = port.write
        port.write = self._write

    def _write(self, data, addr):
        if self.down:
            raise OSError(self.error, os.strerror(self.error))
        return self.write(data, addr)


@pytest.mark.parametrize("error", [errno.ENETUNREACH, errno.EPERM, errno.ENOBUFS])
def test_send_error_is_retransmitted_like_a_loss(error):
    c, r = make_client(window=1)
    port = r.ports[0]
    net = FailingWrites(port, error)
    done = []
    c.send(payloads(event=0)[0]).addCallback(done.append)
    c.send(payloads(event=0, count=2)[1]).addCallback(done.append)
    assert not port.written and c.in_flight == 1 and len(c.queue) == 1
    r.advance(2.3)  # the first timeout: still down
    assert not port.written and c.retransmissions == 1
    net.down = False
    r.advance(5)  # the next timeout: sent
    assert len(port.written) == 1
    answer(port, port.written[-1][0], SECRET.encode(), D)
    assert done == [None] and c.in_flight == 1  # the window slot went to the next
    answer(port, port.written[-1][0], SECRET.encode(), D)
    assert done == [None, None] and c.pending == 0
    assert c.status()[0]["send_errors"] == 2
