"""
``/metrics`` in the Prometheus text format (prometheus_client).

Nothing is counted twice and little on the ingest path: the gateway
factory keeps plain integers (events received, duplicates) and its
BadPacketFlood the bad packets; the writer's commit listener here counts
what was stored; the RADIUS client, the syslog sink, the registry and the
call model already hold the rest.  `CdrdCollector` reads all of it at
scrape time.  Only three histograms are observed as things happen: the ACK
latency (once per acknowledged chunk of lines, not per line), the store's
commit time and events per transaction (once per transaction).

Each cdrd service owns its `CollectorRegistry` (not prometheus_client's
global one): several services in one process (the tests) do not collide.

The page is rendered on the reactor thread: the collector reads state the
reactor owns.  (prometheus_client's own ``twisted.MetricsResource`` runs
the collection in a thread of the reactor's pool, which would race it.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from twisted.web.resource import Resource

from cdrd.gcpauses import PAUSES

#: seconds; ACKs wait for a commit (fsync): milliseconds, more when loaded
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


class Metrics:
    """
    The registry of one cdrd service.  `sources` are read at scrape time:
    ``gateways`` (GatewayFactory), ``calls`` (CallService), ``radius``
    (RadiusClient), ``syslog`` (a status() callable), ``outboxes``
    (sink name -> callable returning (items, oldest age in s)),
    ``retention`` (RetentionService).
    """

    def __init__(self, writer=None, gateways=None, process: bool = True, **sources):
        self.registry = CollectorRegistry(auto_describe=True)
        self.ack_latency = Histogram(
            "cdrd_ack_latency_seconds", "From a chunk of event lines' receipt to its ACK (after the commit)",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "cdrd_store_commit_seconds", "Time of one store transaction (group commit)",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.batch_events = Histogram(
            "cdrd_store_batch_events", "Gateway events written per store transaction",
            buckets=BATCH_BUCKETS, registry=self.registry,
        )
        # what the commit listener counts (plain integers: read at scrape)
        self.stored = 0
        self.store_duplicates = 0
        self.cdrs = 0
        self.calls: dict[str, int] = {}
        self.gateways = gateways
        self.sources = sources
        if gateways is not None:
            gateways.ack_latency = self.ack_latency.observe
        if writer is not None:
            self.writer = writer
            writer.add_listener(self.committed)
        self.registry.register(CdrdCollector(self))
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            # the process's collector pauses (counted once the daemon installs them)
            self.registry.register(PAUSES)

    def committed(self, batch, result) -> None:
        """The writer's commit listener: once per transaction."""
        events = len(batch.events)
        if events:
            self.stored += len(result.events)
            self.store_duplicates += max(0, events - len(result.events))
            self.batch_events.observe(events)
            self.commit_seconds.observe(self.writer.commit_seconds)
        if batch.records:
            for record in batch.records:
                self.calls[record.notation] = self.calls.get(record.notation, 0) + 1
        self.cdrs += len(batch.cdrs)

    def page(self, accept: str | None = None) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def resource(self) -> Resource:
        return MetricsResource(self)


class MetricsResource(Resource):
    isLeaf = True

    def __init__(self, metrics: Metrics):
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request):
        accept = request.getHeader(b"accept")
        body, content_type = self.metrics.page(accept.decode("latin-1") if accept else None)
        request.setHeader(b"content-type", content_type.encode())
        request.setHeader(b"cache-control", b"no-store")
        return body

    render_HEAD = render_GET


class CdrdCollector:
    """The state cdrd holds anyway, read at scrape time (nothing on the hot path)."""

    def __init__(self, metrics: Metrics):
        self.m = metrics

    def describe(self):
        return []  # families are known at collection; describing would collect early

    def collect(self):
        m = self.m
        g = m.gateways
        counter = CounterMetricFamily
        yield counter("cdrd_events_received", "GWP/1 events received (duplicates included)",
                      value=g.events_received if g is not None else 0)
        yield counter("cdrd_events_stored", "Events stored (committed)", value=m.stored)
        yield counter("cdrd_events_duplicate", "Events received again (acknowledged, not stored again)",
                      value=(g.events_duplicate if g is not None else 0) + m.store_duplicates)
        yield counter("cdrd_bad_packets", "Bad packets (ERR code=bad) from gateways",
                      value=g.flood.total if g is not None else 0)
        log_entries = counter("cdrd_gateway_log_entries", "Gateway log entries, by event, each repeat counted"
                              " (the store keeps repeats as one entry with a count)", labels=["event"])
        for event, n in sorted(g.coalescer.counted.items() if g is not None else ()):
            log_entries.add_metric([event], n)
        yield log_entries
        yield GaugeMetricFamily("cdrd_gateway_log_windows", "Coalesced gateway log entries being counted",
                                value=g.coalescer.tracked if g is not None else 0)
        yield GaugeMetricFamily("cdrd_gateways_online", "Gateways logged in",
                                value=len(g.registry.online()) if g is not None else 0)
        yield GaugeMetricFamily("cdrd_gateway_connections", "Gateway TCP connections open",
                                value=len(g.connections) if g is not None else 0)
        yield GaugeMetricFamily("cdrd_gateway_connections_not_logged_in",
                                "Gateway TCP connections that have not logged in",
                                value=g.budgets.not_logged_in if g is not None else 0)
        yield counter("cdrd_gateway_connections_given_way",
                      "Connections not logged in closed for a newer one (a budget full)",
                      value=g.connections_given_way if g is not None else 0)
        calls = self.m.sources.get("calls")
        yield GaugeMetricFamily("cdrd_calls_open", "Calls open in the call model",
                                value=calls.model.open_count() if calls is not None else 0)
        by_notation = counter("cdrd_calls", "Call records written, by notation", labels=["notation"])
        for notation, n in sorted(m.calls.items()):
            by_notation.add_metric([notation], n)
        yield by_notation
        yield counter("cdrd_cdrs", "CDRs written", value=m.cdrs)
        yield from _outboxes(m.sources.get("outboxes") or {})
        retention = m.sources.get("retention")
        if retention is not None:
            yield from _retention(retention)
        radius = m.sources.get("radius")
        if radius is not None:
            yield from _radius(radius)
        syslog = m.sources.get("syslog")
        if syslog is not None:
            status = syslog()
            yield counter("cdrd_syslog_lines", "CDR lines sent to the syslog target", value=status["sent"])
            yield GaugeMetricFamily("cdrd_syslog_target_up", "1 when the syslog target takes lines",
                                    value=1 if status["connected"] else 0)


def _outboxes(outboxes: Mapping[str, Callable[[], tuple[int, float]]]):
    items = GaugeMetricFamily("cdrd_outbox_items", "Items waiting in an output's outbox", labels=["sink"])
    age = GaugeMetricFamily("cdrd_outbox_oldest_age_seconds", "Age of the oldest item waiting in an output's outbox",
                            labels=["sink"])
    for sink, read in sorted(outboxes.items()):
        depth, oldest = read()
        items.add_metric([sink], depth)
        age.add_metric([sink], oldest)
    yield items
    yield age


def _retention(service):
    deleted = CounterMetricFamily(
        "cdrd_retention_deleted", "Rows retention deleted, by kind (cdrs: with their records)", labels=["kind"])
    for kind, n in service.deleted.items():
        deleted.add_metric([kind], n)
    yield deleted
    days = GaugeMetricFamily("cdrd_retention_kept_days", "Days each kind is kept ([retention]); 0: forever",
                             labels=["kind"])
    oldest = GaugeMetricFamily("cdrd_retention_oldest_seconds",
                               "Age of the oldest row held, by kind, as the last sweep found it", labels=["kind"])
    now = service.clock.seconds()
    for kind, kept in service.kept().items():
        days.add_metric([kind], kept["days"])
        if kept["oldest"] is not None:
            oldest.add_metric([kind], max(0.0, now - kept["oldest"] / 1000))
    yield days
    yield oldest


def _radius(client):
    requests = CounterMetricFamily("cdrd_radius_requests", "Accounting packets sent (retransmissions included)",
                                   labels=["server", "type"])
    responses = CounterMetricFamily("cdrd_radius_responses", "Valid Accounting-Responses",
                                    labels=["server"])
    timeouts = CounterMetricFamily("cdrd_radius_timeouts", "Requests that timed out (then retransmitted)",
                                   labels=["server"])
    up = GaugeMetricFamily("cdrd_radius_server_up", "1 answering, 0 not answering, absent before it is known",
                           labels=["server"])
    rtt = GaugeMetricFamily("cdrd_radius_rtt_seconds", "Smoothed round-trip time (RFC 6298 style, Karn)",
                            labels=["server"])
    for s in client.servers:
        name = f"{s.host}:{s.port}"
        for status, n in sorted(s.by_status.items()):
            requests.add_metric([name, status], n)
        responses.add_metric([name], s.answered)
        timeouts.add_metric([name], s.retransmissions)
        if s.up is not None:
            up.add_metric([name], 1 if s.up else 0)
        if s.rtt_ms is not None:
            rtt.add_metric([name], s.rtt_ms / 1000)
    yield from (requests, responses, timeouts, up, rtt)
