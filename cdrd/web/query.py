"""
The query parameters shared by the JSON API and the pages.

`from` and `to` are dates in the configured zone, inclusive; they become
[since, until) in ms UTC for the store: since = local midnight starting
`from`, until = local midnight starting the day after `to`.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from attrs import frozen

from cdrd.config import GATEWAY_ID, gateway_key, split_gateway_key
from cdrd.interfaces import CALL_FILTERS, CallQuery, CdrQuery

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


def parse_search(
    request,
    zone: ZoneInfo,
    *,
    default_day: date | None = None,
    default_limit: int = 100,
    bare_gateway: bool = False,
) -> Search:
    """
    Read gateway, from, to, filter, limit, offset, cui, ref.  With
    `default_day`, a missing from/to means that day (the pages open on today);
    without, a missing bound is open.
    """
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
    )


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


def call_query(s: Search, limit=None, offset=None, after=None) -> CallQuery:
    """The store's CallQuery for a parsed search (limit/offset/after override)."""
    return CallQuery(
        gateway=s.gateway,
        since=s.since,
        until=s.until,
        filter=s.filter,
        limit=s.limit if limit is None else limit,
        offset=s.offset if offset is None else offset,
        after=after,
    )


def cdr_query(s: Search, call=None, limit=None, offset=None, after=None) -> CdrQuery:
    """The store's CdrQuery for a parsed search (limit/offset/after override)."""
    return CdrQuery(
        gateway=s.gateway,
        since=s.since,
        until=s.until,
        cui=s.cui,
        call=call,
        limit=s.limit if limit is None else limit,
        offset=s.offset if offset is None else offset,
        after=after,
    )
