"""
The service tree of one cdrd process: the store, the writer, the call
model, the outputs, the listeners, started and stopped in the order that
keeps every write's store open.  ``cdrd.tap`` only parses the options and
hands the config to `build_service`.

Start-up order: open the store, start the writer, recover the call model
(replay from its cursors), start the outputs, then listen for gateways and
then browsers.  Nothing listens before that (not even in twistd's
privileged start): a gateway that logs in the moment cdrd is back must
find its open calls recovered, or its reboot would go unnoticed.  Only
server.metrics_endpoint (probes and metrics) listens from the start, so
that a standby can say why it is not ready.  Once ready: READY=1 to
systemd, "0" on twistd's daemon status pipe.

Shut-down: stop listening, log every gateway connection off and store it
offline, let the writer commit what is in flight, stop the call model and
the outputs, commit what they wrote, close the store.
"""

from __future__ import annotations

import os
from operator import itemgetter

from attrs import define, evolve, field
from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web.pages import notFound
from twisted.web.server import Site

from cdrd import config as C


class StartupError(Exception):
    """cdrd cannot start for a reason an operator can act on; the message names the setting."""


def _database_error(e: BaseException) -> bool:
    """sqlite3's or psycopg's DatabaseError (e.g. "database disk image is malformed")."""
    return any(c.__name__ == "DatabaseError" for c in type(e).__mro__)


@define(eq=False, slots=False, repr=False)
class Listener(Service):
    """A server endpoint listening while the service runs; `startService` fires once it listens."""

    reactor: object
    description: str
    factory: object
    setting: str
    port: object | None = None  # the listening port, while it listens

    def privilegedStartService(self):
        pass  # listen in startService, once cdrd is ready (see CdrdService)

    def startService(self):
        super().startService()
        d = serverFromString(self.reactor, self.description).listen(self.factory)

        def listening(port):
            self.port = port

        def failed(f):
            raise StartupError(f"{self.setting} {self.description}: {f.getErrorMessage()}")

        return d.addCallbacks(listening, failed)

    def stopService(self):
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening)


@define(eq=False, slots=False)
class CdrdParts:
    """The pieces `build_service` wires, as the service and its readers (metrics, tests) find them."""

    store: object  # IStore
    writer: object = None  # IBatchWriter
    calls: object = None  # CallService
    gateways: object = None  # GatewayFactory
    retention: object = None  # RetentionService
    cluster: object = None  # cdrd.cluster.Cluster: one node of several on PostgreSQL
    metrics: object = None  # Metrics
    listeners: list[Listener] = field(factory=list)
    # server.metrics_endpoint: listens from the start (probes and metrics
    # only), so that a standby answers /readyz with its reason
    probes: Listener | None = None


@define(eq=False, slots=False, repr=False)  # a log event's source: no config in its repr
class CdrdService(MultiService):
    """
    Opens the store and recovers state before its children start, and
    stops them in the order that keeps every write's store open.

    Children, in start order: the writer, the call model, the outputs,
    then the listeners (gateways, web).
    """

    config: C.Config
    reactor: object
    parts: CdrdParts
    #: fires once cdrd is ready (errback: the start failed)
    ready: defer.Deferred = field(factory=defer.Deferred)
    #: fires when this node lost the store (PostgreSQL's active lock):
    #: makeService stops the process with a failure status
    lost: defer.Deferred = field(factory=defer.Deferred)
    #: what /readyz says until cdrd is ready (then None)
    waiting_for: str | None = "starting"
    #: twistd's daemon mode: the parent's status pipe (makeService sets it)
    daemon_status: DaemonStatus | None = None

    log = Logger()

    def __attrs_post_init__(self):
        MultiService.__init__(self)

    # the parts, as the service's readers know them
    store = property(lambda self: self.parts.store)
    writer = property(lambda self: self.parts.writer)
    calls = property(lambda self: self.parts.calls)
    gateways = property(lambda self: self.parts.gateways)
    retention = property(lambda self: self.parts.retention)
    cluster = property(lambda self: self.parts.cluster)
    metrics = property(lambda self: self.parts.metrics)
    listeners = property(lambda self: self.parts.listeners)
    probes = property(lambda self: self.parts.probes)

    def privilegedStartService(self):
        # No child binds a port here: twistd calls this before startService,
        # before the store is open.  (Ports below 1024: give the process
        # CAP_NET_BIND_SERVICE rather than starting it as root.)
        Service.privilegedStartService(self)
        if self.daemon_status is not None:
            self.daemon_status.take()  # after twistd's fork: the pipe exists now

    def startService(self):
        Service.startService(self)
        d = defer.ensureDeferred(self._start())
        d.addCallbacks(self.ready.callback, self._failed)

    async def _start(self):
        from cdrd.store import redact, safe_url
        from cdrd.systemd import notify

        url = self.config.server.database
        if self.probes is not None:
            await self.probes.startService()
        try:
            self.waiting_for = "opening the store"
            await self.store.open()
            # one writer per store: a second cdrd on a SQLite file stops here
            # (an IStore may make a standby wait here; PostgreSQL does not:
            # every node is active, each gateway leased, cdrd.cluster)
            self.waiting_for = "standing by: waiting for the store's active lock (another node is active)"
            notify("STATUS=opening the store; a standby waits here for the active node")
            await self.store.activate(on_lost=self._lost_store)
        except Exception as e:
            if not self.running:
                return  # stopped while standing by
            error = redact(str(e).strip() or type(e).__name__, url)
            raise StartupError(f"server.database {safe_url(url)}: {error}") from None
        self.waiting_for = "recovering the open calls"
        try:
            await self._mark_offline()
            for child in self:
                if not self.running:
                    return  # stopped while starting
                if child.running:
                    continue  # the probes' listener
                if self.listeners and child is self.listeners[0]:
                    self.waiting_for = "starting the listeners"
                result = child.startService()
                if isinstance(result, defer.Deferred):
                    await result
                if child is self.calls:
                    await child.recovered
        except Exception as e:
            if not _database_error(e):
                raise
            # a damaged page found while reading the state back
            error = redact(str(e).strip() or type(e).__name__, url)
            raise StartupError(f"server.database {safe_url(url)}: {error}") from None
        self.waiting_for = None
        self.log.info(
            "cdrd started: gateways on {gateways}, web on {web}, store {store}",
            gateways=self.config.server.gateway_endpoint,
            web=self.config.server.web_endpoint,
            store=safe_url(self.config.server.database),
        )

    def readiness(self) -> tuple[bool, str]:
        """What /readyz answers: (ready, reason)."""
        if not self.running:
            return False, "stopping"
        if self.waiting_for is not None:
            return False, self.waiting_for
        if self.writer is not None and self.writer.refusing is not None:
            return False, f"the store refuses writes: {self.writer.refusing}"
        for listener in self.listeners:
            if listener.setting == "server.gateway_endpoint" and listener.port is None:
                return False, "the gateway listener is not up"
        return True, "ready"

    async def _mark_offline(self):
        """After a crash the store may still show gateways online."""
        from cdrd.interfaces import ILeasedStore, WriteBatch

        if ILeasedStore.providedBy(self.store):
            return  # PostgreSQL: online only under a live lease (cdrd.cluster)
        stale = [evolve(g, online=False) for g in await self.store.gateways() if g.online]
        if stale:
            await self.store.write(WriteBatch(gateways=stale))

    def _lost_store(self):
        self.log.critical(
            "cdrd lost the store's active lock (another node may be active now): stopping;"
            " the gateways will reconnect and resend what was not acknowledged"
        )
        if not self.lost.called:
            self.lost.callback(None)

    def _failed(self, failure):
        self.waiting_for = "the start failed"
        if failure.check(StartupError):
            self.log.critical("cdrd could not start: {error}", error=failure.getErrorMessage())
        else:
            self.log.failure("cdrd could not start", failure)
        self.ready.errback(failure)

    def stopService(self):
        Service.stopService(self)
        from cdrd.systemd import notify

        notify("STOPPING=1")
        return defer.ensureDeferred(self._stop())

    async def _stop(self):
        async def step(what, fn):
            try:
                result = fn()
                if isinstance(result, defer.Deferred):
                    await result
            except Exception:
                self.log.failure("cdrd stopping: {what} failed", what=what)

        for listener in reversed(self.listeners):
            if listener.running:
                await step(f"closing {listener.setting}", listener.stopService)
        if self.gateways is not None:
            await step("closing the gateway connections", self.gateways.shutdown)
        if self.writer is not None and self.writer.running:
            await step("writing what the gateways sent", self.writer.flushed)
        others = [c for c in self if c is not self.writer and c not in self.listeners]
        for child in others:  # the call model first: its last products reach the outputs
            if child.running:
                await step(f"stopping {type(child).__name__}", child.stopService)
        if self.writer is not None and self.writer.running:
            await step("the last writes", self.writer.stopService)
        if self.store is not None:
            await step("closing the store", self.store.close)


def build_service(config: C.Config, reactor, store=None) -> CdrdService:
    """The whole of cdrd; `store` (an IStore, not opened) replaces the one of server.database."""
    from cdrd.calls.service import CallService
    from cdrd.gateway.protocol import GatewayFactory
    from cdrd.metrics import Metrics
    from cdrd.monitor import Monitor
    from cdrd.outputs import durable_sink, sink_settings
    from cdrd.store import open_store
    from cdrd.store.writer import BatchWriter
    from cdrd.web.app import WebApp
    from cdrd.web.auth import guard
    from cdrd.web.feed import LiveFeed
    from cdrd.web.health import ProbeResource

    store = store if store is not None else open_store(config.server.database, reactor)
    parts = CdrdParts(store)
    root = CdrdService(config, reactor, parts)
    parts.writer = writer = BatchWriter(store, reactor, events_interval=config.server.commit_interval)
    writer.setServiceParent(root)

    feed = LiveFeed()
    sinks = [feed]
    status = {}
    outputs = []
    outboxes = {}  # sink -> its (items, oldest age) reader; None: read from the store
    delivery = None  # "process": the durable sinks deliver from a child (cdrd.outputs.process)
    if config.outputs.delivery == "process":
        from cdrd.outputs.process import OutputsProcess

        delivery = OutputsProcess(config, writer, reactor)

    def durable(local):
        """The sink the call model writes to, and the service that delivers."""
        if delivery is None:
            outputs.append(local)
            return local
        return delivery.sink(local)

    radius_figures = None
    settings = sink_settings(config)
    if config.radius.enabled:
        accounting = durable(durable_sink("radius", settings, store, writer, reactor))
        sinks.append(accounting)
        status["radius"] = accounting.status
        outboxes["radius"] = lambda: itemgetter("spool_depth", "oldest_age")(accounting.status())
        radius_figures = accounting.client if delivery is None else delivery.radius_figures(accounting.local.client)
    if config.radius.authorize:
        from cdrd.accounting.authorize import CuiAuthorizer

        authorizer = CuiAuthorizer(config, writer, reactor, reactor)
        outputs.append(authorizer)
        status["radius_authorize"] = authorizer.status
    if config.syslog.target:
        syslog = durable(durable_sink("syslog", settings, store, writer, reactor))
        sinks.append(syslog)
        status["syslog"] = syslog.status
        outboxes["syslog"] = None
    if config.csv.directory:
        csvfile = durable(durable_sink("csv", settings, store, writer, reactor))
        sinks.append(csvfile)
        status["csv"] = csvfile.status
        outboxes["csv"] = None
    if delivery is not None and delivery.sinks:
        outputs.append(delivery)

    def live(batch, result):
        if result.events:
            feed.events_stored(result.events)
        if batch.log:
            feed.log_stored(batch.log)

    writer.add_listener(live)

    parts.calls = calls = CallService(config, store, writer, reactor, sinks=sinks)
    calls.setServiceParent(root)
    for output in outputs:
        output.setServiceParent(root)

    parts.gateways = gateways = GatewayFactory(config, store, writer, reactor, open_refs=calls.open_refs)
    writer.add_listener(lambda batch, result: gateways.committed())

    monitor = Monitor(store, reactor, config.server.outbox_alert_age, outboxes,
                      syslog=status.get("syslog"), flood=gateways.flood)
    monitor.setServiceParent(root)
    # after the CallService: its first sweep runs once the open calls are recovered
    from cdrd.store.retention import RetentionService

    parts.retention = retention = RetentionService(store, reactor, config.retention, config.server.stale_after)
    retention.setServiceParent(root)
    parts.metrics = Metrics(writer, gateways, calls=calls, outboxes=monitor.outboxes, syslog=status.get("syslog"),
                           radius=radius_figures, retention=retention)

    web = WebApp(
        config, store, reactor, calls=calls, feed=feed, status=status,
        presence=gateways.registry.online,
    )
    metrics_page = guard(parts.metrics.resource(), config.web.users, config.web.realm, reactor)
    site = Site(ProbeResource(web.resource(), root.readiness, metrics_page))
    site.displayTracebacks = False
    endpoints = [
        (config.server.gateway_endpoint, gateways, "server.gateway_endpoint"),
        (config.server.web_endpoint, site, "server.web_endpoint"),
    ]
    if config.server.metrics_endpoint:  # no auth: a private interface
        probes = Site(ProbeResource(notFound(), root.readiness, parts.metrics.resource()))
        endpoints.append((config.server.metrics_endpoint, probes, "server.metrics_endpoint"))
    for description, factory, setting in endpoints:
        listener = Listener(reactor, description, factory, setting)
        listener.setServiceParent(root)
        parts.listeners.append(listener)
        if setting == "server.metrics_endpoint":
            parts.probes = listener
    from cdrd.interfaces import ILeasedStore

    if ILeasedStore.providedBy(store):  # PostgreSQL: one node of several
        from cdrd.cluster import install

        install(root, config, reactor, feed=feed)
    return root


@define(eq=False)
class DaemonStatus:
    """
    twistd's daemon mode (no ``-n``): the parent process waits on a pipe
    for the child's start and exits 0 on b"0", 1 on anything else; twistd
    writes b"0" as soon as the services' startService has returned, before
    cdrd's store is open or its ports listen.  cdrd takes the pipe from
    twistd's options (after the fork, in privilegedStartService) and
    writes when its start is really over: 0, or the error (exit status 1).
    """

    options: object  # twistd's options, or None
    pipe: int | None = None

    def take(self) -> None:
        if self.options is not None and hasattr(self.options, "pop"):
            self.pipe = self.options.pop("statusPipe", None)

    def started(self) -> None:
        self._write(b"0")

    def failed(self, error: str) -> None:
        # twistd's parent prints the bytes after the first two, 100 at most
        self._write(("1 " + error).encode("utf-8", "replace")[:100])

    def _write(self, data: bytes) -> None:
        pipe, self.pipe = self.pipe, None
        if pipe is None:
            return
        try:
            os.write(pipe, data)
        finally:
            os.close(pipe)
