"""GWP/1 sessions over StringTransport with a task.Clock and the memory store."""

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from cdrd import config as C
from cdrd.gateway.codec import login_auth, parse_line
from cdrd.gateway.protocol import GatewayFactory
from cdrd.interfaces import EventQuery, LogQuery
from cdrd.store.memory import MemoryStore
from cdrd.store.writer import BatchWriter

NONCE = "5f0c3b9d2e8a4f61a7b3c2d1e0f9a8b7"
NOW = 1795341600.0  # 2026-11-22T10:00:00Z
KEY = "8200_000C2A020082"
LOGIN = "LOGIN proto=1 gw=8200 mac=000C2A020082 fxs=2 fxo=2 isdn=0 callref=74 time=2026-11-22T10:00:00"


def run(d):
    """The result of an already-fired Deferred."""
    results = []
    d.addBoth(results.append)
    assert results, "Deferred has not fired"
    return results[0]


class FailingStore(MemoryStore):
    fail = False

    def write(self, batch):
        if self.fail:
            return defer.fail(OSError(28, "No space left on device"))
        return super().write(batch)


class Harness:
    def __init__(self, secret=None, allow_unknown=True, store=None, open_refs=None, **server):
        data = {"server": {"allow_unknown_gateways": allow_unknown, **server}}
        if secret:
            data["gateways"] = {KEY: {"secret": secret}}
        self.config = C.parse(data)
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store = store or MemoryStore()
        run(self.store.open())
        self.writer = BatchWriter(self.store, self.clock)
        self.writer.startService()
        self.factory = GatewayFactory(
            self.config, self.store, self.writer, self.clock,
            open_refs=open_refs or (lambda key, boot: set()),
            make_nonce=lambda: NONCE,
        )
        self.port = 2347

    def connect(self):
        self.port += 1
        proto = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", self.port))
        tr = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", self.port))
        proto.makeConnection(tr)
        proto.tr = tr
        return proto

    def settle(self):
        for _ in range(5):
            self.clock.advance(0.001)

    def send(self, proto, *lines):
        proto.dataReceived(b"".join(line.encode() + b"\n" for line in lines))
        self.settle()

    def replies(self, proto):
        data = proto.tr.value()
        proto.tr.clear()
        return [parse_line(line) for line in data.split(b"\n") if line]

    def login(self, line=LOGIN, secret=None):
        proto = self.connect()
        hello = self.replies(proto)[0]
        if secret:
            line = f"{line} auth={login_auth(secret, hello.fields['nonce'], line)}"
        self.send(proto, line)
        return proto

    def log(self, gateway=None):
        return run(self.store.log(LogQuery(gateway=gateway, limit=1000)))

    def events(self):
        return run(self.store.events(EventQuery(gateway=KEY, limit=1000, newest_first=False)))


def verbs(msgs):
    return [m.verb for m in msgs]


@pytest.fixture
def h():
    return Harness()


def test_hello_carries_nonce_and_time(h):
    proto = h.connect()
    (hello,) = h.replies(proto)
    assert hello.verb == "HELLO"
    assert hello.fields == {"proto": "1", "nonce": NONCE, "time": "2026-11-22T10:00:00.000Z"}


def test_login_events_ack_after_store(h):
    proto = h.login()
    (ok,) = h.replies(proto)
    assert ok.verb == "OK" and ok.fields["last"] == "0"
    proto.dataReceived(
        b"EV seq=1 ref=75 t=2026-11-22T10:00:00.000 type=HOOK_OFF port=1\n"
        b"EV seq=2 ref=75 t=2026-11-22T10:00:02.500 type=DIAL digits=2252\n"
    )
    assert h.replies(proto) == []  # not stored yet: no ACK
    h.settle()
    assert [(m.verb, m.fields) for m in h.replies(proto)] == [("ACK", {"seq": "2"})]
    assert [(e.seq, e.type, e.fields) for e in h.events()] == [
        (1, "HOOK_OFF", {"port": "1"}),
        (2, "DIAL", {"digits": "2252"}),
    ]
    assert [e.event for e in h.log()] == ["Login"]


def test_duplicates_acked_not_stored_and_last_survives_reconnect(h):
    proto = h.login()
    h.send(proto, "EV seq=1 ref=75 type=HOOK_OFF port=1", "EV seq=2 ref=75 type=RING_BACK")
    h.replies(proto)
    h.send(proto, "EV seq=2 ref=75 type=RING_BACK")
    assert [(m.verb, m.fields["seq"]) for m in h.replies(proto)] == [("ACK", "2")]
    proto.tr.loseConnection()
    proto.connectionLost(None)
    h.settle()
    again = h.login()
    (ok,) = h.replies(again)
    assert ok.fields["last"] == "2"
    h.send(again, "EV seq=1 ref=75 type=HOOK_OFF port=1", "EV seq=3 ref=75 type=HOOK_ON")
    assert [m.fields["seq"] for m in h.replies(again)] == ["3"]
    assert [e.seq for e in h.events()] == [1, 2, 3]
    assert "Gateway Disconnect" in [e.event for e in h.log()]


def test_sequence_gap_accepted_and_logged(h):
    proto = h.login()
    h.send(proto, "EV seq=1 ref=1 type=HOOK_OFF port=1", "EV seq=5 ref=1 type=HOOK_ON")
    assert [e.seq for e in h.events()] == [1, 5]
    gap = [e for e in h.log() if e.event == "Sequence Gap"]
    assert gap and gap[0].detail == "expected seq 2, got 5"


def test_ping_pong_logout_bye(h):
    proto = h.login()
    h.replies(proto)
    h.send(proto, "PING")
    assert verbs(h.replies(proto)) == ["PONG"]
    h.send(proto, "EV seq=1 ref=1 type=HOOK_OFF port=1", "LOGOUT")
    assert verbs(h.replies(proto)) == ["ACK", "BYE"]
    assert proto.tr.disconnecting
    proto.connectionLost(None)
    h.settle()
    assert [e.event for e in h.log()][:2] == ["Logout", "Login"]
    assert "Gateway Disconnect" not in [e.event for e in h.log()]
    (gw,) = run(h.store.gateways())
    assert not gw.online


def test_signed_login_and_wrong_secret(h):
    h = Harness(secret="s3cret", allow_unknown=False)
    good = h.login(secret="s3cret")
    assert verbs(h.replies(good)) == ["OK"]
    bad = h.login(secret="guess")
    (err,) = h.replies(bad)
    assert (err.verb, err.fields["code"]) == ("ERR", "auth")
    assert bad.tr.disconnecting
    rejected = [e for e in h.log() if e.event == "Login Rejected"]
    assert rejected and "auth" in rejected[0].detail
    assert "s3cret" not in repr(h.config)


def test_unknown_gateway_denied(h):
    h = Harness(allow_unknown=False)
    proto = h.login()
    (err,) = h.replies(proto)
    assert err.fields["code"] == "denied" and proto.tr.disconnecting


def test_bad_packet_before_login_closes(h):
    proto = h.connect()
    h.replies(proto)
    h.send(proto, "PING")
    (err,) = h.replies(proto)
    assert (err.verb, err.fields["code"]) == ("ERR", "bad")
    assert proto.tr.disconnecting
    proto.connectionLost(None)
    h.settle()
    (entry,) = h.log()
    assert (entry.event, entry.gateway, entry.peer) == ("Bad Packet", "???", "127.0.0.1:2348")


def test_bad_field_still_stored_and_acked(h):
    proto = h.login()
    h.replies(proto)
    h.send(proto, "EV seq=1 ref=1 type=HOOK_OFF port=x")
    msgs = h.replies(proto)
    assert verbs(msgs) == ["ERR", "ACK"]
    assert msgs[0].fields["seq"] == "1"
    assert [e.type for e in h.events()] == ["HOOK_OFF"]
    assert not proto.tr.disconnecting


def test_ten_bad_packets_in_a_minute_close(h):
    proto = h.login()
    h.replies(proto)
    for i in range(9):
        h.send(proto, "EV seq=oops ref=1 type=X")
        h.clock.advance(5)
    assert not proto.tr.disconnecting
    h.send(proto, "garbage!")
    assert proto.tr.disconnecting


def test_long_line_closes_at_once(h):
    proto = h.login()
    h.replies(proto)
    h.send(proto, "EV seq=1 ref=1 type=DIAL digits=" + "1" * 1100)
    (err,) = h.replies(proto)
    assert err.fields["code"] == "bad" and "1024" in err.fields["reason"]
    assert proto.tr.disconnecting


def test_partial_line_without_newline_is_bounded(h):
    proto = h.login()
    h.replies(proto)
    for _ in range(3):
        proto.dataReceived(b"x" * 600)
    assert proto.tr.disconnecting
    assert len(proto._buffer) == 0


def test_idle_timeout(h):
    proto = h.login()
    h.replies(proto)
    h.clock.advance(89)
    h.send(proto, "PING")
    h.clock.advance(89)
    assert not proto.tr.disconnecting
    h.clock.advance(2)
    assert proto.tr.disconnecting
    assert "Idle Timeout" in [e.event for e in h.log()]


def test_relogin_kicks_out_old_connection(h):
    old = h.login()
    h.send(old, "EV seq=1 ref=75 type=HOOK_OFF port=1")
    new = h.login()
    (ok,) = h.replies(new)
    assert ok.fields["last"] == "1"
    assert old.tr.disconnecting
    old.connectionLost(None)
    h.settle()
    events = [e.event for e in reversed(h.log())]
    assert events[-3:] == ["Re-Login", "Login", "Relogin Kickout"]
    kick = [e for e in h.log() if e.event == "Relogin Kickout"][0]
    assert kick.peer == "127.0.0.1:2348"
    (gw,) = run(h.store.gateways())
    assert gw.online  # the old connection's loss does not take the gateway offline


def test_reboot_by_callref_writes_restart_event():
    h = Harness(open_refs=lambda key, boot: {75} if boot == "r0" else set())
    proto = h.login()
    h.send(proto, "EV seq=1 ref=75 type=HOOK_OFF port=1")
    proto.connectionLost(None)
    h.settle()
    h.clock.advance(30)
    again = h.login(LOGIN.replace("callref=74", "callref=2"))
    assert verbs(h.replies(again)) == ["OK"]
    restart = [e for e in h.events() if e.type == "GATEWAY_RESTART"]
    assert len(restart) == 1 and restart[0].boot == "r0" and restart[0].seq is None
    hook_off = h.events()[0]
    assert restart[0].time == hook_off.received  # last heard: the HOOK_OFF's arrival
    h.send(again, "EV seq=2 ref=1 type=HOOK_OFF port=1")
    assert h.events()[-1].boot == "r1"
    assert "Gateway Restart" in [e.event for e in h.log()]


def test_store_failure_is_not_acked_and_resent_after_relogin():
    store = FailingStore()
    h = Harness(store=store)
    proto = h.login()
    h.replies(proto)
    h.send(proto, "EV seq=1 ref=1 type=HOOK_OFF port=1")
    assert [m.fields["seq"] for m in h.replies(proto)] == ["1"]
    store.fail = True
    h.send(proto, "EV seq=2 ref=1 type=DIAL digits=1")
    msgs = h.replies(proto)
    assert "ACK" not in verbs(msgs)
    assert msgs[-1].fields["code"] == "unavailable" and proto.tr.disconnecting
    proto.connectionLost(None)
    store.fail = False
    h.settle()
    again = h.login()
    (ok,) = h.replies(again)
    assert ok.fields["last"] == "1"  # seq 2 was never stored: the gateway resends it
    h.send(again, "EV seq=2 ref=1 type=DIAL digits=1")
    assert [m.fields["seq"] for m in h.replies(again)] == ["2"]
    assert [e.seq for e in h.events()] == [1, 2]


def test_lines_sent_before_ok_are_processed_after_it(h):
    proto = h.connect()
    h.replies(proto)
    proto.dataReceived((LOGIN + "\nEV seq=1 ref=1 type=HOOK_OFF port=1\n").encode())
    h.settle()
    assert verbs(h.replies(proto)) == ["OK", "ACK"]
