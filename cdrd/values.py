"""
The values that cross cdrd's rooms.

Times inside cdrd are integers: milliseconds since the Unix epoch, UTC
(`*_ms` or plain `time`).  Durations are integer milliseconds.  Only the
edges (the wire, the CDR line, the JSON API, the web page) turn them into
text, with the helpers at the bottom of this module.

Data flows one way: gateway -> store (durable) -> ACK; stored events ->
calls.model -> the outputs below -> store, syslog, RADIUS, the live feed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Mapping
from datetime import UTC, datetime

from attrs import field, frozen

#: Synthetic event types written by cdrd itself into the event log (seq is
#: None).  They make every end of a call an event, so that replaying the log
#: rebuilds the call model exactly.
GATEWAY_RESTART = "GATEWAY_RESTART"  # ends every open call of (gateway, boot)
STALE = "STALE"  # ends call `ref` of (gateway, boot): `stale_after` passed
#: The RADIUS server's answer to an incoming call's Access-Request (the CUI
#: from RADIUS, RFC 4372): fields `result` = accept | reject | timeout |
#: overload, and `cui` from an Access-Accept (cdrd.accounting.authorize)
RADIUS_CUI = "RADIUS_CUI"


def _frozen_mapping(value: Mapping[str, str] | None) -> Mapping[str, str]:
    return dict(value or {})


def unchecked(cls):
    """
    A constructor of the frozen attrs class `cls` taking every field, in
    order, positionally, that runs no validator, converter or default: for
    trusted internal paths only (values the ingest path has just checked,
    or read back from the store), where it is about 3x faster than
    ``cls(...)`` (issue 15).  The caller hands over what the converters
    would have made (e.g. a dict of its own for a ``fields``).
    """
    names = [a.name for a in cls.__attrs_attrs__]
    setters = [cls.__dict__[name].__set__ for name in names]  # the slots' descriptors
    make = object.__new__
    args = ", ".join(names)
    body = "".join(f"    _{i}(self, {name})\n" for i, name in enumerate(names))
    source = f"def build({args}):\n    self = make(cls)\n{body}    return self\n"
    scope = {"make": make, "cls": cls, **{f"_{i}": s for i, s in enumerate(setters)}}
    exec(source, scope)  # a flat function: no loop, no *args, per call
    build = scope["build"]
    build.__qualname__ = build.__name__ = f"unchecked_{cls.__name__}"
    build.__doc__ = f"A {cls.__name__} from trusted values (`unchecked`)."
    return build


@frozen
class CallEvent:
    """
    One stored event of a gateway, as the call model sees it.

    `fields` holds only the type-specific fields that passed validation
    (gateway-protocol.md: a malformed field is treated as absent), as text:
    `port`, `pport`, `with` are decimal strings.
    """

    gateway: str  # the key, "<gw>_<MAC>"
    seq: int | None  # the gateway's seq; None for cdrd's synthetic events
    ref: int
    type: str
    time: int  # ms UTC: gateway time + skew, or receive time
    received: int  # ms UTC, server receive time
    boot: str = ""  # the call epoch: LOGIN boot=, else "r<n>" (see gateway.session)
    fields: Mapping[str, str] = field(factory=dict, converter=_frozen_mapping)
    id: int | None = None  # the store's id, increasing in commit order

    def with_id(self, id: int) -> CallEvent:
        """This event as stored under `id` (attrs.evolve's result, 4x faster:
        the store calls it for every event it inserts; `fields` is shared,
        both events being frozen)."""
        return stored_event(
            self.gateway, self.seq, self.ref, self.type, self.time, self.received,
            self.boot, self.fields, id,
        )

    def field(self, name: str) -> str | None:
        return self.fields.get(name)

    def int_field(self, name: str) -> int | None:
        value = self.fields.get(name)
        if value is None or not (value.isascii() and value.isdigit()):
            return None
        return int(value)


#: A CallEvent from values already checked (parsed from the wire by
#: gateway.session, or read back from the store), `fields` a dict the event
#: may own: no validation, no copy (`unchecked`).
stored_event = unchecked(CallEvent)


@frozen
class LogEntry:
    """One entry of the gateway log (gateway-protocol.md, "The gateway log")."""

    time: int  # ms UTC, server time
    event: str  # "Login", "Re-Login", "Relogin Kickout", "Bad Packet", ...
    peer: str  # "ip:port"
    gateway: str = "???"  # gw id, or ??? where unknown
    mac: str = ""
    detail: str = ""
    id: int | None = None
    #: how many times this entry happened: repeated Bad Packet, Gateway
    #: Disconnect and Login Rejected entries from one address within a
    #: minute are stored as one (cdrd.gateway.coalesce); `time`, `peer` and
    #: `detail` are the first one's
    count: int = 1


@frozen
class GatewayState:
    """What the store remembers of a gateway between connections."""

    key: str
    id: str
    mac: str
    last_seq: int = 0  # highest seq stored durably
    boot: str = ""  # the current call epoch (see CallEvent.boot)
    boot_token: str | None = None  # the LOGIN boot= last seen, if any
    restarts: int = 0  # restarts detected without a boot token
    fxs: int = 0
    fxo: int = 0
    isdn: int = 0
    callref: int = 0
    firmware: str = ""
    peer: str = ""
    login: int | None = None  # ms UTC of the last login
    skew_ms: int = 0
    last_heard: int | None = None  # ms UTC: last event or PING received
    online: bool = False

    def progressed(self, last_seq: int, last_heard: int | None) -> GatewayState:
        """``evolve(self, last_seq=..., last_heard=...)``, 5x faster: once
        per batch of a gateway's events on the ingest path (issue 15)."""
        return _gateway_state(
            self.key, self.id, self.mac, last_seq, self.boot, self.boot_token, self.restarts,
            self.fxs, self.fxo, self.isdn, self.callref, self.firmware, self.peer, self.login,
            self.skew_ms, last_heard, self.online,
        )


_gateway_state = unchecked(GatewayState)


# -- the call model's products ------------------------------------------------


@frozen
class Cdr:
    """
    A billing record in the FireBrick format (call-records.md).

    `id` is stable across restarts and replays: derived from the call and the
    CDR's creation number in it (`cdr_id`).
    """

    id: str
    call: str  # the id of the call that created it
    gateway: str
    start: int  # ms UTC
    ringing: int  # ms
    duration: int | None  # ms; None when never answered
    status: str  # "" when answered, else the cause ("busy", "cancelled", ...)
    cui: str
    dialled: str
    cli: str
    #: the id of the call whose end wrote it, whose final RADIUS Stop carries
    #: it: `call` but for a CDR moved in by a transfer (rule 3); "" for a CDR
    #: stored before cdrd knew it
    billed_call: str = ""

    @property
    def csv_row(self) -> str:
        """The row of the CSV files: the FireBrick line, byte for byte, then
        the call that created the CDR and the call that billed it."""
        return csv_line((*self._fields(), self.call, self.billed_call))

    @property
    def line(self) -> str:
        return csv_line(self._fields())

    def _fields(self) -> tuple[str, ...]:
        """The six fields of the CDR line (call-records.md), as text."""
        if self.duration is None:
            duration = "-" + self.status
        else:
            duration = seconds3(self.duration)
        return (
            rfc3339(self.start),
            seconds3(self.ringing),
            duration,
            self.cui,
            self.dialled,
            self.cli,
        )


@frozen
class CallRecord:
    """One row of the CDR Report (call-records.md, "Call records")."""

    id: str  # call id: "<gateway>/<boot>/<ref>", see call_id()
    gateway: str
    boot: str
    ref: int
    port: int | None
    pport: int | None
    notation: str  # "Call out", "Call out failed", "Call in", ...
    pstn: bool  # any PSTN_* event: the "Only PSTN" filter
    dialed: str  # "2252, 3"
    begin: int
    connect: int | None
    end: int
    talk: int | None  # ms, None if never answered
    pstn_dial: str
    pstn_time: int | None  # ms
    cli: str
    pstn_cli: str
    cause: str


@frozen
class Leg:
    """
    A call leg as one RADIUS accounting session (accounting.md).

    Its values are fixed when its Start is built and never change.
    """

    id: str  # "<call id>/<n>", unique, stable across restarts
    call: str  # the call's id (Acct-Multi-Session-Id)
    gateway: str
    ref: int
    direction: str  # "inbound" | "outbound"
    port: int | None = None  # FXS port, NAS-Port-Id fxs/N
    pport: int | None = None  # FXO line, NAS-Port-Id fxo/N
    cui: str = ""
    cli: str = ""
    dialled: str = ""
    peer: str = ""  # the gateway's address (host:port) when the leg began, or ""

    def with_values(self, *, cui: str, dialled: str) -> Leg:
        """``evolve(self, cui=cui, dialled=dialled)``, 3x faster: the call
        model's inbound leg takes its number (once a call) or the caller's
        CUI from RADIUS while its Start is held back (issue 15)."""
        return unchecked_leg(
            self.id, self.call, self.gateway, self.ref, self.direction, self.port, self.pport,
            cui, self.cli, dialled, self.peer,
        )


#: A Leg from values the call model made itself, every field in order
#: (`unchecked`; Leg has no validator or converter to skip, only attrs'
#: frozen setattr per field)
unchecked_leg = unchecked(Leg)


@frozen
class LegStart:
    leg: Leg
    time: int


@frozen
class LegAnswer:
    leg: Leg
    time: int


@frozen
class LegStop:
    """
    A leg ended.  `cause` is "" for a hang-up, "replaced" when a divert or
    transfer replaced it, else the call's Cause.  `cdrs` is non-empty only on
    the Stop of the last leg of a call to end, in written order.

    `talk_end` is where its answered span ends as its CDRs count it: the
    first hang-up after the answer (or after the last transfer joined the
    call), which may come before the call's end (`time`, e.g. the far end
    hangs up, then the phone); None means `time`.
    """

    leg: Leg
    time: int
    answered: int | None  # ms UTC of its answer, None if never
    cause: str
    cdrs: tuple[Cdr, ...] = ()
    talk_end: int | None = None

    @property
    def session_ms(self) -> int:
        """The answered span: Acct-Session-Time, as long as the leg's CDRs."""
        if self.answered is None:
            return 0
        end = self.time if self.talk_end is None else min(self.talk_end, self.time)
        return max(0, end - self.answered)


@frozen
class CallEnd:
    """A call ended: its record and the CDRs it writes, in written order."""

    record: CallRecord
    cdrs: tuple[Cdr, ...] = ()


ModelOutput = LegStart | LegAnswer | LegStop | CallEnd


# -- ids ----------------------------------------------------------------------


def call_id(gateway: str, boot: str, ref: int) -> str:
    return f"{gateway}/{boot or '-'}/{ref}"


def cdr_id(call: str, number: int) -> str:
    """
    32 lowercase hex digits: fits a syslog MSGID (RFC 5424: at most 32) and a
    RADIUS attribute, unique in practice (128 bits), stable across replays.
    """
    return hashlib.blake2b(f"{call}#{number}".encode(), digest_size=16).hexdigest()


# -- text at the edges --------------------------------------------------------


#: 9999-12-31T23:59:59.999Z, the last instant RFC 3339 can write
MAX_MS = 253_402_300_799_999


def rfc3339(ms: int) -> str:
    """`2026-11-22T10:00:07.250Z`: the server's and the CDR's time format.

    Total: ingest and the call model keep times within 1970..9999; a time
    outside is written as the nearest end of that range, never an error
    (an error here would lose the batch of products being written)."""
    ms = min(max(ms, 0), MAX_MS)
    dt = datetime.fromtimestamp(ms // 1000, UTC)
    return (f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:"
            f"{dt.second:02d}.{ms % 1000:03d}Z")


def parse_rfc3339(text: str) -> int:
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return round(dt.timestamp() * 1000)


def seconds3(ms: int) -> str:
    """Milliseconds as seconds with three decimals: 4250 -> '4.250'."""
    sign = "-" if ms < 0 else ""
    ms = abs(ms)
    return f"{sign}{ms // 1000}.{ms % 1000:03d}"


def hhmmss(ms: int | None) -> str:
    """A duration as HH:MM:SS, truncated to whole seconds; '' for None."""
    if ms is None:
        return ""
    s = max(0, ms) // 1000
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def csv_line(fields) -> str:
    """
    One CSV record without its line end: the stdlib csv writer, which
    quotes a field as RFC 4180 requires (a comma, a quote, CR or LF in it)
    and only then.  cdrd's one CSV encoder: the CDR lines, the CSV files'
    rows and the web's CSV downloads.
    """
    if len(fields) > 1 and all(type(f) is str for f in fields):
        line = ",".join(fields)
        if line.count(",") == len(fields) - 1 and not _QUOTED.search(line):
            # no field the writer would quote (a comma, a quote, CR or LF
            # in it): what it writes, in half the time (issue 15)
            return line
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(fields)
    return out.getvalue()[:-2]


_QUOTED = re.compile(r'["\r\n]')


# -- gateway keys ----------------------------------------------------------------

GATEWAY_ID = re.compile(r"[0-9A-Za-z_-]{1,32}\Z")
MAC = re.compile(r"[0-9A-Fa-f]{12}\Z")


def gateway_key(gw: str, mac: str) -> str:
    """The identity of a gateway, shown as ``8200_000C2A020082``."""
    return f"{gw}_{mac.upper()}"


def split_gateway_key(key: str) -> tuple[str, str] | None:
    gw, sep, mac = key.rpartition("_")
    if not sep or not GATEWAY_ID.match(gw) or not MAC.match(mac):
        return None
    return gw, mac.upper()


# -- secrets in settings -------------------------------------------------------------

CONNINFO_PASSWORD = re.compile(r"(\b\w*password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
QUERY_PASSWORD = re.compile(r"([?&]\w*password=)[^&#]*", re.IGNORECASE)


def safe_url(url: str) -> str:
    """
    A database URL, or a libpq conninfo string, fit for a log line or an
    error message: every password (``user:PASSWORD@host``, a
    ``?password=``/``sslpassword=`` query parameter, ``password=`` of a
    conninfo) written ``***``.  Where the URL is ambiguous (characters a
    URL must percent-encode), more is hidden, never less.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return CONNINFO_PASSWORD.sub(r"\1***", url)
    at = rest.rfind("@")
    if at != -1:
        user, colon, _ = rest[:at].partition(":")
        if colon and not any(c in user for c in "/?#"):
            rest = f"{user}:***{rest[at:]}"
    return f"{scheme}://" + QUERY_PASSWORD.sub(r"\1***", rest)


#: web password hashes (cdrd.web.auth, cdrd-passwd): scrypt$n$r$p$salt$key, hex
SCHEME = "scrypt"
#: the most a stored hash may ask for: scrypt's memory (128 * n * r bytes;
#: 16 MiB for the default) and work (n * r * p; 2**17 for the default, 8x)
MAX_MEMORY = 64 * 1024 * 1024
MAX_WORK = 2**20


def parse_hash(text: str) -> tuple[int, int, int, bytes, bytes]:
    """
    The parts of a stored hash; ValueError (saying why, never echoing it)
    if it is not one cdrd can check: config.py refuses such a value at start.
    """
    parts = text.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        raise ValueError("not scrypt$n$r$p$salt$hash")
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt, key = bytes.fromhex(parts[4]), bytes.fromhex(parts[5])
    except ValueError:
        raise ValueError("not scrypt$n$r$p$salt$hash (numbers, hex)") from None
    if n < 2 or n & (n - 1) or not 0 < r <= 64 or not 0 < p <= 16:
        raise ValueError("scrypt parameters out of range (n a power of 2, r 1..64, p 1..16)")
    if 128 * n * r > MAX_MEMORY or n * r * p > MAX_WORK:
        raise ValueError(
            f"scrypt cost too high (128*n*r at most {MAX_MEMORY // 2**20} MiB, "
            f"n*r*p at most 2**{MAX_WORK.bit_length() - 1}); make it with cdrd-passwd"
        )
    if not salt or not key:
        raise ValueError("empty salt or hash")
    return n, r, p, salt, key
