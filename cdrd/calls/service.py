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

from cdrd.calls.model import TOMBSTONES_PER_GATEWAY, CallModel, OpenCall
from cdrd.config import Config
from cdrd.interfaces import ModelCursor, OutboxItem, WriteBatch
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


class CallService(Service):
    """
    `store` is an IStore, `writer` the BatchWriter every write goes through,
    `clock` an IReactorTime, `sinks` ICdrSink providers.

    Products reach the store and then each sink once, in the order the
    model produced them: one derived transaction is in flight at a time,
    and what the model produces meanwhile waits for the next one.
    """

    log = Logger()

    def __init__(
        self,
        config: Config,
        store,
        writer,
        clock,
        sinks=(),
        replay_page: int = REPLAY_PAGE,
        sweep_interval: float = SWEEP_INTERVAL,
        tombstones_per_gateway: int = TOMBSTONES_PER_GATEWAY,
    ):
        self.config = config
        self.store = store
        self.writer = writer
        self.clock = clock
        self.sinks = tuple(sinks)
        self.replay_page = replay_page
        self.sweep_interval = sweep_interval
        self.stale_after_ms = int(config.server.stale_after * 1000)
        self.model = CallModel(config, tombstones_per_gateway)
        self.recovered: defer.Deferred = defer.Deferred()
        self._recovering = False
        self._early: list = []  # committed events seen while recovering
        self._pending = _Pending()
        self._inflight: defer.Deferred | None = None
        self._retry = None
        self._sweeper: task.LoopingCall | None = None
        self._stale_sent: set = set()
        # products a sink's spool() refused, held for it and retried with
        # every later write (docs/calls.md, "A sink that cannot spool")
        self._held: dict[str, list] = {}  # sink name -> products, in order
        self._waiters: list[defer.Deferred] = []
        # several nodes on one PostgreSQL (cdrd.cluster): no gateway is
        # recovered at start; each is loaded when this node takes its lease
        self.recover_all = True
        self._loading: dict[str, list] = {}  # gateway being adopted -> its events committed meanwhile
        self.written = 0  # derived transactions committed, for tests and status

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
        self._loading[gateway] = []
        d = defer.ensureDeferred(self._adopt(gateway))

        def done(result):
            early = self._loading.pop(gateway, [])
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
        self._pending.products.extend(pending.products)
        self._pending.cursors.update(pending.cursors)

    def release(self, gateway: str) -> None:
        """
        Another node owns `gateway` now: forget its calls, and drop its
        products not written yet (the new owner makes them again from the
        events after the cursor stored, which did not move either).
        """
        self.model.forget(gateway)
        self._loading.pop(gateway, None)
        self._stale_sent = {k for k in self._stale_sent if k[0] != gateway}
        self._drop(self._pending, {gateway})
        for name, products in list(self._held.items()):
            self._held[name] = [p for p in products if _gateway_of(p) != gateway]

    @staticmethod
    def _drop(pending: _Pending, gateways: set) -> None:
        pending.products[:] = [p for p in pending.products if _gateway_of(p) not in gateways]
        for g in gateways:
            pending.cursors.pop(g, None)

    def idle(self) -> defer.Deferred:
        """Fires once every product so far is written and the sinks told."""
        if self._inflight is None and not self._pending and self._retry is None:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    # -- lifecycle ---------------------------------------------------------

    def startService(self):
        super().startService()
        self._recovering = True
        self.writer.add_listener(self._committed)
        d = defer.ensureDeferred(self._recover())
        d.addCallbacks(self._recovery_done, self._recovery_failed)
        return self.recovered

    def stopService(self):
        super().stopService()
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        try:
            self.writer.remove_listener(self._committed)
        except ValueError:
            pass
        if self._retry is not None and self._retry.active():
            # the store refuses our writes: stopping must not wait for it
            self._retry.cancel()
            self._retry = None
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
        pending, self._pending = self._pending, _Pending()
        if pending:
            self.log.warn(
                "calls: stopping with {products} products unwritten (the store refused"
                " them); the next start makes them again from the stored events",
                products=len(pending.products),
            )
        self._maybe_idle()

    def _stopped(self, _) -> None:
        held, self._held = self._held, {}
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
            await self._recover_gateway(gateway, cursors.get(gateway), now, self._pending)

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
        self._recovering = False
        early, self._early = self._early, []
        self._take_all(early)
        self._flush()
        self._sweeper = task.LoopingCall(self.sweep)
        self._sweeper.clock = self.clock
        self._sweeper.start(self.sweep_interval, now=False).addErrback(
            lambda f: self.log.failure("stale sweep stopped", f)
        )
        d = self.idle()
        d.addCallback(lambda _: self.recovered.callback(None))

    def _recovery_failed(self, failure):
        self._recovering = False
        self.log.failure("calls: recovery failed", failure)
        self.recovered.errback(failure)

    # -- live --------------------------------------------------------------

    def _committed(self, batch, result) -> None:
        """A writer commit listener: apply the newly stored events in order."""
        for state in batch.gateways:
            # a gateway's address is committed (LOGIN) before any of its calls
            self.model.gateway_seen(state)
        if not result.events:
            return  # our own derived batches, or gateway state only
        if self._recovering:
            self._early.extend(result.events)
            return
        events = result.events
        if self._loading:
            events = []
            for e in result.events:
                (self._loading[e.gateway] if e.gateway in self._loading else events).append(e)
        self._take_all(events)
        self._flush()

    def _take_all(self, events) -> None:
        products = self._pending.products
        touched = set()
        for event in events:
            out = self._apply(event)
            if out:
                products.extend(out)
            touched.add(event.gateway)
        for gateway in touched:
            if self.model.applied(gateway) is not None:
                self._pending.cursors[gateway] = self._cursor(gateway)

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
                self._stale_sent.discard(
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
        if self._inflight is not None or self._retry is not None or not self._pending:
            return
        pending, self._pending = self._pending, _Pending()
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
        self._inflight = d = self.writer.submit(batch)
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
            waiting = self._held.get(sink.name, [])
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
        try:
            return list(sink.spool(products, now)), products, []
        except Exception:
            pass
        # one by one, to find the products it refuses (spool is per product
        # for every sink cdrd has: the payloads are the same)
        payloads, spooled, refused = [], [], []
        for n, p in enumerate(products):
            try:
                got = list(sink.spool([p], now))
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
        self._inflight = None
        self.written += 1
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
        self._held = after.held

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
        return {name: len(products) for name, products in self._held.items()}

    def _write_failed(self, failure, pending: _Pending) -> None:
        self._inflight = None
        if failure.check(LeaseLost):
            # another node took these gateways: theirs to make again
            self.log.warn(
                "calls: gateway {gateways} moved to another cdrd node; its unwritten products are its",
                gateways=", ".join(failure.value.gateways),
            )
            for gateway in failure.value.gateways:
                self.release(gateway)
            self._drop(pending, set(failure.value.gateways))
            later, self._pending = self._pending, pending  # the others' go first, as they were
            pending.products.extend(later.products)
            pending.cursors.update(later.cursors)
            self._flush()
            self._maybe_idle()
            return
        self.log.error(
            "calls: writing {products} products failed ({error}); retrying in {delay}s",
            products=len(pending.products),
            error=failure.getErrorMessage(),
            delay=RETRY_DELAY,
        )
        self._requeue(pending)

    def _requeue(self, pending: _Pending) -> None:
        # keep the order: this batch goes first, what came since after it
        later, self._pending = self._pending, pending
        pending.products.extend(later.products)
        pending.cursors.update(later.cursors)
        if not self.running:
            self._left_for_replay()
            return
        self._retry = self.clock.callLater(RETRY_DELAY, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self._flush()

    def _maybe_idle(self) -> None:
        if self._inflight is None and not self._pending and self._retry is None:
            waiters, self._waiters = self._waiters, []
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
            if key in self._stale_sent:
                continue
            self._stale_sent.add(key)
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
            self._stale_sent.discard((e.gateway, e.boot, e.ref))
        self.log.error(
            "calls: writing {count} STALE events failed: {error}",
            count=len(events),
            error=failure.getErrorMessage(),
        )
