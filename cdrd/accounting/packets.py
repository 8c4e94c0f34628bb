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
"""

from __future__ import annotations

import ipaddress
import json
import os
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from io import StringIO
from pathlib import Path

from attrs import frozen
from pyrad.dictionary import Dictionary
from pyrad.packet import AccountingRequest, AcctPacket

from cdrd.values import Cdr, Leg, LegAnswer, LegStart, LegStop

#: RFC 2865: an attribute holds at most 253 bytes; a vendor attribute (RFC
#: 2865 section 5.26, with its 6 header bytes) at most 247.
MAX_VENDOR_VALUE = 247
#: FreeRADIUS silently drops a packet over 4096 bytes or with more than 200
#: attributes; stay clear of both.
MAX_PACKET = 4096
MAX_ATTRIBUTES = 200

START, STOP, INTERIM = "Start", "Stop", "Interim-Update"

_HERE = Path(__file__).resolve()
DEFAULT_DICTIONARIES = _HERE.parents[2] / "dictionaries"


def dictionary_dir(path: str | os.PathLike | None = None) -> Path:
    return Path(path) if path is not None else DEFAULT_DICTIONARIES


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
            line = f"VENDOR\tcdrd\t{vendor}" + (" " + " ".join(tokens[3:]) if tokens[3:] else "")
        lines.append(line)
    return Dictionary(str(base / "dictionary"), StringIO("\n".join(lines) + "\n"))


# -- what a leg's packets carry ----------------------------------------------


TERMINATE_CAUSES = {
    "": "User-Request",  # a hang-up
    "cancelled": "User-Request",
    "divert-loop": "User-Request",  # a recording note: the call was hung up
    "replaced": "Port-Unneeded",
    "transferred": "Port-Unneeded",
    "gateway-restart": "NAS-Reboot",
    "stale": "Lost-Service",
}


def terminate_cause(cause: str) -> str:
    """accounting.md: busy, failed, rejected or an event's own cause ->
    Service-Unavailable."""
    return TERMINATE_CAUSES.get(cause, "Service-Unavailable")


def leg_attributes(
    leg: Leg, nas_ip: str | None, gateway_address: str | None = None
) -> list[tuple[str, object]]:
    """The attributes every packet of `leg` carries, fixed at its Start."""
    attrs: list[tuple[str, object]] = []
    user = leg.cui or leg.cli
    if user:
        attrs.append(("User-Name", user))
    if nas_ip:
        if ipaddress.ip_address(nas_ip).version == 6:
            attrs.append(("NAS-IPv6-Address", nas_ip))
        else:
            attrs.append(("NAS-IP-Address", nas_ip))
    attrs.append(("NAS-Identifier", leg.gateway))
    if leg.port is not None:
        attrs += [("NAS-Port", leg.port), ("NAS-Port-Id", f"fxs/{leg.port}")]
    elif leg.pport is not None:
        attrs += [("NAS-Port", leg.pport), ("NAS-Port-Id", f"fxo/{leg.pport}")]
    attrs.append(("Acct-Session-Id", leg.id))
    attrs.append(("Acct-Multi-Session-Id", leg.call))
    if leg.cui:
        attrs.append(("Chargeable-User-Identity", leg.cui))
    if leg.cli:
        attrs.append(("Calling-Station-Id", leg.cli))
    if leg.dialled:
        attrs.append(("Called-Station-Id", leg.dialled))
    attrs.append(("cdrd-Leg-Direction", leg.direction))
    attrs.append(("cdrd-Call-Ref", leg.ref))
    if gateway_address:
        attrs.append(("cdrd-Gateway-Address", gateway_address[:MAX_VENDOR_VALUE]))
    return attrs


def _chunks(text: str, size: int) -> list[str]:
    """UTF-8 text in pieces of at most `size` bytes, never splitting a character."""
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


def cdr_attributes(cdr: Cdr, index: int) -> list[tuple[str, object]]:
    """
    The attributes of the `index`-th CDR (from 1) of a packet: its
    cdrd-CDR-Id and cdrd-CDR and, for a line over 247 bytes, the rest in
    cdrd-CDR-Continued values "<index>:<text>".  pyrad (like RADIUS
    servers) keeps the values of one attribute together and in order, so
    the n-th cdrd-CDR-Id is the id of the n-th cdrd-CDR.
    """
    first, *rest = _chunks(cdr.line, MAX_VENDOR_VALUE)
    prefix = f"{index}:"
    more = _chunks("".join(rest), MAX_VENDOR_VALUE - len(prefix)) if rest else []
    return (
        [("cdrd-CDR-Id", cdr.id), ("cdrd-CDR", first)]
        + [("cdrd-CDR-Continued", prefix + part) for part in more]
    )


def _attr_size(name: str, value: object) -> int:
    """Encoded size of one attribute (upper bound for the ones cdrd sends)."""
    if name.startswith("cdrd-"):
        header = 8  # Vendor-Specific (2) + vendor id (4) + vendor type/length (2)
    else:
        header = 2
    if isinstance(value, int):
        return header + 4
    if name == "NAS-IPv6-Address":
        return header + 16
    if name == "NAS-IP-Address":
        return header + 4
    return header + len(str(value).encode())


def _packet_size(attrs: Iterable[tuple[str, object]]) -> int:
    # 20 bytes of header; 6 for Acct-Delay-Time, added at send time
    return 20 + 6 + sum(_attr_size(n, v) for n, v in attrs)


def split_cdrs(
    base: list[tuple[str, object]], cdrs: Sequence[Cdr]
) -> list[list[tuple[str, object]]]:
    """
    The CDR attributes of one Stop, split so each packet stays within
    FreeRADIUS's limits.  One list per packet; a single list (the common
    case, and always within call-records.md's limits) means one Stop.
    """
    # sized with the longest index prefix, numbered per packet afterwards
    groups = [cdr_attributes(c, 999) for c in cdrs]
    whole = [a for g in groups for a in g]
    if _fits(base, whole):
        return [_numbered(cdrs)]
    part = [("cdrd-CDR-Part", "999/999")]
    packets: list[list[Cdr]] = [[]]
    size: list[tuple[str, object]] = []
    for cdr, g in zip(cdrs, groups, strict=True):
        if packets[-1] and not _fits(base + part, size + g):
            packets.append([])
            size = []
        packets[-1].append(cdr)
        size += g
    return [_numbered(p) for p in packets]


def _numbered(cdrs: Sequence[Cdr]) -> list[tuple[str, object]]:
    return [a for n, c in enumerate(cdrs, 1) for a in cdr_attributes(c, n)]


def _fits(base, extra) -> bool:
    # +1: Acct-Delay-Time, added at send time (counted in _packet_size)
    return (
        _packet_size(base) + sum(_attr_size(n, v) for n, v in extra) <= MAX_PACKET
        and len(base) + len(extra) + 1 <= MAX_ATTRIBUTES
    )


# -- payloads -------------------------------------------------------------------


@frozen
class Payload:
    """A request (or an open-leg marker) as stored in the outbox."""

    kind: str  # "req" | "open"
    leg: str  # the leg's id
    status: str  # Start, Interim-Update, Stop ("" for a marker)
    event: int  # ms UTC of the event that caused it
    attributes: tuple[tuple[str, object], ...] = ()
    answered: int | None = None  # markers: ms UTC of the answer

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "k": self.kind,
                "leg": self.leg,
                "s": self.status,
                "t": self.event,
                "a": [list(a) for a in self.attributes],
                "ans": self.answered,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Payload:
        d = json.loads(data)
        return cls(
            kind=d["k"],
            leg=d["leg"],
            status=d["s"],
            event=d["t"],
            attributes=tuple((n, v) for n, v in d["a"]),
            answered=d.get("ans"),
        )


def request(leg_attrs, status: str, event: int, leg: str, extra=()) -> Payload:
    attrs = [("Acct-Status-Type", status), *leg_attrs, ("Event-Timestamp", event // 1000)]
    attrs += list(extra)
    return Payload("req", leg, status, event, tuple(attrs))


def interim(marker: Payload, now: int) -> Payload:
    """An Interim-Update for the answered leg of `marker`, at `now`."""
    session = max(0, now - (marker.answered or now)) // 1000
    return request(
        marker.attributes, INTERIM, now, marker.leg, [("Acct-Session-Time", session)]
    )


def spool(outputs, now: int, nas_ip: str | None, interims: bool, peers=None) -> list[Payload]:
    """
    The payloads for the call model's `outputs`: a Start per LegStart, an
    open marker per LegAnswer (if Interim-Updates are on), and a Stop per
    LegStop (several Stops, numbered with cdrd-CDR-Part, only if its CDRs
    overflow one packet).  CallEnd gives nothing: its CDRs come with the
    last LegStop.
    """
    peers = peers or {}
    out: list[Payload] = []
    for o in outputs:
        if isinstance(o, LegStart):
            base = leg_attributes(o.leg, nas_ip, peers.get(o.leg.gateway))
            out.append(request(base, START, o.time, o.leg.id))
        elif isinstance(o, LegAnswer):
            if interims:
                base = leg_attributes(o.leg, nas_ip, peers.get(o.leg.gateway))
                out.append(Payload("open", o.leg.id, "", o.time, tuple(base), answered=o.time))
        elif isinstance(o, LegStop):
            base = leg_attributes(o.leg, nas_ip, peers.get(o.leg.gateway))
            common = [
                ("Acct-Session-Time", o.session_ms // 1000),
                ("Acct-Terminate-Cause", terminate_cause(o.cause)),
            ]
            parts = split_cdrs(base + common, o.cdrs) if o.cdrs else [[]]
            for n, cdr_attrs in enumerate(parts, 1):
                extra = common + cdr_attrs
                if len(parts) > 1:
                    extra.append(("cdrd-CDR-Part", f"{n}/{len(parts)}"))
                out.append(request(base, STOP, o.time, o.leg.id, extra))
    return out


# -- the wire ---------------------------------------------------------------------


_KEYS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _attribute(dictionary: Dictionary, name: str):
    """(wire key, pyrad Attribute) of `name`, cached per dictionary."""
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


def encode_request(
    dictionary: Dictionary, payload: Payload, secret: bytes, ident: int, now_ms: int
) -> tuple[AcctPacket, bytes, int]:
    """
    The Accounting-Request for `payload` as sent at `now_ms`, with
    Identifier `ident`: (packet, bytes, Acct-Delay-Time).

    Values are encoded by pyrad (`Packet._EncodeValue`) and the packet by
    `AcctPacket.RequestPacket`; only the name lookups of `AddAttribute` are
    cached, which halves the cost of a request (bench/radius.py).
    """
    delay = max(0, now_ms - payload.event) // 1000
    pkt = AcctPacket(code=AccountingRequest, id=ident, secret=secret, dict=dictionary)
    for name, value in (*payload.attributes, ("Acct-Delay-Time", delay)):
        key, attr = _attribute(dictionary, name)
        if isinstance(value, str) and attr.type == "octets":
            # pyrad reads "0x..." as hex and "65" as one byte: give it hex always
            value = "0x" + value.encode().hex()
        OrderedDict.setdefault(pkt, key, []).append(pkt._EncodeValue(attr, value))
    return pkt, pkt.RequestPacket(), delay
