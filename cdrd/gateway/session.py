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

from attrs import evolve, frozen

from cdrd.config import GATEWAY_ID, MAC, Config, gateway_key
from cdrd.gateway.codec import (
    BadPacket,
    Message,
    login_auth,
    parse_gateway_time,
    split_auth,
)
from cdrd.values import GATEWAY_RESTART, CallEvent, GatewayState, LogEntry

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


@frozen
class ParsedEvent:
    seq: int
    event: CallEvent
    problems: tuple[str, ...]  # type-specific fields dropped, for the log


def _positive(fields: Mapping[str, str], key: str) -> int:
    value = fields.get(key)
    if value is None:
        raise BadPacket(f"missing {key}")
    if not _decimal(value, 18) or (key == "seq" and int(value) == 0):
        raise BadPacket(f"{key} is not a {'positive' if key == 'seq' else 'non-negative'} integer")
    return int(value)


def parse_event(
    msg: Message, gateway: str, boot: str, skew: int, now: int
) -> ParsedEvent:
    """
    An EV message as a CallEvent.  A wrong seq, ref or type raises BadPacket
    (with the seq where it could be read); a wrong type-specific field is
    dropped and reported in `problems`, never a reason to drop the event.
    """
    f = msg.fields
    seq = None
    try:
        seq = _positive(f, "seq")
        ref = _positive(f, "ref")
        etype = f.get("type")
        if etype is None:
            raise BadPacket("missing type")
        if not TYPE.match(etype) or len(etype) > 32:
            raise BadPacket("type must be [A-Z][A-Z_]*")
    except BadPacket as e:
        e.seq = seq
        raise
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
    for key, kind in _FIELDS.items():
        value = f.get(key)
        if value is None:
            continue
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
    for key in _REQUIRED.get(etype, ()):
        if key not in f:
            problems.append(f"{etype} without {key}")
    return ParsedEvent(
        seq=seq,
        event=CallEvent(
            gateway=gateway,
            seq=seq,
            ref=ref,
            type=etype,
            time=time,
            received=now,
            boot=boot,
            fields=fields,
        ),
        problems=tuple(problems),
    )


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
