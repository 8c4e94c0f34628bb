"""
RADIUS accounting requests for call legs (accounting.md): pure functions.

A request lives in the outbox as a *payload*: JSON of its attributes, in
order, and the time of the event that caused it.  Acct-Delay-Time is not in
the payload: it is computed each time the request is encoded for sending
(`encode_request`), from the payload's event time and the clock.

Payload kinds:

- ``"req"``: an Accounting-Request to send.
- ``"open"``: a marker, never sent: the leg was answered and wants
  Interim-Updates until its Stop (how the set of answered open legs
  survives a restart; see docs/accounting.md).
- ``"dial"``: a note, never sent: the number the caller of an inbound leg
  dialled first, learnt after its Start; its Interim-Updates and Stop
  carry it as Called-Station-Id (see docs/accounting.md).

What the CallService stores on the ingest path is the *facts* of a request
(`spool_facts`): the leg's values, and for a Stop its session time, cause
and CDRs; the sender expands them into attributes (`expand`) when it reads
the outbox, so building attributes, sizing and splitting Stops costs the
ingest path nothing (issue 15).  `spool` is `expand` of `spool_facts`: one
definition of what a request carries.  A payload stored with its attributes
(an older cdrd, `spool`) is sent as it is.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import ipaddress
import os
import struct
import weakref
from collections.abc import Iterable, Sequence
from io import StringIO
from pathlib import Path

import orjson
from attrs import frozen
from pyrad.dictionary import Dictionary
from pyrad.packet import AccountingRequest, AcctPacket
from pyrad.tools import EncodeAttr

from cdrd.values import CallEnd, Cdr, Leg, LegAnswer, LegStart, LegStop, unchecked, unchecked_leg

#: RFC 2865: an attribute holds at most 253 bytes; a vendor attribute (RFC
#: 2865 section 5.26, with its 6 header bytes) at most 247.
MAX_VALUE = 253
MAX_VENDOR_VALUE = 247
#: FreeRADIUS silently drops a packet over 4096 bytes or with more than 200
#: attributes (both limits included: tests/accounting/test_freeradius.py
#: sends packets of exactly 4096 bytes and exactly 200 attributes).
MAX_PACKET = 4096
MAX_ATTRIBUTES = 200
#: The header of a request, and Acct-Delay-Time, added when it is encoded.
HEADER = 20
DELAY_SIZE = 6

START, STOP, INTERIM = "Start", "Stop", "Interim-Update"
#: Payload kinds that are never sent.
OPEN, DIAL = "open", "dial"

#: The dictionaries ship inside the package (package data); the checkout's
#: top-level ``dictionaries/`` is a symlink to them, the copy operators
#: $INCLUDE into FreeRADIUS: one source, nothing to drift.
DEFAULT_DICTIONARIES = importlib.resources.files("cdrd.accounting") / "dictionaries"


def dictionary_dir(path: str | os.PathLike | None = None) -> Path:
    if path is not None:
        return Path(path)
    # a wheel or an install unpacks package data as files: pyrad reads a path
    with importlib.resources.as_file(DEFAULT_DICTIONARIES) as base:
        return Path(base)


def load_dictionary(vendor: int, path: str | os.PathLike | None = None) -> Dictionary:
    """
    pyrad's Dictionary of `path`/dictionary and `path`/dictionary.cdrd, the
    latter with its VENDOR number replaced by `vendor` (config.vendor), so
    an operator changes the number in one place for cdrd.
    """
    base = dictionary_dir(path)
    text = (base / "dictionary.cdrd").read_text()
    lines = []
    for line in text.splitlines():
        tokens = line.split("#", 1)[0].split()
        if tokens[:2] == ["VENDOR", "cdrd"] and len(tokens) >= 3:
            line = f"VENDOR\tcdrd\t{vendor}" + (
                " " + " ".join(tokens[3:]) if tokens[3:] else ""
            )
        lines.append(line)
    return Dictionary(str(base / "dictionary"), StringIO("\n".join(lines) + "\n"))


# -- what a leg's packets carry ----------------------------------------------


TERMINATE_CAUSES = {
    "": "User-Request",  # a hang-up
    "cancelled": "User-Request",
    "divert-loop": "User-Request",  # a recording note: the call was hung up
    "cui-rejected": "User-Request",  # a note: RADIUS refused the caller a CUI
    "replaced": "Port-Unneeded",
    "transferred": "Port-Unneeded",
    "gateway-restart": "NAS-Reboot",
    "stale": "Lost-Service",
}


def terminate_cause(cause: str) -> str:
    """accounting.md: busy, failed, rejected or an event's own cause ->
    Service-Unavailable."""
    return TERMINATE_CAUSES.get(cause, "Service-Unavailable")


def _text(value: str, size: int = MAX_VALUE) -> str:
    """`value` cut to `size` UTF-8 bytes, never inside a character."""
    if len(value) * 4 <= size or len(value.encode()) <= size:
        return value
    return _chunks(value, size)[0]


def _integer(value: int | None) -> int | None:
    """A RADIUS integer (32 bits), or None: a gateway's decimal may be larger."""
    return value if value is not None and 0 <= value < 1 << 32 else None


def leg_attributes(leg: Leg, nas_ip: str | None) -> list[tuple[str, object]]:
    """
    The attributes every packet of `leg` carries, fixed at its Start.  A
    value longer than an attribute holds (253 bytes, 247 for a vendor
    attribute: only where a gateway sends such numbers) is cut there, the
    same way in every packet; the CDR lines keep them whole.  An integer
    over 32 bits is left out.
    """
    attrs: list[tuple[str, object]] = []
    user = leg.cui or leg.cli
    if user:
        attrs.append(("User-Name", _text(user)))
    if nas_ip:
        attrs.append((_nas_address(nas_ip), nas_ip))
    attrs.append(("NAS-Identifier", _text(leg.gateway)))
    for number, kind in ((leg.port, "fxs"), (leg.pport, "fxo")):
        if number is not None:
            if _integer(number) is not None:
                attrs.append(("NAS-Port", number))
            attrs.append(("NAS-Port-Id", _text(f"{kind}/{number}")))
            break
    attrs.append(("Acct-Session-Id", _text(leg.id)))
    attrs.append(("Acct-Multi-Session-Id", _text(leg.call)))
    if leg.cui:
        attrs.append(("Chargeable-User-Identity", _text(leg.cui)))
    if leg.cli:
        attrs.append(("Calling-Station-Id", _text(leg.cli)))
    if leg.dialled:
        attrs.append(("Called-Station-Id", _text(leg.dialled)))
    attrs.append(("cdrd-Leg-Direction", leg.direction))
    if _integer(leg.ref) is not None:
        attrs.append(("cdrd-Call-Ref", leg.ref))
    if leg.peer:
        attrs.append(("cdrd-Gateway-Address", _text(leg.peer, MAX_VENDOR_VALUE)))
    return attrs


@functools.lru_cache(maxsize=16)
def _nas_address(nas_ip: str) -> str:
    """The attribute of cdrd's address (one configured value: cached)."""
    if ipaddress.ip_address(nas_ip).version == 6:
        return "NAS-IPv6-Address"
    return "NAS-IP-Address"


def _chunks(text: str, size: int) -> list[str]:
    """UTF-8 text in pieces of at most `size` bytes, never splitting a character."""
    if len(text) * 4 <= size or len(text.encode()) <= size:
        return [text]  # the common case: one piece
    out, current, length = [], [], 0
    for ch in text:
        n = len(ch.encode())
        if length + n > size:
            out.append("".join(current))
            current, length = [], 0
        current.append(ch)
        length += n
    out.append("".join(current))
    return out


def cdr_attributes(cdr: Cdr, index: int, billed: str | None = None) -> list[tuple[str, object]]:
    """
    The attributes of the `index`-th CDR (from 1) of a Stop: its
    cdrd-CDR-Id and cdrd-CDR and, for a line over 247 bytes, the rest in
    cdrd-CDR-Continued values "<index>:<text>".  pyrad (like RADIUS
    servers) keeps the values of one attribute together and in order, so
    the n-th cdrd-CDR-Id is the id of the n-th cdrd-CDR.  Where the CDR was
    created by another call than `billed` (the Stop's call), cdrd-CDR-Call
    "<index>:<call>" names it (cut to one attribute, like the leg values).
    """
    first, *rest = _chunks(cdr.line, MAX_VENDOR_VALUE)
    prefix = f"{index}:"
    more = _chunks("".join(rest), MAX_VENDOR_VALUE - len(prefix)) if rest else []
    attrs = [("cdrd-CDR-Id", cdr.id), ("cdrd-CDR", first)] + [
        ("cdrd-CDR-Continued", prefix + part) for part in more
    ]
    if billed is not None and getattr(cdr, "call", billed) != billed:
        attrs.append(
            ("cdrd-CDR-Call", _text(prefix + cdr.call, MAX_VENDOR_VALUE))
        )
    return attrs


_SIZING: Dictionary | None = None


def _sizing_dictionary() -> Dictionary:
    """Sizes do not depend on the vendor number (always 4 bytes)."""
    global _SIZING
    if _SIZING is None:
        _SIZING = load_dictionary(32473)
    return _SIZING


def attribute_size(dictionary: Dictionary, name: str, value: object) -> int:
    """The bytes `name` = `value` takes in a packet, as pyrad encodes it."""
    key, attr = _attribute(dictionary, name)
    size = len(_encode_value(attr, value)) + 2
    return size + 6 if isinstance(key, tuple) else size  # Vendor-Specific


def packet_size(dictionary: Dictionary, attrs: Iterable[tuple[str, object]]) -> int:
    """The size of the request with `attrs`, Acct-Delay-Time included."""
    return HEADER + DELAY_SIZE + sum(attribute_size(dictionary, n, v) for n, v in attrs)


def fits(dictionary: Dictionary, attrs: Sequence[tuple[str, object]]) -> bool:
    """Whether the request with `attrs` (and Acct-Delay-Time) is within
    FreeRADIUS's limits."""
    return (
        len(attrs) + 1 <= MAX_ATTRIBUTES
        and packet_size(dictionary, attrs) <= MAX_PACKET
    )


def split_stop(
    dictionary: Dictionary,
    fixed: list[tuple[str, object]],
    cdrs: Sequence[Cdr],
    reserve: Sequence[tuple[str, object]] = (),
    billed: str | None = None,
) -> list[list[tuple[str, object]]]:
    """
    The attributes of a Stop (`fixed`: everything but the CDRs) carrying
    `cdrs`, as one list per packet: one packet where they fit, else
    several, each with cdrd-CDR-Part "k/m" and each within FreeRADIUS's
    limits, whatever the CDRs.  A CDR is kept within one packet where it
    fits in one; a longer one goes on in the next packets' continuations.
    The n in "<n>:<text>" counts the CDRs of the whole Stop, all parts.
    Room is kept in every packet for the attributes `reserve` (added when
    sent).  `billed`: the Stop's call (cdr_attributes).
    """
    groups = [cdr_attributes(c, n, billed) for n, c in enumerate(cdrs, 1)]
    sized = fixed + list(reserve)
    flat = [a for g in groups for a in g]
    # the cheap bound first: it holds for every Stop but those with long
    # values or many CDRs, which are sized exactly
    if _surely_fits(sized + flat) or fits(dictionary, sized + flat):
        return [fixed + flat]
    digits = 1
    while True:
        parts = _fill(
            dictionary, sized, groups, len(f"{10**digits - 1}/{10**digits - 1}")
        )
        if len(str(len(parts))) <= digits:
            break
        digits += 1
    m = len(parts)
    return [fixed + p + [("cdrd-CDR-Part", f"{k}/{m}")] for k, p in enumerate(parts, 1)]


def _fill(dictionary, fixed, groups, part_chars: int) -> list[list[tuple[str, object]]]:
    """Greedy: CDR attributes into packets of at most MAX_PACKET bytes and
    MAX_ATTRIBUTES attributes with `fixed`, room kept for a cdrd-CDR-Part
    value of `part_chars` characters; the CDR attributes of each packet."""
    size_of = attribute_size
    room_bytes = (
        MAX_PACKET
        - packet_size(dictionary, fixed)
        - size_of(dictionary, "cdrd-CDR-Part", "0" * part_chars)
    )
    room_attrs = MAX_ATTRIBUTES - len(fixed) - 2  # Part and Acct-Delay-Time
    parts: list[list[tuple[str, object]]] = []
    current: list[tuple[str, object]] = []
    used = 0

    def add(items):
        nonlocal current, used
        need = sum(size_of(dictionary, n, v) for n, v in items)
        if used + need > room_bytes or len(current) + len(items) > room_attrs:
            if not current or need > room_bytes or len(items) > room_attrs:
                # by construction (leg attributes cut to one attribute
                # each) an empty packet always takes a CDR's first two
                raise ValueError("a Stop's own attributes leave no room for a CDR")
            parts.append(current)
            current, used = [], 0
        current.extend(items)
        used += need

    for group in groups:
        need = sum(size_of(dictionary, n, v) for n, v in group)
        if need <= room_bytes and len(group) <= room_attrs:
            add(group)  # whole in one packet: this one or the next
        else:
            add(group[:2])  # cdrd-CDR-Id with the first piece of its line
            for item in group[2:]:
                add([item])
    parts.append(current)
    return parts


_CDR_ATTRIBUTES = frozenset({"cdrd-CDR-Id", "cdrd-CDR", "cdrd-CDR-Continued"})


@frozen
class _StoredCdr:
    id: str
    line: str


@frozen
class _FactCdr:
    """A CDR as a Stop's facts keep it: what cdr_attributes reads."""

    id: str
    line: str
    call: str


def fit(dictionary: Dictionary, payload: Payload) -> list[Payload]:
    """
    `payload` as packets within FreeRADIUS's limits: itself (what spool()
    makes always fits), or, for a request stored by an older cdrd that
    estimated sizes, its values cut to one attribute and its CDRs split
    into numbered Stops as spool() would have.  A stored part of an older
    split (cdrd-CDR-Part) that does not fit cannot be renumbered: it is
    returned as it is (its oversized values cut), and the caller logs it.
    """
    if payload.kind != "req" or _surely_fits(payload.attributes):
        return [payload]
    if fits_exactly(dictionary, payload.attributes):
        return [payload]
    fixed, cdrs, continued, part = [], [], [], False
    for name, value in payload.attributes:
        if name == "cdrd-CDR-Id":
            cdrs.append([value, None])
        elif name == "cdrd-CDR":
            for pair in cdrs:
                if pair[1] is None:
                    pair[1] = value
                    break
        elif name == "cdrd-CDR-Continued":
            continued.append(value)
        else:
            part = part or name == "cdrd-CDR-Part"
            if isinstance(value, str):
                key, attr = _attribute(dictionary, name)
                value = _text(
                    value, MAX_VENDOR_VALUE if isinstance(key, tuple) else MAX_VALUE
                )
            fixed.append((name, value))
    lines = [[i, line or ""] for i, line in cdrs]
    for value in continued:
        n, _, text = value.partition(":")
        lines[int(n) - 1][1] += text
    if part:
        cut = fixed + [
            a
            for n, (i, line) in enumerate(lines, 1)
            for a in cdr_attributes(_StoredCdr(i, line), n)
        ]
        return [Payload("req", payload.leg, payload.status, payload.event, tuple(cut))]
    stored = [_StoredCdr(i, line) for i, line in lines]
    return [
        Payload("req", payload.leg, payload.status, payload.event, tuple(attrs))
        for attrs in split_stop(dictionary, fixed, stored)
    ]


def encode_within_limits(dictionary: Dictionary, payload: Payload) -> bytes | None:
    """`encode_attributes` of a request within FreeRADIUS's limits, else None."""
    if len(payload.attributes) + 1 > MAX_ATTRIBUTES:
        return None
    try:
        body = encode_attributes(dictionary, payload.attributes)
    except ValueError:
        return None
    return body if HEADER + len(body) + DELAY_SIZE <= MAX_PACKET else None


def _surely_fits(attrs) -> bool:
    """A cheap bound, true for every request without long values."""
    if len(attrs) + 1 > MAX_ATTRIBUTES:
        return False
    size = HEADER + DELAY_SIZE
    for _, value in attrs:
        if isinstance(value, str):
            n = len(value) if value.isascii() else len(value.encode())
            if n > MAX_VENDOR_VALUE:
                return False
            size += 8 + n
        else:
            size += 8 + 16
    return size <= MAX_PACKET


def fits_exactly(dictionary: Dictionary, attrs) -> bool:
    """Within the limits, and every value within one attribute."""
    try:
        for name, value in attrs:
            key, attr = _attribute(dictionary, name)
            if len(_encode_value(attr, value)) > (
                MAX_VENDOR_VALUE if isinstance(key, tuple) else MAX_VALUE
            ):
                return False
        return fits(dictionary, attrs)
    except ValueError:  # pyrad: a string over 253 bytes
        return False


# -- payloads -------------------------------------------------------------------


@frozen
class Payload:
    """A request (or an open-leg marker) as stored in the outbox."""

    kind: str  # "req" | "open" | "dial"
    leg: str  # the leg's id
    status: str  # Start, Interim-Update, Stop ("" for a marker)
    event: int  # ms UTC of the event that caused it
    attributes: tuple[tuple[str, object], ...] = ()
    answered: int | None = None  # markers: ms UTC of the answer
    # the request's facts (spool_facts), expanded into `attributes` when
    # read (expand); None for a payload stored with its attributes
    facts: tuple | None = None

    def to_bytes(self) -> bytes:
        d = {"k": self.kind, "leg": self.leg, "s": self.status, "t": self.event}
        if self.facts is None:
            d["a"] = [list(a) for a in self.attributes]
        else:
            d["f"] = self.facts
        d["ans"] = self.answered
        return orjson.dumps(d)

    @classmethod
    def from_bytes(cls, data: bytes) -> Payload:
        d = orjson.loads(data)
        facts = d.get("f")
        # every field given (Payload has no validator or converter to
        # skip): the sender reads every request back so (issue 15)
        return _payload(
            d["k"],
            d["leg"],
            d["s"],
            d["t"],
            tuple(map(tuple, d.get("a", ()))),
            d.get("ans"),
            None if facts is None else tuple(facts),
        )


_payload = unchecked(Payload)


def request_attributes(leg_attrs, status: str, event: int, extra=()) -> list:
    return [
        ("Acct-Status-Type", status),
        *leg_attrs,
        ("Event-Timestamp", event // 1000),
        *extra,
    ]


def request(leg_attrs, status: str, event: int, leg: str, extra=()) -> Payload:
    attrs = request_attributes(leg_attrs, status, event, extra)
    return _payload("req", leg, status, event, tuple(attrs), None, None)


def interim(marker: Payload, now: int) -> Payload:
    """An Interim-Update for the answered leg of `marker`, at `now`."""
    session = max(0, now - (marker.answered or now)) // 1000
    return request(
        marker.attributes, INTERIM, now, marker.leg, [("Acct-Session-Time", session)]
    )


#: the values of a leg's facts: every field of Leg
_LEG_FIELDS = len(Leg.__attrs_attrs__)


def leg_facts(leg: Leg) -> list:
    """A leg's values as a request's facts keep them (in Leg's field order)."""
    return [leg.id, leg.call, leg.gateway, leg.ref, leg.direction, leg.port, leg.pport,
            leg.cui, leg.cli, leg.dialled, leg.peer]


def spool_facts(outputs, now: int, interims: bool) -> list[Payload]:
    """
    The payloads for the call model's `outputs`, as facts (`expand` makes
    their attributes): a Start per LegStart, an open marker per LegAnswer
    (if Interim-Updates are on), a Stop per LegStop, and a dial note where
    an inbound leg started before anything was dialled.  CallEnd gives
    nothing: its CDRs come with the last LegStop.  One payload per request
    whatever its size: a Stop whose CDRs overflow a packet is split when
    expanded.
    """
    return [
        Payload(kind, leg, status, event, attributes, answered, facts)
        for kind, leg, status, event, attributes, answered, facts in _requests(outputs, interims)
    ]


def spool_facts_bytes(outputs, now: int, interims: bool) -> list[bytes]:
    """
    `Payload.to_bytes` of each of `spool_facts`, without making the
    Payloads: what the ingest path stores (issue 15).
    """
    dumps = orjson.dumps
    return [
        dumps({"k": kind, "leg": leg, "s": status, "t": event, "f": facts, "ans": answered})
        if facts is not None
        else Payload(kind, leg, status, event, attributes, answered).to_bytes()
        for kind, leg, status, event, attributes, answered, facts in _requests(outputs, interims)
    ]


def _requests(outputs, interims: bool):
    """
    The fields of each payload of `spool_facts`, in Payload's order: kind,
    leg, status, event, attributes, answered, facts.
    """
    ends = _call_ends(outputs)
    inbound_dialled = {
        o.leg.call
        for o in outputs
        if type(o) is LegStart and o.leg.direction == "inbound" and o.leg.dialled
    }
    for i, o in enumerate(outputs):
        kind = type(o)
        if kind is LegStart:
            leg = o.leg
            yield "req", leg.id, START, o.time, (), None, (leg_facts(leg),)
            if _first_outbound(leg) and leg.call not in inbound_dialled:
                # the caller's leg started before anything was dialled
                number = (("Called-Station-Id", _text(leg.dialled)),)
                yield DIAL, inbound_leg(leg.call), "", o.time, number, None, None
        elif kind is LegAnswer:
            if interims:
                yield OPEN, o.leg.id, "", o.time, (), o.time, (leg_facts(o.leg),)
        elif kind is LegStop:
            leg = o.leg
            facts = leg_facts(leg)
            if i in ends and ends[i] != leg.call:
                # a leg moved into this call by a transfer: its Stop (with
                # the call's CDRs, if last) is booked to the call it ended in
                facts[1] = ends[i]
            cdrs = [[c.id, c.line, c.call] for c in o.cdrs]
            yield "req", leg.id, STOP, o.time, (), None, (
                facts, o.session_ms // 1000, o.cause, cdrs, called_later(leg),
            )


def expand(payload: Payload, nas_ip: str | None, dictionary=None) -> list[Payload]:
    """
    The requests (or marker) of a stored payload, with their attributes:
    a payload of facts (spool_facts) is built here, a Stop split into
    numbered parts only if its CDRs overflow one packet; a payload stored
    with its attributes is itself.  ValueError, KeyError or TypeError for
    facts that are not a request's.  `dictionary` only sizes the packets.
    """
    if payload.facts is None:
        return [payload]
    facts = payload.facts[0]
    # every field (as leg_facts writes them) without attrs' __init__: Leg
    # has no check to skip; other counts as Leg(...) reads them
    leg = unchecked_leg(*facts) if len(facts) == _LEG_FIELDS else Leg(*facts)
    base = leg_attributes(leg, nas_ip)
    if payload.kind == OPEN:
        return [_payload(OPEN, payload.leg, "", payload.event, tuple(base), payload.answered, None)]
    if payload.kind != "req":
        raise ValueError(f"no facts for a payload of kind {payload.kind!r}")
    if payload.status == START:
        return [request(base, START, payload.event, payload.leg)]
    if payload.status != STOP:
        raise ValueError(f"no facts for a {payload.status!r} request")
    _, session, cause, cdrs, later = payload.facts
    common = [
        ("Acct-Session-Time", session),
        ("Acct-Terminate-Cause", terminate_cause(cause)),
    ]
    fixed = request_attributes(base, STOP, payload.event, common)
    reserve = CALLED_RESERVE if later else ()
    stored = [_FactCdr(*c) for c in cdrs]
    return [
        _payload("req", payload.leg, STOP, payload.event, tuple(attrs), None, None)
        for attrs in split_stop(dictionary or _sizing_dictionary(), fixed, stored, reserve, leg.call)
    ]


def spool(
    outputs, now: int, nas_ip: str | None, interims: bool, dictionary=None
) -> list[Payload]:
    """
    The payloads for the call model's `outputs` with their attributes (what
    the sender sends): `expand` of each of `spool_facts`, so a Stop whose
    CDRs overflow one packet is several payloads, numbered with
    cdrd-CDR-Part.  `dictionary` only sizes the packets (the vendor number
    does not change a size).
    """
    dictionary = dictionary or _sizing_dictionary()
    return [
        p
        for facts in spool_facts(outputs, now, interims)
        for p in expand(facts, nas_ip, dictionary)
    ]


def _call_ends(outputs) -> dict[int, str]:
    """
    Index of each LegStop written by a call's end -> that call's id.  The
    model writes a call's end as the LegStops of the legs it then has
    (inbound first; the same time and cause) directly followed by its
    CallEnd; a Stop of a leg replaced by a transfer comes before them with
    its own cause.
    """
    ends: dict[int, str] = {}
    for i, o in enumerate(outputs):
        if type(o) is not CallEnd:
            continue
        j = i - 1
        first = outputs[j] if j >= 0 else None
        while (
            j >= 0
            and i - j <= 2
            and isinstance(outputs[j], LegStop)
            and outputs[j].time == o.record.end
            and outputs[j].cause == first.cause
        ):
            ends[j] = o.record.id
            j -= 1
    return ends


#: Room kept in an inbound leg's Stop for the Called-Station-Id of a note.
CALLED_RESERVE = (("Called-Station-Id", "0" * MAX_VALUE),)


def inbound_leg(call: str) -> str:
    """The id of a call's inbound leg (docs/architecture.md: n = 0)."""
    return f"{call}/0"


def _first_outbound(leg: Leg) -> bool:
    return (
        leg.direction == "outbound" and bool(leg.dialled) and leg.id == f"{leg.call}/1"
    )


def called_later(leg: Leg) -> bool:
    """An inbound leg whose Called-Station-Id may come from a note."""
    return leg.direction == "inbound" and not leg.dialled


def with_called(payload: Payload, number: str) -> Payload:
    """`payload` with Called-Station-Id `number`, unless it has one."""
    attrs = payload.attributes
    if any(n == "Called-Station-Id" for n, _ in attrs):
        return payload
    at = next(
        (
            i
            for i, (n, _) in enumerate(attrs)
            if n.startswith("cdrd-") or n == "Event-Timestamp"
        ),
        len(attrs),
    )
    attrs = (*attrs[:at], ("Called-Station-Id", number), *attrs[at:])
    return Payload(
        payload.kind,
        payload.leg,
        payload.status,
        payload.event,
        attrs,
        payload.answered,
    )


# -- the wire ---------------------------------------------------------------------


_KEYS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _attribute(dictionary: Dictionary, name: str):
    """(wire key, pyrad Attribute, header) of `name`, cached per dictionary:
    the header is the bytes before the value's length (the type), or for a
    vendor attribute, Vendor-Specific's type, and after its length the
    vendor id and the vendor type."""
    keys = _KEYS.get(dictionary)
    if keys is None:
        keys = _KEYS[dictionary] = {}
    found = keys.get(name)
    if found is None:
        attr = dictionary.attributes[name]
        if attr.vendor:
            key = (dictionary.vendors.GetForward(attr.vendor), attr.code)
        else:
            key = attr.code
        found = keys[name] = (key, attr)
    return found


_DELAY_HEADER = struct.pack("!BB", 41, 6)  # Acct-Delay-Time, integer
_ZERO_AUTHENTICATOR = bytes(16)


def encode_attributes(dictionary: Dictionary, attributes) -> bytes:
    """
    The attributes of a request, encoded as pyrad encodes them: values by
    pyrad's rules (`_encode_value`), the values of one attribute together
    in the order of first appearance (as pyrad's packet dict keeps them),
    each vendor attribute in its own Vendor-Specific.  ValueError if a
    value does not fit its attribute.  tests/accounting/test_packets.py
    checks the bytes against `AcctPacket.RequestPacket`.
    """
    table = _ENCODERS.get(dictionary)
    if table is None:
        table = _ENCODERS[dictionary] = {}
    grouped: dict = {}
    for name, value in attributes:
        encoder = table.get(name)
        if encoder is None:
            encoder = table[name] = _encoder(dictionary, name)
        key, encode = encoder
        encoded = encode(value)
        group = grouped.get(key)
        if group is None:
            grouped[key] = [encoded]
        else:
            group.append(encoded)
    return b"".join([b"".join(g) for g in grouped.values()])


_ENCODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

#: values of an attribute whose whole encoding is kept (enumerations,
#: addresses: a handful each), at most this many per attribute
_KEPT_VALUES = 64


def _encoder(dictionary: Dictionary, name: str):
    """
    (wire key, function) for `name`: the function encodes one value as the
    attribute's whole bytes (type, length, vendor header, value).  Made
    once per attribute: the sender encodes every attribute of every request
    (issue 15), and the common cases (a string, a 32-bit integer, one of a
    few enumerated or address values) then take no dispatch on the
    attribute's type; anything else goes through `_encode_value`.
    """
    key, attr = _attribute(dictionary, name)
    kind = attr.type
    if isinstance(key, tuple):
        vendor = struct.pack("!LB", *key)

        def framed(data: bytes) -> bytes:
            n = len(data)
            if n > MAX_VENDOR_VALUE:
                raise ValueError(f"{name}: {n} bytes, at most {MAX_VENDOR_VALUE} fit")
            return bytes((26, n + 8)) + vendor + bytes((n + 2,)) + data
    else:

        def framed(data: bytes) -> bytes:
            n = len(data)
            if n > MAX_VALUE:
                raise ValueError(f"{name}: {n} bytes, at most {MAX_VALUE} fit")
            return bytes((key, n + 2)) + data

    if kind in ("string", "octets"):

        def encode(value) -> bytes:
            return framed(value.encode() if type(value) is str else _encode_value(attr, value))

        return key, encode

    kept: dict = {}
    four = framed(bytes(4))[:-4]  # the header of a 4-byte value
    pack = _U32.pack
    numbers = kind in ("integer", "date")

    def encode(value) -> bytes:
        if numbers and type(value) is int and 0 <= value < 1 << 32:
            return four + pack(value)
        if type(value) is str:
            found = kept.get(value)
            if found is None:
                found = framed(_encode_value(attr, value))
                if len(kept) < _KEPT_VALUES:
                    kept[value] = found
            return found
        return framed(_encode_value(attr, value))

    return key, encode


def request_bytes(body: bytes, ident: int, secret: bytes, delay: int) -> bytes:
    """
    An Accounting-Request: `body` (encode_attributes) and Acct-Delay-Time
    `delay` (last: pyrad would put it there too, as the payload never holds
    it), with the Request Authenticator of RFC 2866 section 3: MD5 of the
    packet with 16 zero octets in its place, followed by the secret.
    """
    attrs = body + _DELAY_HEADER + struct.pack("!L", delay)
    header = struct.pack("!BBH", AccountingRequest, ident, 20 + len(attrs))
    authenticator = hashlib.md5(header + _ZERO_AUTHENTICATOR + attrs + secret).digest()
    return header + authenticator + attrs


def sent_packet(dictionary: Dictionary, raw: bytes, secret: bytes) -> AcctPacket:
    """What pyrad needs to verify an answer to `raw` (`CreateReply`,
    `VerifyReply`): its Identifier and Request Authenticator."""
    return AcctPacket(
        code=AccountingRequest,
        id=raw[1],
        secret=secret,
        authenticator=raw[4:20],
        dict=dictionary,
    )


def encode_request(
    dictionary: Dictionary, payload: Payload, secret: bytes, ident: int, now_ms: int
) -> tuple[AcctPacket, bytes, int]:
    """
    The Accounting-Request for `payload` as sent at `now_ms`, with
    Identifier `ident`: (packet for verifying the answer, bytes,
    Acct-Delay-Time).  The client keeps `encode_attributes` of a request
    and calls `request_bytes` at each transmission.
    """
    delay = max(0, now_ms - payload.event) // 1000
    raw = request_bytes(
        encode_attributes(dictionary, payload.attributes), ident, secret, delay
    )
    return sent_packet(dictionary, raw, secret), raw, delay


_U32 = struct.Struct("!L")


@functools.lru_cache(maxsize=256)
def _encode_cached(kind: str, value) -> bytes:
    return EncodeAttr(kind, value)


def _encode_value(attr, value) -> bytes:
    """
    pyrad's encoding of one value (`Packet._EncodeValue`): the same bytes
    (test_encoding_is_pyrads_byte_for_byte), with the common cases done
    directly: a string's UTF-8, a 32-bit integer or date, an enumeration
    from the dictionary, an address (few distinct: cached).
    """
    kind = attr.type
    if isinstance(value, str):
        if kind == "string":
            return value.encode()
        if kind == "octets":
            # pyrad reads "0x..." as hex and "65" as one byte: the bytes, always
            return value.encode()
        if attr.values.HasForward(value):
            return attr.values.GetForward(value)
        if kind in ("ipaddr", "ipv6addr"):
            return _encode_cached(kind, value)
    elif type(value) is int and kind in ("integer", "date") and 0 <= value < 1 << 32:
        return _U32.pack(value)
    return EncodeAttr(kind, value)
