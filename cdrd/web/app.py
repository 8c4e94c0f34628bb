"""
cdrd's HTTP side: the JSON API (interfaces.md) and the operator pages
(the CDR Report, live gateway events, the gateway log, the dashboard and
the billing CDRs), all from one Klein app class.

    web = WebApp(config, store, reactor, calls=calls, feed=feed, status=status)
    site = Site(web.resource())

Pages are rendered on the server (a search is a link; they work without
JavaScript); a little vanilla JS adds the live event stream (SSE).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping
from datetime import date
from importlib import resources
from string import Template

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from cdrd.interfaces import CallQuery, CdrQuery, EventQuery, LogQuery
from cdrd.web import pages
from cdrd.web.api import ApiApp, json_response
from cdrd.web.auth import guard
from cdrd.web.feed import LiveFeed, Replay, Subscriber
from cdrd.web.query import (
    FILTER_LABELS,
    BadParameter,
    arg,
    call_query,
    cdr_query,
    days_with_records,
    local_day,
    parse_gateway,
    parse_int,
    parse_month,
    parse_search,
)
from cdrd.web.render import (
    REPORT_COLUMNS,
    Clocks,
    event_json,
    event_row,
    report_cells,
)

#: records read per store query while exporting CSV
EXPORT_CHUNK = 1000
#: an export never runs away with the server: at most this many rows
EXPORT_MAX = 1_000_000
#: stored events sent per reactor turn to a stream that resumes
REPLAY_PAGE = 500
HEARTBEAT = 15.0  # seconds between SSE comments: keeps proxies and NATs open
DASHBOARD_HOURS = 24

STATIC_TYPES = {
    "css": b"text/css; charset=utf-8",
    "js": b"text/javascript; charset=utf-8",
    "svg": b"image/svg+xml",
    "png": b"image/png",
}
_STATIC = resources.files("cdrd.web") / "static"
_LAYOUT = Template(
    (resources.files("cdrd.web") / "templates" / "layout.html").read_text("utf-8")
)


class WebApp:
    app = Klein()
    log = Logger()

    def __init__(
        self,
        config,
        store,
        clock,
        calls=None,
        feed: LiveFeed | None = None,
        status: Mapping[str, Callable[[], dict]] | None = None,
    ):
        self.config = config
        self.store = store
        self.clock = clock
        self.calls = calls
        self.feed = feed
        self.status = dict(status or {})
        self.zone = config.server.zone
        self.clocks = Clocks(self.zone)
        self._heartbeat = None
        self._producers: set[Subscriber] = set()
        self._rendered: dict[Callable, tuple[object, bytes]] = {}
        self.api = ApiApp(config, store, clock, calls=calls, status=status)

    def resource(self):
        """The whole site, behind Basic auth when users are configured."""
        return guard(
            self.app.resource(), self.config.web.users, self.config.web.realm, self.clock
        )

    # -- helpers ---------------------------------------------------------------

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def today(self) -> date:
        return local_day(self.now_ms(), self.zone)

    json = staticmethod(json_response)

    def page(
        self, request, page: str, title: str, content: str, refresh: int | None = None
    ) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(
            b"content-security-policy",
            b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            b"frame-ancestors 'none'",
        )
        html = _LAYOUT.substitute(
            title=pages.esc(title),
            page=page,
            nav=pages.nav(page),
            zone=pages.esc(self.config.server.timezone),
            content=content,
            refresh=f'<meta http-equiv="refresh" content="{refresh}">\n'
            if refresh
            else "",
        )
        return html.encode("utf-8")

    async def gateway_keys(self) -> list[str]:
        """Every gateway the store knows or the config names, sorted."""
        known = {g.key for g in await self.store.gateways()}
        return sorted(known | set(self.config.gateways))

    # -- errors ----------------------------------------------------------------

    @app.handle_errors(BadParameter)
    def bad_parameter(self, request, failure):
        message = str(failure.value)
        if request.path.startswith(b"/api/"):
            return self.json(request, {"error": message}, 400)
        request.setResponseCode(400)
        return self.page(request, "error", "Bad request", pages.error_box(message))

    # -- static files ------------------------------------------------------------

    @app.route("/static/<string:name>", methods=["GET"])
    def static(self, request, name):
        # a handful of small files: read them whole (no directory listing,
        # no path below static/ reachable)
        kind = STATIC_TYPES.get(name.rpartition(".")[2])
        entry = _STATIC / name
        if kind is None or "/" in name or name.startswith(".") or not entry.is_file():
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"not found\n"
        request.setHeader(b"content-type", kind)
        request.setHeader(b"cache-control", b"max-age=300")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return entry.read_bytes()

    # -- the JSON API (cdrd/web/api.py) -------------------------------------------

    @app.route("/api/", branch=True)
    def api(self, request):
        return self.api.app.resource()

    def _call_query(self, s, limit=None, offset=None, after=None) -> CallQuery:
        return call_query(s, limit, offset, after)

    def _cdr_query(self, s, call=None, limit=None, offset=None, after=None) -> CdrQuery:
        return cdr_query(s, call, limit, offset, after)

    def _open_calls(self) -> list:
        return self.api.open_calls()

    @staticmethod
    def _rfc(ms):
        from cdrd.values import rfc3339

        return None if ms is None else rfc3339(ms)

    def _outputs(self) -> dict:
        return self.api.outputs()

    # -- live events (server-sent events) --------------------------------------------

    @app.route("/api/events/stream", methods=["GET"])
    def api_events_stream(self, request):
        gateway = parse_gateway(arg(request, "gateway"))
        return self._stream(request, gateway, event_json_sse)

    @app.route("/gateways/<string:key>/events/stream", methods=["GET"])
    def gateway_events_stream(self, request, key):
        return self._stream(request, parse_gateway(key), fmt_event)

    def _stream(self, request, gateway: str | None, render):
        """
        Server-sent events of one gateway (or all), resuming after `after`
        or Last-Event-ID; `render(event, clocks)` makes one message (the
        API's JSON or the live page's row).
        """
        if self.feed is None:
            raise BadParameter("live events are not available (no feed)")
        after = request.getHeader(b"last-event-id") or arg(request, "after")
        after_id = None
        if after:
            if isinstance(after, bytes):
                after = after.decode("latin-1")
            after_id = parse_int(after.strip(), "after", 0, 0, 2**62)

        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")

        def fmt(item):
            kind, value = item
            if kind != "event":
                return None
            # the feed hands one event to every subscriber in turn: render it
            # once per format
            cached = self._rendered.get(render)
            if cached is not None and cached[0] is value:
                return cached[1]
            data = render(value, self.clocks)
            self._rendered[render] = (value, data)
            return data

        done: Deferred = Deferred(lambda d: sub.finish())

        def close():
            if sub in self._producers:
                self._producers.discard(sub)
                if request.channel is not None:  # None once the browser is gone
                    request.unregisterProducer()
            self._beat_if_needed()
            if not done.called:
                done.callback(None)

        sub = Subscriber(request.write, close, fmt, kinds=frozenset({"event"}))
        self._producers.add(sub)
        request.registerProducer(sub, True)
        self.feed.subscribe(gateway, sub)
        request.write(b"retry: 3000\n: connected\n\n")
        self._beat_if_needed()
        if after_id is not None:
            self._resume(sub, gateway, after_id, render)
        return done

    def _resume(self, sub, gateway, after_id, render):
        """Replay what the browser missed (every gateway's, for `gateway` None)."""
        replay = Replay(
            sub,
            [gateway] if gateway is not None else self.gateway_keys,
            after_id,
            self.store.events_after,
            lambda e: render(e, self.clocks),
            self.clock,
        )
        replay.page = REPLAY_PAGE
        replay.start()

    def _beat_if_needed(self):
        from twisted.internet.task import LoopingCall

        live = self.feed.subscribers() if self.feed else []
        if live and self._heartbeat is None:
            self._heartbeat = LoopingCall(self._beat)
            self._heartbeat.clock = self.clock
            self._heartbeat.start(HEARTBEAT, now=False)
        elif not live and self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None

    def _beat(self):
        for s in self.feed.subscribers():
            s.send(b": keep-alive\n\n")
        self._beat_if_needed()

    # -- pages -------------------------------------------------------------------------

    @app.route("/", methods=["GET"])
    async def dashboard(self, request):
        now = self.now_ms()
        gateways = await self.store.gateways()
        since = (now // 3_600_000 - DASHBOARD_HOURS + 1) * 3_600_000
        # summed by the store (call_hours): the same cost on a quiet day and
        # on a day of a million calls
        stats = await self.store.call_stats(since, now + 1, 3_600_000)
        content = pages.dashboard(
            clocks=self.clocks,
            now=now,
            gateways=gateways,
            configured=sorted(self.config.gateways),
            open_calls=self._open_calls() if self.calls is not None else None,
            stats=stats,
            since=since,
            hours=DASHBOARD_HOURS,
            outputs=self._outputs(),
        )
        return self.page(request, "dashboard", "Dashboard", content, refresh=30)

    @app.route("/report", methods=["GET"])
    async def report(self, request):
        s = parse_search(request, self.zone, default_day=self.today())
        month = self._month(arg(request, "month"), s.day_from)
        result = await self.store.calls(self._call_query(s))
        days = await self._days_with_records(s.gateway, month)
        content = pages.report(
            search=s,
            keys=await self.gateway_keys(),
            result=result,
            rows=[
                report_cells(s.offset + i + 1, r, self.clocks)
                for i, r in enumerate(result.records)
            ],
            gateways=[r.gateway for r in result.records],
            columns=REPORT_COLUMNS,
            filters=FILTER_LABELS,
            month=month,
            days=days,
            today=self.today(),
        )
        return self.page(request, "report", "CDR Report", content)

    @app.route("/report.csv", methods=["GET"])
    async def report_csv(self, request):
        s = parse_search(request, self.zone, default_day=self.today())
        name = f"cdr-report-{s.gateway or 'all'}-{s.day_from}-{s.day_to}-{s.filter}.csv"
        self._download_headers(request, name)
        export = Export(request)
        # streamed chunk by chunk, at the pace the client reads: a big export
        # never sits in memory whole, and stops when the client goes
        head = REPORT_COLUMNS + ("Gateway", "Begin (UTC)", "End (UTC)", "Call ID")
        await export.write(_csv_row(head))
        n = 0
        after = None  # keyset paging: each chunk costs its own length
        while n < EXPORT_MAX and not export.gone:
            page = await self.store.calls(
                self._call_query(s, limit=EXPORT_CHUNK, offset=0, after=after)
            )
            rows = []
            for r in page.records:
                n += 1
                cells = report_cells(n, r, self.clocks)
                utc = (r.gateway, self._rfc(r.begin), self._rfc(r.end), r.id)
                rows.append(_csv_row(tuple(map(spreadsheet_safe, cells)) + utc))
            await export.write(b"".join(rows))
            if len(page.records) < EXPORT_CHUNK:
                break
            after = (page.records[-1].begin, page.records[-1].id)
        export.done()
        return None

    @app.route("/gateways/<string:key>/events", methods=["GET"])
    async def gateway_events(self, request, key):
        key = parse_gateway(key)
        limit = parse_int(arg(request, "limit"), "limit", 100, 1, 1000)
        events = await self.store.events(
            EventQuery(gateway=key, limit=limit, newest_first=True)
        )
        state = await self.store.gateway(key)
        content = pages.live_events(
            key=key,
            state=state,
            rows=[event_row(e, self.clocks) for e in events],
            after=max((e.id or 0 for e in events), default=0),
            live=self.feed is not None,
            keys=await self.gateway_keys(),
        )
        return self.page(request, "events", f"Live events {key}", content)

    @app.route("/gateways", methods=["GET"])
    async def gateways_index(self, request):
        key = arg(request, "key")
        if key is not None:
            key = parse_gateway(key)
            request.redirect(f"/gateways/{key}/events".encode())
            return b""
        return self.page(
            request,
            "events",
            "Live events",
            pages.gateways_index(await self.gateway_keys()),
        )

    @app.route("/log", methods=["GET"])
    async def gateway_log(self, request):
        s = parse_search(
            request, self.zone, default_day=self.today(), bare_gateway=True
        )
        entries = await self.store.log(
            LogQuery(
                gateway=s.gateway,
                since=s.since,
                until=s.until,
                limit=s.limit + 1,
                offset=s.offset,
            )
        )
        content = pages.gateway_log(
            search=s,
            entries=entries[: s.limit],
            more=len(entries) > s.limit,
            clocks=self.clocks,
            keys=await self.gateway_keys(),
        )
        return self.page(request, "log", "Gateway log", content)

    @app.route("/cdrs", methods=["GET"])
    async def cdrs(self, request):
        s = parse_search(request, self.zone, default_day=self.today())
        total, cdrs = await self.store.cdrs(self._cdr_query(s))
        content = pages.cdrs(
            search=s,
            total=total,
            cdrs=cdrs,
            clocks=self.clocks,
            keys=await self.gateway_keys(),
        )
        return self.page(request, "cdrs", "Billing CDRs", content)

    @app.route("/cdrs.csv", methods=["GET"])
    async def cdrs_csv(self, request):
        s = parse_search(request, self.zone, default_day=self.today())
        self._download_headers(request, f"cdrs-{s.gateway or 'all'}-{s.day_from}-{s.day_to}.csv")
        export = Export(request)
        # the billing feed: the FireBrick lines byte for byte (never altered
        # for spreadsheets, see docs/web.md), at the pace the client reads
        n = 0
        after = None  # keyset paging: each chunk costs its own length
        while n < EXPORT_MAX and not export.gone:
            _, page = await self.store.cdrs(
                self._cdr_query(s, limit=EXPORT_CHUNK, offset=0, after=after)
            )
            await export.write("".join(c.line + "\r\n" for c in page).encode("utf-8"))
            n += len(page)
            if len(page) < EXPORT_CHUNK:
                break
            after = page[-1].id
        export.done()
        return None

    # -- page helpers ----------------------------------------------------------------

    def _download_headers(self, request, name: str) -> None:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        request.setHeader(b"content-type", b"text/csv; charset=utf-8")
        request.setHeader(b"content-disposition", f'attachment; filename="{safe}"'.encode())
        request.setHeader(b"cache-control", b"no-store")

    def _month(self, text: str | None, default: date) -> date:
        return parse_month(text, default)

    async def _days_with_records(self, gateway: str | None, month: date) -> set[date]:
        return await days_with_records(self.store, self.zone, gateway, month)


@implementer(IPushProducer)
class Export:
    """
    Paces a streamed download to its client: a producer of the request's
    connection, so `write` waits while the client's socket pushes back, and
    `gone` turns true (and waits end) once the client left.
    """

    def __init__(self, request):
        self.request = request
        self.paused = False
        self.gone = False
        self._waiting: Deferred | None = None
        request.registerProducer(self, True)
        request.notifyFinish().addErrback(lambda _: self.stopProducing())

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        self._wake()

    def stopProducing(self):
        self.gone = True
        self._wake()

    def _wake(self):
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(None)

    async def write(self, data: bytes) -> None:
        if self.gone:
            return
        self.request.write(data)
        while self.paused and not self.gone:
            self._waiting = Deferred()
            await self._waiting

    def done(self):
        if not self.gone:
            self.request.unregisterProducer()


#: what a spreadsheet takes for a formula at the start of a cell (OWASP)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str) -> str:
    """A report cell that a spreadsheet shows as text, never runs: one that
    starts like a formula gets a leading ' (OWASP "CSV injection")."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def _csv_row(cells) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(cells)
    return out.getvalue().encode("utf-8")


def sse(kind: str, data: dict, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"{head}event: {kind}\ndata: {body}\n\n".encode()


def fmt_event(event, clocks: Clocks) -> bytes:
    """The live page's message: the row as shown (local time, text)."""
    return sse("event", event_row(event, clocks), event.id)


def event_json_sse(event, clocks: Clocks) -> bytes:
    """The API stream's message: the event as /api/events has it (RFC 3339 UTC)."""
    return sse("event", event_json(event), event.id)
