"""
The query parameters shared by the JSON API and the pages.

`from` and `to` are dates in the configured zone, inclusive; they become
[since, until) in ms UTC for the store: since = local midnight starting
`from`, until = local midnight starting the day after `to`.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from attrs import evolve, frozen

from cdrd.interfaces import CALL_FILTERS, CALL_SORTS, CallQuery, CdrQuery
from cdrd.store.schema import DAY_MS
from cdrd.values import GATEWAY_ID, gateway_key, split_gateway_key

MAX_LIMIT = 1000
#: The page's words for the filters, in the seed report's order.
FILTER_LABELS = {
    "all": "All",
    "in": "Call In",
    "out": "Call Out",
    "pstn": "Only PSTN",
    "out-failed": "Call Out Failed",
    "in-reject": "Call In Reject",
    "other": "Other",
}
assert tuple(FILTER_LABELS) == CALL_FILTERS


class BadParameter(ValueError):
    """A query parameter the API answers with 400 {"error": ...}."""


@frozen
class Search:
    """One parsed search: what the report, the CDR page and the API share."""

    gateway: str | None = None
    day_from: date | None = None
    day_to: date | None = None
    since: int | None = None
    until: int | None = None
    filter: str = "all"
    limit: int = 100
    offset: int = 0
    cui: str | None = None
    ref: int | None = None
    #: search terms (issue 14): see parse_search
    number: str | None = None
    min_duration: int | None = None  # seconds
    max_duration: int | None = None
    time_from: time | None = None
    time_to: time | None = None  # time(0) with time_from: the day's end ("24:00")
    #: the time-of-day range as [since, until) ms per day of from..to
    windows: tuple[tuple[int, int], ...] | None = None
    cause: str | None = None
    sort: str | None = None  # None: the store's default order
    descending: bool = False

    def params(self, *, paging: bool = False) -> dict[str, str]:
        """The query parameters that give this search again (the filter
        "all", and limit/offset unless `paging`, left out): what a page
        links to or a summary row carries."""
        out = {}
        if self.gateway is not None:
            out["gateway"] = self.gateway
        if self.day_from is not None:
            out["from"] = self.day_from.isoformat()
        if self.day_to is not None:
            out["to"] = self.day_to.isoformat()
        if self.filter != "all":
            out["filter"] = self.filter
        for name in ("number", "cui", "cause"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        for name in ("min_duration", "max_duration"):
            if getattr(self, name) is not None:
                out[name] = str(getattr(self, name))
        if self.time_from is not None:
            out["time_from"] = f"{self.time_from:%H:%M}"
        if self.time_to is not None:
            out["time_to"] = f"{self.time_to:%H:%M}" if self.time_to != time(0) or self.time_from is None else "24:00"
        if self.sort is not None:
            out["sort"] = self.sort
        if self.descending:
            out["order"] = "desc"
        if paging:
            out["limit"] = str(self.limit)
            out["offset"] = str(self.offset)
        return out


#: the parameters each search takes (`allowed` of parse_search)
PAGING = frozenset({"gateway", "from", "to", "limit", "offset"})
SEARCH_TERMS = frozenset({
    "number", "cui", "min_duration", "max_duration", "time_from", "time_to", "cause",
    "sort", "order",
})
CALL_PARAMS = PAGING | SEARCH_TERMS | {"filter"}
CDR_PARAMS = PAGING | SEARCH_TERMS | {"call"}
EVENT_PARAMS = PAGING | {"ref"}
LOG_PARAMS = PAGING
#: a summary's sort and order are of its groups (SUMMARY_SORTS), and
#: limit and offset page them
SUMMARY_PARAMS = CALL_PARAMS | {"group", "prefix", "format"}
#: days a time-of-day search may span (one range per day)
MAX_WINDOW_DAYS = 400


def arg(request, name: str) -> str | None:
    """The last value of a query parameter, decoded; '' counts as absent."""
    values = request.args.get(name.encode())
    if not values:
        return None
    try:
        value = values[-1].decode("utf-8")
    except UnicodeDecodeError:
        raise BadParameter(f"{name}: not UTF-8") from None
    value = value.strip()
    return value or None


def parse_day(text: str, name: str) -> date:
    try:
        if len(text) != 10:
            raise ValueError
        return date.fromisoformat(text)
    except ValueError:
        raise BadParameter(f"{name}: {text!r} is not a date YYYY-MM-DD") from None


def day_start_ms(day: date, zone: ZoneInfo) -> int:
    """Milliseconds UTC of local midnight starting `day` in `zone`."""
    return round(datetime(day.year, day.month, day.day, tzinfo=zone).timestamp() * 1000)


def zone_shift(zone: ZoneInfo, since: int, until: int) -> tuple[tuple[int, int], ...]:
    """
    The UTC offsets (ms) of `zone` over [since, until) as IStore.call_summary's
    `shift`: ((since, offset), (change, offset), ...), a change where
    the offset changes (daylight saving time; found a day at a time, then
    to the ms).
    """
    def offset(ms: int) -> int:
        return round(datetime.fromtimestamp(ms / 1000, zone).utcoffset().total_seconds() * 1000)

    out = [(since, offset(since))]
    t = since
    while t < until:
        nxt = min(t + DAY_MS, until)
        if offset(nxt) != out[-1][1]:
            lo, hi = t, nxt  # offset(lo) is the last one, offset(hi) the next
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if offset(mid) == out[-1][1]:
                    lo = mid
                else:
                    hi = mid
            out.append((hi, offset(hi)))
        t = nxt
    return tuple(out)


def local_day(ms: int, zone: ZoneInfo) -> date:
    return datetime.fromtimestamp(ms / 1000, zone).date()


def parse_gateway(text: str | None, *, bare_id: bool = False) -> str | None:
    """A gateway key, normalised (MAC upper case); a bare id where allowed."""
    if text is None:
        return None
    parts = split_gateway_key(text)
    if parts is not None:
        return gateway_key(*parts)
    if bare_id and GATEWAY_ID.match(text):
        return text
    raise BadParameter(f"gateway: {text!r} is not a key like 8200_000C2A020082")


def parse_int(text: str | None, name: str, default: int, lo: int, hi: int) -> int:
    if text is None:
        return default
    if not text.isdigit() or len(text) > 12:
        raise BadParameter(f"{name}: {text!r} is not a whole number")
    value = int(text)
    if not lo <= value <= hi:
        raise BadParameter(f"{name}: {value} is not between {lo} and {hi}")
    return value


def check_allowed(request, allowed: Collection[str]) -> None:
    """BadParameter("unknown parameter: cli") for the first parameter not in `allowed`."""
    for raw in request.args:
        name = raw.decode("utf-8", "replace")
        if name not in allowed:
            raise BadParameter(f"unknown parameter: {name[:64]}")


def parse_time_of_day(text: str | None, name: str) -> time | None:
    """HH:MM (00:00-24:00; 24:00 is the day's end, time(0) as time_to)."""
    if text is None:
        return None
    if len(text) == 5 and text[2] == ":" and text[:2].isdigit() and text[3:].isdigit():
        if text == "24:00":
            return time(0)
        hour, minute = int(text[:2]), int(text[3:])
        if hour < 24 and minute < 60:
            return time(hour, minute)
    raise BadParameter(f"{name}: {text!r} is not a time of day HH:MM")


def time_windows(
    day_from: date, day_to: date, start: time | None, end: time | None, zone: ZoneInfo
) -> tuple[tuple[int, int], ...]:
    """
    [since, until) ms UTC of the time of day start..end on every local day of
    day_from..day_to (start None: midnight; end None or 00:00: the next
    midnight; end before start: the range runs over midnight).
    """
    start = start or time(0)
    out = []
    day = day_from
    while day <= day_to:
        a = datetime.combine(day, start, zone)
        if end is None or end == time(0):
            b = datetime.combine(day + timedelta(days=1), time(0), zone)
        elif end > start:
            b = datetime.combine(day, end, zone)
        elif end < start:  # over midnight
            b = datetime.combine(day + timedelta(days=1), end, zone)
        else:
            b = a  # start == end: an empty range
        lo, hi = round(a.timestamp() * 1000), round(b.timestamp() * 1000)
        if lo < hi:
            out.append((lo, hi))
        day += timedelta(days=1)
    return tuple(out)


def parse_search(
    request,
    zone: ZoneInfo,
    *,
    default_day: date | None = None,
    default_limit: int = 100,
    bare_gateway: bool = False,
    allowed: Collection[str] | None = None,
    sorts: Collection[str] = CALL_SORTS,
) -> Search:
    """
    Read gateway, from, to, filter, limit, offset, cui, ref and the search
    terms number, min_duration, max_duration (seconds of talk), time_from,
    time_to (HH:MM local), cause, sort (one of `sorts`), order (asc|desc).
    With `default_day`, a missing from/to means that day (the pages open on
    today); without, a missing bound is open.  With `allowed`, any other
    parameter is BadParameter("unknown parameter: <name>").
    """
    if allowed is not None:
        check_allowed(request, allowed)
    gateway = parse_gateway(arg(request, "gateway"), bare_id=bare_gateway)
    raw_from, raw_to = arg(request, "from"), arg(request, "to")
    day_from = parse_day(raw_from, "from") if raw_from else None
    day_to = parse_day(raw_to, "to") if raw_to else None
    if default_day is not None:
        if day_from is None and day_to is None:
            day_from = day_to = default_day
        day_from = day_from or day_to
        day_to = day_to or day_from
    if day_from and day_to and day_from > day_to:
        raise BadParameter(f"from: {day_from} is after to: {day_to}")
    filt = arg(request, "filter") or "all"
    if filt not in CALL_FILTERS:
        raise BadParameter(f"filter: {filt!r} is not one of {', '.join(CALL_FILTERS)}")
    cui = arg(request, "cui")
    if cui is not None and len(cui.encode()) > 64:
        raise BadParameter("cui: longer than 64 bytes")
    ref = arg(request, "ref")
    number = _short(arg(request, "number"), "number")
    cause = _short(arg(request, "cause"), "cause")
    min_duration = max_duration = None
    if arg(request, "min_duration") is not None:
        min_duration = parse_int(arg(request, "min_duration"), "min_duration", 0, 0, 10**7)
    if arg(request, "max_duration") is not None:
        max_duration = parse_int(arg(request, "max_duration"), "max_duration", 0, 0, 10**7)
    if min_duration is not None and max_duration is not None and min_duration > max_duration:
        raise BadParameter(f"min_duration: {min_duration} is more than max_duration: {max_duration}")
    time_from = parse_time_of_day(arg(request, "time_from"), "time_from")
    time_to = parse_time_of_day(arg(request, "time_to"), "time_to")
    if time_from == time(0) and arg(request, "time_from") == "24:00":
        raise BadParameter("time_from: 24:00 is not a start time")
    windows = None
    if time_from is not None or time_to is not None:
        name = "time_from" if time_from is not None else "time_to"
        if day_from is None or day_to is None:
            raise BadParameter(f"{name}: needs from and to (the days it applies to)")
        if (day_to - day_from).days >= MAX_WINDOW_DAYS:
            raise BadParameter(f"{name}: from..to spans more than {MAX_WINDOW_DAYS} days")
        windows = time_windows(day_from, day_to, time_from, time_to, zone)
    sort = arg(request, "sort")
    if sort is not None and sort not in sorts:
        raise BadParameter(f"sort: {sort!r} is not one of {', '.join(sorts)}")
    order = arg(request, "order") or "asc"
    if order not in ("asc", "desc"):
        raise BadParameter(f"order: {order!r} is not asc or desc")
    return Search(
        gateway=gateway,
        day_from=day_from,
        day_to=day_to,
        since=day_start_ms(day_from, zone) if day_from else None,
        until=day_start_ms(day_to + timedelta(days=1), zone) if day_to else None,
        filter=filt,
        limit=parse_int(arg(request, "limit"), "limit", default_limit, 1, MAX_LIMIT),
        offset=parse_int(arg(request, "offset"), "offset", 0, 0, 10**9),
        cui=cui,
        ref=parse_int(ref, "ref", 0, 0, 2**31) if ref is not None else None,
        number=number,
        min_duration=min_duration,
        max_duration=max_duration,
        time_from=time_from,
        time_to=time_to,
        windows=windows,
        cause=cause,
        sort=sort,
        descending=order == "desc",
    )


def _short(text: str | None, name: str) -> str | None:
    if text is not None and len(text.encode()) > 64:
        raise BadParameter(f"{name}: longer than 64 bytes")
    return text


def parse_month(text: str | None, default: date) -> date:
    """`month=YYYY-MM` as the first of that month; `default`'s month if absent."""
    if text is None:
        return default.replace(day=1)
    try:
        if len(text) != 7:
            raise ValueError
        return datetime.strptime(text, "%Y-%m").date()
    except ValueError:
        raise BadParameter(f"month: {text!r} is not YYYY-MM") from None


async def days_with_records(store, zone: ZoneInfo, gateway: str | None, month: date) -> set[date]:
    """The local days of `month` on which a record of `gateway` (None: any) begins."""
    nxt = (month + timedelta(days=32)).replace(day=1)
    quarters = await store.call_quarters(
        gateway, day_start_ms(month, zone), day_start_ms(nxt, zone)
    )
    return {local_day(q, zone) for q in quarters}


def call_query(s: Search, limit=None, offset=None, after=None, *, keyset: bool = False) -> CallQuery:
    """The store's CallQuery for a parsed search (limit/offset/after override).
    With `after` or `keyset` (every chunk of an export, the first too) the
    order is begin ascending, as keyset paging needs, whatever `sort` says."""
    keyset = keyset or after is not None
    return CallQuery(
        gateway=s.gateway,
        since=s.since,
        until=s.until,
        filter=s.filter,
        limit=s.limit if limit is None else limit,
        offset=s.offset if offset is None else offset,
        after=after,
        number=s.number,
        cui=s.cui,
        min_talk=None if s.min_duration is None else s.min_duration * 1000,
        max_talk=None if s.max_duration is None else s.max_duration * 1000,
        windows=s.windows,
        cause=s.cause,
        sort="begin" if keyset else (s.sort or "begin"),
        descending=False if keyset else s.descending,
    )


def cdr_query(
    s: Search, call=None, limit=None, offset=None, after=None, *,
    default_sort: str = "written", keyset: bool = False,
) -> CdrQuery:
    """
    The store's CdrQuery for a parsed search (limit/offset/after override).
    The order is the search's `sort`, else `default_sort` ("written", the
    billing feed's order, or "start" as the API and the billing page show
    them); with `after` or `keyset` (every chunk of an export) written
    order, as keyset paging needs.
    """
    keyset = keyset or after is not None
    return CdrQuery(
        gateway=s.gateway,
        since=s.since,
        until=s.until,
        cui=s.cui,
        call=call,
        limit=s.limit if limit is None else limit,
        offset=s.offset if offset is None else offset,
        after=after,
        number=s.number,
        min_duration=None if s.min_duration is None else s.min_duration * 1000,
        max_duration=None if s.max_duration is None else s.max_duration * 1000,
        windows=s.windows,
        cause=s.cause,
        sort="written" if keyset else (s.sort or default_sort),
        descending=False if keyset else s.descending,
    )


#: The per-CUI totals beside the billing CDRs cover every CUI of the search
#: while it matches at most this many CDRs; beyond that, the CUIs of the
#: page shown (a month of every gateway is half a million CDRs: summing
#: them all on every page turn would cost seconds; docs/web.md).
CUI_TOTALS_ALL = 10_000


async def cui_totals(store, query: CdrQuery, total: int, page) -> tuple[list, str]:
    """
    The per-CUI totals of a CDR search whose count is `total` and whose
    shown page is `page`, and their scope: "all" (every CUI of the search)
    or "page" (the CUIs on `page`, each over the whole search).
    """
    if total <= CUI_TOTALS_ALL:
        return await store.cui_totals(query), "all"
    return await store.cui_totals(evolve(query, cuis=sorted({c.cui for c in page}))), "page"
