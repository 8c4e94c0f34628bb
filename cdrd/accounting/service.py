"""
AccountingService: the durable RADIUS spool, an ICdrSink named "radius".

The call model's products become payloads that the CallService stores in
the "radius" outbox in the same transaction as the call's records: their
facts (`spool_facts`, ILazyCdrSink), which this service expands into
attributes when it reads them (packets.expand), so that building, sizing
and splitting requests costs the ingest path nothing; a payload stored with
its attributes (`spool`, an older cdrd) is sent as it is.  This service
reads the outbox in id order, sends
through the RadiusClient, and deletes an item only once a verified
Accounting-Response for it arrived (batched deletions through the writer).
A restart, or kill -9, reads the outbox again from the start.

Interim-Updates: an answered leg gets an "open" marker item in the outbox
(spooled with the LegAnswer, so in the same transaction).  The service keeps
the markers it has read as the set of answered open legs, creates each
Interim-Update itself every `interim_interval` (stored in the outbox before
it is sent), and deletes the marker with the leg's answered Stop.  So the set
survives restarts exactly as the requests do.
"""

from __future__ import annotations

from collections import OrderedDict

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from cdrd.accounting import packets
from cdrd.accounting.client import RadiusClient
from cdrd.accounting.packets import INTERIM, STOP, Payload
from cdrd.interfaces import ILazyCdrSink, OutboxItem, WriteBatch
from cdrd.store.outbox import OutboxConsumer
from cdrd.values import LegStop

SINK = "radius"
#: Legs whose Stop was seen, remembered so a late Interim-Update is dropped.
STOPPED_MEMORY = 100_000
#: Seconds between refreshes of the outbox statistics.
STATS_INTERVAL = 5.0
#: Requests the service reads from the outbox ahead of sending them.
READ_AHEAD = 1024
#: Seconds stopService waits for answers to what is in flight.
STOP_GRACE = 2.0


@implementer(ILazyCdrSink)
class AccountingService(Service):
    """RADIUS accounting of call legs (accounting.md)."""

    name = SINK
    log = Logger()

    def __init__(
        self, config, store, writer, clock, reactor, dictionary_path=None, rng=None
    ):
        self.config = config
        self.store = store
        self.writer = writer
        self.clock = clock
        self.reactor = reactor
        self.dictionary = packets.load_dictionary(config.vendor, dictionary_path)
        self.client = RadiusClient(
            config.servers,
            self.dictionary,
            clock,
            reactor,
            window=config.window,
            initial_timeout=config.initial_timeout,
            max_timeout=config.max_timeout,
            failover_after=config.failover_after,
            rng=rng,
        )
        # requests read from the outbox before their turn: a page is read
        # when half of them are answered (fewer, larger reads)
        self.read_ahead = max(READ_AHEAD, 2 * self.client.window)
        # the outbox's reading and batched deletions; the policy is here
        self.outbox = OutboxConsumer(
            SINK, store, writer, clock,
            received=self._read, retry=self._pump, deleted=self._stats_soon,
        )
        self._caught_up = False
        self._open: dict[str, tuple[int, Payload]] = {}  # leg -> (marker id, marker)
        self._timers: dict[str, object] = {}
        self._stopped: OrderedDict[str, None] = OrderedDict()
        # inbound legs' first dialled numbers, from "dial" notes: the note's
        # outbox id until the Stop is answered, the number a while longer
        # (the later parts of a Stop split in several)
        self._notes: dict[str, int] = {}
        # outbox id -> stored (ms) of each request read and not yet answered
        self._unanswered: dict[int, int] = {}
        self._dialled: OrderedDict[str, str] = OrderedDict()
        self._loops: list[task.LoopingCall] = []
        self._stats = (0, None)
        #: the outbox statistics were read since the start (status() is true)
        self.stats_read = False
        self._stats_at = float("-inf")
        self._stats_call = None
        self.sent = 0
        self.answered = 0

    # -- ICdrSink ---------------------------------------------------------------

    def spool(self, outputs, now):
        if not self.config.enabled:
            return []
        interims = self.config.interim_interval > 0
        return [p.to_bytes() for p in packets.spool(outputs, now, self.config.nas_ip, interims)]

    def spool_facts(self, outputs, now):
        if not self.config.enabled:
            return []
        return packets.spool_facts_bytes(outputs, now, interims=self.config.interim_interval > 0)

    def committed(self, outputs):
        if not self.config.enabled:
            return
        for o in outputs:
            if isinstance(o, LegStop):
                self._leg_stopped(o.leg.id)
        self._more()

    # -- service ------------------------------------------------------------------

    def startService(self):
        super().startService()
        if not self.config.enabled:
            return
        self.client.start()
        loop = task.LoopingCall(self._refresh_stats)
        loop.clock = self.clock
        loop.start(STATS_INTERVAL, now=True).addErrback(
            lambda fail: self.log.failure("accounting loop failed", fail)
        )
        self._loops.append(loop)
        self.outbox.start()
        self._caught_up = False
        self._unanswered.clear()
        self._more()

    @defer.inlineCallbacks
    def stopService(self):
        super().stopService()
        if not self.config.enabled:
            return
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        for call in [*self._timers.values(), self._stats_call]:
            if call is not None and call.active():
                call.cancel()
        self._timers.clear()
        # a little time for answers to what is in flight; the rest stays in
        # the outbox and is sent again at the next start
        waited = 0.0
        while self.client.in_flight and waited < STOP_GRACE:
            yield task.deferLater(self.clock, 0.1, lambda: None)
            waited += 0.1
        self.outbox.stop()
        yield self.outbox.drain()
        yield self.client.stop()

    # -- reading the outbox ---------------------------------------------------------

    def poll(self):
        """Another cdrd node may have added to the outbox: read on (cdrd.cluster)."""
        self.outbox.added()
        self._pump()

    def _more(self):
        """Something was added to the outbox: read on."""
        self.outbox.added()
        self._pump()

    def _pump(self):
        if not self.running or not self.config.enabled:
            return
        room = self.read_ahead - self.client.pending
        if room <= 0 and not self.outbox.reading:
            return
        self.outbox.read(room)

    def _read(self, items):
        for item in items:
            self._handle(item)
        if not self.outbox.caught_up:
            self._pump()
            return
        # read to the end: what is added later comes with committed() or
        # an Interim-Update, not with answers
        if not self._caught_up:
            self._caught_up = True
            for leg in list(self._open):
                self._schedule_interim(leg)

    def _handle(self, item: OutboxItem):
        try:
            expanded = packets.expand(
                Payload.from_bytes(item.payload), self.config.nas_ip, self.dictionary
            )
        except (ValueError, KeyError, TypeError) as e:
            # kept in the outbox for an operator: a swallowed item is lost
            # data (unreadable, or facts with a value out of its
            # attribute's range, e.g. an Event-Timestamp past 2106)
            self.log.error(
                "RADIUS outbox item {id} cannot be read or built ({error}): left in the outbox",
                id=item.id, error=str(e),
            )
            return
        payload = expanded[0]
        if payload.kind == packets.OPEN:
            if payload.leg in self._stopped:
                self._delete(item.id)
                return
            self._open[payload.leg] = (item.id, payload)
            if self._caught_up:
                self._schedule_interim(payload.leg)
            return
        if payload.kind == packets.DIAL:
            # kept until the leg's Stop is answered, even if it is stopped
            self._notes[payload.leg] = item.id
            self._remember(self._dialled, payload.leg, payload.attributes[0][1])
            return
        if payload.status == INTERIM and payload.leg in self._stopped:
            self._delete(item.id)  # its Stop is already on its way
            return
        if payload.status == STOP:
            self._leg_stopped(payload.leg)
        number = self._dialled.get(payload.leg)
        if number is not None:
            expanded = [packets.with_called(p, number) for p in expanded]
            payload = expanded[0]
        self._unanswered[item.id] = item.created
        if len(expanded) == 1:
            body = packets.encode_within_limits(self.dictionary, payload)
            if body is not None:  # always, but for an older cdrd's items
                self.sent += 1
                self.client.send(payload, body).addCallback(
                    self._answered, item.id, payload
                )
                return
            # stored by an older cdrd over FreeRADIUS's limits: sent as the
            # packets spool() makes now, deleted once all are answered
            parts = packets.fit(self.dictionary, payload)
        else:
            parts = expanded  # a Stop whose CDRs take several packets
        bodies = []
        for part in parts:
            try:
                bodies.append(packets.encode_attributes(self.dictionary, part.attributes))
            except ValueError as e:
                # a value out of its attribute's range (Event-Timestamp
                # past 2106): never handed to the client, which encodes
                # again at every retransmission; kept for an operator
                self._unanswered.pop(item.id, None)
                self.log.error(
                    "RADIUS outbox item {id} cannot be encoded ({error}): left in the outbox",
                    id=item.id, error=str(e),
                )
                return
        if parts is not expanded and not packets.fits_exactly(self.dictionary, parts[-1].attributes):
            self.log.error(
                "RADIUS outbox item {id} is over FreeRADIUS's limits and cannot be"
                " split again (a part of an older split): FreeRADIUS will drop it",
                id=item.id,
            )
        self.sent += len(parts)
        d = defer.gatherResults(
            [self.client.send(p, b).addCallback(self._count) for p, b in zip(parts, bodies, strict=True)]
        )
        d.addCallback(self._delivered, item.id, payload)

    def _answered(self, _, item_id, payload):
        self.answered += 1
        self._delivered(None, item_id, payload)

    def _count(self, _):
        self.answered += 1

    def _delivered(self, _, item_id, payload):
        self._unanswered.pop(item_id, None)
        self._delete(item_id)
        if payload.status == STOP:
            # in the same deletion batch as the Stop: none outlives it
            marker = self._open.pop(payload.leg, None)
            if marker is not None:
                self._delete(marker[0])
            note = self._notes.pop(payload.leg, None)
            if note is not None:
                self._delete(note)
        # read again in pages, not one item per answer
        if not self.outbox.caught_up and self.client.pending <= self.read_ahead // 2:
            self._pump()

    def _delete(self, item_id):
        self.outbox.delete(item_id)

    # -- Interim-Updates --------------------------------------------------------------

    @staticmethod
    def _remember(memory: OrderedDict, key, value=None):
        memory[key] = value
        while len(memory) > STOPPED_MEMORY:
            memory.popitem(last=False)

    def _leg_stopped(self, leg):
        self._remember(self._stopped, leg)
        call = self._timers.pop(leg, None)
        if call is not None and call.active():
            call.cancel()

    def _now(self) -> int:
        return int(self.clock.seconds() * 1000)

    def _schedule_interim(self, leg):
        interval = self.config.interim_interval * 1000
        if (
            interval <= 0
            or leg not in self._open
            or leg in self._timers
            or not self.running
        ):
            return
        answered = self._open[leg][1].answered or 0
        now = self._now()
        due = answered + max(1, (now - answered) // interval + 1) * interval
        self._timers[leg] = self.clock.callLater((due - now) / 1000, self._interim, leg)

    def _interim(self, leg):
        self._timers.pop(leg, None)
        marker = self._open.get(leg)
        if marker is None or leg in self._stopped:
            return
        now = self._now()
        payload = packets.interim(marker[1], now)
        number = self._dialled.get(leg)
        if number is not None:
            payload = packets.with_called(payload, number)
        d = defer.maybeDeferred(
            self.writer.submit,
            WriteBatch(outbox=[OutboxItem(SINK, payload.to_bytes(), created=now)]),
        )
        d.addCallbacks(
            lambda _: self._more(),
            lambda f: self.log.failure("storing an Interim-Update failed", f),
        )
        self._schedule_interim(leg)

    # -- visibility ------------------------------------------------------------------

    def _stats_soon(self):
        """Refresh the outbox statistics after deletions, at most once a second."""
        if not self.running or (
            self._stats_call is not None and self._stats_call.active()
        ):
            return
        wait = max(0.0, self._stats_at + 1.0 - self.clock.seconds())
        self._stats_call = self.clock.callLater(wait, self._refresh_stats)

    @defer.inlineCallbacks
    def _refresh_stats(self):
        self._stats_at = self.clock.seconds()
        try:
            self._stats = yield self.store.outbox_stats(SINK)
            self.stats_read = True
        except Exception:  # noqa: BLE001 - visibility only; logged
            self.log.failure("RADIUS outbox statistics failed")

    def status(self) -> dict:
        """JSON-able: what the web page and the metrics show."""
        now = self._now()
        depth, _ = self._stats  # at most 5 s old, 1 s after deletions
        depth = max(
            0, (depth or 0) - len(self._open) - len(self._notes), self.client.pending
        )
        # the outbox is read in order, so the oldest request not answered
        # is one read already (markers and notes are no requests)
        oldest = min(self._unanswered.values(), default=None)
        return {
            "enabled": self.config.enabled,
            "spool_depth": depth,
            "oldest_age": 0.0 if oldest is None else max(0, now - oldest) / 1000,
            "in_flight": self.client.in_flight,
            "queued": len(self.client.queue),
            "open_legs": len(self._open),
            "sent": self.sent,
            "answered": self.answered,
            "retransmissions": self.client.retransmissions,
            "interim_interval": self.config.interim_interval,
            "vendor": self.config.vendor,
            "servers": self.client.status(),
        }
