"""
Unit: the spool over the store room's real MemoryStore and BatchWriter
(group commit), as tap.py wires them.
"""

from __future__ import annotations

import random

from cdrd.accounting.packets import load_dictionary
from cdrd.accounting.service import AccountingService
from cdrd.config import RadiusConfig, RadiusServer
from cdrd.interfaces import OutboxItem, WriteBatch
from cdrd.store.memory import MemoryStore
from cdrd.store.writer import BatchWriter
from tests.accounting import examples
from tests.accounting.fakes import FakeReactor, answer, decode
from tests.accounting.test_service import crash

D = load_dictionary(32473)
SECRET = "sekrit"


def make(store, reactor, interim=60):
    cfg = RadiusConfig(
        servers=(RadiusServer("127.0.0.1", 1813, SECRET),),
        interim_interval=interim,
        nas_ip="192.0.2.10",
    )
    writer = BatchWriter(store, reactor)
    svc = AccountingService(cfg, store, writer, reactor, reactor, rng=random.Random(3))
    return svc, writer


def outbox(store):
    return store.outbox("radius", 0, 10_000).result


def commit(svc, writer, reactor, outputs):
    """What the CallService does: one transaction with the payloads, then
    committed()."""
    now = int(reactor.seconds() * 1000)
    d = writer.submit(
        WriteBatch(
            outbox=[OutboxItem("radius", p, now) for p in svc.spool(outputs, now)]
        )
    )
    reactor.advance(0)
    assert d.called
    svc.committed(outputs)


def answer_current(reactor, svc):
    port = reactor.ports[-1]
    server = svc.client.servers[0]
    for raw, _ in list(port.written):
        req = server.inflight.get(raw[1])
        if raw[0] == 4 and req is not None and req.raw == raw:
            answer(port, raw, SECRET.encode(), D)


def test_memory_store_and_batch_writer_end_to_end():
    r = FakeReactor()
    r.advance(examples.t("10:00:00.000") / 1000)
    store = MemoryStore()
    svc, writer = make(store, r)
    svc.startService()
    e1 = examples.e1()
    commit(svc, writer, r, e1[:4])  # Starts and answers
    assert len(outbox(store)) == 4  # 2 Starts, 2 open markers
    answer_current(r, svc)
    r.advance(0)
    r.advance(0)
    assert [i.payload[:12] for i in outbox(store)] == [b'{"k":"open",'] * 2
    assert store.outbox_stats("radius").result[0] == 2

    # kill -9 and restart: the open legs come back from the store
    crash(r)
    r.advance(30)
    svc2, writer2 = make(store, r)
    svc2.startService()
    assert svc2.status()["open_legs"] == 2
    r.pump([1] * 40)  # first interim at answer + 60 s
    kinds = [decode(raw, D)["Acct-Status-Type"][0] for raw, _ in r.ports[-1].written]
    assert "Interim-Update" in kinds
    answer_current(r, svc2)
    commit(svc2, writer2, r, e1[4:])
    answer_current(r, svc2)
    r.advance(0)
    r.advance(0)
    assert outbox(store) == []
    stops = [decode(raw, D) for raw, _ in r.ports[-1].written]
    stops = [p for p in stops if p["Acct-Status-Type"] == ["Stop"]]
    assert stops[-1]["cdrd-CDR"] == [e1[-1].cdrs[0].line]
    r.pump([0.5] * 3)
    assert svc2.status()["spool_depth"] == 0


# -- nothing lost, whatever is dropped and whenever the process dies ----------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

STEPS = st.lists(
    st.sampled_from(["answer", "drop", "tick", "crash", "commit"]),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(STEPS, st.integers(0, 2**32))
def test_every_request_is_delivered_through_losses_and_crashes(steps, seed):
    rng = random.Random(seed)
    r = FakeReactor()
    r.advance(examples.t("11:00:00.000") / 1000)
    store = MemoryStore()
    svc, writer = make(store, r, interim=0)
    svc.startService()
    pending = [examples.e1(), examples.e4()]
    spooled: set[tuple[str, str]] = set()
    delivered: set[tuple[str, str]] = set()

    def answer_some(everything=False):
        port = r.ports[-1]
        server = svc.client.servers[0]
        for raw, _ in list(port.written):
            req = server.inflight.get(raw[1])
            if raw[0] == 4 and req is not None and req.raw == raw:
                if everything or rng.random() < 0.5:
                    p = decode(raw, D)
                    delivered.add((p["Acct-Session-Id"][0], p["Acct-Status-Type"][0]))
                    answer(port, raw, SECRET.encode(), D)
        port.written.clear()

    for step in steps:
        if step == "commit" and pending:
            outputs = pending.pop(0)
            commit(svc, writer, r, outputs)
            spooled |= {
                (o.leg.id, type(o).__name__[3:])
                for o in outputs
                if type(o).__name__ in ("LegStart", "LegStop")
            }
        elif step == "answer":
            answer_some()
        elif step == "drop":
            r.ports[-1].written.clear()
        elif step == "tick":
            r.advance(rng.uniform(0, 5))
        elif step == "crash":
            crash(r)  # kill -9: what the writer had not committed is lost too
            svc, writer = make(store, r, interim=0)
            svc.startService()
        r.advance(0)
    while pending:
        outputs = pending.pop(0)
        commit(svc, writer, r, outputs)
        spooled |= {
            (o.leg.id, type(o).__name__[3:])
            for o in outputs
            if type(o).__name__ in ("LegStart", "LegStop")
        }
    for _ in range(200):  # the server comes back for good
        if not outbox(store):
            break
        answer_some(everything=True)
        r.advance(0)
        r.advance(0)
        r.advance(3)
    assert outbox(store) == []
    assert spooled and delivered >= spooled
