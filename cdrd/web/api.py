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
from datetime import date, datetime, timedelta
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from attrs import evolve, frozen
from klein import Klein
from twisted.logger import Logger

from cdrd.interfaces import (
    CDR_SORTS,
    RETENTION_KINDS,
    SUMMARY_SORTS,
    CallTotals,
    EventQuery,
    LogQuery,
)
from cdrd.store.schema import DAY_MS, HOUR_MS
from cdrd.values import CallEvent, CallRecord, Cdr, LegAnswer, LegStart, LegStop, rfc3339
from cdrd.web.query import (
    CALL_PARAMS,
    CDR_PARAMS,
    EVENT_PARAMS,
    LOG_PARAMS,
    SUMMARY_PARAMS,
    BadParameter,
    Search,
    arg,
    call_query,
    cdr_query,
    check_allowed,
    cui_totals,
    days_with_records,
    local_day,
    parse_gateway,
    parse_int,
    parse_month,
    parse_search,
    zone_shift,
)
from cdrd.web.render import call_json, cdr_json, event_json, gateway_json, log_json

#: GET /api/summary?group=...: the store's group, or a time bucket folded
#: into local hours or days here
SUMMARY_GROUPS = ("caller", "destination", "cui", "gateway", "hour", "day")
EPOCH = datetime(1970, 1, 1)
#: a time summary over more days than this is refused (8 760 hours a year)
SUMMARY_MAX_DAYS = 400
#: the events of one call read at most (a call has tens)
CALL_EVENTS_MAX = 2000
#: outbox items of one call read at most
CALL_OUTBOX_MAX = 200


def json_response(request, body, code: int = 200) -> bytes:
    """`body` as the API's JSON answer, with its status code and headers."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _rfc(ms):
    return None if ms is None else rfc3339(ms)


def totals_json(t: CallTotals) -> dict:
    """A search's totals: calls, answered, minutes, ASR (%), ACD (s); where
    more calls match than the store counts (CallTotals.capped), the totals
    are null (/api/totals says why)."""
    if t.capped:
        return {
            "calls": None, "answered": None, "attempts": None, "attempts_answered": None,
            "minutes": None, "asr": None, "acd": None,
        }
    return {
        "calls": t.calls,
        "answered": t.answered,
        "attempts": t.attempts,
        "attempts_answered": t.attempts_answered,
        "minutes": round(t.minutes, 3),
        "asr": None if t.asr is None else round(100 * t.asr, 1),
        "acd": None if t.acd is None else round(t.acd, 1),
    }


@frozen
class Summary:
    """
    One page of a summary: per group row its key, a label, its totals, and
    the parameters of the search (`page`: "report" or "cdrs") that lists
    it; `groups` counts the groups of every page.
    """

    group: str
    rows: tuple[SummaryLine, ...]
    groups: int = 0


@frozen
class SummaryLine:
    key: str
    label: str
    totals: CallTotals
    page: str  # "report" (calls) or "cdrs" (the CUI group)
    search: dict  # query parameters of that page's search

    @property
    def link(self) -> str:
        return f"/{self.page}?{urlencode(self.search)}"


def summary_line_json(line: SummaryLine) -> dict:
    return {
        "key": line.key,
        "label": line.label,
        **totals_json(line.totals),
        "search": line.search,
        "link": line.link,
    }


async def call_summary(
    store, zone: ZoneInfo, s: Search, group: str, prefix: int | None = None, *,
    limit: int | None = None, offset: int | None = None,
) -> Summary:
    """
    A page of the summary of the calls a search matches, grouped by `group`
    (SUMMARY_GROUPS), ordered by the search's `sort` (SUMMARY_SORTS; none:
    time order for hours and days, else the most calls first), `limit`
    groups from `offset` (default: the search's).  Hours and days are local
    to `zone`: the store buckets Begin plus the zone's offset at it
    (zone_shift), so a year by day is 365 rows from the store.  "cui" sums
    the billing CDRs (a call has none, one or several).
    """
    limit = s.limit if limit is None else limit
    offset = s.offset if offset is None else offset
    # the rows link to the report's search: without the summary's own order
    base = evolve(s, sort=None, descending=False).params()
    if group == "cui":
        page = await store.cui_summary(
            cdr_query(s), limit=limit, offset=offset, sort=s.sort, descending=s.descending)
        return Summary(group, tuple(
            SummaryLine(key=r.key, label=r.key, totals=r.totals, page="cdrs",
                        search={**_cdr_params(base), "cui": r.key})
            for r in page.rows
        ), groups=page.groups)
    q = call_query(s, limit=0, offset=0)
    common = {"limit": limit, "offset": offset, "sort": s.sort, "descending": s.descending}
    if group in ("hour", "day"):
        if s.day_from is None or s.day_to is None:
            raise BadParameter(f"group: {group} needs from and to")
        if (s.day_to - s.day_from).days >= SUMMARY_MAX_DAYS:
            raise BadParameter(f"group: {group} over more than {SUMMARY_MAX_DAYS} days")
        page = await store.call_summary(
            q, "time", bucket=HOUR_MS if group == "hour" else DAY_MS,
            shift=zone_shift(zone, s.since, s.until), **common)
        lines = []
        for r in page.rows:
            # the key is local wall-clock ms: the local hour's or day's start
            when = (EPOCH + timedelta(milliseconds=int(r.key))).replace(tzinfo=zone)
            day = when.date().isoformat()
            search = {**base, "from": day, "to": day}
            if group == "hour":
                search["time_from"] = f"{when:%H}:00"
                search["time_to"] = f"{when.hour + 1:02d}:00" if when.hour < 23 else "24:00"
                label = f"{day} {when:%H}:00"
            else:
                label = day
            lines.append(SummaryLine(key=when.isoformat(), label=label, totals=r.totals,
                                     page="report", search=search))
        return Summary(group, tuple(lines), groups=page.groups)
    page = await store.call_summary(q, group, prefix=prefix, **common)
    lines = []
    for r in page.rows:
        search = dict(base)
        if group == "gateway":
            search["gateway"] = r.key
        elif r.key:
            # number matches by substring: the linked search may list a few
            # more calls than the row counts (docs/web.md)
            search["number"] = r.key
        label = r.key if r.key else "(none)"
        if group == "destination" and prefix:
            label = f"{r.key}…" if r.key else label
        lines.append(SummaryLine(key=r.key, label=label, totals=r.totals, page="report", search=search))
    return Summary(group, tuple(lines), groups=page.groups)


def _cdr_params(params: dict) -> dict:
    """A call search's parameters that the billing CDR search takes too."""
    return {k: v for k, v in params.items() if k in CDR_PARAMS and k not in ("sort", "order")}


@frozen
class RadiusRequest:
    """One accounting request of a leg and what the store tells of it."""

    status: str  # Start, Interim-Update, Stop
    state: str  # "spooled": still in the outbox; "answered": deleted, so answered
    item: int | None = None  # the outbox id while spooled


@frozen
class LegView:
    id: str
    direction: str
    port: int | None
    pport: int | None
    cui: str
    cli: str
    dialled: str
    start: int | None
    answer: int | None
    stop: int | None
    cause: str
    radius: tuple[RadiusRequest, ...]


@frozen
class CallWhole:
    """One call with everything the store knows of it (GET /api/call)."""

    record: CallRecord
    events: tuple[CallEvent, ...]
    cdrs: tuple[Cdr, ...]
    legs: tuple[LegView, ...]
    radius: bool  # is RADIUS accounting configured (else legs have no requests)


def _replay_legs(config, events) -> dict:
    """leg id -> [Leg, start, answer, stop, cause], from the call's events
    replayed through a fresh call model (pure: nothing is written)."""
    from cdrd.calls.model import CallModel

    model = CallModel(config)
    legs: dict[str, list] = {}
    for e in events:
        for out in model.apply(e):
            if isinstance(out, LegStart):
                legs.setdefault(out.leg.id, [out.leg, None, None, None, ""])[1] = out.time
            elif isinstance(out, LegAnswer):
                legs.setdefault(out.leg.id, [out.leg, None, None, None, ""])[2] = out.time
            elif isinstance(out, LegStop):
                entry = legs.setdefault(out.leg.id, [out.leg, None, None, None, ""])
                entry[0], entry[3], entry[4] = out.leg, out.time, out.cause
    return legs


async def call_whole(store, config, call_id: str, radius: bool) -> CallWhole | None:
    """
    One call whole: its record, its events (by id), its CDRs (written
    order) and its legs, each with its RADIUS requests: "spooled" while in
    the "radius" outbox (waiting or sent, not yet answered), "answered" once
    deleted (the spool deletes an item only on its Accounting-Response).
    Legs come from replaying the call's stored events through the call
    model.  None when no record has this id.
    """
    from cdrd.accounting.packets import START, STOP, Payload

    record = await store.call_record(call_id)
    if record is None:
        return None
    events = await store.events(EventQuery(
        gateway=record.gateway, ref=record.ref, limit=CALL_EVENTS_MAX, newest_first=False))
    events = tuple(e for e in events if e.boot == record.boot)
    _, cdrs = await store.cdrs(_cdrs_of(call_id))
    spooled: dict[str, list[RadiusRequest]] = {}
    if radius:
        needle = '"leg":' + json.dumps(call_id + "/")[:-1]
        for item in await store.outbox_matching("radius", needle, CALL_OUTBOX_MAX):
            payload = Payload.from_bytes(item.payload)
            if payload.kind == "req":
                spooled.setdefault(payload.leg, []).append(
                    RadiusRequest(status=payload.status, state="spooled", item=item.id))
    legs = []
    for leg_id, (leg, start, answer, stop, cause) in _replay_legs(config, events).items():
        requests = list(spooled.pop(leg_id, []))
        if radius:
            have = {r.status for r in requests}
            for status, when in ((START, start), (STOP, stop)):
                if when is not None and status not in have:
                    requests.append(RadiusRequest(status=status, state="answered"))
            order = {START: 0, STOP: 2}
            requests.sort(key=lambda r: (order.get(r.status, 1), r.item or 0))
        legs.append(LegView(
            id=leg_id, direction=leg.direction, port=leg.port, pport=leg.pport, cui=leg.cui,
            cli=leg.cli, dialled=leg.dialled, start=start, answer=answer, stop=stop, cause=cause,
            radius=tuple(requests),
        ))
    for leg_id, requests in sorted(spooled.items()):  # legs the replay did not produce
        legs.append(LegView(id=leg_id, direction="", port=None, pport=None, cui="", cli="", dialled="",
                            start=None, answer=None, stop=None, cause="", radius=tuple(requests)))
    return CallWhole(record=record, events=events, cdrs=tuple(cdrs), legs=tuple(legs), radius=radius)


def _cdrs_of(call_id: str):
    from cdrd.interfaces import CdrQuery

    return CdrQuery(call=call_id, limit=1000, sort="written")


def call_whole_json(whole: CallWhole) -> dict:
    return {
        "record": call_json(whole.record),
        "events": [event_json(e) for e in whole.events],
        "cdrs": [cdr_json(c) for c in whole.cdrs],
        "radius": whole.radius,
        "legs": [
            {
                "id": leg.id, "direction": leg.direction, "port": leg.port, "pport": leg.pport,
                "cui": leg.cui, "cli": leg.cli, "dialled": leg.dialled, "start": _rfc(leg.start),
                "answer": _rfc(leg.answer), "stop": _rfc(leg.stop), "cause": leg.cause,
                "requests": [{"status": r.status, "state": r.state, "item": r.item} for r in leg.radius],
            }
            for leg in whole.legs
        ],
    }


def summary_csv_rows(summary: Summary):
    """The summary as CSV, a row at a time (bytes): the header, then per
    group its key, label, totals and link."""
    from cdrd.web.exports import csv_row as _csv_row
    from cdrd.web.exports import spreadsheet_safe

    head = ("group", "key", "label", "calls", "answered", "minutes", "asr_percent", "acd_seconds", "link")
    yield _csv_row(head)
    for line in summary.rows:
        t = totals_json(line.totals)
        yield _csv_row((
            summary.group, spreadsheet_safe(line.key), spreadsheet_safe(line.label), t["calls"],
            t["answered"], t["minutes"], "" if t["asr"] is None else t["asr"],
            "" if t["acd"] is None else t["acd"], line.link,
        ))


#: what each retention kind is called on the dashboard
RETENTION_NAMES = {"events": "Raw events", "log": "Gateway log", "records": "Call records and CDRs"}


async def retention(store, config, zone: ZoneInfo) -> list[dict]:
    """
    What the store keeps, per kind ([retention]): the days (0 = forever)
    and the oldest row held now, with its local day.
    """
    oldest = await store.oldest()
    out = []
    for kind in RETENTION_KINDS:
        days = config.retention.days(kind)
        first = oldest.get(kind)
        out.append({
            "kind": kind, "name": RETENTION_NAMES[kind], "days": days,
            "kept": f"{days} day{'s' if days != 1 else ''}" if days else "forever",
            "oldest": _rfc(first),
            "oldest_day": None if first is None else f"{datetime.fromtimestamp(first / 1000, zone):%Y-%m-%d}",
        })
    return out


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
        check_allowed(request, ())
        gateways = await self.store.gateways()
        return json_response(request, {"gateways": [gateway_json(g) for g in gateways]})

    @app.route("/retention", methods=["GET"])
    async def retention_(self, request):
        check_allowed(request, ())
        kinds = await retention(self.store, self.config, self.zone)
        return json_response(request, {
            "retention": {k.pop("kind"): {f: k[f] for f in ("days", "kept", "oldest", "oldest_day")} for k in kinds},
        })

    @app.route("/log", methods=["GET"])
    async def gateway_log(self, request):
        s = parse_search(request, self.zone, bare_gateway=True, allowed=LOG_PARAMS)
        entries = await self.store.log(
            LogQuery(gateway=s.gateway, since=s.since, until=s.until, limit=s.limit, offset=s.offset)
        )
        return json_response(request, {"entries": [log_json(e) for e in entries]})

    @app.route("/events", methods=["GET"])
    async def events(self, request):
        s = parse_search(request, self.zone, allowed=EVENT_PARAMS)
        events = await self.store.events(
            EventQuery(
                gateway=s.gateway, ref=s.ref, since=s.since, until=s.until,
                limit=s.limit, offset=s.offset,
            )
        )
        return json_response(request, {"events": [event_json(e) for e in events]})

    @app.route("/calls", methods=["GET"])
    async def calls_(self, request):
        s = parse_search(request, self.zone, allowed=CALL_PARAMS)
        result = await self.store.calls(call_query(s))
        return json_response(
            request,
            {
                "total": result.total,
                "filtered": result.filtered,
                # "capped": `filtered` stopped at `counted_up_to` (at least
                # that many match); "all": it is exact
                "total_scope": "capped" if result.capped else "all",
                "counted_up_to": result.filtered if result.capped else None,
                "offset": s.offset,
                "limit": s.limit,
                "records": [call_json(r) for r in result.records],
            },
        )

    @app.route("/totals", methods=["GET"])
    async def totals(self, request):
        s = parse_search(request, self.zone, allowed=CALL_PARAMS - {"limit", "offset", "sort", "order"})
        t = await self.store.call_totals(call_query(s))
        return json_response(request, {
            **totals_json(t),
            # "capped": more than `counted_up_to` calls match, not summed
            "total_scope": "capped" if t.capped else "all",
            "counted_up_to": t.calls if t.capped else None,
        })

    @app.route("/cdrs", methods=["GET"])
    async def cdrs(self, request):
        s = parse_search(request, self.zone, allowed=CDR_PARAMS, sorts=CDR_SORTS)
        q = cdr_query(s, arg(request, "call"), default_sort="start")
        total, cdrs = await self.store.cdrs(q)
        by_cui, scope = await cui_totals(self.store, q, total, cdrs)
        return json_response(request, {
            "total": total,
            "offset": s.offset,
            "limit": s.limit,
            "cdrs": [cdr_json(c) for c in cdrs],
            "cui_totals_scope": scope,
            "cui_totals": [
                {"cui": t.cui, "cdrs": t.cdrs, "answered": t.answered,
                 "minutes": round(t.duration / 60_000, 3)}
                for t in by_cui
            ],
        })

    async def _summary(self, request, *, every: bool = False) -> tuple[Search, Summary]:
        """The search and the summary a request asks for: its page, or with
        `every` every group (the CSV)."""
        s = parse_search(request, self.zone, allowed=SUMMARY_PARAMS, sorts=SUMMARY_SORTS)
        group = arg(request, "group")
        if group not in SUMMARY_GROUPS:
            raise BadParameter(f"group: {group!r} is not one of {', '.join(SUMMARY_GROUPS)}")
        prefix = arg(request, "prefix")
        if prefix is not None:
            if group != "destination":
                raise BadParameter("prefix: only with group=destination")
            prefix = parse_int(prefix, "prefix", 0, 1, 32)
        if every:
            from cdrd.web.exports import EXPORT_MAX

            return s, await call_summary(self.store, self.zone, s, group, prefix, limit=EXPORT_MAX, offset=0)
        return s, await call_summary(self.store, self.zone, s, group, prefix)

    @app.route("/summary", methods=["GET"])
    async def summary(self, request):
        fmt = arg(request, "format") or "json"
        if fmt not in ("json", "csv"):
            raise BadParameter(f"format: {fmt!r} is not json or csv")
        if fmt == "csv":
            return await self._csv(request)
        s, result = await self._summary(request)
        return json_response(request, {
            "group": result.group, "groups": result.groups, "offset": s.offset, "limit": s.limit,
            "rows": [summary_line_json(line) for line in result.rows]})

    @app.route("/summary.csv", methods=["GET"])
    async def summary_csv_(self, request):
        if arg(request, "format") not in (None, "csv"):
            raise BadParameter("format: summary.csv is CSV")
        return await self._csv(request)

    async def _csv(self, request):
        from cdrd.web.exports import stream_summary_csv

        _, result = await self._summary(request, every=True)
        await stream_summary_csv(request, result, f"summary-{result.group}.csv")
        return None

    @app.route("/call", methods=["GET"])
    async def call(self, request):
        check_allowed(request, ("id",))
        call_id = arg(request, "id")
        if call_id is None:
            raise BadParameter("id: missing (a call id, as /api/calls gives)")
        if len(call_id.encode()) > 200:
            raise BadParameter("id: longer than 200 bytes")
        whole = await call_whole(self.store, self.config, call_id, radius="radius" in self.status)
        if whole is None:
            return json_response(request, {"error": f"no call {call_id}"}, 404)
        return json_response(request, call_whole_json(whole))

    @app.route("/calendar", methods=["GET"])
    async def calendar(self, request):
        check_allowed(request, ("gateway", "month"))
        gateway = parse_gateway(arg(request, "gateway"))
        month = parse_month(arg(request, "month"), self.today())
        days = await days_with_records(self.store, self.zone, gateway, month)
        return json_response(
            request,
            {"month": f"{month:%Y-%m}", "days": [d.isoformat() for d in sorted(days)]},
        )

    @app.route("/status", methods=["GET"])
    def status_(self, request):
        check_allowed(request, ())
        open_calls = [
            {"gateway": c.gateway, "boot": c.boot, "ref": c.ref, "begin": _rfc(c.begin), "port": c.port}
            for c in self.open_calls()
        ]
        return json_response(request, {"open_calls": open_calls, "outputs": self.outputs()})

    @app.route("/accounting", methods=["GET"])
    def accounting(self, request):
        check_allowed(request, ())
        status = self.status.get("radius")
        if status is None:
            return json_response(request, {"error": "RADIUS accounting is not configured"}, 404)
        return json_response(request, status())

    @app.route("/", branch=True)
    def unknown(self, request):
        return json_response(
            request, {"error": f"no such API path {request.path.decode('latin-1')}"}, 404
        )
