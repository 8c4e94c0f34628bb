"""CuiAuthorizer (the CUI from RADIUS, RFC 4372) with task.Clock and fake UDP
ports; pyrad builds the server's answers.  The real FreeRADIUS is in
test_freeradius_authorize.py."""

from __future__ import annotations

from pyrad.packet import AccessAccept, AccessReject, AuthPacket
from twisted.internet import defer

from cdrd.accounting.authorize import CuiAuthorizer, access_attributes, asks
from cdrd.accounting.packets import load_dictionary
from cdrd.config import Config, GatewayConfig, LineConfig, RadiusConfig, RadiusServer
from cdrd.interfaces import WriteResult
from cdrd.values import RADIUS_CUI, CallEvent
from tests.accounting.fakes import FakeReactor

D = load_dictionary(32473)
GW = "8200_000C2A020082"
SECRET = "auth-secret"


class Writer:
    """What the authorizer needs of the BatchWriter: listeners and submit."""

    def __init__(self):
        self.listeners = []
        self.batches = []

    def add_listener(self, f):
        self.listeners.append(f)

    def remove_listener(self, f):
        self.listeners.remove(f)

    def submit(self, batch):
        self.batches.append(batch)
        return defer.succeed(None)

    def commit(self, *events):
        for f in list(self.listeners):
            f(None, WriteResult(events=events))

    def answers(self):
        return [e for b in self.batches for e in b.events]


def config(servers=1, gateways=None, retries=1):
    radius = RadiusConfig(
        nas_ip="192.0.2.10",
        authorize=True,
        auth_servers=tuple(
            RadiusServer(host="127.0.0.1", port=1812 + i, secret=SECRET) for i in range(servers)
        ),
        auth_timeout=2.0,
        auth_retries=retries,
    )
    return Config(radius=radius, gateways=gateways or {})


def pstn_call_in(ref=77, cli="02071234567", pport="1", seq=5):
    return CallEvent(
        gateway=GW, seq=seq, ref=ref, type="PSTN_CALL_IN", time=1_000_000, received=1_000_100,
        boot="b1", fields={"cli": cli, "pport": pport}, id=seq,
    )


def call_in(ref=81):
    return CallEvent(
        gateway=GW, seq=9, ref=ref, type="CALL_IN", time=2_000_000, received=2_000_000,
        boot="b1", fields={"cli": "07700900111", "to": "201", "port": "1"}, id=9,
    )


def make(**kw):
    r = FakeReactor()
    w = Writer()
    svc = CuiAuthorizer(config(**kw), w, r, r, D)
    svc.startService()
    return svc, w, r


def reply(raw, code, secret=SECRET, **attrs):
    req = AuthPacket(packet=raw, secret=secret.encode(), dict=D)
    rep = req.CreateReply(**attrs)
    rep.code = code
    return rep.ReplyPacket()


def test_the_access_request_carries_what_the_spec_names():
    svc, w, r = make()
    w.commit(pstn_call_in())
    ((raw, addr),) = r.ports[0].written
    assert addr == ("127.0.0.1", 1812)
    pkt = AuthPacket(packet=raw, secret=SECRET.encode(), dict=D)
    assert pkt["User-Name"] == ["02071234567"]
    assert pkt["Calling-Station-Id"] == ["02071234567"]
    assert pkt["NAS-Identifier"] == [GW] and pkt["NAS-Port-Id"] == ["fxo/1"]
    assert pkt["NAS-IP-Address"] == ["192.0.2.10"]
    assert pkt["Chargeable-User-Identity"] == [b"\x00"]  # RFC 4372: one NUL byte
    assert pkt.verify_message_authenticator()  # BlastRADIUS
    attrs = dict(access_attributes(call_in(), None))
    assert attrs["Called-Station-Id"] == "201" and attrs["NAS-Port-Id"] == "fxs/1"


def test_an_accept_with_a_cui_is_recorded_as_a_synthetic_event():
    svc, w, r = make()
    event = pstn_call_in()
    w.commit(event)
    raw = r.ports[0].written[0][0]
    # a forged answer (wrong secret) is ignored
    r.ports[0].protocol.datagramReceived(reply(raw, AccessAccept, "wrong"), ("127.0.0.1", 1812))
    assert w.answers() == []
    r.ports[0].protocol.datagramReceived(
        reply(raw, AccessAccept, **{"Chargeable-User-Identity": b"RADIUS-0207"}),
        ("127.0.0.1", 1812),
    )
    (answer,) = w.answers()
    assert (answer.type, answer.seq, answer.ref, answer.boot, answer.time) == (
        RADIUS_CUI, None, 77, "b1", event.time
    )
    assert dict(answer.fields) == {"result": "accept", "cui": "RADIUS-0207"}
    w.commit(answer)  # its own commit asks nothing
    assert len(r.ports[0].written) == 1 and not r.getDelayedCalls()


def test_a_reject_is_recorded():
    svc, w, r = make()
    w.commit(call_in())
    raw = r.ports[0].written[0][0]
    r.ports[0].protocol.datagramReceived(reply(raw, AccessReject), ("127.0.0.1", 1812))
    assert [dict(a.fields) for a in w.answers()] == [{"result": "reject"}]


def test_dead_servers_in_order_then_a_timeout_is_recorded():
    """Two servers, one resend each, 2 s apart: 4 packets over 8 s, then
    `timeout`; nothing else waited for it."""
    svc, w, r = make(servers=2, retries=1)
    w.commit(pstn_call_in())
    r.advance(2)
    r.advance(2)
    r.advance(2)
    assert [len(p.written) for p in r.ports] == [2, 2]
    assert w.answers() == []
    r.advance(2)
    assert [dict(a.fields) for a in w.answers()] == [{"result": "timeout"}]
    assert svc.status()["in_flight"] == 0 and svc.status()["timeout"] == 1


def test_opt_outs_and_what_is_not_asked():
    cfg = config(gateways={GW: GatewayConfig(key=GW, lines={1: LineConfig(authorize=False)})})
    assert not asks(cfg, pstn_call_in(pport="1"))
    assert asks(cfg, pstn_call_in(pport="2"))
    assert asks(cfg, call_in())
    cfg = config(gateways={GW: GatewayConfig(key=GW, authorize=False)})
    assert not asks(cfg, call_in()) and not asks(cfg, pstn_call_in())
    cfg = config()
    assert not asks(cfg, pstn_call_in(cli=""))  # nothing to ask about
    hook_off = CallEvent(gateway=GW, seq=1, ref=1, type="HOOK_OFF", time=0, received=0)
    assert not asks(cfg, hook_off)
    assert not asks(Config(), pstn_call_in())  # off by default


def test_identifiers_are_bounded_then_overload():
    svc, w, r = make(retries=0)
    for ref in range(257):
        w.commit(pstn_call_in(ref=ref, seq=ref + 1))
    assert len(r.ports[0].written) == 256
    assert [dict(a.fields) for a in w.answers()] == [{"result": "overload"}]
    svc.stopService()
    assert not r.getDelayedCalls()
