"""
The operator pages (docs/web.md, "Pages"): a Klein app of its own, mounted
by WebApp at the root.  Each route reads its search (cdrd.web.query),
asks the store, and hands plain values to its template (views, templates/):
no HTML is written here, so nothing here escapes by hand.

A cell of a table is a Cell (see `cell`): its column's label, its text, and
at most one of href (a link), tag, pill or code; rows are
Row(cells, id=data-id or None).  A new column is one more cell.
"""

from __future__ import annotations

import calendar
import math
from collections import Counter, defaultdict
from datetime import date, timedelta
from urllib.parse import unquote

import attrs
from klein import Klein
from twisted.logger import Logger
from werkzeug.exceptions import NotFound

from cdrd.interfaces import CDR_SORTS as CDR_SORT_KEYS
from cdrd.interfaces import SUMMARY_SORTS, CallTotals, EventQuery, LogQuery
from cdrd.values import hhmmss
from cdrd.web import views
from cdrd.web.api import call_summary, call_whole, retention
from cdrd.web.query import (
    CALL_PARAMS,
    CDR_PARAMS,
    FILTER_LABELS,
    LOG_PARAMS,
    SUMMARY_PARAMS,
    BadParameter,
    arg,
    call_query,
    cdr_query,
    cui_totals,
    day_start_ms,
    days_with_records,
    local_day,
    parse_day,
    parse_gateway,
    parse_int,
    parse_month,
    parse_search,
)
from cdrd.web.render import REPORT_COLUMNS, event_row, log_event_text, report_cells

#: the report's columns and the CallQuery sort key of each (None: not sortable)
REPORT_SORTS = {
    "Call-Ref": "ref",
    "Port": "port",
    "Date": "begin",
    "Notation": "notation",
    "Dialed": "dialed",
    "Time": "talk",
    "Begin": "begin",
    "PSTN Dial": "pstn_dial",
    "Caller ID": "cli",
    "PSTN Caller ID": "pstn_cli",
    "End": "end",
    "Cause": "cause",
    "Gateway": "gateway",
}
#: report columns whose value is a number: a link to the search for it
NUMBER_COLUMNS = ("Dialed", "PSTN Dial", "Caller ID", "PSTN Caller ID")
EVENT_COLUMNS = ("Time", "Call-Ref", "#", "Event", "Dialed", "Caller-ID", "Info", "P-Port")
#: what the form of each search page offers beyond gateway and dates
REPORT_FIELDS = ("number", "cui", "duration", "time", "cause")
#: what the search pages carry along in hidden inputs
REPORT_HIDDEN = ("filter", "sort", "order", "limit")
#: the parameters a search page keeps in its links (the form's, and these)
SEARCH_PARAMS = (
    "gateway", "from", "to", "number", "cui", "min_duration", "max_duration",
    "time_from", "time_to", "cause", "filter", "sort", "order", "limit",
)
SUMMARY_GROUPS = (
    ("caller", "Caller"),
    ("destination", "Destination"),
    ("cui", "CUI"),
    ("gateway", "Gateway"),
    ("hour", "Hour"),
    ("day", "Day"),
)
#: gateways per page of the dashboard's table
GATEWAY_PAGE = 50
#: the dashboard's ranges: (key, label, bucket ms, buckets)
RANGES = (
    ("24h", "24 h", 3_600_000, 24),
    ("7d", "7 d", 6 * 3_600_000, 28),
    ("30d", "30 d", 86_400_000, 30),
)
#: at most this many gateway log entries are counted for the dashboard
#: (bad packets, restarts): the page costs the same after a flood
LOG_SCAN = 20_000
#: the gateway session closes a connection after this many bad packets in a
#: minute (cdrd.gateway.session): that many in the last minute is "flooding"
FLOOD_WINDOW = 60_000
#: an unsent RADIUS request older than this is a warning, then a problem
RADIUS_BEHIND_S = 60
RADIUS_LATE_S = 600


@attrs.frozen
class Cell:
    """One cell of a table: its column's label, its text, and at most one of
    a link, a tag (CSS class), a pill (on/off/warn), code, or links (label,
    href); `strong` follows in bold.  A class, not a dict: the template reads
    its attributes at the first try (a dict's missing keys cost exceptions)."""

    label: str
    text: str = ""
    cls: str = ""
    href: str | None = None
    tag: str | None = None
    pill: str | None = None
    code: bool = False
    links: tuple = ()
    strong: str | None = None


@attrs.frozen
class Row:
    cells: list
    id: object = None
    cls: str = ""


def cell(label: str, text="", **kw) -> Cell:
    return Cell(label, "" if text is None else str(text), **kw)


def form_values(request, names=SEARCH_PARAMS, **defaults) -> dict:
    """The request's search as typed (for the form and its links); `defaults`
    where a parameter is absent.  Undecodable values count as absent."""
    out = {}
    for name in names:
        try:
            value = arg(request, name)
        except BadParameter:
            value = None
        out[name] = value if value is not None else defaults.get(name)
    for name, value in defaults.items():
        out.setdefault(name, value)
    return out


def paging(path: str, params: dict, offset: int, limit: int, shown: int, total: int | None,
           more_than: bool = False):
    """Previous / Next and the page numbers around this one, the first and
    the last (None: one page holds it all); `more_than`: `total` is a
    count's cap, more match (the pages go up to it)."""
    if total is not None and total <= limit and offset == 0 and not more_than:
        return None
    current = offset // limit + 1
    if total is not None:
        last = max(1, math.ceil(total / limit))
        more = offset + shown < total
    else:
        last = current + (1 if shown >= limit else 0)
        more = shown >= limit

    def href(n):
        return views.url(path, params, offset=(n - 1) * limit or None)

    numbers = sorted({1, last, *range(max(1, current - 2), min(last, current + 2) + 1)})
    pages, before = [], 0
    for n in numbers:
        if n - before > 1:
            pages.append((None, None))
        pages.append((n, href(n)))
        before = n
    where = f"{offset + 1 if shown else offset}–{offset + shown}"
    if total is not None:
        where += f" of {total}" + ("+" if more_than else "")
    return {
        "prev": views.url(path, params, offset=max(0, offset - limit) or None) if offset > 0 else None,
        "next": views.url(path, params, offset=offset + limit) if more else None,
        "pages": pages,
        "current": current,
        "last": last,
        "where": where,
    }


def _search_params(form: dict, names=SEARCH_PARAMS) -> dict:
    return {k: form.get(k) for k in names if form.get(k)}


class Pages:
    """The HTML pages over one WebApp (its store, clocks, gateways)."""

    app = Klein()
    log = Logger()

    def __init__(self, web):
        self.web = web

    # -- shared ---------------------------------------------------------------

    def common(self, page: str, title: str) -> dict:
        return {"page": page, "title": title, "zone": self.web.config.server.timezone}

    def render(self, request, template: str, page: str, title: str, **context) -> bytes:
        return views.render(request, template, **self.common(page, title), **context)

    @app.handle_errors(BadParameter)
    async def bad_parameter(self, request, failure):
        return await self.web.error_page(request, 400, "Bad request", str(failure.value))

    @app.handle_errors(NotFound)
    async def not_found(self, request, failure):
        path = unquote(request.path.decode("utf-8", "replace"))
        return await self.web.error_page(
            request, 404, "Not found", f"There is no page at {path}."
        )

    # -- the CDR Report ---------------------------------------------------------

    @app.route("/report", methods=["GET"])
    async def report(self, request):
        web = self.web
        s = parse_search(request, web.zone, default_day=web.today(), allowed=CALL_PARAMS | {"month"})
        month = parse_month(arg(request, "month"), s.day_from)
        query = call_query(s)
        result = await web.store.calls(query)
        if result.capped:
            # its totals stop at the same cap: no second read of the postings
            totals = CallTotals(calls=result.filtered, capped=True)
        else:
            totals = await web.store.call_totals(query)
        days = await days_with_records(web.store, web.zone, s.gateway, month)
        form = form_values(request, **{"from": s.day_from.isoformat(), "to": s.day_to.isoformat()})
        params = _search_params(form)
        every_gateway = s.gateway is None and result.records
        columns = [(c, REPORT_SORTS.get(c)) for c in REPORT_COLUMNS]
        if every_gateway:
            columns.append(("Gateway", "gateway"))
        dates = {"from": form["from"], "to": form["to"]}
        rows = []
        for i, r in enumerate(result.records):
            cells = []
            for label, text in zip(REPORT_COLUMNS, report_cells(s.offset + i + 1, r, web.clocks), strict=True):
                if label == "Notation":
                    cells.append(cell(label, text, tag=views._css_class(text)))
                elif label == "Call-Ref":
                    cells.append(cell(label, text, href=views.url("/call", id=r.id)))
                elif label in NUMBER_COLUMNS and text:
                    number = text.split(",")[0].strip() if label == "Dialed" else text
                    cells.append(cell(label, text, cls="num", href=views.url("/report", dates, number=number)))
                elif label in NUMBER_COLUMNS:
                    cells.append(cell(label, text, cls="num"))
                elif label == "Cause" and text:
                    cells.append(cell(label, text, cls="cause", href=views.url("/report", params, cause=text, offset=None)))
                else:
                    cells.append(cell(label, text, cls="cause" if label == "Cause" else ""))
            if every_gateway:
                cells.append(cell("Gateway", r.gateway, href=views.url("/report", params, gateway=r.gateway)))
            rows.append(Row(cells))
        tabs = [
            {"key": key, "label": label, "on": key == s.filter,
             "href": views.url("/report", params, filter=None if key == "all" else key)}
            for key, label in FILTER_LABELS.items()
        ]
        heading = f"{s.gateway or 'All gateways'} · {s.day_from}" + (
            f" – {s.day_to}" if s.day_to != s.day_from else ""
        )
        return self.render(
            request, "report.html", "report", "CDR Report",
            heading=heading, form=form, keys=await web.gateway_keys(),
            fields=REPORT_FIELDS, hidden=REPORT_HIDDEN, tabs=tabs,
            links={
                "refresh": views.url("/report", params, offset=s.offset or None),
                "csv": views.url("/report.csv", params),
                "json": views.url("/api/calls", params, offset=s.offset or None),
                "summary": views.url("/summary", {k: v for k, v in params.items() if k not in ("sort", "order", "limit")}),
            },
            total=result.total, filtered=result.filtered, report_totals=totals,
            calendar=self._calendar(month, days, s, web.today(), form),
            columns=columns, rows=rows,
            sorting=self._sorting("/report", params, s),
            paging=paging("/report", params, s.offset, s.limit, len(rows), result.filtered, result.capped),
        )

    @staticmethod
    def _sorting(path, params, search) -> dict:
        return {
            "path": path,
            "params": params,
            "sort": getattr(search, "sort", None),
            "descending": getattr(search, "descending", False),
        }

    def _calendar(self, month: date, days: set[date], s, today: date, form: dict) -> dict:
        prev_m = (month - timedelta(days=1)).replace(day=1)
        next_m = (month + timedelta(days=32)).replace(day=1)
        base = {"gateway": s.gateway, "filter": None if s.filter == "all" else s.filter}
        keep = {**base, "from": form["from"], "to": form["to"]}
        weeks = []
        for week in calendar.Calendar(0).monthdatescalendar(month.year, month.month):
            row = []
            for d in week:
                cls = []
                if d.month != month.month:
                    cls.append("out")
                if d in days:
                    cls.append("has")
                if s.day_from and s.day_to and s.day_from <= d <= s.day_to:
                    cls.append("sel")
                if d == today:
                    cls.append("today")
                row.append({
                    "day": d.day, "cls": " ".join(cls), "has": d in days,
                    "href": views.url("/report", base, **{"from": d.isoformat(), "to": d.isoformat()}),
                })
            weeks.append(row)
        return {
            "title": f"{month:%B %Y}",
            "prev": views.url("/report", keep, month=f"{prev_m:%Y-%m}"),
            "next": views.url("/report", keep, month=f"{next_m:%Y-%m}"),
            "weeks": weeks,
        }

    # -- the summary ---------------------------------------------------------------

    @app.route("/summary", methods=["GET"])
    async def summary(self, request):
        web = self.web
        s = parse_search(
            request, web.zone, default_day=web.today(), allowed=SUMMARY_PARAMS - {"format"},
            sorts=SUMMARY_SORTS,
        )
        group = arg(request, "group") or "caller"
        if group not in dict(SUMMARY_GROUPS):
            raise BadParameter(f"group: {group!r} is not one of {', '.join(g for g, _ in SUMMARY_GROUPS)}")
        prefix = arg(request, "prefix")
        if prefix is not None:
            if group != "destination":
                raise BadParameter("prefix: only with group=destination")
            prefix = parse_int(prefix, "prefix", 0, 1, 32)
        form = form_values(
            request, (*SEARCH_PARAMS, "group", "prefix"),
            **{"from": s.day_from.isoformat(), "to": s.day_to.isoformat(), "group": group},
        )
        params = _search_params(form, (*SEARCH_PARAMS, "group", "prefix"))
        report_params = {k: v for k, v in params.items() if k not in ("group", "prefix", "sort", "order", "limit")}
        summary = await call_summary(web.store, web.zone, s, group, prefix)
        totals = await web.store.call_totals(call_query(attrs.evolve(s, sort=None, descending=False)))
        rows = []
        for line in summary.rows:
            t = line.totals
            rows.append(Row([
                cell(dict(SUMMARY_GROUPS)[group], line.label, href=line.link),
                cell("Calls", t.calls, href=line.link),
                cell("Answered", t.answered),
                cell("Minutes", views._minutes(t.minutes)),
                cell("ASR", views._percent(t.asr)),
                cell("ACD", views._acd(t.acd)),
            ]))
        # a group by its (other) sort: a new search, from the first page
        tabs = [
            {"key": key, "label": label, "on": key == group,
             "href": views.url("/summary", params, group=key, prefix=None, sort=None, order=None)}
            for key, label in SUMMARY_GROUPS
        ]
        time_groups = group in ("hour", "day")
        # no sort: hours and days in time order, the others busiest first
        sorting = self._sorting("/summary", params, s)
        if s.sort is None:
            sorting.update(sort="key" if time_groups else "calls", descending=not time_groups)
        return self.render(
            request, "summary.html", "summary", "Summary",
            heading=f"by {dict(SUMMARY_GROUPS)[group].lower()} · {s.gateway or 'all gateways'} · {s.day_from}"
            + (f" – {s.day_to}" if s.day_to != s.day_from else ""),
            form=form, keys=await web.gateway_keys(), groups=SUMMARY_GROUPS,
            fields=(*REPORT_FIELDS, "group"), hidden=("filter", "limit", "sort", "order"), tabs=tabs,
            links={
                "csv": views.url("/summary.csv", {k: v for k, v in params.items() if k != "limit"}),
                "report": views.url("/report", report_params),
                "json": views.url("/api/summary", params, offset=s.offset or None),
            },
            summary_totals=totals, groups_count=summary.groups,
            columns=[(dict(SUMMARY_GROUPS)[group], "key"), ("Calls", "calls"), ("Answered", "answered"),
                     ("Minutes", "minutes"), ("ASR", "asr"), ("ACD", "acd")],
            rows=rows, sorting=sorting,
            paging=paging("/summary", params, s.offset, s.limit, len(rows), summary.groups),
        )

    # -- one call whole ---------------------------------------------------------------

    @app.route("/call", methods=["GET"])
    async def call(self, request):
        web = self.web
        call_id = arg(request, "id")
        if call_id is None:
            raise BadParameter("id: the call's id is missing (like 8200_000C2A020082/b1/75)")
        if len(call_id.encode()) > 200:
            raise BadParameter("id: longer than 200 bytes")
        whole = await call_whole(web.store, web.config, call_id, radius="radius" in web.status)
        r = whole.record if whole is not None else None
        record = []
        if r is not None:
            clocks = web.clocks
            day = {"from": clocks.date(r.begin), "to": clocks.date(r.begin)}
            for label, text, href in (
                ("Gateway", r.gateway, views.url("/report", day, gateway=r.gateway)),
                ("Call-Ref", r.ref, None),
                ("Port", "" if r.port is None else r.port, None),
                ("Notation", r.notation, None),
                ("Dialed", r.dialed, views.url("/report", day, number=r.dialed.split(",")[0].strip()) if r.dialed else None),
                ("Caller ID", r.cli, views.url("/report", day, number=r.cli) if r.cli else None),
                ("PSTN Dial", r.pstn_dial, views.url("/report", day, number=r.pstn_dial) if r.pstn_dial else None),
                ("PSTN Caller ID", r.pstn_cli, views.url("/report", day, number=r.pstn_cli) if r.pstn_cli else None),
                ("Begin", clocks.datetime(r.begin), None),
                ("Connect", clocks.datetime(r.connect), None),
                ("End", clocks.datetime(r.end), None),
                ("Talk", hhmmss(r.talk), None),
                ("PSTN Time", hhmmss(r.pstn_time), None),
                ("Cause", r.cause, views.url("/report", day, cause=r.cause) if r.cause else None),
                ("Boot", r.boot, None),
            ):
                record.append({"label": label, "text": "" if text is None else str(text), "href": href})
        events = [self._event_cells(e) for e in (whole.events if whole else ())]
        cdrs = [self._cdr_cells(i + 1, c) for i, c in enumerate(whole.cdrs if whole else ())]
        legs = []
        for leg in whole.legs if whole else ():
            delivery = ", ".join(f"{q.status} {q.state}" for q in leg.radius) or (
                "accounting off" if not whole.radius else "not sent")
            legs.append(Row([
                cell("Leg", leg.id.rsplit("/", 1)[-1]),
                cell("Direction", leg.direction),
                cell("Port", "" if leg.port is None else leg.port),
                cell("CUI", leg.cui),
                cell("Dialled", leg.dialled, cls="num"),
                cell("CLI", leg.cli, cls="num"),
                cell("Start", web.clocks.datetime(leg.start)),
                cell("Answer", web.clocks.time(leg.answer)),
                cell("Stop", web.clocks.time(leg.stop)),
                cell("Cause", leg.cause, cls="cause" if leg.cause else ""),
                cell("RADIUS", delivery, cls="radius"),
            ]))
        gateway = r.gateway if r is not None else call_id.split("/")[0]
        return self.render(
            request, "call.html", "report", f"Call {call_id}", code=200 if whole else 404,
            call_id=call_id, record=record,
            links={"json": views.url("/api/call", id=call_id), "events": f"/gateways/{gateway}/events"},
            event_columns=[(c, None) for c in EVENT_COLUMNS], events=events,
            cdr_columns=[(c, None) for c in CDR_COLUMNS], cdrs=cdrs,
            leg_columns=[(c, None) for c in LEG_COLUMNS],
            legs=legs,
            legs_empty="No leg for this call.",
        )

    # -- billing CDRs ----------------------------------------------------------------

    def _cdr_cells(self, n: int, c) -> dict:
        clocks = self.web.clocks
        day = {"from": clocks.date(c.start), "to": clocks.date(c.start)}
        status = c.status or ""
        return Row([
            cell("#", n),
            cell("Start", clocks.datetime(c.start)),
            cell("Ringing", hhmmss(c.ringing) if c.ringing is not None else ""),
            cell("Duration / status", status or hhmmss(c.duration),
                 cls="cause" if status else "",
                 href=views.url("/cdrs", day, cause=status) if status else None),
            cell("CUI", c.cui, href=views.url("/cdrs", day, cui=c.cui) if c.cui else None),
            cell("Dialled", c.dialled, cls="num", href=views.url("/cdrs", day, number=c.dialled) if c.dialled else None),
            cell("CLI", c.cli, cls="num", href=views.url("/cdrs", day, number=c.cli) if c.cli else None),
            cell("Gateway", c.gateway, href=views.url("/cdrs", day, gateway=c.gateway) if c.gateway else None),
            self._cdr_calls(c),
            cell("FireBrick line", c.line, cls="line", code=True),
        ])

    @staticmethod
    def _cdr_calls(c) -> Cell:
        """The call that created the CDR and, where a transfer made them
        differ, the call whose RADIUS Stop bills it (/api/cdrs "call",
        "billed_call")."""
        if not c.call:
            return cell("Call")
        ref = c.call.rsplit("/", 1)[-1]
        if not c.billed_call or c.billed_call == c.call:
            return cell("Call", ref, href=views.url("/call", id=c.call))
        billed = c.billed_call.rsplit("/", 1)[-1]
        return cell("Call", links=(
            (ref, views.url("/call", id=c.call)),
            (f"billed to {billed}", views.url("/call", id=c.billed_call)),
        ))

    @app.route("/cdrs", methods=["GET"])
    async def cdrs(self, request):
        web = self.web
        s = parse_search(request, web.zone, default_day=web.today(), allowed=CDR_PARAMS, sorts=CDR_SORT_KEYS)
        query = cdr_query(s, default_sort="start")  # billing's columns by start
        total, cdrs = await web.store.cdrs(query)
        per_cui, cui_scope = await cui_totals(web.store, query, total, cdrs)
        form = form_values(request, **{"from": s.day_from.isoformat(), "to": s.day_to.isoformat()})
        params = _search_params(form)
        cui_rows = None
        if per_cui is not None:
            cui_rows = [Row([
                cell("CUI", t.cui or "(none)", href=views.url("/cdrs", params, cui=t.cui or None)),
                cell("CDRs", t.cdrs),
                cell("Answered", t.answered),
                cell("Duration", hhmmss(t.duration)),
                cell("Minutes", views._minutes(t.duration / 60_000)),
            ]) for t in per_cui]
        rows = [self._cdr_cells(s.offset + i + 1, c) for i, c in enumerate(cdrs)]
        heading = f"{s.gateway or 'All gateways'} · {s.day_from}" + (
            f" – {s.day_to}" if s.day_to != s.day_from else ""
        )
        return self.render(
            request, "cdrs.html", "cdrs", "Billing CDRs",
            heading=heading, form=form, keys=await web.gateway_keys(),
            fields=REPORT_FIELDS, hidden=("sort", "order", "limit"),
            total=total,
            links={"csv": views.url("/cdrs.csv", params), "json": views.url("/api/cdrs", params)},
            cui_columns=[(c, None) for c in ("CUI", "CDRs", "Answered", "Duration", "Minutes")],
            cui_totals=cui_rows, cui_scope=cui_scope,
            columns=[(c, CDR_SORTS.get(c)) for c in CDR_COLUMNS], rows=rows,
            sorting={**self._sorting("/cdrs", params, s), "sort": s.sort or "start"},
            paging=paging("/cdrs", params, s.offset, s.limit, len(rows), total),
        )

    # -- the gateway log ------------------------------------------------------------

    @app.route("/log", methods=["GET"])
    async def gateway_log(self, request):
        web = self.web
        s = parse_search(request, web.zone, default_day=web.today(), bare_gateway=True, allowed=LOG_PARAMS)
        entries = await web.store.log(
            LogQuery(gateway=s.gateway, since=s.since, until=s.until, limit=s.limit + 1, offset=s.offset)
        )
        more = len(entries) > s.limit
        entries = entries[: s.limit]
        form = form_values(request, ("gateway", "from", "to", "limit"),
                           **{"from": s.day_from.isoformat(), "to": s.day_to.isoformat()})
        params = _search_params(form, ("gateway", "from", "to", "limit"))
        clocks = web.clocks
        rows = [Row([
            cell("Time", clocks.datetime(e.time)),
            cell("Gateway", e.gateway, href=views.url("/log", params, gateway=e.gateway, offset=None) if e.gateway != "???" else None),
            cell("MAC", e.mac),
            cell("Peer", e.peer),
            cell("Event", log_event_text(e), tag="log " + views._css_class(e.event)),
            cell("Detail", e.detail, cls="detail"),
        ]) for e in entries]
        return self.render(
            request, "log.html", "log", "Gateway log",
            form=form, keys=await web.gateway_keys(),
            columns=[(c, None) for c in ("Time", "Gateway", "MAC", "Peer", "Event", "Detail")],
            rows=rows,
            paging=paging("/log", params, s.offset, s.limit, len(entries), None if more else s.offset + len(entries)),
        )

    # -- live events -------------------------------------------------------------------

    def _event_cells(self, e, with_gateway: bool = False) -> dict:
        row = event_row(e, self.web.clocks)
        values = (row["time"], row["ref"], row["port"], row["type"], row["digits"], row["cli"], row["info"], row["pport"])
        cells = [
            cell(label, v, cls=f"ev-type {views._css_class(v)}" if label == "Event" else "")
            for label, v in zip(EVENT_COLUMNS, values, strict=True)
        ]
        # the call ref opens its call, a number its calls
        cells[1] = attrs.evolve(cells[1], href=views.url("/call", id=row["call"]))
        for i in (4, 5):
            if cells[i].text:
                cells[i] = attrs.evolve(cells[i], href=views.url("/report", number=cells[i].text))
        if with_gateway:
            cells.insert(1, cell("Gateway", e.gateway, href=f"/gateways/{e.gateway}/events"))
        return Row(cells, row["id"])

    @app.route("/gateways/<string:key>/events", methods=["GET"])
    async def gateway_events(self, request, key):
        web = self.web
        key = parse_gateway(key)
        limit = parse_int(arg(request, "limit"), "limit", 100, 1, 1000)
        events = await web.store.events(EventQuery(gateway=key, limit=limit, newest_first=True))
        states = await web.gateway_states()
        state = states.get(key)
        rows = {g["key"]: g for g in await web.gateway_rows(since=web.now_ms() - FLOOD_WINDOW, now=web.now_ms())}
        return self.render(
            request, "events.html", "live", f"Live events {key}",
            key=key, state=state, gw_state=rows[key]["state"] if key in rows else "never seen",
            keys=await web.gateway_keys(),
            stream=f"/gateways/{key}/events/stream" if web.feed is not None else "",
            after=max((e.id or 0 for e in events), default=0),
            columns=[(c, None) for c in EVENT_COLUMNS],
            rows=[self._event_cells(e) for e in events],
            empty="No events stored yet: new ones appear here as the gateway sends them.",
        )

    @app.route("/live", methods=["GET"])
    async def live(self, request):
        """Every gateway's events, newest first, then live."""
        web = self.web
        limit = parse_int(arg(request, "limit"), "limit", 100, 1, 1000)
        events = await web.store.events(EventQuery(limit=limit, newest_first=True))
        return self.render(
            request, "events.html", "live", "Live events",
            key=None, state=None, keys=await web.gateway_keys(),
            stream="/live/stream" if web.feed is not None else "",
            after=max((e.id or 0 for e in events), default=0),
            columns=[(c, None) for c in (EVENT_COLUMNS[0], "Gateway", *EVENT_COLUMNS[1:])],
            rows=[self._event_cells(e, with_gateway=True) for e in events],
            empty="No events stored yet: new ones appear here as the gateways send them.",
        )

    @app.route("/gateways", methods=["GET"])
    async def gateways_index(self, request):
        key = arg(request, "key")
        if key is not None:
            key = parse_gateway(key)
            request.redirect(f"/gateways/{key}/events".encode())
            return b""
        web = self.web
        gw = await web.gateway_rows()
        rows = [Row(id=g["key"], cells=[
            cell("Gateway", g["key"], href=f"/gateways/{g['key']}/events"),
            cell("State", g["state"], pill=g["pill"]),
            cell("Peer", g["peer"]),
            cell("Firmware", g["firmware"]),
            cell("FXS/FXO/ISDN", g["ports"]),
            cell("Clock skew", g["skew"]),
            cell("Last login", g["login"]),
            cell("Last heard", g["heard"]),
            cell("", "", links=(("live", f"/gateways/{g['key']}/events"),
                                ("report", views.url("/report", gateway=g["key"])),
                                ("summary", views.url("/summary", gateway=g["key"])),
                                ("log", views.url("/log", gateway=g["key"])))),
        ]) for g in gw]
        return self.render(
            request, "gateways.html", "gateways", "Gateways",
            online=sum(1 for g in gw if g["state"] in ("online", "flooding")), count=len(gw),
            columns=[(c, None) for c in ("Gateway", "State", "Peer", "Firmware", "FXS/FXO/ISDN", "Clock skew", "Last login", "Last heard", "")],
            rows=rows,
        )

    # -- the dashboard -------------------------------------------------------------------

    @app.route("/", methods=["GET"])
    async def dashboard(self, request):
        web = self.web
        now = web.now_ms()
        rng = self._range(request, now)
        stats = await web.store.call_stats(rng["since"], rng["until"], rng["bucket"])
        by_gw = defaultdict(list)
        for st in stats:
            by_gw[st.gateway].append(st)
        open_calls = web.open_calls() if web.calls is not None else None
        open_by_gw = Counter(c.gateway for c in open_calls or ())
        gws = await web.gateway_rows(since=rng["since"], now=now)
        attempts, answered, asr, acd = _asr_acd(stats)
        for g in gws:
            own = by_gw.get(g["key"], ())
            g["open"] = open_by_gw.get(g["key"], 0)
            g["calls"] = sum(st.calls for st in own)
            a, n, g["asr"], g["acd"] = _asr_acd(own)
            g["asr_value"] = n / a if a else -1
        gw = self._gateway_table(request, gws, rng)
        open_rows = [Row([
            cell("Gateway", c.gateway, href=f"/gateways/{c.gateway}/events"),
            cell("Call-Ref", c.ref),
            cell("Port", "" if c.port is None else c.port),
            cell("Begin", web.clocks.datetime(c.begin)),
            cell("Age", hhmmss(now - c.begin)),
        ]) for c in (open_calls or [])[:50]]
        return self.render(
            request, "dashboard.html", "dashboard", "Dashboard",
            now_text=web.clocks.datetime(now),
            cards={
                "online": sum(1 for g in gws if g["state"] in ("online", "flooding")),
                "count": len(gws),
                "open": "–" if open_calls is None else len(open_calls),
                "calls": sum(st.calls for st in stats),
                "asr": asr, "acd": acd, "answered": answered, "attempts": attempts,
            },
            range=rng,
            charts=_charts(stats, rng, web.clocks),
            gw=gw,
            open_calls=None if open_calls is None else open_rows,
            open_more=max(0, len(open_calls or ()) - 50),
            open_columns=[(c, None) for c in ("Gateway", "Call-Ref", "Port", "Begin", "Age")],
            outputs=_outputs(web.outputs()),
            retention=await retention(web.store, web.config, web.zone),
            stream="/dashboard/stream" if web.feed is not None else "",
        )

    def _range(self, request, now: int) -> dict:
        web = self.web
        key = arg(request, "range") or "24h"
        choices = {k: (label, bucket, n) for k, label, bucket, n in RANGES}
        if key in choices:
            label, bucket, n = choices[key]
            if bucket >= 86_400_000:
                # whole local days, the last one today
                first = web.today() - timedelta(days=n - 1)
                since = day_start_ms(first, web.zone)
                until = day_start_ms(web.today() + timedelta(days=1), web.zone)
            else:
                since = (now // bucket - n + 1) * bucket
                until = since + n * bucket
            title = f"last {label}"
        elif key == "custom":
            today = web.today()
            raw_from, raw_to = arg(request, "from"), arg(request, "to")
            first = parse_day(raw_from, "from") if raw_from else today
            last = parse_day(raw_to, "to") if raw_to else today
            if first > last:
                raise BadParameter(f"from: {first} is after to: {last}")
            if (last - first).days > 366:
                raise BadParameter("to: a custom range is at most 366 days")
            since = day_start_ms(first, web.zone)
            until = day_start_ms(last + timedelta(days=1), web.zone)
            days = (last - first).days + 1
            bucket = 3_600_000 if days <= 2 else 6 * 3_600_000 if days <= 10 else 86_400_000
            n = math.ceil((until - since) / bucket)
            label = "custom"
            title = f"{first} – {last}" if first != last else f"{first}"
        else:
            raise BadParameter(f"range: {key!r} is not one of 24h, 7d, 30d, custom")
        keep = {k: v for k, v in form_values(request, ("q", "state", "sort", "order")).items() if v}
        return {
            "key": key, "since": since, "until": until, "bucket": bucket, "buckets": n,
            "title": title,
            "bucket_name": {3_600_000: "hour", 6 * 3_600_000: "6 hours", 86_400_000: "day"}[bucket],
            "from": local_day(since, web.zone).isoformat(),
            "to": local_day(until - 1, web.zone).isoformat(),
            "choices": [
                {"key": k, "label": lbl, "on": k == key, "href": views.url("/", keep, range=None if k == "24h" else k)}
                for k, lbl, _, _ in RANGES
            ],
            "params": {"range": None if key == "24h" else key,
                       **({"from": arg(request, "from"), "to": arg(request, "to")} if key == "custom" else {})},
        }

    def _gateway_table(self, request, gws: list[dict], rng: dict) -> dict:
        q = (arg(request, "q") or "").lower()
        state = arg(request, "state") or ""
        if state not in ("", "online", "offline", "flooding", "never seen"):
            raise BadParameter(f"state: {state!r} is not one of online, offline, flooding, never seen")
        sort = arg(request, "sort") or "gateway"
        if sort not in GATEWAY_SORTS:
            raise BadParameter(f"sort: {sort!r} is not one of {', '.join(GATEWAY_SORTS)}")
        order = arg(request, "order") or "asc"
        if order not in ("asc", "desc"):
            raise BadParameter(f"order: {order!r} is not asc or desc")
        page = parse_int(arg(request, "page"), "page", 1, 1, 10**6)
        shown = [
            g for g in gws
            if (not q or q in g["key"].lower() or q in g["peer"].lower())
            and (not state or g["state"] == state)
        ]
        field = GATEWAY_SORTS[sort]
        shown.sort(key=lambda g: (g[field], g["key"]), reverse=order == "desc")
        offset = (page - 1) * GATEWAY_PAGE
        params = {**rng["params"], "q": q or None, "state": state or None,
                  "sort": None if sort == "gateway" else sort, "order": None if order == "asc" else order}
        rows = []
        for g in shown[offset:offset + GATEWAY_PAGE]:
            k = g["key"]
            rows.append(Row(id=k, cells=[
                cell("Gateway", k, href=f"/gateways/{k}/events"),
                cell("Status", g["state"], pill=g["pill"], cls="state"),
                cell("Peer", g["peer"]),
                cell("Last login", g["login"]),
                cell("Last heard", g["heard"], cls="heard"),
                cell("Bad packets", g["bad_packets"], cls="bad-packets" + (" cause" if g["bad_packets"] else "")),
                cell("Restarts", g["restarts"], cls="restarts"),
                cell("Open", g["open"], cls="open"),
                cell(f"Calls {rng['title'].removeprefix('last ')}", g["calls"], cls="calls",
                     href=views.url("/report", gateway=k, **{"from": rng["from"], "to": rng["to"]})),
                cell("ASR", g["asr"]),
                cell("ACD", g["acd"]),
                cell("", "", cls="links", links=(("report", views.url("/report", gateway=k)), ("log", views.url("/log", gateway=k)))),
            ]))
        columns = [
            ("Gateway", "gateway"), ("Status", "state"), ("Peer", "peer"), ("Last login", "login"),
            ("Last heard", "heard"), ("Bad packets", "bad_packets"), ("Restarts", "restarts"), ("Open", "open"),
            (f"Calls {rng['title'].removeprefix('last ')}", "calls"), ("ASR", "asr"), ("ACD", None), ("", None),
        ]
        # the sort links use `sort` and `order` as the report's do
        sorting = {
            "path": "/", "params": {k: v for k, v in params.items() if k not in ("sort", "order")},
            "sort": sort, "descending": order == "desc",
        }
        total = len(shown)
        pg = paging("/", params, offset, GATEWAY_PAGE, len(rows), total)
        if pg is not None:  # the dashboard pages by page number, not offset
            pg = _page_numbers(pg, params, GATEWAY_PAGE)
        return {
            "q": q, "state": state, "count": len(gws), "shown": total,
            "keep": [(k, v) for k, v in rng["params"].items() if v] + ([("sort", sort)] if sort != "gateway" else [])
            + ([("order", order)] if order != "asc" else []),
            "columns": columns, "rows": rows, "sorting": sorting, "paging": pg,
        }


def _page_numbers(pg: dict, params: dict, per_page: int) -> dict:
    def href(n):
        return views.url("/", params, page=n if n > 1 else None)

    return {
        **pg,
        "prev": href(pg["current"] - 1) if pg["prev"] is not None else None,
        "next": href(pg["current"] + 1) if pg["next"] is not None else None,
        "pages": [(n, None if n is None else href(n)) for n, _ in pg["pages"]],
    }


#: the dashboard's gateway table: sort key -> the row's field
GATEWAY_SORTS = {
    "gateway": "key", "state": "state", "peer": "peer", "login": "login", "heard": "heard",
    "bad_packets": "bad_packets", "restarts": "restarts", "open": "open", "calls": "calls",
    "asr": "asr_value",
}
LEG_COLUMNS = (
    "Leg", "Direction", "Port", "CUI", "Dialled", "CLI", "Start", "Answer", "Stop", "Cause", "RADIUS",
)
CDR_COLUMNS = (
    "#", "Start", "Ringing", "Duration / status", "CUI", "Dialled", "CLI", "Gateway", "Call",
    "FireBrick line",
)
CDR_SORTS = {
    "Start": "start", "Ringing": "ringing", "Duration / status": "duration", "CUI": "cui",
    "Dialled": "dialled", "CLI": "cli", "Gateway": "gateway",
}


def _asr_acd(stats) -> tuple[int, int, str, str]:
    """ASR and ACD over CallStats: answered attempts / attempts, mean talk."""
    attempts = sum(s.attempts for s in stats)
    answered = sum(s.attempts_answered for s in stats)
    asr = f"{100 * answered / attempts:.0f}%" if attempts else "–"
    acd = hhmmss(sum(s.talk for s in stats) // answered) if answered else "–"
    return attempts, answered, asr, acd


# -- the charts ---------------------------------------------------------------------


def _charts(stats, rng: dict, clocks) -> dict:
    """Calls per bucket (answered and not), and ASR and ACD per bucket; each
    wide, and narrow for phones (CSS shows one)."""
    n, since, bucket = rng["buckets"], rng["since"], rng["bucket"]
    answered, other = [0] * n, [0] * n
    attempts, att_ans, talk = [0] * n, [0] * n, [0] * n
    for st in stats:
        i = (st.start - since) // bucket
        if 0 <= i < n:
            answered[i] += st.answered
            other[i] += st.calls - st.answered
            attempts[i] += st.attempts
            att_ans[i] += st.attempts_answered
            talk[i] += st.talk
    if bucket >= 86_400_000:
        labels = [clocks.date(since + i * bucket)[5:] for i in range(n)]
    elif bucket > 3_600_000:
        labels = [clocks.date(since + i * bucket)[5:] + " " + clocks.time(since + i * bucket)[:2] + "h" for i in range(n)]
    else:
        labels = [clocks.time(since + i * bucket)[:5] for i in range(n)]
    asr = [att_ans[i] / attempts[i] if attempts[i] else None for i in range(n)]
    acd = [talk[i] / att_ans[i] / 1000 if att_ans[i] else None for i in range(n)]
    out = {}
    for cls, width, height, font in (("wide", 720, 180, 11), ("narrow", 360, 170, 13)):
        out[f"calls_{cls}"] = _bar_chart(answered, other, labels, cls, width, height, font, rng)
        # the rates chart sits in the narrower column beside the bars
        rates_width = width * 2 // 3 if cls == "wide" else width
        out[f"rates_{cls}"] = _line_chart(asr, acd, labels, cls, rates_width, height, font, rng)
    return out


def _nice_top(value: int) -> int:
    top = max(value, 2)
    return top + top % 2  # even: the middle grid line is a whole number


def _text_width(text: str, font: float) -> float:
    return len(text) * font * 0.62


def _label_every(labels, width: float, font: float) -> int:
    need = max((_text_width(t, font) for t in labels), default=0) + font
    return max(1, math.ceil(need / max(width / max(len(labels), 1), 1)))


def _bar_chart(answered, other, labels, cls, W, H, font, rng) -> dict:
    n = len(answered)
    top = _nice_top(max((a + o for a, o in zip(answered, other, strict=True)), default=0))
    # the axis labels' width sets the left margin: "4736" is never cut
    left = _text_width(str(top), font) + font
    right = W - 4
    plot = H - 10
    bw = (right - left) / n
    gap = min(4, bw / 4)
    grid = [
        {"y": f"{H - frac * plot:.1f}", "ty": f"{H - frac * plot + font / 3:.1f}", "label": int(top * frac)}
        for frac in (0, 0.5, 1)
    ]
    every = _label_every(labels, right - left, font)
    bars, xlabels = [], []
    for i in range(n):
        x = left + i * bw + gap / 2
        ha = answered[i] / top * plot
        ho = other[i] / top * plot
        bars.append({
            "x": f"{x:.1f}", "w": f"{bw - gap:.1f}",
            "ya": f"{H - ha:.1f}", "ha": f"{ha:.1f}",
            "yo": f"{H - ha - ho:.1f}", "ho": f"{ho:.1f}",
            "tip": f"{labels[i]}: {answered[i] + other[i]} calls, {answered[i]} answered",
        })
        if i % every == 0:
            xlabels.append({"x": f"{x + (bw - gap) / 2:.1f}", "y": f"{H + 1.4 * font:.0f}", "text": labels[i]})
    return {
        "cls": cls, "width": W, "height": f"{H + 2 * font:.0f}", "font": font,
        "left": f"{left:.0f}", "right": f"{right:.0f}", "lx": f"{left - 4:.0f}", "rx": f"{right + 4:.0f}", "grid": grid, "bars": bars, "lines": [],
        "xlabels": xlabels, "dot": 2.5,
        "label": f"calls per {rng['bucket_name']}, {rng['title']}",
    }


def _line_chart(asr, acd, labels, cls, W, H, font, rng) -> dict:
    n = len(asr)
    top_acd = max((a for a in acd if a is not None), default=0)
    # ACD's scale: whole minutes, at least one
    top_acd = max(60, math.ceil(top_acd / 60) * 60)
    acd_labels = [hhmmss(int(top_acd * frac * 1000))[3:] if top_acd < 3600 else hhmmss(int(top_acd * frac * 1000))
                  for frac in (0, 0.5, 1)]
    left = _text_width("100%", font) + font
    right = W - _text_width(max(acd_labels, key=len), font) - font
    plot = H - 10
    step = (right - left) / n
    grid = [
        {"y": f"{H - frac * plot:.1f}", "ty": f"{H - frac * plot + font / 3:.1f}",
         "label": f"{int(100 * frac)}%", "right_label": acd_labels[i]}
        for i, frac in enumerate((0, 0.5, 1))
    ]
    lines = []
    for name, values, scale, fmt in (
        ("asr", asr, 1.0, lambda v: f"ASR {100 * v:.0f}%"),
        ("acd", acd, top_acd, lambda v: f"ACD {hhmmss(int(v * 1000))}"),
    ):
        dots, points = [], []
        for i, v in enumerate(values):
            if v is None:
                continue
            x = left + (i + 0.5) * step
            y = H - min(v / scale, 1) * plot
            points.append(f"{x:.1f},{y:.1f}")
            dots.append({"x": f"{x:.1f}", "y": f"{y:.1f}", "tip": f"{labels[i]}: {fmt(v)}"})
        lines.append({"cls": f"line-{name}", "points": " ".join(points), "dots": dots})
    every = _label_every(labels, right - left, font)
    xlabels = [
        {"x": f"{left + (i + 0.5) * step:.1f}", "y": f"{H + 1.4 * font:.0f}", "text": labels[i]}
        for i in range(0, n, every)
    ]
    return {
        "cls": f"rates rates-{cls}", "width": W, "height": f"{H + 2 * font:.0f}", "font": font,
        "left": f"{left:.0f}", "right": f"{right:.0f}", "lx": f"{left - 4:.0f}", "rx": f"{right + 4:.0f}", "grid": grid, "bars": [], "lines": lines,
        "xlabels": xlabels, "dot": 2.5 if cls == "wide" else 3,
        "label": f"ASR and ACD per {rng['bucket_name']}, {rng['title']}",
    }


# -- outputs ------------------------------------------------------------------------


def _figure(label, value, level="", note="", fid="") -> dict:
    return {"label": label, "value": value, "level": level, "note": note, "id": fid}


def _card(key, title, subtitle, level, state, figures, **more) -> dict:
    pill = {"ok": "on", "warn": "warn", "bad": "off"}[level]
    return {"key": key, "title": title, "subtitle": subtitle, "level": level, "pill": pill,
            "state": state, "figures": figures, "problem": "", "servers": None, **more}


def _broken(key, title, status) -> dict:
    return _card(key, title, "its status could not be read", "bad", "unknown",
                 [_figure("Error", status.get("error", "?"), "bad")])


def _radius_card(st: dict) -> dict:
    """RADIUS accounting as an operator reads it: is it delivering, how far
    behind is it, and which server answers how fast."""
    if "error" in st:
        return _broken("radius", "RADIUS accounting", st)
    servers = st.get("servers") or []
    depth = st.get("spool_depth", 0) or 0
    age = st.get("oldest_age", 0.0) or 0.0
    down = [s for s in servers if s.get("state") == "down"]
    active = next((s for s in servers if s.get("active")), None)
    if servers and len(down) == len(servers):
        level, state = "bad", "no server answers"
    elif depth and age >= RADIUS_LATE_S:
        level, state = "bad", "behind"
    elif active is not None and active.get("state") == "down":
        level, state = "warn", "failing over"
    elif down or (depth and age >= RADIUS_BEHIND_S):
        level, state = "warn", "behind" if depth and age >= RADIUS_BEHIND_S else "a server is down"
    else:
        level, state = "ok", "delivering"
    age_level = ("bad" if age >= RADIUS_LATE_S else "warn" if age >= RADIUS_BEHIND_S else "") if depth else ""
    figures = [
        _figure("Spool depth", depth, "warn" if depth and age_level else "", "requests waiting", "radius-depth"),
        _figure("Oldest unsent", hhmmss(int(age * 1000)) if depth else "–", age_level, "age", "radius-age"),
        _figure("Retransmissions", st.get("retransmissions", 0), "", "in all"),
        _figure("In flight", st.get("in_flight", 0), "", f"{st.get('open_legs', 0)} open legs"),
        _figure("Answered", st.get("answered", 0), "", f"of {st.get('sent', 0)} sent"),
    ]
    rows = []
    for srv in servers:
        state_s = srv.get("state", "unknown")
        rtt = srv.get("rtt_ms")
        errors = srv.get("send_errors", 0)
        rows.append(Row([
            cell("Server", srv.get("address", ""), strong="(active)" if srv.get("active") else None),
            cell("State", state_s, pill={"up": "on", "down": "off"}.get(state_s, "warn")),
            cell("Round trip", "–" if rtt is None else f"{rtt:.1f} ms"),
            cell("Answered", f"{srv.get('answered', 0)} / {srv.get('sent', 0)}"),
            cell("Retrans.", srv.get("retransmissions", 0)),
            cell("Send errors", errors, cls="cause" if errors else ""),
        ]))
    return _card(
        "radius", "RADIUS accounting", f"interim every {st.get('interim_interval', '?')} s",
        level, state, figures, servers=rows,
        server_columns=[(c, None) for c in ("Server", "State", "Round trip", "Answered", "Retrans.", "Send errors")],
    )


def _syslog_card(st: dict) -> dict:
    """Syslog: connected or not, stalled, how much waits, what was lost."""
    if "error" in st:
        return _broken("syslog", "Syslog", st)
    queued = st.get("queued", 0) or 0
    dropped = st.get("dropped", 0) or 0
    stalled = st.get("stalled") or ""
    error = st.get("last_error") or ""
    connected = bool(st.get("connected"))
    if not connected:
        level, state = "bad", "not connected"
    elif stalled:
        level, state = "bad", "stalled"
    elif dropped or error:
        level, state = "warn", "lost lines" if dropped else "errors"
    else:
        level, state = "ok", "delivering"
    buffer = st.get("buffer") or 0
    figures = [
        _figure("Connected", "yes" if connected else "no", "" if connected else "bad", "", "syslog-connected"),
        _figure("Queued", queued, "warn" if buffer and queued > buffer // 10 else "",
                f"of {buffer} kept" if buffer else "", "syslog-queued"),
        _figure("Dropped", dropped, "bad" if dropped else "", "never sent", "syslog-dropped"),
        _figure("Sent", st.get("sent", 0), "", f"{st.get('resent', 0)} resent"),
    ]
    fmt = st.get("format", "")
    framing = f", {st['framing']}" if st.get("framing") else ""
    subtitle = f"{st.get('target', '')} · {fmt}{framing} · {st.get('facility', '')}"
    return _card("syslog", "Syslog", subtitle, level, state, figures, problem=stalled or error)


def _status_lines(value) -> list[str]:
    if isinstance(value, float):
        return [str(round(value, 3))]
    if isinstance(value, bool) or value is None:
        return [{True: "yes", False: "no", None: "–"}[value]]
    if isinstance(value, dict):
        return [f"{k}: {' '.join(_status_lines(v))}" for k, v in value.items()]
    if isinstance(value, list | tuple):
        return [" ".join(_status_lines(v)) for v in value] or ["–"]
    return [str(value)]


def _outputs(outputs: dict) -> list[dict]:
    cards = []
    for name, st in outputs.items():
        if name == "radius":
            cards.append(_radius_card(st))
        elif name == "syslog":
            cards.append(_syslog_card(st))
        else:  # an output cdrd has no card for: its status as it is
            cards.append({"plain": True, "name": name,
                          "rows": [(k, _status_lines(v)) for k, v in sorted(st.items())]})
    return cards
