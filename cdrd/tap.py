"""
``twistd cdrd``: options and wiring, nothing else.

    twistd -n cdrd --config etc/cdrd.toml

Start-up order: open the store, start the writer, recover the call model
(replay from its cursors), start the outputs, then listen for gateways and
browsers.  Shut-down runs it backwards: stop listening, let the writer
commit what is in flight, flush outputs, close the store.
"""

from __future__ import annotations

import sys

from attrs import evolve
from twisted.application import strports
from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.server import Site

from cdrd import config as C


class Options(usage.Options):
    synopsis = "[--config FILE] [options]"
    longdesc = (
        "cdrd records what VoIP gateways push over GWP/1: call records, "
        "FireBrick CDRs, RADIUS accounting, syslog and a web report. "
        "Each option overrides the same setting of the config file."
    )
    optParameters = [
        ["config", "c", None, "TOML config file (see etc/cdrd.toml); defaults apply without one"],
        ["gateway-endpoint", None, None, "gateway listener, a Twisted endpoint (server.gateway_endpoint; default tcp:6510)"],
        ["web-endpoint", None, None, "web listener, a Twisted endpoint (server.web_endpoint; default tcp:8080:interface=127.0.0.1)"],
        ["database", None, None, "sqlite:PATH or postgresql://... (server.database; default sqlite:var/cdrd.sqlite)"],
        ["timezone", None, None, "zone of the report pages (server.timezone; default UTC)"],
    ]

    def postOptions(self):
        try:
            self["cdrd-config"] = build_config(self)
        except C.ConfigError as e:
            # one line that names the setting (twistd would print the whole usage)
            sys.stderr.write(f"cdrd: config error: {e}\n")
            raise SystemExit(2) from None


def build_config(options) -> C.Config:
    config = C.load(options["config"]) if options.get("config") else C.Config()
    overrides = {
        "gateway_endpoint": options.get("gateway-endpoint"),
        "web_endpoint": options.get("web-endpoint"),
        "database": options.get("database"),
        "timezone": options.get("timezone"),
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides:
        server = {a.name: getattr(config.server, a.name) for a in C.ServerConfig.__attrs_attrs__}
        server.update(overrides)
        config = evolve(config, server=C.parse({"server": server}).server)
    for setting in ("gateway_endpoint", "web_endpoint"):
        check_endpoint(getattr(config.server, setting), f"server.{setting}")
    return config


def check_endpoint(description: str, setting: str) -> None:
    from twisted.internet.endpoints import _parseServer

    try:
        _parseServer(description, None)
    except (ValueError, KeyError, TypeError) as e:
        raise C.ConfigError(setting, f"{description!r} is not a server endpoint: {e}") from None


class CdrdService(MultiService):
    """Opens the store and recovers state before its children start."""

    log = Logger()

    def __init__(self, config: C.Config, reactor):
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.ready = defer.Deferred()

    def startService(self):
        Service.startService(self)
        d = defer.ensureDeferred(self._start())
        d.addCallbacks(self.ready.callback, self._failed)

    async def _start(self):
        await self.store.open()
        await self._mark_offline()
        for child in self:
            result = child.startService()
            if isinstance(result, defer.Deferred):
                await result
            if child is self.calls and hasattr(child, "recovered"):
                await child.recovered
        self.log.info(
            "cdrd started: gateways on {gateways}, web on {web}, store {store}",
            gateways=self.config.server.gateway_endpoint,
            web=self.config.server.web_endpoint,
            store=_safe_url(self.config.server.database),
        )

    async def _mark_offline(self):
        """After a crash the store may still show gateways online."""
        from cdrd.interfaces import WriteBatch

        stale = [evolve(g, online=False) for g in await self.store.gateways() if g.online]
        if stale:
            await self.store.write(WriteBatch(gateways=stale))

    def _failed(self, failure):
        self.log.failure("cdrd could not start", failure)
        self.ready.errback(failure)
        if self.reactor.running:
            self.reactor.stop()

    @defer.inlineCallbacks
    def stopService(self):
        yield MultiService.stopService(self)
        yield self.store.close()


def _safe_url(url: str) -> str:
    """A database URL without its password."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


def build_service(config: C.Config, reactor) -> CdrdService:
    from cdrd.calls.service import CallService
    from cdrd.gateway.protocol import GatewayFactory
    from cdrd.store import open_store
    from cdrd.store.writer import BatchWriter
    from cdrd.web.app import WebApp
    from cdrd.web.feed import LiveFeed

    root = CdrdService(config, reactor)
    root.store = store = open_store(config.server.database, reactor)
    writer = BatchWriter(store, reactor)
    writer.setServiceParent(root)

    feed = LiveFeed()
    sinks = [feed]
    status = {}
    outputs = []
    if config.radius.enabled:
        from cdrd.accounting.service import AccountingService

        accounting = AccountingService(config.radius, store, writer, reactor, reactor)
        sinks.append(accounting)
        outputs.append(accounting)
        status["radius"] = accounting.status
    if config.syslog.target:
        from cdrd.outputs.syslog import SyslogSink

        syslog = SyslogSink(config.syslog, store, writer, reactor, reactor)
        sinks.append(syslog)
        outputs.append(syslog)
        status["syslog"] = syslog.status

    def live(batch, result):
        if result.events:
            feed.events_stored(result.events)
        if batch.log:
            feed.log_stored(batch.log)

    writer.add_listener(live)

    root.calls = calls = CallService(config, store, writer, reactor, sinks=sinks)
    calls.setServiceParent(root)
    for output in outputs:
        output.setServiceParent(root)

    gateways = GatewayFactory(config, store, writer, reactor, open_refs=calls.open_refs)
    writer.add_listener(lambda batch, result: gateways.committed())
    strports.service(config.server.gateway_endpoint, gateways).setServiceParent(root)

    web = WebApp(config, store, reactor, calls=calls, feed=feed, status=status)
    site = Site(web.resource())
    site.displayTracebacks = False
    strports.service(config.server.web_endpoint, site).setServiceParent(root)
    root.gateways = gateways
    return root


def makeService(options) -> CdrdService:
    from twisted.internet import reactor

    # The store's thread hands the GIL back and forth with the reactor for
    # every row it binds; at the default 5 ms switch interval a busy reactor
    # makes each hand-back wait, and commits (so ACKs) crawl.
    sys.setswitchinterval(0.0005)
    return build_service(options["cdrd-config"], reactor)
