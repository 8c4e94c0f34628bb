"""
Event scripts: the worked-example form of call-records.md, one event a line.

    # date: 2026-11-22
    75 10:00:00.000 HOOK_OFF port=1
    75 10:00:07.250 TALK info=C(18)%20M(17)
    75 2026-11-22T10:02:07.250 HOOK_ON port=1
    76 - HOOK_OFF port=2

Each line is ``REF TIME TYPE [key=value ...]``.  TIME is a time of day
``HH:MM:SS[.mmm]`` (on the script's date), a full gateway time
``YYYY-MM-DDTHH:MM:SS[.mmm]``, or ``-`` for an event sent without ``t=``
(the server then takes its receive time).  Values are written as on the
wire (``%XX`` escapes).  ``#`` starts a comment; a comment line
``# date: YYYY-MM-DD`` sets the date for the lines after it.  Blank lines
are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from cdrd.gateway.codec import BadPacket, parse_gateway_time, unescape
from cdrd.sim.client import OutgoingEvent

_DATE_HEADER = re.compile(r"#\s*date\s*:\s*(\S+)\s*\Z", re.IGNORECASE)
_DATE = re.compile(r"\d{4}-\d\d-\d\d\Z")
_TIME_OF_DAY = re.compile(r"\d\d:\d\d:\d\d(\.\d{3})?\Z")
_TYPE = re.compile(r"[A-Z][A-Z_]*\Z")
_KEY = re.compile(r"[a-z][a-z0-9_]*\Z")
_BLANKS = " \t\r\n"
_SPLIT = re.compile(r"[ \t]+")


class ScriptError(ValueError):
    """A script line that does not read; says which line and why."""

    def __init__(self, lineno: int, reason: str) -> None:
        super().__init__(f"line {lineno}: {reason}")
        self.lineno = lineno
        self.reason = reason


def _check_date(date: str, lineno: int) -> str:
    if not _DATE.match(date):
        raise ScriptError(lineno, f"bad date {date!r} (want YYYY-MM-DD)")
    try:
        parse_gateway_time(f"{date}T00:00:00")
    except ValueError:
        raise ScriptError(lineno, f"bad date {date!r}") from None
    return date


def parse_script(text: str | Iterable[str], date: str | None = None) -> list[OutgoingEvent]:
    """
    The events of a script, in order.  `date` (YYYY-MM-DD) is the date of
    times of day until a ``# date:`` line sets another; a time of day with
    no date at all is a ScriptError.
    """
    # only LF ends a line, and only ASCII blanks separate: values may hold
    # any other character unescaped, as on the wire
    lines = text.split("\n") if isinstance(text, str) else list(text)
    if date is not None:
        date = _check_date(date, 0)
    events: list[OutgoingEvent] = []
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip(_BLANKS)
        if not line:
            continue
        if line.startswith("#"):
            header = _DATE_HEADER.match(line)
            if header:
                date = _check_date(header.group(1), lineno)
            continue
        line = line.split(" #", 1)[0].strip(_BLANKS)
        parts = _SPLIT.split(line)
        if len(parts) < 3:
            raise ScriptError(lineno, "want REF TIME TYPE [key=value ...]")
        ref_text, when, etype, *fields = parts
        if not ref_text.isdigit():
            raise ScriptError(lineno, f"bad ref {ref_text!r}")
        if not _TYPE.match(etype):
            raise ScriptError(lineno, f"bad type {etype!r}")
        if when == "-":
            t = None
        elif _TIME_OF_DAY.match(when):
            if date is None:
                raise ScriptError(lineno, "time of day without a date (--date or '# date:')")
            t = parse_gateway_time(f"{date}T{when}")
        else:
            try:
                t = parse_gateway_time(when)
            except ValueError:
                raise ScriptError(lineno, f"bad time {when!r}") from None
        pairs: list[tuple[str, str]] = []
        for item in fields:
            key, eq, value = item.partition("=")
            if not eq or not _KEY.match(key) or not value:
                raise ScriptError(lineno, f"bad field {item!r}")
            if key in ("seq", "ref", "type", "t") or any(k == key for k, _ in pairs):
                raise ScriptError(lineno, f"field {key!r} given twice or reserved")
            try:
                pairs.append((key, unescape(value)))
            except BadPacket as e:
                raise ScriptError(lineno, f"{e.reason} in {key!r}") from None
        events.append(OutgoingEvent(int(ref_text), etype, t, tuple(pairs)))
    return events


def format_script(events: Iterable[OutgoingEvent]) -> str:
    """The script of `events`, full times (the inverse of parse_script)."""
    from cdrd.gateway.codec import escape, format_gateway_time

    out = []
    for e in events:
        when = "-" if e.t is None else format_gateway_time(e.t)
        fields = "".join(f" {k}={escape(v)}" for k, v in e.fields)
        out.append(f"{e.ref} {when} {e.type}{fields}\n")
    return "".join(out)
