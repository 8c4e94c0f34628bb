"""
A gateway moving between cdrd nodes (cdrd.cluster): CallService.adopt loads
its open calls and cursor from the store mid-call, release forgets them, and
a write refused with LeaseLost drops that gateway's products (the new owner
makes them) without holding up the others.  Two services on one MemoryStore
play two nodes.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import capturedLogs

from cdrd.store.leases import LeaseLost, batch_gateways
from cdrd.store.memory import MemoryStore
from tests.calls.helpers import ALL, E4, GW, parse_events
from tests.calls.test_service import Rig, describe, pump, unstamped

OTHER = "8201_000C2A020083"


def single_run():
    rig = Rig()
    rig.login()
    rig.send(unstamped(parse_events(ALL)), chunk=3)
    return rig.results()


def test_a_gateway_adopted_mid_call_ends_every_call_once():
    events = unstamped(parse_events(ALL))
    cut = len(events) // 2
    store = MemoryStore()
    a = Rig(store=store)
    a.login()
    a.send(events[:cut], chunk=3)
    assert a.service.open_calls(GW)  # the cut is mid-call

    b = Rig(store=store, clock=a.clock)
    b.service.recover_all = False
    d = b.service.adopt(GW)
    pump(b.clock)
    assert d.called
    a.service.release(GW)
    assert a.service.open_calls(GW) == []
    assert [c.ref for c in b.service.open_calls(GW)] == [c.ref for c in single_open_calls(cut)]

    b.send(events[cut:], chunk=3)
    records, lines, outbox = b.results()
    want_records, want_lines, want_outbox = single_run()
    assert sorted(r.ref for r in records.values()) == sorted(r.ref for r in want_records.values())
    assert lines == want_lines
    assert outbox == want_outbox  # every product once, in order, across the two nodes
    assert [describe(o).encode() for o in a.sink.seen + b.sink.seen] == want_outbox


def single_open_calls(cut):
    rig = Rig()
    rig.login()
    rig.send(unstamped(parse_events(ALL))[:cut], chunk=3)
    return rig.service.open_calls(GW)


class FencedStore(MemoryStore):
    """A store where another node took `lost`: the call model's writes for them are refused whole."""

    lost: frozenset = frozenset()

    def write(self, batch):
        taken = batch_gateways(batch) & self.lost
        if taken and (batch.cursors or batch.records):
            return defer.fail(LeaseLost(taken))
        return super().write(batch)


def test_a_write_refused_with_lease_lost_drops_that_gateways_products_only():
    store = FencedStore()
    rig = Rig(store=store)
    rig.login()
    theirs = unstamped(parse_events(E4))
    mine = unstamped(parse_events(E4, gateway=OTHER))
    rig.send(theirs[:-1] + mine[:-1], chunk=100)
    store.lost = frozenset({GW})  # another node took GW: the last events' products are its
    with capturedLogs() as logs:
        rig.send(theirs[-1:] + mine[-1:], chunk=100)
    assert rig.service.open_calls(GW) == []
    assert rig.service.failed_writes == 0  # no retry loop
    records, _, _ = rig.results()
    assert [r.gateway for r in records.values()] == [OTHER]
    assert store.cursors().result[OTHER].applied == len(theirs) + len(mine)
    assert any("moved to another cdrd node" in e.get("log_format", "") for e in logs)
