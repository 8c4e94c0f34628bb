"""
GWP/1 session rules, sans I/O: login checks, clock skew, reboot detection,
event validation, the bad-packet limit, and the gateway log's texts.

Everything here is a function of values and ``now`` (ms UTC); the protocol
(cdrd.gateway.protocol) turns bytes into calls of it and its answers into
writes.  See gateway-protocol.md.
"""

from __future__ import annotations

import hmac
import re
from collections import deque
from collections.abc import Mapping

from attrs import define, evolve, field, frozen

from cdrd.config import GATEWAY_ID, MAC, Config, gateway_key
from cdrd.gateway.codec import (
    MAX_LINE,
    BadPacket,
    Message,
    login_auth,
    parse_gateway_time,
    parse_parts,
    seq_hint,
    split_auth,
)
from cdrd.values import (
    GATEWAY_RESTART,
    CallEvent,
    GatewayState,
    LogEntry,
    rfc3339,
    stored_event,
    unchecked,
)

# gateway log events (gateway-protocol.md, "The gateway log")
LOGIN = "Login"
RE_LOGIN = "Re-Login"
RELOGIN_KICKOUT = "Relogin Kickout"
LOGIN_REJECTED = "Login Rejected"
LOGOUT = "Logout"
DISCONNECT = "Gateway Disconnect"
IDLE_TIMEOUT = "Idle Timeout"
BAD_PACKET = "Bad Packet"
SEQUENCE_GAP = "Sequence Gap"
GATEWAY_RESTART_LOG = "Gateway Restart"

BAD_PACKET_LIMIT = 10  # bad packets ...
BAD_PACKET_WINDOW = 60_000  # ... within this many ms close a logged-in connection
MAX_VALUE = 64  # bytes of digits, cli, to, by, cui
PRINTABLE = re.compile(r"[\x20-\x7e]{1,64}\Z")
TYPE = re.compile(r"[A-Z][A-Z_]*\Z")
BOOT = re.compile(r"[0-9A-Za-z_.:-]{1,64}\Z")

#: The range a corrected event time (`t + skew`) must fall in, ms UTC:
#: 1970-01-01T00:00:00.000Z .. 2106-02-07T06:28:15.999Z.  The narrowest
#: representation downstream is RADIUS Event-Timestamp (RFC 2869: unsigned
#: 32-bit seconds since 1970); a time outside it is a malformed `t`.
EARLIEST_EVENT_TIME = 0
LATEST_EVENT_TIME = 2**32 * 1000 - 1

#: The type-specific fields of gateway-protocol.md and how each is checked.
_NUMBER = "number"  # a positive decimal integer
_TEXT = "text"  # 1..64 bytes of printable ASCII
_INFO = "info"  # free text (codec details), at most 128 characters
_FIELDS: Mapping[str, str] = {
    "port": _NUMBER,
    "pport": _NUMBER,
    "with": _NUMBER,
    "digits": _TEXT,
    "cli": _TEXT,
    "to": _TEXT,
    "by": _TEXT,
    "cui": _TEXT,
    "cause": _TEXT,
    "role": _TEXT,
    "info": _INFO,
}
#: event types seen good (a small vocabulary): the regular expression runs
#: once per type, not once per event; bounded, so a client inventing types
#: cannot grow it
_good_types: set[str] = set()
_TYPES_LIMIT = 256
_FIELD_RANK: Mapping[str, int] = {key: n for n, key in enumerate(_FIELDS)}
_REQUIRED: Mapping[str, tuple[str, ...]] = {
    "HOOK_OFF": ("port",),
    "DIAL": ("digits",),
    "FAIL": ("cause",),
    "CALL_IN": ("cli", "port"),
    "RING": ("port",),
    "PSTN_CALL_IN": ("cli", "pport"),
    "PSTN_HOOK_OFF": ("pport",),
    "PSTN_DIAL": ("digits", "pport"),
    "PSTN_CONNECTED": ("pport",),
    "PSTN_HOOK_ON": ("pport",),
    "DIVERT": ("to", "by"),
    "TRANSFER": ("with",),
}


def visible(text: str) -> str:
    """
    `text` with every non-printable character (C0/C1 controls, DEL, format
    and separator characters such as NUL or U+202E) written as a visible
    ``\\xNN`` / ``\\uNNNN`` escape: what a client sent may reach the store,
    a web page and the operator's log, and must be safe in all of them
    (PostgreSQL refuses NUL in text).
    """
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


def log_entry(time: int, event: str, peer: str, gateway: str, mac: str, detail: str) -> LogEntry:
    """A gateway log entry whose texts are safe to store and show (see `visible`)."""
    return LogEntry(
        time=time, event=event, peer=visible(peer), gateway=visible(gateway),
        mac=visible(mac), detail=visible(detail),
    )


def _decimal(value: str, digits: int) -> bool:
    """ASCII digits only (str.isdigit also takes '¹' and other scripts' digits)."""
    return 0 < len(value) <= digits and value.isascii() and value.isdigit()


class LoginRefused(Exception):
    """LOGIN is answered ``ERR code=<code> reason=<reason>`` and the connection closed."""

    def __init__(self, code: str, reason: str, gateway: str = "???", mac: str = ""):
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.gateway = gateway
        self.mac = mac


@frozen
class LoginRequest:
    gw: str
    mac: str
    fxs: int
    fxo: int
    isdn: int
    callref: int
    clock: int  # the gateway's clock, ms, as if UTC
    firmware: str = ""
    boot_token: str | None = None

    @property
    def key(self) -> str:
        return gateway_key(self.gw, self.mac)


def _count(fields: Mapping[str, str], key: str, gw="???", mac="") -> int:
    value = fields.get(key)
    if value is None:
        raise LoginRefused("bad", f"missing {key}", gw, mac)
    if not _decimal(value, 9):
        raise LoginRefused("bad", f"{key} is not a number", gw, mac)
    return int(value)


def check_login(msg: Message, nonce: str, config: Config) -> LoginRequest:
    """
    Validate a LOGIN against the config: grammar, protocol version, allow-list
    and HMAC auth.  Raises LoginRefused with the spec's codes.
    """
    f = msg.fields
    if msg.verb != "LOGIN":
        raise LoginRefused("bad", f"expected LOGIN, got {msg.verb}")
    gw = f.get("gw", "")
    mac = f.get("mac", "")
    shown_gw = gw if GATEWAY_ID.match(gw) else "???"
    if f.get("proto") is None:
        raise LoginRefused("bad", "missing proto", shown_gw)
    if f["proto"] != "1":
        raise LoginRefused("proto", f"unsupported protocol {visible(f['proto'][:16])}", shown_gw)
    if not GATEWAY_ID.match(gw):
        raise LoginRefused("bad", "gw must be 1-32 of [0-9A-Za-z_-]")
    if not MAC.match(mac):
        raise LoginRefused("bad", "mac must be 12 hex digits", gw)
    mac = mac.upper()
    counts = {k: _count(f, k, gw, mac) for k in ("fxs", "fxo", "isdn", "callref")}
    if "time" not in f:
        raise LoginRefused("bad", "missing time", gw, mac)
    try:
        clock = parse_gateway_time(f["time"])
    except ValueError:
        raise LoginRefused("bad", "time is not YYYY-MM-DDTHH:MM:SS[.mmm]", gw, mac) from None
    boot = f.get("boot")
    if boot is not None and not BOOT.match(boot):
        raise LoginRefused("bad", "boot must be 1-64 of [0-9A-Za-z_.:-]", gw, mac)
    firmware = f.get("fw", "")
    if len(firmware) > MAX_VALUE or not firmware.isprintable():
        raise LoginRefused("bad", "fw must be at most 64 printable characters", gw, mac)

    key = gateway_key(gw, mac)
    gateway = config.gateway(key)
    if gateway is None and not config.server.allow_unknown_gateways:
        raise LoginRefused("denied", "gateway not allowed", gw, mac)
    if gateway is not None and gateway.secret:
        before, auth = split_auth(msg.raw)
        if auth is None:
            raise LoginRefused("auth", "missing auth", gw, mac)
        expected = login_auth(gateway.secret, nonce, before)
        # bytes: compare_digest refuses str with non-ASCII characters
        if not hmac.compare_digest(expected.encode("ascii"), auth.lower().encode("utf-8")):
            raise LoginRefused("auth", "wrong auth", gw, mac)
    return LoginRequest(
        gw=gw,
        mac=mac,
        firmware=firmware,
        boot_token=boot,
        clock=clock,
        **counts,
    )


def clock_skew(now: int, gateway_clock: int, tolerance_ms: int) -> int:
    """`now - gateway time`, or 0 where its size is within the tolerance."""
    skew = now - gateway_clock
    return 0 if abs(skew) <= tolerance_ms else skew


@frozen
class LoginOutcome:
    state: GatewayState  # what the store keeps from now on
    restart: CallEvent | None  # the synthetic event ending the old boot's calls
    log: tuple[LogEntry, ...]


def decide_login(
    req: LoginRequest,
    stored: GatewayState | None,
    open_refs: set[int],
    now: int,
    peer: str,
    tolerance_ms: int,
    relogin: bool,
    *,
    received: int | None = None,
    heard: int | None = None,
) -> LoginOutcome:
    """
    The effects of an accepted LOGIN: skew, boot epoch, reboot detection
    (gateway-protocol.md, session rule 10) and the log entries.

    `stored` is what is known of the gateway (the store's row, or this
    node's live state of it); `open_refs` are the call refs still open for
    its current boot; `relogin` says an older connection of the gateway is
    still open.  `received` is when the LOGIN arrived (the skew is measured
    there, not after the store lookups; default `now`); `heard` is when this
    node last heard from the gateway (PINGs are kept in memory only): the
    old boot's calls end at the latest of it and the stored last-heard.
    """
    skew = clock_skew(now if received is None else received, req.clock, tolerance_ms)
    log: list[LogEntry] = []

    def entry(event, detail):
        log.append(log_entry(now, event, peer, req.gw, req.mac, detail))

    if relogin:
        entry(RE_LOGIN, f"Gateway[{req.gw}] MAC[{req.mac}] From [{peer}] Re-Login!")
    entry(LOGIN, login_detail(req, peer))

    heard_times = [t for t in (heard, stored.last_heard if stored else None) if t is not None]
    last_heard = max(heard_times) if heard_times else None
    restart = None
    if stored is None:
        boot = req.boot_token or "r0"
        state = GatewayState(key=req.key, id=req.gw, mac=req.mac, boot=boot, boot_token=req.boot_token)
    else:
        state = stored
        rebooted = False
        why = ""
        if req.boot_token is not None and stored.boot_token is not None:
            if req.boot_token != stored.boot_token:
                rebooted, why = True, f"boot {stored.boot_token} -> {req.boot_token}"
        elif open_refs and req.callref < max(open_refs):
            rebooted, why = True, f"callref {req.callref} below open call ref {max(open_refs)}"
        if rebooted:
            restart = CallEvent(
                gateway=req.key,
                seq=None,
                ref=0,
                type=GATEWAY_RESTART,
                time=last_heard if last_heard is not None else now,
                received=now,
                boot=stored.boot,
                fields={"detail": why},
            )
            entry(GATEWAY_RESTART_LOG, f"Gateway[{req.gw}] restarted ({why}); open calls end at last heard")
            restarts = stored.restarts + (0 if req.boot_token else 1)
            boot = req.boot_token or f"r{restarts}"
            state = evolve(state, boot=boot, restarts=restarts)
        # a login without a token keeps the token last seen
        state = evolve(state, boot_token=req.boot_token or state.boot_token)
    state = evolve(
        state,
        fxs=req.fxs,
        fxo=req.fxo,
        isdn=req.isdn,
        callref=req.callref,
        firmware=req.firmware,
        peer=peer,
        login=now,
        skew_ms=skew,
        # never back: an event stamped ahead of the server's clock (within
        # the clock tolerance) has been heard "at" its own time
        last_heard=now if last_heard is None or restart is not None else max(now, last_heard),
        online=True,
    )
    return LoginOutcome(state=state, restart=restart, log=tuple(log))


def login_detail(req: LoginRequest, peer: str) -> str:
    """The seed's Login line: ``Gateway[8200] MAC[...] From [ip:port] FXS(2) ... Login!``."""
    from datetime import UTC, datetime

    clock = datetime.fromtimestamp(req.clock / 1000, UTC).strftime("%Y/%m/%d %H:%M:%S")
    return (
        f"Gateway[{req.gw}] MAC[{req.mac}] From [{peer}] FXS({req.fxs}) FXO({req.fxo}) "
        f"ISDN({req.isdn}) CallRef({req.callref}) Time[{clock}] Login!"
    )


# -- events ---------------------------------------------------------------------


def _ids(fields: Mapping[str, str]) -> tuple[int, int, str]:
    """
    An event's seq (a positive integer), ref (a non-negative one) and type;
    BadPacket for the first that is missing or wrong, with the seq where it
    was read.  One call for the three, once per event (issue 15).
    """
    text = fields.get("seq")
    if text is None:
        raise BadPacket("missing seq")
    # _decimal(text, 18), inline, here and for ref
    seq = int(text) if 0 < len(text) <= 18 and text.isascii() and text.isdigit() else 0
    if not seq:
        raise BadPacket("seq is not a positive integer")
    text = fields.get("ref")
    if text is None:
        raise BadPacket("missing ref", seq)
    if not (0 < len(text) <= 18 and text.isascii() and text.isdigit()):
        raise BadPacket("ref is not a non-negative integer", seq)
    etype = fields.get("type")
    if etype is None:
        raise BadPacket("missing type", seq)
    if etype not in _good_types:
        if not TYPE.match(etype) or len(etype) > 32:
            raise BadPacket("type must be [A-Z][A-Z_]*", seq)
        if len(_good_types) < _TYPES_LIMIT:
            _good_types.add(etype)
    return seq, int(text), etype


#: an event's shape (its type, then its keys as written) -> the type-specific
#: fields it has, as (key, kind) in _FIELDS' order, and the problems of the
#: required ones it lacks: a gateway's events come in a few dozen shapes, so
#: this is worked out once a shape rather than once an event (issue 15);
#: bounded, as _good_types
_shapes: dict[tuple[str, ...], tuple[tuple[tuple[str, str], ...], tuple[str, ...]]] = {}
_SHAPES_LIMIT = 1024


def _shape(etype: str, fields: Mapping[str, str]) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """What `_shapes` keeps for an event of type `etype` with these fields."""
    # in _FIELDS' order: the stored fields and the problems read alike
    # whatever order the gateway wrote them in
    present = sorted((key for key in fields if key in _FIELDS), key=_FIELD_RANK.__getitem__)
    missing = tuple(f"{etype} without {key}" for key in _REQUIRED.get(etype, ()) if key not in fields)
    return tuple((key, _FIELDS[key]) for key in present), missing


def parse_event(
    f: Mapping[str, str], gateway: str, boot: str, skew: int, now: int
) -> tuple[CallEvent, tuple[str, ...]]:
    """
    An EV message's fields `f` as (a CallEvent, its problems).  A wrong
    seq, ref or type raises BadPacket (with the seq where it could be
    read); a wrong type-specific field is dropped and reported in the
    problems (for the log), never a reason to drop the event.  A plain
    pair, not a value class: one object fewer to build per event (issue 15).
    """
    seq, ref, etype = _ids(f)
    problems = []
    time = now
    if "t" in f:
        try:
            corrected = parse_gateway_time(f["t"]) + skew
        except ValueError:
            problems.append("t is not YYYY-MM-DDTHH:MM:SS[.mmm]")
        else:
            if EARLIEST_EVENT_TIME <= corrected <= LATEST_EVENT_TIME:
                time = corrected
            else:
                problems.append("t corrected by the login's clock skew is outside 1970..2106")
    fields = {}
    # the type-specific fields present (an event has a few of the eleven)
    shape = (etype, *f)
    known = _shapes.get(shape)
    if known is None:
        known = _shape(etype, f)
        if len(_shapes) < _SHAPES_LIMIT:
            _shapes[shape] = known
    present, missing = known
    for key, kind in present:
        value = f[key]
        if kind == _NUMBER:
            ok = _decimal(value, 9)
        elif kind == _TEXT:
            ok = PRINTABLE.match(value) is not None
        else:
            ok = len(value) <= 128 and value.isprintable()
        if ok:
            fields[key] = str(int(value)) if kind == _NUMBER else value
        else:
            problems.append(f"{key} is malformed")
    problems += missing
    # checked above, and `fields` is this event's own: built without
    # attrs' checks and copies, once per event on the ingest path (issue 15)
    return stored_event(gateway, seq, ref, etype, time, now, boot, fields, None), tuple(problems)


class BadPacketMeter:
    """Counts bad packets of a logged-in connection: 10 within 60 s close it."""

    def __init__(self, limit: int = BAD_PACKET_LIMIT, window: int = BAD_PACKET_WINDOW):
        self.limit = limit
        self.window = window
        self._times: deque[int] = deque()

    def record(self, now: int) -> bool:
        """Count one bad packet; True when the connection must be closed."""
        self._times.append(now)
        while self._times and self._times[0] <= now - self.window:
            self._times.popleft()
        return len(self._times) >= self.limit


# -- the session: one connection's state machine ----------------------------------

AWAITING_LOGIN = "awaiting login"
LOGGING_IN = "logging in"  # the LOGIN passed its checks; the gateway is looked up
LOGGED_IN = "logged in"
CLOSING = "closing"

MAX_QUEUED_LINES = 256  # lines a client may send before its OK arrives


@frozen
class Send:
    """Write one message to the gateway."""

    verb: str
    fields: Mapping[str, str] = field(factory=dict)


@frozen
class Close:
    """Close the connection; `why` is the log event that says why (None: a Gateway Disconnect is logged)."""

    why: str | None


@frozen
class LookUp:
    """
    The LOGIN passed its checks: look the gateway up (once its earlier
    writes have settled), decide the login (`GatewaySession.decide`) and
    store its outcome; then `GatewaySession.accepted`.
    """

    request: LoginRequest
    received: int  # ms; the skew is measured here


@frozen
class Rejected:
    """A LOGIN refused: the operator's log says so (the ERR and the gateway log entry are in the other actions)."""

    entry: LogEntry


@frozen
class CountBadPacket:
    """One bad packet from the peer's address (the flood meter counts them)."""


@frozen
class Bye:
    """LOGOUT: write what is collected, answer BYE once the gateway's writes have settled, close."""


@frozen
class Store:
    """
    What one chunk of bytes produced, written as one batch: `events`,
    `log`, and `ack` (the highest seq seen, duplicates included), to be
    acknowledged once every event up to it is committed.  `top` is the
    highest seq handed to the store, `heard` the latest event time.
    """

    events: tuple[CallEvent, ...] = ()
    log: tuple[LogEntry, ...] = ()
    ack: int = 0
    top: int = 0
    heard: int | None = None
    received: int = 0  # events read (for the metrics)
    duplicates: int = 0  # ... of which duplicates


#: `flush`'s Store, every field given (`unchecked`): once per read (issue 15)
_store = unchecked(Store)


def _seq_of(msg: Message) -> int | None:
    """A message's ``seq=`` where it is a valid one, for the ERR answering it."""
    value = msg.fields.get("seq")
    if value is None or not _decimal(value, 18):
        return None
    return int(value) or None


@define(eq=False)
class GatewaySession:
    """
    GWP/1's rules for one connection, sans I/O: each call takes ``now``
    (ms UTC) and what arrived, and returns the actions the protocol carries
    out (`Send`, `Close`, `LookUp`, `Rejected`, `CountBadPacket`, `Bye`).
    Events and log entries collect until `flush`, which returns them as
    one `Store`: one TCP read is one write batch.

    While the session speaks for its gateway it owns the gateway's `seq`
    bookkeeping: `submitted` starts at the `last` of the OK (the highest
    seq stored in order) and follows the events handed to the store.
    """

    config: Config = field(repr=False)
    peer: str
    nonce: str
    phase: str = AWAITING_LOGIN
    gw: str = "???"
    mac: str = ""
    key: str | None = None
    boot: str = ""
    skew_ms: int = 0
    submitted: int = 0
    #: the log event that says why the connection closed (None: not said yet)
    closed_why: str | None = None
    _meter: BadPacketMeter = field(factory=BadPacketMeter)
    _queued: list[bytes] = field(factory=list)  # lines sent before the OK
    # collected until `flush`
    _events: list[CallEvent] = field(factory=list)
    _log: list[LogEntry] = field(factory=list)
    _ack: int = 0
    _heard: int | None = None
    _received: int = 0
    _duplicates: int = 0

    @property
    def talking(self) -> bool:
        """Still answering the gateway (a LOGOUT waits for its ACKs before BYE)."""
        return self.phase == LOGGED_IN or self.closed_why == LOGOUT

    def hello(self, now: int) -> Send:
        return Send("HELLO", {"proto": "1", "nonce": self.nonce, "time": rfc3339(now)})

    def entry(self, event: str, detail: str, now: int) -> LogEntry:
        return log_entry(now, event, self.peer, self.gw, self.mac, detail)

    # -- lines -------------------------------------------------------------------

    def line(self, now: int, line: bytes) -> list:
        """One line as it arrived (without its LF; a CR before it still there)."""
        if self.phase == CLOSING:
            return []
        if self.phase == LOGGING_IN:
            if len(self._queued) >= MAX_QUEUED_LINES:
                return self.bad_packet(now, "too many lines before OK", seq_hint(line), close=True)
            self._queued.append(line)
            return []
        # (a CR before the LF does not count; looked for only in a long line)
        if len(line) > MAX_LINE and len(line) - line.endswith(b"\r") > MAX_LINE:
            return self.too_long(now, line)
        try:
            parts = parse_parts(line)
        except BadPacket as e:
            return self.bad_packet(now, e.reason, e.seq)
        if parts is None:
            return []
        verb, fields, raw = parts
        if verb == "EV" and self.phase == LOGGED_IN:
            # the ingest path: an event's fields to its rules as they are,
            # without a Message or a look-up of its verb (issue 15)
            return self._event(now, fields)
        msg = Message(verb, fields, raw)
        if self.phase == AWAITING_LOGIN:
            if msg.verb == "LOGIN":
                return self._login(now, msg)
            return self.bad_packet(now, f"expected LOGIN, got {msg.verb}", _seq_of(msg))
        handler = self._VERBS.get(msg.verb)
        if handler is None:
            return self.bad_packet(now, f"unknown verb {msg.verb}", _seq_of(msg))
        return handler(self, now, msg)

    def too_long(self, now: int, line: bytes, partial: bool = False) -> list:
        """
        A line over the limit (`partial`: what is buffered of one): a bad
        packet that closes at once.
        """
        if self.phase == CLOSING:
            return []
        if self.phase == LOGGING_IN and not partial:
            # answered after the OK, as every line sent before it (enough of
            # it kept to stay over the limit and to read its seq)
            return self.line(now, line[:MAX_LINE + 2])
        return self.bad_packet(now, f"line longer than {MAX_LINE} bytes", seq_hint(line), close=True)

    def bad_packet(self, now: int, reason: str, seq: int | None, close: bool = False) -> list:
        fields = {"code": "bad"}
        if seq is not None:
            fields["seq"] = str(seq)
        fields["reason"] = reason
        actions: list = [CountBadPacket(), Send("ERR", fields)]
        self._log.append(self.entry(BAD_PACKET, reason if seq is None else f"seq {seq}: {reason}", now))
        if self.phase != LOGGED_IN:
            actions.append(self.close(BAD_PACKET))
        elif close or self._meter.record(now):
            if not close:
                self._log.append(self.entry(
                    BAD_PACKET, f"{BAD_PACKET_LIMIT} bad packets within 60 s: closed", now))
            actions.append(self.close(BAD_PACKET))
        return actions

    def close(self, why: str | None) -> Close:
        self.phase = CLOSING
        if self.closed_why is None:
            self.closed_why = why
        return Close(why)

    # -- login -------------------------------------------------------------------

    def _login(self, now: int, msg: Message) -> list:
        try:
            req = check_login(msg, self.nonce, self.config)
        except LoginRefused as e:
            self.gw, self.mac = e.gateway, e.mac
            entry = self.entry(LOGIN_REJECTED, f"code={e.code} {e.reason}", now)
            self._log.append(entry)
            return [Send("ERR", {"code": e.code, "reason": e.reason}), Rejected(entry),
                    self.close(LOGIN_REJECTED)]
        self.phase = LOGGING_IN
        self.gw, self.mac, self.key = req.gw, req.mac, req.key
        return [LookUp(req, now)]

    def decide(
        self,
        now: int,
        look_up: LookUp,
        stored: GatewayState | None,
        open_refs: set[int],
        relogin: bool,
        heard: int | None,
    ) -> LoginOutcome:
        """The login's outcome (`decide_login`) once the gateway is looked up."""
        return decide_login(
            look_up.request, stored, open_refs, now, self.peer,
            int(self.config.server.clock_tolerance * 1000), relogin,
            received=look_up.received, heard=heard,
        )

    def accepted(self, now: int, state: GatewayState, last: int, session_id: str) -> list:
        """
        The login's outcome is stored: OK, then the lines queued meanwhile.
        `last` is the highest seq of the gateway stored in order;
        `session_id` the OK's ``session=``.
        """
        if self.phase != LOGGING_IN:
            return []
        self.phase = LOGGED_IN
        self.boot, self.skew_ms, self.submitted = state.boot, state.skew_ms, last
        actions: list = [Send("OK", {"session": session_id, "last": str(last)})]
        queued, self._queued = self._queued, []
        for line in queued:
            if self.phase != LOGGED_IN:
                break
            actions += self.line(now, line)
        return actions

    def kicked_out(self, now: int) -> tuple[LogEntry, Close]:
        """A newer connection of the same gateway logged in: this one goes, with nothing more written."""
        entry = self.entry(RELOGIN_KICKOUT, f"Gateway[{self.gw}] from [{self.peer}] Relogin Kickout", now)
        self._events, self._log = [], []
        return entry, self.close(RELOGIN_KICKOUT)

    def timed_out(self, now: int) -> Close:
        """Silent for too long (logged in) or no LOGIN in time: its log entry, then close."""
        if self.phase == LOGGED_IN:
            self._log.append(self.entry(
                IDLE_TIMEOUT, f"silent for {self.config.server.idle_timeout:g} s", now))
        else:
            self._log.append(self.entry(
                DISCONNECT, f"no LOGIN within {self.config.server.login_timeout:g} s", now))
        return Close(IDLE_TIMEOUT)

    def finish(self, now: int, why: str) -> list[LogEntry]:
        """
        The connection ended: what is left to log (a Gateway Disconnect
        unless the log already says why it closed).  Events not yet flushed
        are dropped (not acknowledged: the gateway resends them).
        """
        log = self._log
        if self.closed_why is None:
            log.append(self.entry(DISCONNECT, why, now))
        self.closed_why = self.closed_why or DISCONNECT
        self.phase = CLOSING
        self._events, self._log, self._ack = [], [], 0
        self._heard, self._received, self._duplicates = None, 0, 0
        return log

    # -- verbs of a logged-in gateway ----------------------------------------------

    def _event(self, now: int, fields: Mapping[str, str]) -> list:
        try:
            event, problems = parse_event(fields, self.key, self.boot, self.skew_ms, now)
        except BadPacket as e:
            return self.bad_packet(now, e.reason, e.seq)
        seq = event.seq
        self._received += 1
        actions: list = []
        if problems:
            reason = "; ".join(problems)
            actions.append(Send("ERR", {"code": "bad", "seq": str(seq), "reason": reason}))
            self._log.append(self.entry(BAD_PACKET, f"seq {seq}: {reason} (event stored)", now))
        if seq > self._ack:
            self._ack = seq
        if seq <= self.submitted:
            self._duplicates += 1
            return actions  # a duplicate: acked, not stored again
        if seq > self.submitted + 1:
            self._log.append(self.entry(SEQUENCE_GAP, f"expected seq {self.submitted + 1}, got {seq}", now))
        self.submitted = seq
        # heard "at" the event's own time when that is later (a clock ahead
        # within the tolerance): a restart never ends a call before its events
        event_time = event.time
        if self._heard is None or event_time > self._heard:
            self._heard = event_time
        self._events.append(event)
        return actions

    def _ping(self, now: int, msg: Message) -> list:
        return [Send("PONG")]

    def _logout(self, now: int, msg: Message) -> list:
        self._log.append(self.entry(LOGOUT, f"[Logout: {self.gw}] [IP:{self.peer.rsplit(':', 1)[0]}]", now))
        self.phase = CLOSING  # nothing more is read; BYE once all is stored
        self.closed_why = LOGOUT
        return [Bye()]

    def _login_again(self, now: int, msg: Message) -> list:
        return self.bad_packet(now, "already logged in", _seq_of(msg))

    # (EV: `line` takes it to _event itself)
    _VERBS = {"PING": _ping, "LOGOUT": _logout, "LOGIN": _login_again}

    # -- the batch -------------------------------------------------------------------

    def flush(self) -> Store | None:
        """What was collected since the last flush, as one `Store` (None: nothing)."""
        if not (self._events or self._log or self._ack or self._received):
            return None
        store = _store(
            events=tuple(self._events), log=tuple(self._log), ack=self._ack,
            top=self._events[-1].seq if self._events else 0, heard=self._heard,
            received=self._received, duplicates=self._duplicates,
        )
        self._events, self._log, self._ack = [], [], 0
        self._heard, self._received, self._duplicates = None, 0, 0
        return store
