"""
cdrd's HTTP side, composed of one Klein app per part:

    cdrd/web/api.py      the JSON API under /api/ (interfaces.md)
    cdrd/web/pages.py    the operator pages (templates in templates/)
    cdrd/web/exports.py  the CSV downloads (paths ending .csv)
    cdrd/web/streams.py  the server-sent event streams (paths ending /stream)

    web = WebApp(config, store, reactor, calls=calls, feed=feed, status=status,
                 presence=gateways.registry.online)
    site = Site(web.resource())

WebApp holds what they share (the store, the clocks, the gateways' state)
and routes a request to its part.  Pages are rendered on the server (a
search is a link; they work without JavaScript); a little vanilla JS adds
the live updates (SSE).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from datetime import date
from importlib import resources

import attrs
from klein import Klein
from twisted.logger import Logger

from cdrd.gateway.session import BAD_PACKET, BAD_PACKET_LIMIT, GATEWAY_RESTART_LOG
from cdrd.interfaces import CdrQuery, EventQuery, LogQuery
from cdrd.values import GatewayState
from cdrd.web import views
from cdrd.web.api import ApiApp, json_response
from cdrd.web.auth import guard
from cdrd.web.exports import Exports
from cdrd.web.feed import LiveFeed
from cdrd.web.pages import (
    FLOOD_WINDOW,
    LOG_SCAN,
    REPORT_FIELDS,
    REPORT_HIDDEN,
    SEARCH_PARAMS,
    Pages,
    form_values,
)
from cdrd.web.query import BadParameter, local_day
from cdrd.web.render import Clocks
from cdrd.web.streams import Streams

STATIC_TYPES = {
    "css": b"text/css; charset=utf-8",
    "js": b"text/javascript; charset=utf-8",
    "svg": b"image/svg+xml",
    "png": b"image/png",
}
_STATIC = resources.files("cdrd.web") / "static"
#: which search form an error page keeps, by the path that failed
ERROR_FORMS = {
    "/report": ("/report", REPORT_FIELDS, REPORT_HIDDEN),
    "/report.csv": ("/report", REPORT_FIELDS, REPORT_HIDDEN),
    "/summary": ("/summary", REPORT_FIELDS, ("filter",)),
    "/summary.csv": ("/summary", REPORT_FIELDS, ("filter",)),
    "/cdrs": ("/cdrs", REPORT_FIELDS, ("sort", "order", "limit")),
    "/cdrs.csv": ("/cdrs", REPORT_FIELDS, ("sort", "order", "limit")),
}


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
        presence: Callable[[], Iterable[GatewayState]] | None = None,
    ):
        self.config = config
        self.store = store
        self.clock = clock
        self.calls = calls
        self.feed = feed
        self.status = dict(status or {})
        #: the gateways connected now (the gateway registry): fresher than
        #: the store, which records a gateway's state at login and logout
        self.presence = presence
        self.zone = config.server.zone
        self.clocks = Clocks(self.zone)
        self.api = ApiApp(config, store, clock, calls=calls, status=status)
        self.pages = Pages(self)
        self.exports = Exports(self)
        self.streams = Streams(self)
        self._parts = {
            "api": self.api.app.resource(),
            "pages": self.pages.app.resource(),
            "exports": self.exports.app.resource(),
            "streams": self.streams.app.resource(),
        }

    def resource(self):
        """The whole site, behind Basic auth when users are configured."""
        return guard(
            self.app.resource(), self.config.web.users, self.config.web.realm, self.clock
        )

    # -- routing: each part answers its own paths ------------------------------------

    @app.handle_errors(BadParameter)
    def bad_parameter(self, request, failure):
        # only the routes of this class get here: /api/events/stream
        return json_response(request, {"error": str(failure.value)}, 400)

    @app.route("/api/events/stream", methods=["GET"])
    def api_events_stream(self, request):
        return self.streams.api_events_stream(request)

    @app.route("/api/", branch=True)
    def api_part(self, request):
        return self._parts["api"]

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

    @app.route("/", branch=True)
    def site_part(self, request):
        path = request.path
        if path.endswith(b".csv"):
            return self._parts["exports"]
        if path.endswith(b"/stream"):
            return self._parts["streams"]
        return self._parts["pages"]

    # -- what the parts share --------------------------------------------------------

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def today(self) -> date:
        return local_day(self.now_ms(), self.zone)

    def open_calls(self) -> list:
        return self.api.open_calls()

    def outputs(self) -> dict:
        return self.api.outputs()

    async def gateway_keys(self) -> list[str]:
        """Every gateway the store knows or the config names, sorted."""
        known = {g.key for g in await self.store.gateways()}
        return sorted(known | set(self.config.gateways))

    async def gateway_states(self) -> dict[str, GatewayState]:
        """Each known gateway's state, the connected ones' as the registry has
        it now (online, the current peer and ports)."""
        states = {g.key: g for g in await self.store.gateways()}
        for live in self.presence() if self.presence is not None else ():
            states[live.key] = attrs.evolve(live, online=True)
        return states

    async def gateway_rows(self, since: int | None = None, now: int | None = None) -> list[dict]:
        """
        Every configured or known gateway as the dashboard and the index show
        it: state (online, offline, flooding, never seen), peer, times, and
        with `since` its bad packets and restarts in the gateway log since
        then (at most LOG_SCAN entries read).
        """
        states = await self.gateway_states()
        keys = sorted(set(states) | set(self.config.gateways))
        bad, recent_bad, restarts = Counter(), Counter(), Counter()
        if since is not None:
            by_id: dict[str, list[str]] = {}
            hosts: dict[str, list[str]] = {}
            for k in keys:
                by_id.setdefault(k.split("_")[0], []).append(k)
                g = states.get(k)
                if g is not None and g.peer:
                    hosts.setdefault(g.peer.rpartition(":")[0], []).append(k)
            # a `???` entry is a gateway's only if no other one came from there
            by_host = {h: ks[0] for h, ks in hosts.items() if len(ks) == 1}
            entries = await self.store.log(LogQuery(since=since, limit=LOG_SCAN))
            for e in entries:
                if e.event not in (BAD_PACKET, GATEWAY_RESTART_LOG):
                    continue
                mac = e.mac.replace(":", "").upper()
                host = e.peer.rpartition(":")[0]
                owners = [k for k in by_id.get(e.gateway, ()) if not mac or k.endswith(mac)] or (
                    [by_host[host]] if host in by_host else []
                )
                for k in owners[:1]:
                    if e.event == BAD_PACKET:
                        bad[k] += e.count  # repeats are one entry with a count
                        if now is not None and e.time >= now - FLOOD_WINDOW:
                            recent_bad[k] += e.count
                    else:
                        restarts[k] += e.count
        clocks = self.clocks
        rows = []
        for k in keys:
            g = states.get(k)
            if g is None:
                state = "never seen"
            elif g.online and recent_bad[k] >= BAD_PACKET_LIMIT:
                state = "flooding"
            else:
                state = "online" if g.online else "offline"
            rows.append({
                "key": k,
                "state": state,
                "pill": {"online": "on", "flooding": "warn"}.get(state, "off"),
                "peer": g.peer if g else "",
                "firmware": g.firmware if g else "",
                "login": clocks.datetime(g.login) if g else "",
                "heard": clocks.datetime(g.last_heard) if g else "",
                "ports": f"{g.fxs}/{g.fxo}/{g.isdn}" if g else "",
                "skew": (f"{g.skew_ms / 1000:+.1f} s" if g.skew_ms else "0") if g else "",
                "bad_packets": bad[k],
                "restarts": restarts[k],
            })
        return rows

    async def call_whole(self, call_id: str) -> dict:
        """One call: its record, events, CDRs and RADIUS legs (None: no RADIUS)."""
        gateway, _, rest = call_id.partition("/")
        record = await self.store.call_record(call_id) if hasattr(self.store, "call_record") else None
        events = []
        boot, _, ref = rest.partition("/")
        if ref.isdigit():
            events = [
                e for e in await self.store.events(EventQuery(gateway=gateway, ref=int(ref), limit=1000))
                if not boot or e.boot == boot
            ]
        _, cdrs = await self.store.cdrs(CdrQuery(call=call_id, limit=100))
        return {"record": record, "events": events, "cdrs": cdrs, "legs": None}

    async def error_page(self, request, code: int, heading: str, message: str) -> bytes:
        """A 400 or 404 as a page of the site, keeping the search form of the
        page that failed (the values as typed) or the report's."""
        path = request.path.decode("utf-8", "replace")
        action, fields, hidden = ERROR_FORMS.get(path, ERROR_FORMS["/report"])
        today = self.today().isoformat()
        form = form_values(request, SEARCH_PARAMS, **{"from": today, "to": today})
        if code == 404:
            form = {"from": today, "to": today}
        links = [("Dashboard", "/"), ("CDR Report", "/report"), ("Gateways", "/gateways")]
        return views.render(
            request, "error.html", code=code,
            page="error", title=heading, zone=self.config.server.timezone,
            heading=heading, message=message, links=links if code == 404 else (),
            form_action=action, form=form, keys=await self.gateway_keys(),
            fields=fields, hidden=hidden,
        )
