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
from cdrd.store.leases import LeaseLost, batch_gateways
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

    def connect(self, host="127.0.0.1"):
        self.port += 1
        proto = self.factory.buildProtocol(IPv4Address("TCP", host, self.port))
        tr = StringTransport(peerAddress=IPv4Address("TCP", host, self.port))
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

    def login(self, line=LOGIN, secret=None, host="127.0.0.1"):
        proto = self.connect(host)
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
    for _ in range(9):
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


def test_a_login_waits_for_its_gateways_claim(h):
    claims = []
    h.factory.claim = lambda key: claims.append(key) or claimed
    claimed = defer.Deferred()
    proto = h.login()
    assert claims == [KEY]
    assert h.replies(proto) == [] and run(h.store.gateways()) == []  # nothing read or written yet
    claimed.callback(None)
    h.settle()
    assert verbs(h.replies(proto)) == ["OK"]


class LeasedAwayStore(MemoryStore):
    """Another cdrd node took the gateways in `lost`: their writes are fenced off."""

    lost = frozenset()

    def write(self, batch):
        taken = batch_gateways(batch) & self.lost
        if taken:
            return defer.fail(LeaseLost(taken))
        return super().write(batch)


def test_a_write_fenced_off_by_another_nodes_lease_closes_as_a_relogin_kickout():
    store = LeasedAwayStore()
    h = Harness(store=store)
    proto = h.login()
    h.replies(proto)
    store.lost = frozenset({KEY})
    h.send(proto, "EV seq=1 ref=1 type=HOOK_OFF port=1")
    assert h.replies(proto) == []  # no ACK, and no ERR: the gateway is on the other node already
    assert proto.tr.disconnecting
    proto.connectionLost(None)
    h.settle()
    assert [e.event for e in reversed(h.log())][-2:] == ["Login", "Relogin Kickout"]  # no Disconnect after it
    assert h.events() == []


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


# -- the audit's items ----------------------------------------------------------


class HeldStore(MemoryStore):
    """write() (and, when asked, gateway()) wait until the test finishes them, like a store thread."""

    def __init__(self):
        super().__init__()
        self.hold = False
        self.hold_reads = False
        self.waiting = []
        self.reads = []

    def write(self, batch):
        if not self.hold:
            return super().write(batch)
        d = defer.Deferred()
        self.waiting.append((batch, d))
        return d

    def gateway(self, key):
        if not self.hold_reads:
            return super().gateway(key)
        d = defer.Deferred()
        self.reads.append((key, d))
        return d

    def finish(self, ok=True):
        batch, d = self.waiting.pop(0)
        if ok:
            d.callback(run(super().write(batch)))
        else:
            d.errback(OSError(16, "database is locked"))

    def finish_reads(self):
        while self.reads:
            key, d = self.reads.pop(0)
            d.callback(run(MemoryStore.gateway(self, key)))

    def release(self):
        self.hold = False
        while self.waiting:
            self.finish()


def fields(msgs):
    return [(m.verb, dict(m.fields)) for m in msgs]


class TestErrCarriesSeq:
    def test_unknown_verb(self, h):
        proto = h.login()
        h.replies(proto)
        h.send(proto, "EVENT seq=7 ref=1 type=HOOK_OFF port=1")
        assert fields(h.replies(proto)) == [
            ("ERR", {"code": "bad", "seq": "7", "reason": "unknown verb EVENT"})]

    def test_over_long_line(self, h):
        proto = h.login()
        h.replies(proto)
        h.send(proto, "EV seq=8 ref=1 type=DIAL digits=" + "1" * 1100)
        (err,) = h.replies(proto)
        assert (err.fields["seq"], err.fields["reason"]) == ("8", "line longer than 1024 bytes")
        assert [e.detail for e in h.log() if e.event == "Bad Packet"] == [
            "seq 8: line longer than 1024 bytes"]

    def test_partial_line_over_the_limit(self, h):
        proto = h.login()
        h.replies(proto)
        proto.dataReceived(b"EV seq=9 ref=1 type=DIAL digits=" + b"1" * 1100)
        (err,) = h.replies(proto)
        assert err.fields["seq"] == "9" and proto.tr.disconnecting

    def test_event_before_login(self, h):
        proto = h.connect()
        h.replies(proto)
        h.send(proto, "EV seq=9 ref=1 type=HOOK_OFF port=1")
        assert fields(h.replies(proto)) == [
            ("ERR", {"code": "bad", "seq": "9", "reason": "expected LOGIN, got EV"})]
        assert proto.tr.disconnecting


@pytest.mark.parametrize("setting, timeout", [({}, 10), ({"login_timeout": 30}, 30)])
def test_login_timeout_is_server_login_timeout(setting, timeout):
    h = Harness(**setting)
    proto = h.connect()
    h.replies(proto)
    h.clock.advance(timeout - 0.1)
    assert not proto.tr.disconnecting
    h.clock.advance(0.2)
    assert proto.tr.disconnecting
    proto.connectionLost(None)
    h.settle()
    assert [(e.event, e.detail) for e in h.log()] == [("Gateway Disconnect", f"no LOGIN within {timeout} s")]


def test_half_sent_login_line_times_out_too(h):
    proto = h.connect()
    h.replies(proto)
    proto.dataReceived(LOGIN[:20].encode())  # never completed
    h.clock.advance(30.1)
    assert proto.tr.disconnecting


def test_non_utf8_before_login_closes(h):
    proto = h.connect()
    h.replies(proto)
    proto.dataReceived(b"LOGIN proto=1 gw=\xff\xfe\n")
    h.settle()
    (err,) = h.replies(proto)
    assert (err.fields["code"], err.fields["reason"]) == ("bad", "not UTF-8")
    assert proto.tr.disconnecting


def test_non_utf8_after_login_is_a_bad_packet_and_the_session_goes_on(h):
    proto = h.login()
    h.replies(proto)
    proto.dataReceived(b"EV seq=1 ref=1 type=DIAL digits=\xc3\x28\n")
    h.settle()
    assert fields(h.replies(proto)) == [("ERR", {"code": "bad", "seq": "1", "reason": "not UTF-8"})]
    h.send(proto, "EV seq=1 ref=1 type=HOOK_OFF port=1")
    assert fields(h.replies(proto)) == [("ACK", {"seq": "1"})]
    assert not proto.tr.disconnecting


def test_non_ascii_auth_is_rejected_with_code_auth():
    h = Harness(secret="s3cret", allow_unknown=False)
    proto = h.connect()
    h.replies(proto)
    h.send(proto, LOGIN + " auth=\u00e9\u00e9")
    (err,) = h.replies(proto)
    assert (err.verb, err.fields["code"]) == ("ERR", "auth")
    assert proto.tr.disconnecting
    assert [(e.event, e.detail) for e in h.log()] == [("Login Rejected", "code=auth wrong auth")]


def test_every_connection_gets_a_fresh_nonce():
    h = Harness()
    h.factory.make_nonce = GatewayFactory(h.config, h.store, h.writer, h.clock).make_nonce
    nonces = {h.replies(h.connect())[0].fields["nonce"] for _ in range(20)}
    assert len(nonces) == 20
    assert all(len(n) == 32 and set(n) <= set("0123456789abcdef") for n in nonces)


def test_control_bytes_in_a_rejected_login_are_stored_visibly(h):
    proto = h.connect()
    h.replies(proto)
    h.send(proto, "LOGIN proto=%00 gw=1 mac=000000000001 fxs=0 fxo=0 isdn=0 callref=0 time=2026-11-22T10:00:00")
    (entry,) = h.log()
    assert (entry.event, entry.detail) == ("Login Rejected", "code=proto unsupported protocol \\x00")


def test_skew_is_measured_at_the_logins_arrival():
    store = HeldStore()
    h = Harness(store=store)
    store.hold_reads = True
    proto = h.login()  # the gateway's clock is exactly the server's
    h.clock.advance(10)  # the store lookup takes 10 s
    store.hold_reads = False
    store.finish_reads()
    h.settle()
    assert verbs(h.replies(proto)) == ["OK"]
    assert run(store.gateway(KEY)).skew_ms == 0


def test_reboot_during_relogin_ends_calls_at_the_last_ping():
    h = Harness(open_refs=lambda key, boot: {75} if boot == "1" else set())
    old = h.login(LOGIN + " boot=1")
    h.replies(old)
    h.send(old, "EV seq=1 ref=75 type=HOOK_OFF port=1", "EV seq=2 ref=75 type=TALK")
    for _ in range(20):  # the call talks on for 20 minutes; the gateway PINGs
        h.clock.advance(60)
        last_ping = old.now()
        h.send(old, "PING")
    h.clock.advance(5)
    # the gateway rebooted; its old TCP connection is still (half-)open
    new = h.login(LOGIN + " boot=2")
    assert verbs(h.replies(new)) == ["OK"]
    assert old.tr.disconnecting
    (restart,) = [e for e in h.events() if e.type == "GATEWAY_RESTART"]
    assert restart.boot == "1" and restart.time == last_ping
    assert [e.event for e in reversed(h.log())][-4:] == ["Re-Login", "Login", "Gateway Restart", "Relogin Kickout"]


def test_restart_never_ends_a_call_before_its_events():
    # the gateway's clock runs 3 s ahead: within the tolerance, not corrected
    h = Harness(open_refs=lambda key, boot: {75} if boot == "1" else set())
    old = h.login(LOGIN + " boot=1")
    h.send(old, "EV seq=1 ref=75 type=HOOK_OFF port=1 t=2026-11-22T10:00:03.000",
           "EV seq=2 ref=75 type=TALK t=2026-11-22T10:00:04.000")
    talk = h.events()[-1]
    assert talk.time > talk.received
    h.login(LOGIN + " boot=2")
    (restart,) = [e for e in h.events() if e.type == "GATEWAY_RESTART"]
    assert restart.time >= talk.time


def test_connection_lost_while_its_login_is_stored_leaves_no_ghost():
    store = HeldStore()
    h = Harness(store=store)
    store.hold = True
    proto = h.login()  # the login's batch (online) is in flight
    proto.connectionLost(None)  # the gateway drops before its OK
    store.release()
    h.settle()
    assert h.factory.registry.connection(KEY) is None
    assert not run(store.gateway(KEY)).online
    assert [e.event for e in reversed(h.log())] == ["Login", "Gateway Disconnect"]
    again = h.login()
    assert verbs(h.replies(again)) == ["OK"]
    assert [e.event for e in reversed(h.log())][-1] == "Login"  # not a Re-Login


def test_failed_batch_fails_the_gateways_later_batches_and_last_stays_exact():
    store = HeldStore()
    h = Harness(store=store)
    seen = []
    h.writer.add_listener(lambda batch, result: seen.extend(e.seq for e in result.events))
    proto = h.login()
    h.replies(proto)
    h.send(proto, "EV seq=1 ref=1 type=HOOK_OFF port=1")
    assert fields(h.replies(proto)) == [("ACK", {"seq": "1"})]
    store.hold = True
    h.send(proto, "EV seq=2 ref=1 type=DIAL digits=1")  # in flight
    h.send(proto, "EV seq=3 ref=1 type=RING_BACK")  # queued behind it
    store.finish(ok=False)
    h.settle()
    msgs = h.replies(proto)
    assert "ACK" not in verbs(msgs) and msgs[-1].fields["code"] == "unavailable"
    proto.connectionLost(None)
    store.release()
    h.settle()
    assert [e.seq for e in h.events()] == [1]  # 3 was never written without 2
    assert seen == [1]  # nor applied by the call model
    assert run(store.gateway(KEY)).last_seq == 1
    # cdrd restarts: a new registry, the store's word only
    h2 = Harness(store=store)
    again = h2.login()
    assert h2.replies(again)[0].fields["last"] == "1"


def test_disconnect_does_not_store_a_last_ahead_of_a_failing_write():
    store = HeldStore()
    h = Harness(store=store)
    proto = h.login()
    h.send(proto, "EV seq=1 ref=1 type=HOOK_OFF port=1")
    store.hold = True
    h.send(proto, "EV seq=2 ref=1 type=DIAL digits=1")  # in flight ...
    proto.connectionLost(None)  # ... when the gateway drops
    h.settle()
    store.finish(ok=False)
    store.release()
    h.settle()
    state = run(store.gateway(KEY))
    assert (state.last_seq, state.online) == (1, False)


class PoisonStore(MemoryStore):
    """Refuses any transaction holding an event of `poison` (like a row PostgreSQL rejects)."""

    poison = "9999_000000009999"
    writes = 0

    def write(self, batch):
        self.writes += 1
        if any(e.gateway == self.poison for e in batch.events):
            return defer.fail(ValueError("A string literal cannot contain NUL (0x00) characters."))
        return super().write(batch)


def test_a_store_failure_of_one_gateway_leaves_the_others_served():
    store = PoisonStore()
    h = Harness(store=store)
    good = h.login()
    bad = h.login(LOGIN.replace("gw=8200 mac=000C2A020082", "gw=9999 mac=000000009999"))
    assert verbs(h.replies(good)) == verbs(h.replies(bad)) == ["OK"]
    # both in the same reactor turn: one group commit
    good.dataReceived(b"EV seq=1 ref=1 type=HOOK_OFF port=1\n")
    bad.dataReceived(b"EV seq=1 ref=1 type=HOOK_OFF port=1\n")
    h.settle()
    assert fields(h.replies(good)) == [("ACK", {"seq": "1"})]
    assert h.replies(bad)[-1].fields["code"] == "unavailable" and bad.tr.disconnecting
    assert not good.tr.disconnecting
    h.send(good, "EV seq=2 ref=1 type=HOOK_ON")
    assert fields(h.replies(good)) == [("ACK", {"seq": "2"})]
    assert [e.seq for e in h.events()] == [1, 2]


def test_offline_gateways_do_not_stay_in_memory():
    h = Harness()
    for n in range(50):
        proto = h.login(LOGIN.replace("gw=8200 mac=000C2A020082", f"gw={n} mac={n:012X}"))
        h.send(proto, "EV seq=1 ref=1 type=HOOK_OFF port=1", "LOGOUT")
        proto.connectionLost(None)
        h.settle()
    assert len(h.factory.registry) == 0
    assert len(run(h.store.gateways())) == 50
    # and what a link knew comes back from the store
    again = h.login(LOGIN.replace("gw=8200 mac=000C2A020082", "gw=7 mac=000000000007"))
    assert h.replies(again)[0].fields["last"] == "1"


def test_relogin_waiting_for_a_write_keeps_the_link():
    store = HeldStore()
    h = Harness(store=store)
    old = h.login()
    h.send(old, "EV seq=1 ref=1 type=HOOK_OFF port=1")
    store.hold = True
    h.send(old, "EV seq=2 ref=1 type=RING_BACK")  # in flight
    new = h.login()  # waits for it
    old.connectionLost(None)
    store.release()
    h.settle()
    store.release()
    h.settle()
    (ok,) = h.replies(new)
    assert ok.fields["last"] == "2"
    assert h.factory.registry.connection(KEY) is new
    assert run(store.gateway(KEY)).online


def gateway(n):
    return LOGIN.replace("gw=8200 mac=000C2A020082", f"gw={n} mac={n:012X}")


def test_logins_beyond_the_limit_are_refused_and_logged():
    from twisted.logger import globalLogPublisher

    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        h = Harness(max_connections=2)
        first, second = h.login(gateway(1)), h.login(gateway(2))
        assert verbs(h.replies(first)) == verbs(h.replies(second)) == ["OK"]
        silent = h.connect()  # connections not logged in do not count
        assert verbs(h.replies(silent)) == ["HELLO"]
        third = h.login(gateway(3))
        assert third.tr.value().endswith(b"ERR code=unavailable reason=too%20many%20connections;%20retry%20later\n")
        assert third.tr.disconnecting
        h.login(gateway(4))  # a flood is logged once a minute, not per connection
        refusals = [e for e in logged if "refused" in e.get("log_format", "")]
        assert len(refusals) == 1 and refusals[0]["peer"] == "127.0.0.1:2351"
        again = h.login(gateway(1))  # a relogin always finds room
        assert verbs(h.replies(again)) == ["OK"]
        second.connectionLost(None)
        h.settle()
        fourth = h.login(gateway(4))
        assert verbs(h.replies(fourth)) == ["OK"]
        assert [e.event for e in h.log()].count("Gateway Disconnect") == 1  # refusals are not logged per gateway
    finally:
        globalLogPublisher.removeObserver(logged.append)


# -- connection budgets (issue 11) -------------------------------------------------

GAVE_WAY = b"ERR code=unavailable reason=too%20many%20connections%20not%20logged%20in;%20retry%20later\n"


def test_the_oldest_silent_connection_of_an_address_gives_way():
    h = Harness(unauthenticated_per_address=3)
    silent = [h.connect() for _ in range(3)]
    other = h.connect("127.0.0.2")
    assert not any(p.tr.disconnecting for p in silent + [other])
    newest = h.connect()
    assert silent[0].tr.disconnecting and silent[0].tr.value().endswith(GAVE_WAY)
    assert not any(p.tr.disconnecting for p in silent[1:] + [other, newest])
    assert verbs(h.replies(newest)) == ["HELLO"]
    h.connect()
    assert silent[1].tr.disconnecting and not silent[2].tr.disconnecting
    for proto in silent[:2]:
        proto.connectionLost(None)
    h.settle()
    assert h.log() == []  # no gateway is known: the operator log counts them


def test_the_oldest_silent_connection_of_all_gives_way():
    h = Harness(unauthenticated_per_address=10, unauthenticated_total=4)
    first = h.connect("127.0.0.1")
    rest = [h.connect(f"127.0.0.{n}") for n in range(2, 5)]
    assert not first.tr.disconnecting
    h.connect("127.0.0.9")
    assert first.tr.disconnecting and first.tr.value().endswith(GAVE_WAY)
    assert not any(p.tr.disconnecting for p in rest)
    assert h.factory.connections_given_way == 1


def test_gateways_logged_in_or_logging_in_never_give_way():
    store = HeldStore()
    h = Harness(store=store, unauthenticated_per_address=2, unauthenticated_total=2)
    logged_in = h.login()
    assert verbs(h.replies(logged_in)) == ["OK"]
    store.hold_reads = True
    logging_in = h.login(gateway(1))  # its store lookup is held
    flood = [h.connect() for _ in range(50)]
    assert sum(not p.tr.disconnecting for p in flood) == 2
    assert not logged_in.tr.disconnecting and not logging_in.tr.disconnecting
    store.hold_reads = False
    store.finish_reads()
    h.settle()
    assert verbs(h.replies(logging_in)) == ["OK"]
    h.send(logged_in, "EV seq=1 ref=1 type=HOOK_OFF port=1")
    assert fields(h.replies(logged_in)) == [("ACK", {"seq": "1"})]


def test_a_gateway_logs_in_through_a_flood_of_silent_connections():
    h = Harness(unauthenticated_per_address=64, unauthenticated_total=1024)
    flood = [h.connect("127.0.0.1") for _ in range(2000)]
    assert sum(not p.tr.disconnecting for p in flood) == 64
    proto = h.login(host="127.0.0.2")
    assert verbs(h.replies(proto)) == ["OK"]


def test_giving_way_is_logged_once_a_minute_with_the_count():
    from twisted.logger import globalLogPublisher

    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        h = Harness(unauthenticated_per_address=1, login_timeout=600)
        for _ in range(5):
            h.connect()
        h.clock.advance(61)
        for _ in range(3):
            h.connect()
        h.clock.advance(61)
        h.connect()
        lines = [e for e in logged if "gave way" in e.get("log_format", "")]
        assert [(e["count"], e["setting"], e["limit"]) for e in lines] == [
            (1, "server.unauthenticated_per_address", 1),  # the first at once
            (4, "server.unauthenticated_per_address", 1),  # 3 held back, and this one
            (3, "server.unauthenticated_per_address", 1),
        ]
    finally:
        globalLogPublisher.removeObserver(logged.append)


def test_shutdown_logs_every_connection_off_while_the_store_is_open():
    h = Harness()
    a = h.login()
    b = h.login(LOGIN.replace("gw=8200 mac=000C2A020082", "gw=8201 mac=000C2A020083"))
    h.send(a, "EV seq=1 ref=1 type=HOOK_OFF port=1")
    waiting = h.connect()  # not logged in yet
    h.factory.shutdown()
    assert a.tr.disconnecting and b.tr.disconnecting and waiting.tr.disconnecting
    flushed = h.writer.flushed()
    h.settle()
    assert run(flushed) is None
    assert [g.online for g in run(h.store.gateways())] == [False, False]
    shut = [e for e in h.log() if e.event == "Gateway Disconnect"]
    assert len(shut) == 3 and {e.detail for e in shut} == {"cdrd is shutting down"}
    for proto in (a, b, waiting):
        proto.connectionLost(None)  # the transports close later: nothing more is written
    h.settle()
    assert len(h.log()) == len(shut) + 2  # and the two Logins
    assert h.connect().tr.disconnecting  # no new connection while stopping
