"""
Several active cdrd nodes on one PostgreSQL (docs/store.md, "Several nodes").

The store fences (cdrd.store.leases); this service moves the work:

- ``claim(gateway)``: a LOGIN takes the gateway's lease first; when the
  gateway was another node's (or nobody's), the call model loads its open
  calls and cursor from the store before the LOGIN goes on, so that its
  reboot detection and its next events see the calls the old node left.
- Every ``lease_seconds / 3`` the node renews its leases.  One it finds
  taken is another node's now: the call model forgets the gateway and its
  connection here, if any, is closed as a relogin kickout.
- Cluster-wide work runs on the one node holding the ``#work`` lease: the
  outputs' delivery (RADIUS, syslog, CSV: one reader per outbox), the
  retention sweeps, and adopting the gateways of a dead node whose lease
  expired while they still had calls to end (their stale sweep runs here).
  When that node dies the lease expires and another node starts the work;
  what the dead one had in flight is delivered again (at least once, with
  the same Acct-Session-Id: docs/accounting.md's retransmission).
- The live feeds of the web pages hear the other nodes' commits through
  PostgreSQL LISTEN/NOTIFY (docs/web.md).
"""

from __future__ import annotations

from attrs import evolve
from twisted.application.service import MultiService, Service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from cdrd.interfaces import WriteBatch
from cdrd.store.leases import WORK

#: orphaned gateways adopted per renewal
ADOPT_BATCH = 100
#: seconds between the work holder's reads of outboxes other nodes add to
POLL_OUTBOX = 1.0


class Cluster(Service):
    """
    `store` a PostgresStore, `calls` the CallService, `gateways` the
    GatewayFactory, `writer` the BatchWriter, `work` the services only the
    #work lease holder runs, `feed` the LiveFeed (or None).
    """

    log = Logger()
    name = "cluster"

    def __init__(self, store, calls, gateways, writer, clock, lease_seconds: float,
                 work: MultiService, feed=None, outputs=()):
        self.store = store
        self.calls = calls
        self.gateways = gateways
        self.writer = writer
        self.clock = clock
        self.interval = lease_seconds / 3
        self.work = work
        self.feed = feed
        self.outputs = tuple(outputs)
        self.node = store.leases.node
        self._loop: task.LoopingCall | None = None
        self._poll: task.LoopingCall | None = None
        self._ticking: defer.Deferred | None = None
        self._failing = False  # the last tick failed (logged once)
        self._loading: dict[str, defer.Deferred] = {}  # gateway -> its adoption in progress
        # the other nodes' commits are relayed one at a time, in the order
        # heard: reads overlapping on the store's threads would stream them
        # out of order (events 2, 3, 4 before 1)
        self._relaying = defer.DeferredLock()
        self.adopted = 0  # orphaned gateways adopted, for tests and status

    # -- a LOGIN ------------------------------------------------------------------

    def claim(self, gateway: str) -> defer.Deferred:
        """Take `gateway`'s lease; fires once its open calls are this node's."""
        d = self.store.take_lease(gateway)

        def taken(lease):
            if not lease.moved:
                # held here already; an adoption of it may still be loading
                loading = self._loading.get(gateway)
                return None if loading is None else _waiter(loading)
            self.log.info(
                "cluster: gateway {gateway} is this node's ({node}, token {token}); loading its open calls",
                gateway=gateway, node=self.node, token=lease.token)
            return self._load(gateway)

        return d.addCallback(taken)

    def _load(self, gateway: str) -> defer.Deferred:
        """The call model adopts `gateway`; a claim meanwhile waits for it."""
        d = self._loading[gateway] = self.calls.adopt(gateway)

        def loaded(result):
            if self._loading.get(gateway) is d:
                del self._loading[gateway]
            return result

        return d.addBoth(loaded)

    # -- lifecycle -------------------------------------------------------------------

    def startService(self):
        super().startService()
        if self.feed is not None:
            self.store.listen(self._heard)
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: self.log.failure("cluster: the lease loop stopped", f))

    @defer.inlineCallbacks
    def stopService(self):
        super().stopService()
        for loop in (self._loop, self._poll):
            if loop is not None and loop.running:
                loop.stop()
        if self._ticking is not None:
            yield self._ticking
        if self.work.running:
            yield self.work.stopService()

    # -- every lease_seconds / 3 -------------------------------------------------------

    def tick(self) -> defer.Deferred:
        """Renew, notice what was taken, hold or start the cluster's work."""
        if self._ticking is not None:
            return self._ticking
        d = self._ticking = defer.ensureDeferred(self._tick())

        def over(result):
            self._ticking = None
            if self._failing and not isinstance(result, Failure):
                self._failing = False
                self.log.info("cluster: renewing the leases again")
            return result

        def failed(failure):
            # a database away (failover): the leases live on until they
            # expire, and the writes they fence fail anyway meanwhile.  One
            # line per outage, not one per try.
            if not self._failing:
                self._failing = True
                self.log.warn("cluster: renewing the leases failed ({error}); trying every {interval:.1f} s",
                              error=failure.getErrorMessage(), interval=self.interval)

        return d.addBoth(over).addErrback(failed)

    async def _tick(self) -> None:
        for gateway in await self.store.renew_leases():
            if gateway != WORK:
                self._lost(gateway)
        if not self.running:
            return
        work = await self.store.take_expired_lease(WORK)
        if work is None:
            if self.work.running:
                self.log.warn("cluster: another node does the cluster's work now; this one stops it")
                await self._stop_work()
            return
        if not self.work.running:
            self.log.info("cluster: this node ({node}) does the cluster's work (outputs, retention)",
                          node=self.node)
            self.work.startService()
            self._poll = task.LoopingCall(self._poll_outboxes)
            self._poll.clock = self.clock
            self._poll.start(POLL_OUTBOX, now=False)
        for gateway in await self.store.orphans(ADOPT_BATCH):
            if not self.running:
                return
            await self._adopt(gateway)

    async def _stop_work(self) -> None:
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        await self.work.stopService()

    def _poll_outboxes(self) -> None:
        for output in self.outputs:
            output.poll()

    async def _adopt(self, gateway: str) -> None:
        """A dead node's gateway still has calls to end: this node carries them."""
        lease = await self.store.take_expired_lease(gateway)
        if lease is None:
            return  # it logged in somewhere meanwhile
        self.adopted += 1
        self.log.info("cluster: adopting gateway {gateway} (its node's lease expired with calls open)",
                      gateway=gateway)
        await self._load(gateway)
        state = await self.store.gateway(gateway)
        if state is not None and state.online and self.gateways.registry.connection(gateway) is None:
            await self.writer.submit(WriteBatch(gateways=[evolve(state, online=False)]))

    def _lost(self, gateway: str) -> None:
        """Another node took `gateway`: let go of it here."""
        self.log.warn("cluster: gateway {gateway} was taken by another cdrd node; letting it go here",
                      gateway=gateway)
        self.calls.release(gateway)
        connection = self.gateways.registry.connection(gateway)
        if connection is not None:
            self.gateways.moved(connection)

    # -- the other nodes' commits (LISTEN cdrd_feed) -------------------------------------

    def _heard(self, note: dict) -> None:
        if note.get("node") == self.node or self.feed is None:
            return  # this node's own: the writer's listener fed them
        d = self._relaying.run(lambda: defer.ensureDeferred(self._relay(note)))
        d.addErrback(lambda f: self.log.warn("cluster: reading another node's commit for the live feed failed: {error}",
                                             error=f.getErrorMessage()))

    async def _relay(self, note: dict) -> None:
        if not self.feed.subscribers():
            return
        if note.get("events"):
            first, last = note["events"]
            events = await self.store.events_after(None, first - 1, last - first + 1)
            self.feed.events_stored(events)
        if note.get("log"):
            first, last = note["log"]
            self.feed.log_stored(await self.store.log_between(first, last))
        records = [r for r in [await self.store.call_record(c) for c in note.get("calls") or ()] if r]
        if records:
            self.feed.records_stored(records)


def _waiter(d: defer.Deferred) -> defer.Deferred:
    """A Deferred firing with `d` (success or not), leaving `d`'s result alone."""
    waiter = defer.Deferred()

    def fire(result):
        waiter.callback(None)
        return result

    d.addBoth(fire)
    return waiter


def install(root, config, reactor, feed=None) -> Cluster:
    """
    Make the CdrdService `root` (built by cdrd.service.build_service on a
    PostgreSQL store) one node of several: its leases' settings, no
    recovery of every gateway at start, the outputs' delivery and the
    retention sweeps moved under the #work lease, LOGINs claiming leases.
    """
    from cdrd.store.leases import Leases, default_node_name

    store = root.store
    store.leases = Leases(config.cluster.node or default_node_name(), config.cluster.lease_seconds)
    root.calls.recover_all = False
    work = MultiService()
    outputs = [s for s in root if hasattr(s, "poll") and hasattr(s, "outbox")]
    for service in [*outputs, root.retention]:
        service.disownServiceParent()
        service.setServiceParent(work)
    cluster = Cluster(store, root.calls, root.gateways, root.writer, reactor,
                      config.cluster.lease_seconds, work, feed=feed, outputs=outputs)
    cluster.setServiceParent(root)
    root.gateways.claim = cluster.claim
    root.parts.cluster = cluster
    return cluster
