"""
cdrd's JSON API (docs/web.md, "The JSON API"): a Klein app of its own,
mounted by WebApp under /api/.

    api = ApiApp(config, store, clock, calls=calls, status=status)
    resource = api.app.resource()   # routes are relative: /calls is /api/calls

Every answer is JSON; a bad parameter is 400 {"error": "<param>: ..."}, an
unknown path 404 {"error": ...}.  The live stream /api/events/stream is
served by WebApp (it shares the pages' SSE machinery) and routed before
this mount.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import date

from klein import Klein
from twisted.logger import Logger

from cdrd.interfaces import EventQuery, LogQuery
from cdrd.values import rfc3339
from cdrd.web.query import (
    BadParameter,
    arg,
    call_query,
    cdr_query,
    days_with_records,
    local_day,
    parse_gateway,
    parse_month,
    parse_search,
)
from cdrd.web.render import call_json, cdr_json, event_json, gateway_json, log_json


def json_response(request, body, code: int = 200) -> bytes:
    """`body` as the API's JSON answer, with its status code and headers."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _rfc(ms):
    return None if ms is None else rfc3339(ms)


class ApiApp:
    app = Klein()
    log = Logger()

    def __init__(
        self,
        config,
        store,
        clock,
        calls=None,
        status: Mapping[str, Callable[[], dict]] | None = None,
    ):
        self.config = config
        self.store = store
        self.clock = clock
        self.calls = calls
        self.status = dict(status or {})
        self.zone = config.server.zone

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def today(self) -> date:
        return local_day(self.now_ms(), self.zone)

    # -- what the pages share --------------------------------------------------

    def open_calls(self) -> list:
        """The call model's open calls, by gateway then begin ([] without one)."""
        if self.calls is None:
            return []
        return sorted(self.calls.open_calls(), key=lambda c: (c.gateway, c.begin))

    def outputs(self) -> dict:
        """Each output's status by name; a broken one shows its error's type."""
        out = {}
        for name, status in sorted(self.status.items()):
            try:
                out[name] = status()
            except Exception as e:  # a broken status must not break the page
                self.log.failure("status of output {name} failed", name=name)
                out[name] = {"error": type(e).__name__}
        return out

    # -- errors ------------------------------------------------------------------

    @app.handle_errors(BadParameter)
    def bad_parameter(self, request, failure):
        return json_response(request, {"error": str(failure.value)}, 400)

    # -- routes --------------------------------------------------------------------

    @app.route("/gateways", methods=["GET"])
    async def gateways(self, request):
        gateways = await self.store.gateways()
        return json_response(request, {"gateways": [gateway_json(g) for g in gateways]})

    @app.route("/log", methods=["GET"])
    async def gateway_log(self, request):
        s = parse_search(request, self.zone, bare_gateway=True)
        entries = await self.store.log(
            LogQuery(gateway=s.gateway, since=s.since, until=s.until, limit=s.limit, offset=s.offset)
        )
        return json_response(request, {"entries": [log_json(e) for e in entries]})

    @app.route("/events", methods=["GET"])
    async def events(self, request):
        s = parse_search(request, self.zone)
        events = await self.store.events(
            EventQuery(
                gateway=s.gateway, ref=s.ref, since=s.since, until=s.until,
                limit=s.limit, offset=s.offset,
            )
        )
        return json_response(request, {"events": [event_json(e) for e in events]})

    @app.route("/calls", methods=["GET"])
    async def calls_(self, request):
        s = parse_search(request, self.zone)
        result = await self.store.calls(call_query(s))
        return json_response(
            request,
            {
                "total": result.total,
                "filtered": result.filtered,
                "records": [call_json(r) for r in result.records],
            },
        )

    @app.route("/cdrs", methods=["GET"])
    async def cdrs(self, request):
        s = parse_search(request, self.zone)
        total, cdrs = await self.store.cdrs(cdr_query(s, arg(request, "call")))
        return json_response(request, {"total": total, "cdrs": [cdr_json(c) for c in cdrs]})

    @app.route("/calendar", methods=["GET"])
    async def calendar(self, request):
        gateway = parse_gateway(arg(request, "gateway"))
        month = parse_month(arg(request, "month"), self.today())
        days = await days_with_records(self.store, self.zone, gateway, month)
        return json_response(
            request,
            {"month": f"{month:%Y-%m}", "days": [d.isoformat() for d in sorted(days)]},
        )

    @app.route("/status", methods=["GET"])
    def status_(self, request):
        open_calls = [
            {"gateway": c.gateway, "boot": c.boot, "ref": c.ref, "begin": _rfc(c.begin), "port": c.port}
            for c in self.open_calls()
        ]
        return json_response(request, {"open_calls": open_calls, "outputs": self.outputs()})

    @app.route("/accounting", methods=["GET"])
    def accounting(self, request):
        status = self.status.get("radius")
        if status is None:
            return json_response(request, {"error": "RADIUS accounting is not configured"}, 404)
        return json_response(request, status())

    @app.route("/", branch=True)
    def unknown(self, request):
        return json_response(
            request, {"error": f"no such API path {request.path.decode('latin-1')}"}, 404
        )
