"""
CallService: runs the call model on committed events and writes what it
produces (records, CDRs, the model's cursors, every durable sink's outbox
items) in one transaction per step; then tells the sinks.

Recovery after a restart or crash rebuilds the open calls from the event
log (docs/architecture.md, "Durability and exactly-once"; docs/calls.md).
"""

from __future__ import annotations

from attrs import define, field
from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from cdrd.calls.model import TOMBSTONES_PER_GATEWAY, CallModel, OpenCall
from cdrd.config import Config
from cdrd.interfaces import ILazyCdrSink, ModelCursor, OutboxItem, WriteBatch
from cdrd.store.leases import LeaseLost
from cdrd.values import STALE, CallEnd, CallEvent, ModelOutput

REPLAY_PAGE = 5000
SWEEP_INTERVAL = 60.0  # seconds between stale sweeps
RETRY_DELAY = 1.0  # seconds before a failed write of products is retried
HELD_LIMIT = 10_000  # products a sink could not spool, kept in memory per sink


@define
class _Pending:
    """Products waiting for their transaction, in the order produced."""

    products: list = field(factory=list)
    cursors: dict = field(factory=dict)  # gateway -> ModelCursor

    def __bool__(self) -> bool:
        return bool(self.products or self.cursors)


@define
class _After:
    """What a derived transaction leaves the service with once it commits."""

    delivered: dict = field(factory=dict)  # sink name -> products it spooled, in order
    held: dict = field(factory=dict)  # sink name -> products it refused, in order


def _gateway_of(product: ModelOutput) -> str:
    if isinstance(product, CallEnd):
        return product.record.gateway
    return product.leg.gateway


def _describe(product: ModelOutput) -> str:
    if isinstance(product, CallEnd):
        return f"CallEnd {product.record.id}"
    return f"{type(product).__name__} {product.leg.id}"


@define
class _Writes:
    """The products on their way to the store, and who waits for them."""

    pending: _Pending = field(factory=_Pending)  # produced, not yet submitted
    inflight: defer.Deferred | None = None  # the derived transaction in flight
    retry: object | None = None  # IDelayedCall: a failed write tried again
    # products a sink's spool() refused, held for it and retried with
    # every later write (docs/calls.md, "A sink that cannot spool")
    held: dict[str, list] = field(factory=dict)  # sink name -> products, in order
    waiters: list[defer.Deferred] = field(factory=list)  # idle() callers
    written: int = 0  # derived transactions committed, for tests and status
    failed: int = 0  # failed tries of the write being retried (0: none failing)


@define
class _Recovery:
    active: bool = False
    early: list = field(factory=list)  # committed events seen while recovering
    # several nodes (cdrd.cluster): gateway being adopted -> its events
    # committed meanwhile, applied once its open calls are loaded
    loading: dict[str, list] = field(factory=dict)
    # gateway -> IDelayedCall: a catch-up the store failed, tried again
    retries: dict[str, object] = field(factory=dict)


@define
class _Sweep:
    looping: task.LoopingCall | None = None
    stale_sent: set = field(factory=set)  # calls a STALE event was written for


@define(eq=False, slots=False, repr=False)
class CallService(Service):
    """
    `store` is an IStore, `writer` the BatchWriter every write goes through,
    `clock` an IReactorTime, `sinks` ICdrSink providers.

    Products reach the store and then each sink once, in the order the
    model produced them: one derived transaction is in flight at a time,
    and what the model produces meanwhile waits for the next one.
    """

    config: Config
    store: object
    writer: object
    clock: object
    sinks: tuple = field(default=(), converter=tuple)
    replay_page: int = REPLAY_PAGE
    sweep_interval: float = SWEEP_INTERVAL
    tombstones_per_gateway: int = TOMBSTONES_PER_GATEWAY
    # several nodes on one PostgreSQL (cdrd.cluster): False, no gateway is
    # recovered at start; each is loaded when this node takes its lease
    recover_all: bool = True
    model: CallModel = field(init=False)
    #: fires once the open calls are recovered
    recovered: defer.Deferred = field(init=False, factory=defer.Deferred)
    _writes: _Writes = field(init=False, factory=_Writes)
    _recovery: _Recovery = field(init=False, factory=_Recovery)
    _sweep: _Sweep = field(init=False, factory=_Sweep)

    log = Logger()

    def __attrs_post_init__(self):
        self.model = CallModel(self.config, self.tombstones_per_gateway)

    @property
    def stale_after_ms(self) -> int:
        return int(self.config.server.stale_after * 1000)

    @property
    def written(self) -> int:
        return self._writes.written

    @property
    def failed_writes(self) -> int:
        """Failed tries of the write being retried (0: none failing)."""
        return self._writes.failed

    # -- the API used by other rooms ---------------------------------------

    def open_refs(self, gateway: str, boot: str) -> set[int]:
        return self.model.open_refs(gateway, boot)

    def open_calls(self, gateway: str | None = None) -> list[OpenCall]:
        return self.model.open_calls(gateway)

    def adopt(self, gateway: str) -> defer.Deferred:
        """
        This node owns `gateway` from now on (it took its lease): load its
        open calls and cursor from the store, as a restart would.  Its
        events committed meanwhile are applied after.  Fires once loaded.
        """
        self.release(gateway)
        self._recovery.loading[gateway] = []
        d = defer.ensureDeferred(self._adopt(gateway))

        def done(result):
            early = self._recovery.loading.pop(gateway, [])
            if early:
                self._take_all(early)
            self._flush()
            return result

        return d.addBoth(done)

    async def _adopt(self, gateway: str) -> None:
        state = await self.store.gateway(gateway)
        if state is not None:
            self.model.gateway_seen(state)
        cursor = (await self.store.cursors()).get(gateway)
        pending = _Pending()
        await self._recover_gateway(gateway, cursor, self._now(), pending)
        self._writes.pending.products.extend(pending.products)
        self._writes.pending.cursors.update(pending.cursors)

    def catch_up(self, gateway: str) -> defer.Deferred:
        """
        Apply `gateway`'s stored events that no commit told of: a commit
        whose outcome the writer never learnt (the database failed over
        during COMMIT, which the replica had) stored events the gateway,
        told `last=` by the store at its next LOGIN, does not send again.
        Run at every LOGIN the store commits; one indexed read that finds
        nothing, almost always.  Events committed meanwhile wait, as while
        adopting a gateway, so that all apply in id order.
        """
        if self._recovery.active or gateway in self._recovery.loading or self.model.applied(gateway) is None:
            return defer.succeed(None)  # recovery or adoption reads the store anyway
        self._recovery.loading[gateway] = []
        d = defer.ensureDeferred(self._catch_up(gateway))

        def done(result):
            early = self._recovery.loading.pop(gateway, [])
            applied = self.model.applied(gateway) or 0
            self._take_all([e for e in early if e.id > applied])
            self._flush()
            if isinstance(result, Failure):
                # the store is down (its outage is logged by the writer): try
                # again, or the events it holds stay unapplied until a LOGIN
                self.log.warn(
                    "calls: catching up gateway {gateway} failed ({error}); retrying in {delay}s",
                    gateway=gateway, error=result.getErrorMessage(), delay=RETRY_DELAY,
                )
                if self.running and gateway not in self._recovery.retries:
                    self._recovery.retries[gateway] = self.clock.callLater(
                        RETRY_DELAY, self._catch_up_again, gateway)
            return None

        return d.addBoth(done)

    def _catch_up_again(self, gateway: str) -> None:
        self._recovery.retries.pop(gateway, None)
        self.catch_up(gateway)

    async def _catch_up(self, gateway: str) -> None:
        caught = 0
        while True:
            page = await self.store.events_after(gateway, self.model.applied(gateway) or 0, self.replay_page)
            self._take_all(page)
            caught += len(page)
            if len(page) < self.replay_page:
                break
        if caught:
            self.log.warn(
                "calls: gateway {gateway}: {count} stored events no commit told of applied"
                " (a commit whose outcome was lost, e.g. a database failover)",
                gateway=gateway, count=caught,
            )

    def release(self, gateway: str) -> None:
        """
        Another node owns `gateway` now: forget its calls, and drop its
        products not written yet (the new owner makes them again from the
        events after the cursor stored, which did not move either).
        """
        self.model.forget(gateway)
        self._recovery.loading.pop(gateway, None)
        self._sweep.stale_sent = {k for k in self._sweep.stale_sent if k[0] != gateway}
        self._drop(self._writes.pending, {gateway})
        for name, products in list(self._writes.held.items()):
            self._writes.held[name] = [p for p in products if _gateway_of(p) != gateway]

    @staticmethod
    def _drop(pending: _Pending, gateways: set) -> None:
        pending.products[:] = [p for p in pending.products if _gateway_of(p) not in gateways]
        for g in gateways:
            pending.cursors.pop(g, None)

    def idle(self) -> defer.Deferred:
        """Fires once every product so far is written and the sinks told."""
        if self._writes.inflight is None and not self._writes.pending and self._writes.retry is None:
            return defer.succeed(None)
        d = defer.Deferred()
        self._writes.waiters.append(d)
        return d

    # -- lifecycle ---------------------------------------------------------

    def startService(self):
        super().startService()
        self._recovery.active = True
        self.writer.add_listener(self._committed)
        d = defer.ensureDeferred(self._recover())
        d.addCallbacks(self._recovery_done, self._recovery_failed)
        return self.recovered

    def stopService(self):
        super().stopService()
        if self._sweep.looping is not None and self._sweep.looping.running:
            self._sweep.looping.stop()
        try:
            self.writer.remove_listener(self._committed)
        except ValueError:
            pass
        for call in self._recovery.retries.values():
            if call.active():
                call.cancel()  # what they would read, recovery replays
        self._recovery.retries.clear()
        if self._writes.retry is not None and self._writes.retry.active():
            # the store refuses our writes: stopping must not wait for it
            self._writes.retry.cancel()
            self._writes.retry = None
            self._left_for_replay()
        d = self.idle()
        d.addCallback(self._stopped)
        return d

    def _left_for_replay(self) -> None:
        """
        Drop what waits for a store that refuses it: nothing is lost, since
        the cursors of those products were not written either, so the next
        start replays their events and makes them again.
        """
        pending, self._writes.pending = self._writes.pending, _Pending()
        if pending:
            self.log.warn(
                "calls: stopping with {products} products unwritten (the store refused"
                " them); the next start makes them again from the stored events",
                products=len(pending.products),
            )
        self._maybe_idle()

    def _stopped(self, _) -> None:
        held, self._writes.held = self._writes.held, {}
        for name, products in held.items():
            self._lost(name, products, "cdrd stopped")

    def _now(self) -> int:
        return int(self.clock.seconds() * 1000)

    # -- recovery ----------------------------------------------------------

    async def _recover(self) -> None:
        cursors = await self.store.cursors()
        states = await self.store.gateways()
        for state in states:
            self.model.gateway_seen(state)
        gateways = {g.key for g in states} | set(cursors)
        if not self.recover_all:
            return  # several nodes: a gateway is loaded when this node takes it (adopt)
        now = self._now()
        for gateway in sorted(gateways):
            await self._recover_gateway(gateway, cursors.get(gateway), now, self._writes.pending)

    async def _recover_gateway(self, gateway: str, cursor, now: int, pending: _Pending) -> None:
        """Rebuild `gateway`'s open calls from its cursor on (docs/calls.md)."""
        applied = cursor.applied if cursor is not None else 0
        start = cursor.replay_from if cursor is not None else 1
        # Calls ended already are tombstoned, except those that a
        # TRANSFER in the replayed range joins into a call still open.
        transferred = set()
        oldest = now
        after = start - 1
        while True:
            page = await self.store.events_after(gateway, after, self.replay_page)
            if not page:
                break
            if after == start - 1:
                oldest = min(oldest, page[0].time)
            transferred.update(
                (e.boot, e.ref) for e in page if e.type == "TRANSFER"
            )
            after = page[-1].id
            if len(page) < self.replay_page:
                break
        if cursor is not None:
            # a call with events in the replayed range ended at most
            # stale_after before its first one
            since = min(now, oldest) - self.stale_after_ms
            # kept whatever the per-gateway bound: the replay goes over
            # all of them at once, late events of theirs included
            for boot, ref in await self.store.ended_calls(gateway, since):
                if (boot, ref) not in transferred:
                    self.model.mark_ended(gateway, boot, ref, keep=True)
        after = start - 1
        replayed = 0
        while True:
            page = await self.store.events_after(gateway, after, self.replay_page)
            if not page:
                break
            for event in page:
                products = self._apply(event)
                if event.id > applied and products:
                    pending.products.extend(products)
            replayed += len(page)
            after = page[-1].id
            if len(page) < self.replay_page:
                break
        if (
            replayed
            and self.model.applied(gateway) is not None
            and self.model.applied(gateway) > applied
        ):
            pending.cursors[gateway] = self._cursor(gateway)
        self.log.info(
            "calls: gateway {gateway} recovered: {replayed} events replayed"
            " from id {start}, {open} calls open",
            gateway=gateway,
            replayed=replayed,
            start=start,
            open=len(self.model.open_calls(gateway)),
        )

    def _recovery_done(self, _):
        self._recovery.active = False
        early, self._recovery.early = self._recovery.early, []
        self._take_all(early)
        self._flush()
        self._sweep.looping = task.LoopingCall(self.sweep)
        self._sweep.looping.clock = self.clock
        self._sweep.looping.start(self.sweep_interval, now=False).addErrback(
            lambda f: self.log.failure("stale sweep stopped", f)
        )
        d = self.idle()
        d.addCallback(lambda _: self.recovered.callback(None))

    def _recovery_failed(self, failure):
        self._recovery.active = False
        self.log.failure("calls: recovery failed", failure)
        self.recovered.errback(failure)

    # -- live --------------------------------------------------------------

    def _committed(self, batch, result) -> None:
        """A writer commit listener: apply the newly stored events in order."""
        for state in batch.gateways:
            # a gateway's address is committed (LOGIN) before any of its calls
            self.model.gateway_seen(state)
        if result.events:
            if self._recovery.active:
                self._recovery.early.extend(result.events)
            else:
                events = result.events
                if self._recovery.loading:
                    events = []
                    for e in result.events:
                        loading = self._recovery.loading.get(e.gateway)
                        (loading if loading is not None else events).append(e)
                self._take_all(events)
                self._flush()
        if batch.gateways:
            # A gateway's state stored without its own events is a LOGIN (or
            # a disconnect): catch up then, after this commit's events are
            # applied.  Every events batch carries its gateway's state too;
            # reading the store for those would find this batch's events.
            sending = batch.senders()
            for state in batch.gateways:
                if state.key not in sending:
                    self.catch_up(state.key)

    def _take_all(self, events) -> None:
        products = self._writes.pending.products
        touched = set()
        for event in events:
            out = self._apply(event)
            if out:
                products.extend(out)
            touched.add(event.gateway)
        for gateway in touched:
            if self.model.applied(gateway) is not None:
                self._writes.pending.cursors[gateway] = self._cursor(gateway)

    def _apply(self, event: CallEvent) -> list:
        try:
            products = self.model.apply(event)
        except Exception:
            # the model is meant never to raise; keep going for the other calls
            self.log.failure(
                "call model failed on event {id} of {gateway}",
                id=event.id,
                gateway=event.gateway,
            )
            return []
        for p in products:
            if isinstance(p, CallEnd):
                self._sweep.stale_sent.discard(
                    (p.record.gateway, p.record.boot, p.record.ref)
                )
        return products

    def _cursor(self, gateway: str) -> ModelCursor:
        applied = self.model.applied(gateway) or 0
        replay_from = self.model.replay_from(gateway)
        return ModelCursor(
            gateway=gateway,
            applied=applied,
            replay_from=replay_from if replay_from is not None else applied + 1,
        )

    # -- writing products, in order -----------------------------------------

    def _flush(self) -> None:
        if self._writes.inflight is not None or self._writes.retry is not None or not self._writes.pending:
            return
        pending, self._writes.pending = self._writes.pending, _Pending()
        self._write(pending)

    def _write(self, pending: _Pending) -> None:
        try:
            batch, after = self._batch(pending, self._now())
        except Exception:
            # nothing is lost: the products go back first, no cursor moved
            self.log.failure(
                "calls: building the write of {products} products failed;"
                " retrying in {delay}s",
                products=len(pending.products),
                delay=RETRY_DELAY,
            )
            self._requeue(pending)
            return
        self._writes.inflight = d = self.writer.submit(batch)
        d.addCallbacks(
            self._written,
            self._write_failed,
            callbackArgs=(pending, after),
            errbackArgs=(pending,),
        )

    def _batch(self, pending: _Pending, now: int) -> tuple[WriteBatch, _After]:
        """
        The derived transaction of `pending`, and what the service holds
        once it commits.  Each sink's spool is isolated: one that raises
        costs nothing to the records, the CDRs or the other sinks.
        """
        products = pending.products
        records = [p.record for p in products if isinstance(p, CallEnd)]
        cdrs = [c for r in products if isinstance(r, CallEnd) for c in r.cdrs]
        outbox = []
        after = _After()
        for sink in self.sinks:
            waiting = self._writes.held.get(sink.name, [])
            todo = waiting + products if waiting else products
            if not todo:
                continue
            payloads, spooled, refused = self._spool(sink, todo, now, len(waiting))
            outbox.extend(
                OutboxItem(sink=sink.name, payload=payload, created=now)
                for payload in payloads
            )
            if spooled:
                after.delivered[sink.name] = spooled
            if refused:
                after.held[sink.name] = refused
        batch = WriteBatch(
            records=records,
            cdrs=cdrs,
            cursors=list(pending.cursors.values()),
            outbox=outbox,
        )
        return batch, after

    def _spool(self, sink, products: list, now: int, retried: int):
        """(payloads, products spooled, products refused) of `sink`."""
        # a lazy sink builds its messages when it reads them, off this path
        spool = sink.spool_facts if ILazyCdrSink.providedBy(sink) else sink.spool
        try:
            return list(spool(products, now)), products, []
        except Exception:
            pass
        # one by one, to find the products it refuses (spool is per product
        # for every sink cdrd has: the payloads are the same)
        payloads, spooled, refused = [], [], []
        for n, p in enumerate(products):
            try:
                got = list(spool([p], now))
            except Exception:
                refused.append(p)
                if n >= retried:  # the held ones were logged when first refused
                    self.log.failure(
                        "CDR sink {sink} cannot spool {product} of gateway"
                        " {gateway}: held for it, retried with every later write",
                        sink=sink.name,
                        product=_describe(p),
                        gateway=_gateway_of(p),
                    )
            else:
                payloads.extend(got)
                spooled.append(p)
        return payloads, spooled, refused

    def _written(self, _result, pending: _Pending, after: _After) -> None:
        self._writes.inflight = None
        self._writes.written += 1
        if self._writes.failed:
            self.log.info("calls: products written after {tries} failed tries", tries=self._writes.failed)
            self._writes.failed = 0
        self._hold(after)
        for sink in self.sinks:
            products = after.delivered.get(sink.name)
            if not products:
                continue
            try:
                sink.committed(products)
            except Exception:
                self.log.failure(
                    "CDR sink {sink} failed to take committed products",
                    sink=sink.name,
                )
        self._flush()
        self._maybe_idle()

    def _hold(self, after: _After) -> None:
        """What the sinks refused is held, within HELD_LIMIT per sink."""
        for name, refused in after.held.items():
            if len(refused) > HELD_LIMIT:
                shed, refused = refused[:-HELD_LIMIT], refused[-HELD_LIMIT:]
                self._lost(name, shed, "it holds more than {limit} already")
            after.held[name] = refused
        self._writes.held = after.held

    def _lost(self, sink: str, products: list, why: str) -> None:
        self.log.error(
            "CDR sink {sink} never got {count} products it could not spool ("
            + why
            + "): {first} .. {last}; their records and CDRs are stored",
            sink=sink,
            count=len(products),
            limit=HELD_LIMIT,
            first=_describe(products[0]),
            last=_describe(products[-1]),
            products=[_describe(p) for p in products],
        )

    def held(self) -> dict[str, int]:
        """Products each sink could not spool yet (status pages, tests)."""
        return {name: len(products) for name, products in self._writes.held.items()}

    def _write_failed(self, failure, pending: _Pending) -> None:
        self._writes.inflight = None
        if failure.check(LeaseLost):
            # another node took these gateways: theirs to make again
            self.log.warn(
                "calls: gateway {gateways} moved to another cdrd node; its unwritten products are its",
                gateways=", ".join(failure.value.gateways),
            )
            for gateway in failure.value.gateways:
                self.release(gateway)
            self._drop(pending, set(failure.value.gateways))
            self._put_first(pending)  # the others' go first, as they were
            self._flush()
            self._maybe_idle()
            return
        self._writes.failed += 1
        # one line when the store starts refusing, not one per retry: an
        # outage of an hour would be 3,600 lines (the writer says when it ends)
        (self.log.error if self._writes.failed == 1 else self.log.debug)(
            "calls: writing {products} products failed ({error}); retrying every {delay}s",
            products=len(pending.products),
            error=failure.getErrorMessage(),
            delay=RETRY_DELAY,
        )
        self._requeue(pending)

    def _put_first(self, pending: _Pending) -> None:
        """Keep the order: `pending` goes first, what came since after it."""
        later, self._writes.pending = self._writes.pending, pending
        pending.products.extend(later.products)
        pending.cursors.update(later.cursors)

    def _requeue(self, pending: _Pending) -> None:
        self._put_first(pending)
        if not self.running:
            self._left_for_replay()
            return
        self._writes.retry = self.clock.callLater(RETRY_DELAY, self._retry_now)

    def _retry_now(self) -> None:
        self._writes.retry = None
        self._flush()

    def _maybe_idle(self) -> None:
        if self._writes.inflight is None and not self._writes.pending and self._writes.retry is None:
            waiters, self._writes.waiters = self._writes.waiters, []
            for d in waiters:
                d.callback(None)

    # -- staleness ---------------------------------------------------------

    def sweep(self) -> defer.Deferred | None:
        """End calls silent for `stale_after`: a STALE event each, through the log."""
        now = self._now()
        events = []
        for gateway, boot, ref, last in self.model.stale_calls(
            now, self.stale_after_ms
        ):
            key = (gateway, boot, ref)
            if key in self._sweep.stale_sent:
                continue
            self._sweep.stale_sent.add(key)
            events.append(
                CallEvent(
                    gateway=gateway,
                    seq=None,
                    ref=ref,
                    type=STALE,
                    time=last,
                    received=now,
                    boot=boot,
                )
            )
        if not events:
            return None
        self.log.info("calls: {count} stale calls end", count=len(events))
        d = self.writer.submit(WriteBatch(events=events))
        d.addErrback(self._stale_failed, events)
        return d

    def _stale_failed(self, failure, events) -> None:
        for e in events:
            self._sweep.stale_sent.discard((e.gateway, e.boot, e.ref))
        self.log.error(
            "calls: writing {count} STALE events failed: {error}",
            count=len(events),
            error=failure.getErrorMessage(),
        )
