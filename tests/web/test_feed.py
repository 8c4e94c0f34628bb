"""LiveFeed and its subscribers; the SSE endpoint over an in-memory HTTP connection."""

import json

import pytest
import pytest_twisted
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.server import Site as WebSite
from zope.interface.verify import verifyObject

from cdrd.interfaces import ICdrSink, IEventListener, WriteBatch
from cdrd.values import CallEnd, CallEvent
from cdrd.web.feed import ALL, LiveFeed, Subscriber
from tests.web import fixtures as F


class Sink:
    def __init__(self):
        self.data, self.closed = [], False

    def subscriber(self, kinds=frozenset({"event", "log", "call"}), max_queue=3):
        return Subscriber(
            self.data.append,
            self.close,
            lambda item: f"{item[0]}:{item[1]}".encode(),
            kinds=kinds,
            max_queue=max_queue,
        )

    def close(self):
        self.closed = True


def ev(i, gateway=F.GW):
    return CallEvent(
        gateway=gateway, seq=i, ref=1, type="DIAL", time=i, received=i, id=i
    )


def test_interfaces():
    feed = LiveFeed()
    verifyObject(IEventListener, feed)
    verifyObject(ICdrSink, feed)
    assert feed.spool([CallEnd(F.RECORDS[0])], 0) == []


def test_fan_out_per_gateway_and_to_all():
    feed = LiveFeed()
    a, b, every = Sink(), Sink(), Sink()
    feed.subscribe(F.GW, a.subscriber())
    feed.subscribe(F.GW2, b.subscriber())
    feed.subscribe(ALL, every.subscriber())
    feed.events_stored([ev(1), ev(2, F.GW2)])
    feed.log_stored([F.LOG[0]])
    feed.committed([CallEnd(F.RECORDS[0])])
    assert [d.split(b":")[0] for d in a.data] == [b"event", b"call"]
    assert len(b.data) == 1 and b.data[0].startswith(b"event:")
    assert [d.split(b":")[0] for d in every.data] == [
        b"event",
        b"event",
        b"log",
        b"call",
    ]


def test_kinds_filter():
    feed = LiveFeed()
    only_events = Sink()
    feed.subscribe(F.GW, only_events.subscriber(kinds=frozenset({"event"})))
    feed.committed([CallEnd(F.RECORDS[0])])
    feed.events_stored([ev(1)])
    assert len(only_events.data) == 1


def test_back_pressure_queues_then_flushes():
    feed = LiveFeed()
    s = Sink()
    sub = feed.subscribe(F.GW, s.subscriber(max_queue=3))
    sub.pauseProducing()
    feed.events_stored([ev(1), ev(2), ev(3)])
    assert s.data == [] and len(sub.queue) == 3
    sub.resumeProducing()
    assert len(s.data) == 3 and not sub.queue
    feed.events_stored([ev(4)])
    assert len(s.data) == 4


def test_a_slow_subscriber_is_dropped_not_buffered_forever():
    feed = LiveFeed()
    slow, fast = Sink(), Sink()
    sub = feed.subscribe(F.GW, slow.subscriber(max_queue=3))
    feed.subscribe(F.GW, fast.subscriber(max_queue=3))
    sub.pauseProducing()
    feed.events_stored([ev(i) for i in range(1, 1001)])
    assert slow.closed and sub.dropped and not sub.queue
    assert feed.subscribers() == [s for s in feed.subscribers() if s is not sub]
    assert len(fast.data) == 1000  # the others are not held back


def test_hold_and_release_skip_what_was_replayed():
    s = Sink()
    sub = s.subscriber(max_queue=10)
    sub.hold()
    sub.deliver(("event", ev(5)))
    sub.deliver(("event", ev(6)))
    assert s.data == []
    sub.release(lambda item: item[1].id > 5)
    assert s.data == [f"event:{ev(6)}".encode()]


def test_stop_producing_unsubscribes():
    feed = LiveFeed()
    s = Sink()
    sub = feed.subscribe(F.GW, s.subscriber())
    sub.stopProducing()
    assert s.closed and feed.subscribers() == []
    feed.events_stored([ev(1)])
    assert s.data == []


# -- the SSE endpoint -----------------------------------------------------------


class Connection:
    """One HTTP connection to the site, in memory."""

    def __init__(self, site, path, headers=b""):
        self.channel = WebSite(site.web.resource()).buildProtocol(None)
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)
        self.channel.dataReceived(
            b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
        )

    def messages(self):
        raw = self.transport.value().decode()
        return [
            json.loads(line[6:])
            for line in raw.splitlines()
            if line.startswith("data: ")
        ]

    def close(self):
        self.channel.connectionLost(Failure(ConnectionDone()))


@pytest_twisted.ensureDeferred
async def test_sse_replays_after_the_snapshot_then_goes_live(make_site):
    site = await make_site()
    c = Connection(site, f"/gateways/{F.GW}/events/stream?after=4")
    head = c.transport.value()
    assert b"200 OK" in head and b"text/event-stream" in head
    assert [m["id"] for m in c.messages()] == [5, 6]
    result = await site.store.write(
        WriteBatch(
            events=[
                CallEvent(
                    gateway=F.GW,
                    seq=50,
                    ref=99,
                    type="RING",
                    time=F.t("13:00:00"),
                    received=F.t("13:00:00"),
                    fields={"port": "2"},
                ),
                CallEvent(
                    gateway=F.GW2,
                    seq=50,
                    ref=99,
                    type="RING",
                    time=F.t("13:00:00"),
                    received=F.t("13:00:00"),
                ),
            ]
        )
    )
    site.feed.events_stored(result.events)
    live = c.messages()[-1]
    assert len(c.messages()) == 3  # the other gateway's event is not sent
    assert (live["ref"], live["type"], live["port"], live["time"]) == (
        99,
        "RING",
        "2",
        "2026-11-22 13:00:00.000",
    )
    assert f"id: {live['id']}\nevent: event\n" in c.transport.value().decode()
    c.close()
    assert site.feed.subscribers() == []


@pytest_twisted.ensureDeferred
async def test_sse_last_event_id_wins_and_heartbeats(make_site):
    site = await make_site()
    c = Connection(
        site, f"/gateways/{F.GW}/events/stream?after=1", b"Last-Event-ID: 5\r\n"
    )
    assert [m["id"] for m in c.messages()] == [6]
    assert site.web.streams._heartbeat is not None
    site.clock.advance(15)
    assert c.transport.value().endswith(b": keep-alive\n\n\r\n")
    c.close()
    assert site.web.streams._heartbeat is None  # no subscriber, no timer


@pytest_twisted.ensureDeferred
async def test_sse_drops_a_stalled_browser(make_site):
    site = await make_site()
    c = Connection(site, f"/gateways/{F.GW}/events/stream")
    c.transport.producer.pauseProducing()  # the socket buffer is full
    site.feed.events_stored([ev(i) for i in range(100, 2200)])
    assert site.feed.subscribers() == []
    assert c.transport.value().endswith(b"0\r\n\r\n")  # the response was ended


@pytest_twisted.ensureDeferred
async def test_sse_bad_parameters_are_400(make_site):
    site = await make_site()
    for path in (
        "/api/events/stream?gateway=bad",
        "/api/events/stream?after=x",
        f"/gateways/{F.GW}/events/stream?after=-1",
    ):
        c = Connection(site, path)
        assert b"400" in c.transport.value().split(b"\r\n")[0], path


def events(n, first_seq=100, gateways=(F.GW,)):
    """n events, round robin over `gateways`."""
    return [
        CallEvent(
            gateway=gateways[i % len(gateways)],
            seq=first_seq + i,
            ref=200 + i,
            type="DIAL",
            time=F.t("12:00:00") + i,
            received=F.t("12:00:00") + i,
            fields={"digits": str(i), "port": "1"},
        )
        for i in range(n)
    ]


def settle(site):
    """Run the replay's turns (it yields to the reactor between pages)."""
    for _ in range(10_000):
        if not site.clock.getDelayedCalls():
            return
        site.clock.advance(0)


async def store(site, batch):
    result = await site.store.write(WriteBatch(events=batch))
    return result.events


@pytest_twisted.ensureDeferred
async def test_sse_resume_after_a_long_absence_sends_every_event(make_site):
    """More than a page missed, new events arriving during the replay and the
    browser's socket pushing back: every event once, in id order, no gap."""
    site = await make_site()
    missed = await store(site, events(2600))
    c = Connection(site, f"/gateways/{F.GW}/events/stream", b"Last-Event-ID: 6\r\n")
    producer = c.transport.producer
    assert len(c.messages()) == 500  # the first page, then a turn
    producer.pauseProducing()  # the browser's socket is full
    live = await store(site, events(3, first_seq=9000))
    site.feed.events_stored(live)  # held during the replay
    settle(site)
    assert len(c.messages()) == 500  # waits for the socket, queues nothing more
    producer.resumeProducing()
    settle(site)
    ids = [m["id"] for m in c.messages()]
    assert ids == [e.id for e in missed + live]
    later = await store(site, events(1, first_seq=9100))
    site.feed.events_stored(later)
    site.feed.events_stored(live)  # a repeat is never sent twice
    assert [m["id"] for m in c.messages()] == ids + [later[0].id]
    c.close()
    assert site.feed.subscribers() == []


@pytest_twisted.ensureDeferred
async def test_sse_all_gateways_resume(make_site):
    """The all-gateways stream resumes too (a 400 is fatal to EventSource)."""
    site = await make_site()
    missed = await store(site, events(1201, gateways=(F.GW, F.GW2)))
    c = Connection(site, "/api/events/stream?after=3")
    assert b"200 OK" in c.transport.value()
    live = await store(site, events(4, first_seq=9000, gateways=(F.GW2, F.GW)))
    site.feed.events_stored(live)
    settle(site)
    ids = [m["id"] for m in c.messages()]
    # the fixture's events 4..6, then what was missed, then the live ones
    assert ids == [4, 5, 6] + [e.id for e in missed] + [e.id for e in live]
    assert {m["gateway"] for m in c.messages()} == {F.GW, F.GW2}
    c.close()
    # and a browser's reconnect with Last-Event-ID
    c = Connection(site, "/api/events/stream", f"Last-Event-ID: {ids[-3]}\r\n".encode())
    settle(site)
    assert [m["id"] for m in c.messages()] == ids[-2:]
    c.close()


@pytest_twisted.ensureDeferred
async def test_sse_api_stream_speaks_the_apis_event_format(make_site):
    site = await make_site(timezone="Asia/Kolkata")
    api = Connection(site, "/api/events/stream?after=0")
    page = Connection(site, f"/gateways/{F.GW}/events/stream?after=0")
    first = api.messages()[0]
    assert first["time"] == "2026-11-22T10:00:00.000Z"
    assert first["port"] == 1 and first["type"] == "HOOK_OFF"
    assert first["gateway"] == F.GW and first["seq"] == 1
    assert page.messages()[0]["time"] == "2026-11-22 15:30:00.000"  # the page's
    assert page.messages()[0]["port"] == "1"
    new = await store(site, events(1, first_seq=500))
    site.feed.events_stored(new)
    assert api.messages()[-1]["time"] == "2026-11-22T12:00:00.000Z"
    assert api.messages()[-1]["digits"] == "0"
    assert page.messages()[-1]["time"] == "2026-11-22 17:30:00.000"
    api.close()
    page.close()


@pytest.mark.parametrize(
    "path", ["/api/events/stream", f"/api/events/stream?gateway={F.GW}"]
)
@pytest_twisted.ensureDeferred
async def test_api_stream_all_or_one(make_site, path):
    site = await make_site()
    c = Connection(site, path)
    site.feed.events_stored([ev(500)])
    assert [m["id"] for m in c.messages()] == [500]
    c.close()


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_sse_resume_over_sqlite(make_site):
    """The store answers from its reader threads: the replay waits for it."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    site = await make_site()
    missed = await store(site, events(1300, gateways=(F.GW, F.GW2)))
    c = Connection(site, "/api/events/stream", b"Last-Event-ID: 6\r\n")
    for _ in range(1000):
        settle(site)
        if len(c.messages()) >= 1300:
            break
        await deferLater(reactor, 0.01, lambda: None)
    assert [m["id"] for m in c.messages()] == [e.id for e in missed]
    c.close()


def test_replay_takes_live_events_that_overflow_the_hold_from_the_store():
    """A busy site during a long replay: the hold is dropped, not the browser."""
    from twisted.internet import task

    from cdrd.store.memory import MemoryStore
    from cdrd.web.feed import Replay

    clock = task.Clock()
    memory = MemoryStore()
    memory.write(WriteBatch(events=events(30)))
    out = Sink()
    sub = Subscriber(out.data.append, out.close, lambda item: str(item[1].id).encode(),
                     max_queue=5)
    replay = Replay(sub, [F.GW], 0, memory.events_after,
                    lambda e: str(e.id).encode(), clock)
    replay.page = 10
    replay.start()
    seq = 1000
    for _ in range(5):  # between the turns, 8 live events each time: overflow
        written = []
        memory.write(WriteBatch(events=events(8, first_seq=seq))).addCallback(
            written.append)
        seq += 8
        for e in written[0].events:
            sub.deliver(("event", e))
        clock.advance(0)
    for _ in range(100):
        clock.advance(0)
    assert replay._generation > 0  # the hold did overflow
    assert not sub.closed and sub._holding is None  # live now
    assert [int(d) for d in out.data] == list(range(1, 71))
