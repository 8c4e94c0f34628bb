"""
The call-leg model (call-records.md): stored gateway events in, call
records, CDRs and leg accounting products out.

Pure and deterministic: no Twisted, no clock.  Time comes in with the
events; `stale_calls` takes `now` as an argument.  Whatever the events,
`apply` never raises and gives one CallEnd per call.
"""

from __future__ import annotations

import heapq
from collections import deque

from attrs import define, evolve, frozen

from cdrd.config import Config, GatewayConfig
from cdrd.values import (
    GATEWAY_RESTART,
    RADIUS_CUI,
    STALE,
    CallEnd,
    CallEvent,
    CallRecord,
    Cdr,
    GatewayState,
    Leg,
    LegAnswer,
    LegStart,
    LegStop,
    ModelOutput,
    call_id,
    cdr_id,
    unchecked,
    unchecked_leg,
)

HANG_UPS = frozenset({"REMOTE_HOOK_ON", "PSTN_HOOK_ON", "HOOK_ON"})
RINGS = frozenset({"RING_BACK", "RING"})
KNOWN_TYPES = frozenset(
    {
        "HOOK_OFF",
        "DIAL",
        "RING_BACK",
        "TALK",
        "BUSY",
        "FAIL",
        "REMOTE_HOOK_ON",
        "HOOK_ON",
        "CALL_IN",
        "RING",
        "REJECT",
        "PSTN_CALL_IN",
        "PSTN_HOOK_OFF",
        "PSTN_DIAL",
        "PSTN_CONNECTED",
        "PSTN_HOOK_ON",
        "DIVERT",
        "HOLD",
        "RESUME",
        "TRANSFER",
    }
)

#: the times a product may carry: what rfc3339 renders (1970-01-01 to
#: 9999-12-31); event times outside are clamped (a gateway clock far out)
MIN_TIME_MS = 0
MAX_TIME_MS = 253_402_300_799_999

#: ended calls remembered per gateway so that late events change nothing:
#: the last ones of each gateway, so a busy gateway evicts none of another's
TOMBSTONES_PER_GATEWAY = 1024

# The products, from values the model made itself: built positionally by
# `unchecked` (about 2x faster than attrs' __init__, ten a call; issue 15).
# They have no validator or converter to skip, only attrs' frozen setattr.
_leg_start = unchecked(LegStart)
_leg_answer = unchecked(LegAnswer)
_leg_stop = unchecked(LegStop)
_call_end = unchecked(CallEnd)
_call_record = unchecked(CallRecord)
_cdr = unchecked(Cdr)


@frozen
class OpenCall:
    """An open call, for the dashboard and for reboot detection."""

    gateway: str
    boot: str
    ref: int
    begin: int
    port: int | None
    pport: int | None = None


@define(slots=True)
class _Tombstones:
    """The ended calls of one gateway that late events must not reopen."""

    recent: deque  # (boot, ref), the last `cap` ended, oldest first
    members: set  # what `recent` holds
    kept: set  # (boot, ref) loaded by recovery: never evicted

    def __contains__(self, key) -> bool:
        return key in self.members or key in self.kept

    def __len__(self) -> int:
        return len(self.members | self.kept)


@define(slots=True)
class _Draft:
    """A CDR being built; fixed into a Cdr when its call ends."""

    number: int
    call: str  # id of the call that created it
    cui: str
    dialled: str | None  # None: the creating call's dialled number, resolved at its end
    cli: str
    ring: int | None = None  # first ringing after creation
    start: int | None = None  # the answer of its leg
    ringing: int | None = None  # fixed at the answer


@define(slots=True)
class _LegState:
    leg: Leg
    answered: int | None = None
    #: ms UTC it was created; None once its LegStart is out (an inbound leg
    #: of a phone or PSTN line waits for the number dialled: _start_pending)
    pending: int | None = None


@define(slots=True)
class _Call:
    gateway: str
    boot: str
    ref: int
    id: str
    begin: int
    first_id: int | None = None  # lowest event id this call depends on
    last_time: int = 0
    last_received: int = 0
    port: int | None = None
    pport: int | None = None
    # what was seen
    hook_off: bool = False  # HOOK_OFF started the call here
    call_in: bool = False
    rejected: bool = False
    pstn: bool = False
    rung: bool = False  # RING: a local phone rang
    first_ring: int | None = None  # for a CDR created after the call rang
    dialed: list | None = None  # DIAL digits, in order
    digits_before_answer: int = 0  # how many of `dialed` came before the answer
    pstn_dial: list | None = None  # PSTN_DIAL digits, in order
    pstn_before_answer: int = 0  # how many of `pstn_dial` came before the answer
    to: str = ""
    connect: int | None = None
    hangup: int | None = None  # first hang-up after connect: the record's Time
    cdr_end: int | None = None  # first hang-up after connect or the last join: CDR end
    joined: bool = False  # a TRANSFER joined another call's leg into this one
    pstn_from: int | None = None  # PSTN_CONNECTED, else PSTN_HOOK_OFF
    pstn_connected: bool = False
    pstn_to: int | None = None
    cli: str = ""
    pstn_cli: str = ""
    event_cause: str = ""  # from BUSY / FAIL / REJECT
    cui_rejected: bool = False  # RADIUS answered the CUI request with a reject
    divert_loop: bool = False
    diverts: int = 0
    # the legs and the CDR stack
    legs: int = 0  # legs created (numbers)
    cdrs: int = 0  # CDRs created (numbers)
    caller_cui: str | None = None  # the caller's CUI, where it has one
    caller_cli: str = ""
    inbound: _LegState | None = None
    outbound: _LegState | None = None
    sticky: _Draft | None = None
    stack: list = None  # _Draft, bottom first

    def dialled_number(self) -> str:
        # like DIAL, PSTN_DIAL digits after the answer are DTMF, not the number
        if self.pstn_before_answer:
            return "".join(self.pstn_dial[: self.pstn_before_answer])
        if self.digits_before_answer:
            return "".join(self.dialed[: self.digits_before_answer])
        return self.to


class CallModel:
    """
    Per gateway, events arrive in commit order; a call is
    (gateway, event.boot, event.ref).  See docs/calls.md.
    """

    def __init__(
        self, config: Config, tombstones_per_gateway: int = TOMBSTONES_PER_GATEWAY
    ):
        self.config = config
        self.max_divert_depth = config.server.max_divert_depth
        self._tombstone_cap = tombstones_per_gateway
        self._calls: dict[str, dict[tuple[str, int], _Call]] = {}
        self._ended: dict[str, _Tombstones] = {}
        self._heaps: dict[str, list] = {}  # gateway -> [(first_id, boot, ref)], lazy
        self._applied: dict[str, int] = {}  # gateway -> highest event id applied
        self._phone_cache: dict[tuple[str, int | None], tuple[str, str]] = {}
        # gateway -> its address (host:port) as last stored; a leg keeps the
        # one it began with (cdrd-Gateway-Address in all its packets)
        self._peers: dict[str, str] = {}

    # -- the gateways' state ------------------------------------------------

    def gateway_seen(self, state: GatewayState) -> None:
        """A gateway's state was stored (its LOGIN, or read at recovery)."""
        if state.peer:
            self._peers[state.key] = state.peer

    def forget(self, gateway: str) -> None:
        """
        Drop everything known of `gateway` (another cdrd node owns it now;
        taking it back reloads it from the store).
        """
        for known in (self._calls, self._ended, self._heaps, self._applied, self._peers):
            known.pop(gateway, None)

    # -- queries ---------------------------------------------------------

    def open_calls(self, gateway: str | None = None) -> list[OpenCall]:
        groups = (
            [self._calls.get(gateway, {})]
            if gateway is not None
            else self._calls.values()
        )
        return [
            OpenCall(c.gateway, c.boot, c.ref, c.begin, c.port, c.pport)
            for calls in groups
            for c in calls.values()
        ]

    def open_refs(self, gateway: str, boot: str) -> set[int]:
        return {ref for (b, ref) in self._calls.get(gateway, {}) if b == boot}

    def open_count(self) -> int:
        return sum(len(c) for c in self._calls.values())

    def stale_calls(
        self, now_ms: int, stale_after_ms: int
    ) -> list[tuple[str, str, int, int]]:
        """Open calls whose last event was received `stale_after_ms` ago or more."""
        limit = now_ms - stale_after_ms
        return [
            (c.gateway, c.boot, c.ref, c.last_time)
            for calls in self._calls.values()
            for c in calls.values()
            if c.last_received <= limit
        ]

    def replay_from(self, gateway: str) -> int | None:
        """The lowest event id an open call of `gateway` depends on."""
        heap = self._heaps.get(gateway)
        calls = self._calls.get(gateway, {})
        while heap:
            first, boot, ref = heap[0]
            call = calls.get((boot, ref))
            if call is not None and call.first_id == first:
                return first
            heapq.heappop(heap)
        return None

    def applied(self, gateway: str) -> int | None:
        return self._applied.get(gateway)

    def is_ended(self, gateway: str, boot: str, ref: int) -> bool:
        return (boot, ref) in self._ended.get(gateway, ())

    # -- input -----------------------------------------------------------

    def tombstones(self, gateway: str) -> int:
        """How many ended calls of `gateway` are remembered."""
        ended = self._ended.get(gateway)
        return len(ended) if ended is not None else 0

    def mark_ended(self, gateway: str, boot: str, ref: int, keep: bool = False) -> None:
        """
        A tombstone: later events of this call change nothing.  The last
        `tombstones_per_gateway` of each gateway are remembered; `keep`
        (recovery) remembers this one for good.
        """
        ended = self._ended.get(gateway)
        if ended is None:
            ended = self._ended[gateway] = _Tombstones(deque(), set(), set())
        key = (boot, ref)
        if keep:
            ended.kept.add(key)
            return
        if key in ended.members:
            return
        ended.recent.append(key)
        ended.members.add(key)
        if len(ended.recent) > self._tombstone_cap:
            ended.members.discard(ended.recent.popleft())

    def apply(self, event: CallEvent) -> list[ModelOutput]:
        gateway = event.gateway
        if not MIN_TIME_MS <= event.time <= MAX_TIME_MS:
            # every product's time must render (CDR line, record, RADIUS)
            event = evolve(event, time=min(max(event.time, MIN_TIME_MS), MAX_TIME_MS))
        if event.id is not None:
            last = self._applied.get(gateway)
            if last is not None and event.id <= last:
                return []  # applied already: a replay
            self._applied[gateway] = event.id
        kind = event.type
        if kind == GATEWAY_RESTART:
            out: list[ModelOutput] = []
            calls = self._calls.get(gateway, {})
            for key in [k for k in calls if k[0] == event.boot]:
                self._end(calls[key], event.time, "gateway-restart", out)
            return out
        key = (event.boot, event.ref)
        calls = self._calls.get(gateway)
        call = calls.get(key) if calls is not None else None
        if kind == STALE:
            out = []
            if call is not None:
                self._end(call, event.time, "stale", out)
            return out
        if kind == RADIUS_CUI:
            # an answer about a call: never makes one (an answer after the
            # call ended changes nothing)
            if call is not None:
                self._radius_cui(call, event)
            return []
        if kind not in KNOWN_TYPES:
            return []
        if call is None:
            if key in self._ended.get(gateway, ()):
                return []  # a late event of an ended call
            if calls is None:
                calls = self._calls[gateway] = {}
            call = _Call(
                gateway,
                event.boot,
                event.ref,
                call_id(gateway, event.boot, event.ref),
                begin=event.time,
                stack=[],
            )
            calls[key] = call
            if event.id is not None:
                call.first_id = event.id
                heapq.heappush(
                    self._heaps.setdefault(gateway, []),
                    (event.id, event.boot, event.ref),
                )
        call.last_time = event.time
        call.last_received = event.received
        out = []
        self._step(call, event, out)
        return out

    # -- the rules -------------------------------------------------------

    def _gateway_config(self, gateway: str) -> GatewayConfig | None:
        return self.config.gateways.get(gateway)

    def _phone(self, gateway: str, port: int | None) -> tuple[str, str]:
        """(CUI, CLI) of a local phone."""
        key = (gateway, port)
        hit = self._phone_cache.get(key)
        if hit is not None:
            return hit
        gc = self._gateway_config(gateway)
        pc = gc.ports.get(port) if gc is not None and port is not None else None
        fallback = f"{gateway}-{port if port is not None else 'unknown'}"
        if pc is None:
            # not cached: a gateway may name any port number
            return fallback, fallback
        cui = pc.cui or pc.ddi or pc.exten or pc.name or fallback
        cli = pc.ddi or pc.exten or cui
        self._phone_cache[key] = (cui, cli)  # bounded by the configuration
        return cui, cli

    def _line(self, gateway: str, pport: int | None):
        """The LineConfig of a PSTN line, or None."""
        gc = self._gateway_config(gateway)
        if gc is None or pport is None:
            return None
        return gc.lines.get(pport)

    def _late_sticky(self, call: _Call, cui: str, cli: str) -> None:
        """
        The caller's CUI (a carrier line's, or a trusted `cui=`) arrived after
        its inbound leg was made from a later event, without one: the sticky
        CDR (rule 4) is made now.  The leg's own values stay as started.
        """
        if call.caller_cui is not None or call.sticky is not None or call.hook_off:
            return
        call.caller_cui = cui
        if not call.caller_cli:
            call.caller_cli = cli
        d = self._new_draft(call, cui, None, cli)
        d.ring = call.first_ring
        if call.connect is not None:
            d.start = call.connect
            d.ringing = max(0, call.connect - d.ring) if d.ring is not None else 0
        call.sticky = d

    def _radius_cui(self, call: _Call, event: CallEvent) -> None:
        """
        The RADIUS server's answer about the caller (RFC 4372): a CUI in an
        Access-Accept makes the caller's sticky inbound CDR (rule 4), ahead
        of a line's configured `cui` or a trusted `cui=`; a reject is noted
        (Cause `cui-rejected` where the call has no other); a timeout
        changes nothing.  The inbound leg takes the CUI only if its Start
        has not gone out yet (a leg's values are fixed at its Start).
        """
        result = event.fields.get("result")
        if result == "reject":
            call.cui_rejected = True
            return
        cui = event.fields.get("cui") or ""
        if result != "accept" or not cui or call.hook_off:
            return
        if call.sticky is not None:
            call.sticky.cui = cui
            call.caller_cui = cui
        else:
            cli = call.caller_cli or call.cli or call.pstn_cli
            self._late_sticky(call, cui, cli)
        ls = call.inbound
        if ls is not None and ls.pending is not None:
            ls.leg = ls.leg.with_values(cui=cui, dialled=ls.leg.dialled)

    def _divert_cui(self, gateway: str, port: int | None, by: str) -> str:
        gc = self._gateway_config(gateway)
        if port is not None:
            return self._phone(gateway, port)[0]
        if gc is not None and by:
            for number, pc in sorted(gc.ports.items()):
                if by in (pc.exten, pc.ddi):
                    return self._phone(gateway, number)[0]
        return by

    def _new_leg(
        self,
        call: _Call,
        direction: str,
        port=None,
        pport=None,
        cui="",
        cli="",
        dialled="",
    ) -> _LegState:
        number = 0 if direction == "inbound" else call.legs + 1
        if direction == "outbound":
            call.legs += 1
        leg = unchecked_leg(
            f"{call.id}/{number}", call.id, call.gateway, call.ref, direction, port, pport,
            cui, cli, dialled, self._peers.get(call.gateway, ""),
        )
        return _LegState(leg)

    def _new_draft(
        self, call: _Call, cui: str, dialled: str | None, cli: str
    ) -> _Draft:
        draft = _Draft(call.cdrs, call.id, cui, dialled, cli)
        call.cdrs += 1
        return draft

    def _start_inbound(
        self,
        call: _Call,
        time: int,
        out: list,
        port=None,
        pport=None,
        cui=None,
        cli="",
        dialled="",
    ) -> None:
        call.caller_cui = cui
        call.caller_cli = cli
        call.inbound = self._new_leg(
            call,
            "inbound",
            port=port,
            pport=pport,
            cui=cui or "",
            cli=cli,
            dialled=dialled,
        )
        if dialled:
            out.append(_leg_start(call.inbound.leg, time))
        else:
            # its Start waits for the number the caller dials (the first
            # outbound leg's), so that the Start alone is a complete
            # accounting row (docs/accounting.md); at the latest it goes
            # out with the leg's answer or end
            call.inbound.pending = time

    def _start_pending(self, call: _Call, out: list, dialled: str = "") -> None:
        """The inbound leg's LegStart, if still held back: its values are
        fixed now, with `dialled` as its number; its time is its creation."""
        ls = call.inbound
        if ls is None or ls.pending is None:
            return
        if dialled and not ls.leg.dialled:
            ls.leg = ls.leg.with_values(cui=ls.leg.cui, dialled=dialled)
        out.append(_leg_start(ls.leg, ls.pending))
        ls.pending = None

    def _ensure_inbound(self, call: _Call, time: int, out: list) -> None:
        """A call whose first events were lost still has a caller leg."""
        if call.inbound is None:
            self._start_inbound(call, time, out, port=call.port, pport=call.pport)

    def _dial(self, call: _Call, time: int, out: list, digits: str | None, pstn: bool, pport=None) -> None:
        """
        DIAL (`pstn` False) or PSTN_DIAL: digits before the answer are the
        number dialled (they start the outbound leg), after it DTMF.
        """
        if digits is not None:
            history, before = ("pstn_dial", "pstn_before_answer") if pstn else ("dialed", "digits_before_answer")
            if getattr(call, history) is None:
                setattr(call, history, [])
            getattr(call, history).append(digits)
            if call.connect is None:
                setattr(call, before, getattr(call, before) + 1)
        self._ensure_inbound(call, time, out)
        if call.outbound is None and call.connect is None:
            self._start_outbound(call, time, out, digits or "", pport=pport)

    def _start_outbound(
        self, call: _Call, time: int, out: list, dialled: str, port=None, pport=None
    ) -> None:
        """Rule 1: the first outbound leg, with the caller's CDR where it has a CUI."""
        if call.caller_cui is not None and call.sticky is None:
            call.stack.append(
                self._new_draft(call, call.caller_cui, None, call.caller_cli)
            )
        top = call.stack[-1].cui if call.stack else ""
        self._start_pending(call, out, dialled)
        call.outbound = self._new_leg(
            call,
            "outbound",
            port=port,
            pport=pport,
            cui=top,
            cli=call.caller_cli,
            dialled=dialled,
        )
        out.append(_leg_start(call.outbound.leg, time))

    def _step(self, call: _Call, ev: CallEvent, out: list) -> None:
        kind = ev.type
        time = ev.time
        fields = ev.fields
        port = ev.int_field("port")
        pport = ev.int_field("pport")
        if port is not None and call.port is None:
            call.port = port
        if pport is not None and call.pport is None:
            call.pport = pport
        if kind.startswith("PSTN_"):
            call.pstn = True

        if kind == "HOOK_OFF":
            if call.inbound is None:
                call.hook_off = True
                cui, cli = self._phone(
                    call.gateway, port if port is not None else call.port
                )
                self._start_inbound(call, time, out, port=port, cui=cui, cli=cli)
        elif kind == "PSTN_CALL_IN":
            cli = fields.get("cli", "")
            if not call.pstn_cli:
                call.pstn_cli = cli
            if call.inbound is None:
                lc = self._line(call.gateway, pport)
                cui = lc.cui if lc is not None else None
                self._start_inbound(call, time, out, pport=pport, cui=cui, cli=cli)
                if cui:
                    call.sticky = self._new_draft(call, cui, None, cli)
            else:
                lc = self._line(call.gateway, pport)
                if lc is not None and lc.cui:
                    self._late_sticky(call, lc.cui, cli)
        elif kind == "CALL_IN":
            call.call_in = True
            cli = fields.get("cli", "")
            if not call.cli:
                call.cli = cli
            to = fields.get("to", "")
            if not call.to:
                call.to = to
            gc = self._gateway_config(call.gateway)
            cui = fields.get("cui") if gc is not None and gc.trust_cui else None
            if call.inbound is None:
                self._start_inbound(
                    call, time, out, cui=cui or None, cli=cli, dialled=to
                )
                if cui:
                    call.sticky = self._new_draft(call, cui, None, cli)
            elif cui:
                self._late_sticky(call, cui, cli)
            if call.outbound is None:
                self._start_outbound(call, time, out, to, port=port)
        elif kind == "DIAL":
            self._dial(call, time, out, fields.get("digits"), pstn=False)
        elif kind == "PSTN_DIAL":
            self._dial(call, time, out, fields.get("digits"), pstn=True, pport=pport)
        elif kind in RINGS:
            if kind == "RING":
                call.rung = True
            if call.first_ring is None:
                call.first_ring = time
            self._ring(call, time)
        elif kind == "TALK":
            self._ensure_inbound(call, time, out)
            if call.outbound is None:
                # answered with no DIAL (a hotline or auto-dial port, or the
                # DIAL was lost): the callee's leg, so the caller's CDR is
                # written (rule 1, dialled empty)
                self._start_outbound(call, time, out, "")
                if call.stack and call.stack[-1].ring is None:
                    call.stack[-1].ring = call.first_ring  # it rang before
            if call.connect is None:
                call.connect = time
            self._answer(call, time, out)
        elif kind in HANG_UPS:
            if call.connect is not None and call.hangup is None:
                call.hangup = time
            if (call.connect is not None or call.joined) and call.cdr_end is None:
                call.cdr_end = time
            if kind == "PSTN_HOOK_ON" and call.pstn_to is None:
                call.pstn_to = time
            if kind == "HOOK_ON":
                self._ensure_inbound(call, time, out)
                self._end(call, time, "", out)
        elif kind == "PSTN_HOOK_OFF":
            if call.pstn_from is None:
                call.pstn_from = time
        elif kind == "PSTN_CONNECTED":
            if not call.pstn_connected:
                call.pstn_connected = True
                call.pstn_from = time
        elif kind in ("BUSY", "FAIL"):
            if not call.event_cause:
                call.event_cause = fields.get("cause") or (
                    "busy" if kind == "BUSY" else "failed"
                )
        elif kind == "REJECT":
            call.rejected = True
            cli = fields.get("cli", "")
            if not call.cli:
                call.cli = cli
            call.event_cause = fields.get("cause") or "rejected"
            if call.inbound is None:
                # the rejected caller's leg: its CLI is theirs
                self._start_inbound(
                    call, time, out, port=call.port, pport=call.pport, cli=cli
                )
            self._ensure_inbound(call, time, out)
            self._end(call, time, "", out)
        elif kind == "DIVERT":
            self._ensure_inbound(call, time, out)
            self._divert(call, ev, port, out)
        elif kind == "TRANSFER":
            self._ensure_inbound(call, time, out)
            self._transfer(call, ev, out)
        # HOLD, RESUME: shown, no effect on records or CDRs

    def _drafts(self, call: _Call):
        if call.sticky is not None:
            yield call.sticky
        yield from call.stack

    def _ring(self, call: _Call, time: int) -> None:
        for d in self._drafts(call):
            if d.ring is None and d.start is None:
                d.ring = time

    def _answer(self, call: _Call, time: int, out: list) -> None:
        for d in self._drafts(call):
            if d.start is None:
                d.start = time
                d.ringing = max(0, time - d.ring) if d.ring is not None else 0
        self._start_pending(call, out)
        for ls in (call.inbound, call.outbound):
            if ls is not None and ls.answered is None:
                ls.answered = time
                out.append(_leg_answer(ls.leg, time))

    def _divert(self, call: _Call, ev: CallEvent, port: int | None, out: list) -> None:
        call.diverts += 1
        if call.diverts > self.max_divert_depth:
            call.divert_loop = True
            return
        to = ev.fields.get("to", "")
        by = ev.fields.get("by", "")
        if (
            call.outbound is None
            and call.sticky is None
            and call.caller_cui is not None
        ):
            # diverted before anything was dialled: the caller's CDR first (rule 1)
            call.stack.append(
                self._new_draft(call, call.caller_cui, None, call.caller_cli)
            )
        call.stack.append(
            self._new_draft(
                call, self._divert_cui(call.gateway, port, by), to, call.caller_cli
            )
        )
        old = call.outbound
        self._start_pending(call, out, to)
        call.outbound = self._new_leg(
            call, "outbound", cui=call.stack[-1].cui, cli=call.caller_cli, dialled=to
        )
        if old is not None:
            out.append(_leg_stop(old.leg, ev.time, old.answered, "replaced", (), None))
        out.append(_leg_start(call.outbound.leg, ev.time))

    def _transfer(self, call: _Call, ev: CallEvent, out: list) -> None:
        target_ref = ev.int_field("with")
        calls = self._calls[call.gateway]
        target = calls.get((call.boot, target_ref)) if target_ref is not None else None
        if target is None or target is call:
            # nothing to join: the consultation call ends with its own CDRs
            self._end(call, ev.time, "transferred", out)
            return
        dialled = call.dialled_number()
        for d in call.stack:
            if d.dialled is None:
                d.dialled = dialled
        moved = call.outbound
        self._start_pending(target, out)
        if moved is not None:
            if ev.fields.get("role") == "caller":
                old, target.inbound = target.inbound, moved
            else:
                old, target.outbound = target.outbound, moved
            if old is not None:
                out.append(_leg_stop(old.leg, ev.time, old.answered, "replaced", (), None))
            call.outbound = None
        target.stack.extend(call.stack)
        call.stack = []
        # rule 3: the joined CDRs end at the first hang-up of the target
        # after the join; one before it (the far end of X leaving while X's
        # user consulted) ends none of them.  The record keeps its own Time.
        target.joined = True
        target.cdr_end = None
        if call.first_id is not None and (
            target.first_id is None or call.first_id < target.first_id
        ):
            target.first_id = call.first_id
            heapq.heappush(
                self._heaps.setdefault(call.gateway, []),
                (call.first_id, target.boot, target.ref),
            )
        self._end(call, ev.time, "transferred", out)

    # -- the end ---------------------------------------------------------

    def _cause(self, call: _Call, reason: str) -> str:
        if reason in ("gateway-restart", "stale"):
            return reason
        if call.divert_loop:
            return "divert-loop"
        if reason:
            return reason  # transferred
        if call.rejected:
            return call.event_cause or "rejected"
        if call.connect is None:
            if call.event_cause:
                return call.event_cause
            if call.dialed or call.pstn_dial or call.rung:
                return "cancelled"
        if call.cui_rejected:
            return "cui-rejected"
        return ""

    def _notation(self, call: _Call) -> str:
        if call.rejected:
            return "Call in reject"
        if call.call_in:
            return "Call in"
        if call.connect is not None:
            return "Call out"
        if call.dialed or call.pstn_dial:
            return "Call out failed"
        if call.hook_off:
            return "Hook On/Off"
        return "Other"

    def _end(self, call: _Call, time: int, reason: str, out: list) -> None:
        cause = self._cause(call, reason)
        talk = None
        if call.connect is not None:
            talk_end = call.hangup if call.hangup is not None else time
            talk = max(0, talk_end - call.connect)
        pstn_time = None
        if call.pstn_from is not None:
            pstn_end = call.pstn_to if call.pstn_to is not None else time
            pstn_time = max(0, pstn_end - call.pstn_from)
        record = _call_record(
            call.id, call.gateway, call.boot, call.ref, call.port, call.pport,
            self._notation(call), call.pstn,
            ", ".join(call.dialed) if call.dialed else "",  # dialed
            call.begin, call.connect, time, talk,  # begin, connect, end, talk
            ", ".join(call.pstn_dial) if call.pstn_dial else "", pstn_time,  # pstn_dial, pstn_time
            call.cli, call.pstn_cli, cause,
        )
        cdrs = self._written(call, time, cause)
        stop_cause = "transferred" if reason == "transferred" else cause
        self._start_pending(call, out)
        # the answered span of a leg ends where its CDRs end (rule 3's
        # joined CDRs too): at the first hang-up, not the call's last
        talk_end = call.cdr_end
        legs = [ls for ls in (call.inbound, call.outbound) if ls is not None]
        for i, ls in enumerate(legs):
            last = i == len(legs) - 1
            out.append(
                _leg_stop(ls.leg, time, ls.answered, stop_cause, cdrs if last else (), talk_end)
            )
        out.append(_call_end(record, cdrs))
        del self._calls[call.gateway][(call.boot, call.ref)]
        self.mark_ended(call.gateway, call.boot, call.ref)

    def _written(self, call: _Call, time: int, cause: str) -> tuple[Cdr, ...]:
        """Rule 6: the sticky inbound CDR first, then the stack bottom first."""
        dialled = call.dialled_number()
        end = call.cdr_end if call.cdr_end is not None else time
        written = []
        if call.sticky is not None:
            d = call.sticky
            if d.start is None:
                ringing = max(0, time - d.ring) if d.ring is not None else 0
                # status: a note on the call, not how the CDR ended
                status = cause if cause not in ("", "cui-rejected") else "cancelled"
                written.append(
                    _cdr(
                        cdr_id(d.call, d.number), d.call, call.gateway, call.begin, ringing,
                        None, status, d.cui, dialled, d.cli, call.id,
                    )
                )
            else:
                written.append(self._answered_cdr(call, d, dialled, end))
        for d in call.stack:
            if d.start is not None:  # rule 5: only answered outbound CDRs
                written.append(self._answered_cdr(call, d, dialled, end))
        return tuple(written)

    def _answered_cdr(self, call: _Call, d: _Draft, dialled: str, end: int) -> Cdr:
        return _cdr(
            cdr_id(d.call, d.number), d.call, call.gateway, d.start, d.ringing or 0,
            max(0, end - d.start), "", d.cui,
            d.dialled if d.dialled is not None else dialled,
            d.cli, call.id,
        )
