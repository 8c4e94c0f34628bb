"""
Values as JSON and as text for the pages: times in the configured zone,
durations HH:MM:SS (the templates escape them: cdrd.web.views).
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from cdrd.values import (
    CallEvent,
    CallRecord,
    Cdr,
    GatewayState,
    LogEntry,
    call_id,
    hhmmss,
    rfc3339,
)

#: the type-specific fields of an event the API always names (null if absent)
EVENT_FIELDS = (
    "port",
    "pport",
    "digits",
    "cli",
    "info",
    "to",
    "by",
    "cause",
    "cui",
    "with",
    "role",
)
_INT_FIELDS = {"port", "pport", "with"}
#: fields the live page shows in their own columns; the rest go to Info
_OWN_COLUMNS = {"port", "pport", "digits", "cli", "info"}


def ts(ms: int | None) -> str | None:
    return None if ms is None else rfc3339(ms)


def secs(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000


class Clocks:
    """Local time text in one zone."""

    def __init__(self, zone: ZoneInfo):
        self.zone = zone

    def dt(self, ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, self.zone)

    def date(self, ms: int | None) -> str:
        return "" if ms is None else f"{self.dt(ms):%Y-%m-%d}"

    def time(self, ms: int | None) -> str:
        return "" if ms is None else f"{self.dt(ms):%H:%M:%S}"

    def time_ms(self, ms: int | None) -> str:
        return "" if ms is None else f"{self.dt(ms):%H:%M:%S}.{ms % 1000:03d}"

    def datetime(self, ms: int | None) -> str:
        return "" if ms is None else f"{self.dt(ms):%Y-%m-%d %H:%M:%S}"


# -- JSON ----------------------------------------------------------------------


def gateway_json(g: GatewayState) -> dict:
    return {
        "key": g.key,
        "id": g.id,
        "mac": g.mac,
        "online": g.online,
        "peer": g.peer,
        "fxs": g.fxs,
        "fxo": g.fxo,
        "isdn": g.isdn,
        "callref": g.callref,
        "login": ts(g.login),
        "skew_ms": g.skew_ms,
        "last_heard": ts(g.last_heard),
        "firmware": g.firmware,
        "boot": g.boot,
    }


def log_json(e: LogEntry) -> dict:
    return {
        "id": e.id,
        "time": ts(e.time),
        "gateway": e.gateway,
        "mac": e.mac,
        "peer": e.peer,
        "event": e.event,
        "detail": e.detail,
        "count": e.count,
    }


def log_event_text(e: LogEntry) -> str:
    """The log page's Event: "Bad Packet", or for repeats stored as one
    (cdrd.gateway.coalesce) "Bad Packet ×2,597 from 203.0.113.9"."""
    if e.count <= 1:
        return e.event
    host = e.peer.rpartition(":")[0] or e.peer
    return f"{e.event} ×{e.count:,} from {'many addresses' if host == '*' else host}"


def event_json(e: CallEvent) -> dict:
    out = {
        "id": e.id,
        "time": ts(e.time),
        "received": ts(e.received),
        "gateway": e.gateway,
        "boot": e.boot,
        "seq": e.seq,
        "ref": e.ref,
        "type": e.type,
    }
    for name in EVENT_FIELDS:
        value = e.fields.get(name)
        if name in _INT_FIELDS and value is not None and value.isdigit():
            value = int(value)
        out[name] = value
    for name, value in e.fields.items():
        out.setdefault(name, value)
    return out


def event_info(e: CallEvent) -> str:
    """The live page's Info column: `info`, then the other fields as k=v."""
    parts = [e.fields["info"]] if e.fields.get("info") else []
    parts += [f"{k}={v}" for k, v in sorted(e.fields.items()) if k not in _OWN_COLUMNS]
    return " ".join(parts)


def event_row(e: CallEvent, clocks: Clocks) -> dict:
    """What one row of the live page shows (the JSON of its SSE message)."""
    return {
        "id": e.id,
        "time": clocks.datetime(e.time) + f".{e.time % 1000:03d}",
        "ref": e.ref,
        "port": e.fields.get("port", ""),
        "type": e.type,
        "digits": e.fields.get("digits", ""),
        "cli": e.fields.get("cli", ""),
        "info": event_info(e),
        "pport": e.fields.get("pport", ""),
        "call": call_id(e.gateway, e.boot, e.ref),  # the Call-Ref's link: /call?id=
    }


def call_json(r: CallRecord) -> dict:
    return {
        "id": r.id,
        "gateway": r.gateway,
        "ref": r.ref,
        "port": r.port,
        "pport": r.pport,
        "notation": r.notation,
        "dialed": r.dialed,
        "begin": ts(r.begin),
        "connect": ts(r.connect),
        "end": ts(r.end),
        "talk": secs(r.talk),
        "pstn_dial": r.pstn_dial,
        "pstn_time": secs(r.pstn_time),
        "cli": r.cli,
        "pstn_cli": r.pstn_cli,
        "cause": r.cause,
        "pstn": r.pstn,
        "boot": r.boot,
    }


def cdr_json(c: Cdr) -> dict:
    return {
        "id": c.id,
        "line": c.line,
        "start": ts(c.start),
        "ringing": secs(c.ringing),
        "duration": secs(c.duration),
        "status": c.status,
        "cui": c.cui,
        "dialled": c.dialled,
        "cli": c.cli,
        "gateway": c.gateway,
        "call": c.call,
        "billed_call": c.billed_call,
    }


REPORT_COLUMNS = (
    "#",
    "Call-Ref",
    "Port",
    "Date",
    "Notation",
    "Dialed",
    "Time",
    "Begin",
    "PSTN Dial",
    "PSTN Time",
    "Caller ID",
    "PSTN Caller ID",
    "End",
    "Cause",
)


def report_cells(n: int, r: CallRecord, clocks: Clocks) -> tuple[str, ...]:
    """One report row as text, in REPORT_COLUMNS order."""
    return (
        str(n),
        str(r.ref),
        "" if r.port is None else str(r.port),
        clocks.date(r.begin),
        r.notation,
        r.dialed,
        hhmmss(r.talk),
        clocks.time(r.begin),
        r.pstn_dial,
        hhmmss(r.pstn_time),
        r.cli,
        r.pstn_cli,
        clocks.time(r.end),
        r.cause,
    )
