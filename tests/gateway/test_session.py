"""The pure GWP/1 session rules: login, skew, reboot detection, events."""

import re
from typing import NamedTuple

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cdrd import config as C
from cdrd.gateway import session as S
from cdrd.gateway.codec import BadPacket, format_gateway_time, login_auth, parse_gateway_time, parse_line
from cdrd.values import GATEWAY_RESTART, CallEvent, GatewayState

NONCE = "5f0c3b9d2e8a4f61a7b3c2d1e0f9a8b7"
LOGIN = (
    "LOGIN proto=1 gw=8200 mac=000c2a020082 fxs=2 fxo=2 isdn=0 callref=74 "
    "time=2000-01-02T08:17:38"
)
NOW = 1795341600000  # 2026-11-22T10:00:00Z


def msg(text: str):
    return parse_line(text.encode())


class Parsed(NamedTuple):
    """parse_event's (event, problems), with the seq, as these tests read it."""

    seq: int
    event: CallEvent
    problems: tuple[str, ...]


def parse_event(text: str, skew: int = 0) -> Parsed:
    event, problems = S.parse_event(msg(text).fields, "8200_000C2A020082", "r0", skew, NOW)
    return Parsed(event.seq, event, problems)


def cfg(**server) -> C.Config:
    data = {"server": server, "gateways": {"8200_000C2A020082": {"secret": "s3cret"}}}
    return C.parse(data)


def signed(line: str, secret="s3cret", nonce=NONCE) -> str:
    return f"{line} auth={login_auth(secret, nonce, line)}"


class TestCheckLogin:
    def test_signed_login_accepted(self):
        req = S.check_login(msg(signed(LOGIN)), NONCE, cfg())
        assert (req.key, req.fxs, req.fxo, req.isdn, req.callref) == (
            "8200_000C2A020082", 2, 2, 0, 74,
        )
        assert req.mac == "000C2A020082"  # stored upper case

    @pytest.mark.parametrize(
        "line, code",
        [
            (LOGIN, "auth"),  # a secret is set: auth is required
            (signed(LOGIN, secret="wrong"), "auth"),
            (signed(LOGIN, nonce="0" * 32), "auth"),  # replayed from another session
            (signed(LOGIN.replace("proto=1", "proto=2")), "proto"),
            (signed(LOGIN.replace("mac=000c2a020082", "mac=xyz")), "bad"),
            (signed(LOGIN.replace(" fxs=2", "")), "bad"),
            (signed(LOGIN.replace("time=2000-01-02T08:17:38", "time=yesterday")), "bad"),
        ],
    )
    def test_refused(self, line, code):
        with pytest.raises(S.LoginRefused) as e:
            S.check_login(msg(line), NONCE, cfg())
        assert e.value.code == code

    def test_tampered_line_fails_auth(self):
        line = signed(LOGIN).replace("callref=74", "callref=75")
        with pytest.raises(S.LoginRefused) as e:
            S.check_login(msg(line), NONCE, cfg())
        assert e.value.code == "auth"

    def test_unknown_gateway_denied_unless_allowed(self):
        other = LOGIN.replace("gw=8200", "gw=9999")
        with pytest.raises(S.LoginRefused) as e:
            S.check_login(msg(other), NONCE, cfg())
        assert e.value.code == "denied"
        req = S.check_login(msg(other), NONCE, cfg(allow_unknown_gateways=True))
        assert req.key == "9999_000C2A020082"


def request(**kw):
    base = dict(gw="8200", mac="000C2A020082", fxs=2, fxo=2, isdn=0, callref=74,
                clock=NOW)
    base.update(kw)
    return S.LoginRequest(**base)


def stored(**kw):
    base = dict(key="8200_000C2A020082", id="8200", mac="000C2A020082",
                last_seq=1041, boot="r0", last_heard=NOW - 5000)
    base.update(kw)
    return GatewayState(**base)


class TestDecideLogin:
    def test_first_login(self):
        out = S.decide_login(request(), None, set(), NOW, "127.0.0.1:2348", 5000, False)
        assert out.restart is None
        assert out.state.boot == "r0" and out.state.online and out.state.login == NOW
        assert [e.event for e in out.log] == ["Login"]
        assert out.log[0].detail == (
            "Gateway[8200] MAC[000C2A020082] From [127.0.0.1:2348] FXS(2) FXO(2) "
            "ISDN(0) CallRef(74) Time[2026/11/22 10:00:00] Login!"
        )

    def test_skew_within_tolerance_is_zero(self):
        out = S.decide_login(request(clock=NOW - 4999), None, set(), NOW, "p", 5000, False)
        assert out.state.skew_ms == 0

    def test_wrong_clock_is_corrected(self):
        gw_clock = 946801058000  # 2000-01-02T08:17:38
        out = S.decide_login(request(clock=gw_clock), None, set(), NOW, "p", 5000, False)
        assert out.state.skew_ms == NOW - gw_clock

    def test_callref_below_open_call_is_a_reboot(self):
        out = S.decide_login(request(callref=3), stored(), {75, 76}, NOW, "p", 5000, False)
        assert out.restart is not None
        assert out.restart.type == GATEWAY_RESTART
        assert out.restart.boot == "r0"  # ends the old epoch's calls
        assert out.restart.time == NOW - 5000  # when it was last heard
        assert out.state.boot == "r1" and out.state.restarts == 1
        assert "Gateway Restart" in [e.event for e in out.log]

    def test_callref_above_open_calls_is_no_reboot(self):
        out = S.decide_login(request(callref=80), stored(), {75, 76}, NOW, "p", 5000, False)
        assert out.restart is None and out.state.boot == "r0"

    def test_boot_token_change_is_a_reboot(self):
        old = stored(boot="b1", boot_token="b1")
        out = S.decide_login(request(boot_token="b2", callref=900), old, set(), NOW, "p", 5000, False)
        assert out.restart is not None and out.restart.boot == "b1"
        assert out.state.boot == "b2"
        same = S.decide_login(request(boot_token="b1", callref=1), old, {5}, NOW, "p", 5000, False)
        assert same.restart is None  # the token rules over callrefs

    def test_relogin_logs_re_login_first(self):
        out = S.decide_login(request(), stored(), set(), NOW, "p", 5000, True)
        assert [e.event for e in out.log] == ["Re-Login", "Login"]


#: numbers at the edges of 9 and 18 digits, and what is not one
_NUMBERS = st.one_of(
    st.integers(0, 10**19).map(str),
    st.sampled_from(["0", "00", "07", "999999999", "1000000000", "0123456789", "9" * 18, "1" + "0" * 18,
                     "\u0661", "\u00b2", "+1", " 1", "1_0", "-1"]),
)
_TYPES = st.sampled_from([*S._REQUIRED, "TALK", "FLASH_HOOK", "A" * 32, "A" * 33, "X_", "_X", "Dial"])
_EVENT_KEYS = st.sampled_from(["seq", "ref", "type", "t", *S._FIELDS, "zz"])
#: values at the edges of the type-specific fields' rules
_FIELD_VALUES = st.one_of(
    _NUMBERS,
    st.sampled_from(["C(18) M(17)", " ", "~", "x" * 64, "x" * 65, "x" * 128, "x" * 129, "a\tb", "\x7f",
                     "\u202e", "\u00e9"]),
    st.text(max_size=12),
)
_EVENT_VALUES = st.one_of(
    _FIELD_VALUES,
    _TYPES,
    st.integers(-(2**33) * 1000, 2**33 * 1000).map(lambda ms: format_gateway_time(ms)[:23]),
    st.from_regex(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,4})?", fullmatch=True),
)


@st.composite
def _event_fields(draw) -> dict[str, str]:
    """An EV's fields, in any order: most with a seq, ref and type that
    are good or nearly so, so that the type-specific fields are read."""
    items = draw(st.lists(st.tuples(_EVENT_KEYS, _EVENT_VALUES), max_size=9))
    if draw(st.integers(0, 3)):
        for key, values in (("seq", st.integers(1, 99).map(str) | _NUMBERS),
                            ("ref", st.integers(0, 99).map(str) | _NUMBERS), ("type", _TYPES)):
            if draw(st.integers(0, 9)):  # now and then missing
                items.append((key, draw(values)))
        items += draw(st.lists(st.tuples(st.sampled_from([*S._FIELDS, "t"]), _FIELD_VALUES), max_size=6))
    return dict(draw(st.permutations(list(dict(items).items()))))


def _reference_event(fields: dict[str, str], skew: int) -> tuple[CallEvent, tuple[str, ...]]:
    """
    The plain reading of an EV's rules (gateway-protocol.md; parse_event as
    it was before issue 15's shortcuts), to check parse_event against: every
    type-specific field looked up in the protocol's order, nothing remembered
    (the time is parse_gateway_time's, checked against its own reference in
    test_codec).
    """
    def integer(key: str, positive: bool) -> int:
        value = fields.get(key)
        if value is None:
            raise BadPacket(f"missing {key}")
        if not re.fullmatch(r"[0-9]{1,18}", value) or (positive and int(value) == 0):
            raise BadPacket(f"{key} is not a {'positive' if positive else 'non-negative'} integer")
        return int(value)

    seq = None
    try:
        seq = integer("seq", True)
        ref = integer("ref", False)
        etype = fields.get("type")
        if etype is None:
            raise BadPacket("missing type")
        if not re.fullmatch(r"[A-Z][A-Z_]{0,31}", etype):
            raise BadPacket("type must be [A-Z][A-Z_]*")
    except BadPacket as e:
        e.seq = seq
        raise
    problems = []
    time = NOW
    if "t" in fields:
        try:
            corrected = parse_gateway_time(fields["t"]) + skew
        except ValueError:
            problems.append("t is not YYYY-MM-DDTHH:MM:SS[.mmm]")
        else:
            if 0 <= corrected < 2**32 * 1000:
                time = corrected
            else:
                problems.append("t corrected by the login's clock skew is outside 1970..2106")
    kept = {}
    for key, kind in S._FIELDS.items():
        if key not in fields:
            continue
        value = fields[key]
        if kind == S._NUMBER:
            ok = re.fullmatch(r"[0-9]{1,9}", value) is not None
        elif kind == S._TEXT:
            ok = re.fullmatch(r"[\x20-\x7e]{1,64}", value) is not None
        else:
            ok = len(value) <= 128 and value.isprintable()
        if ok:
            kept[key] = str(int(value)) if kind == S._NUMBER else value
        else:
            problems.append(f"{key} is malformed")
    problems += [f"{etype} without {key}" for key in S._REQUIRED.get(etype, ()) if key not in fields]
    event = CallEvent(gateway="8200_000C2A020082", seq=seq, ref=ref, type=etype, time=time,
                      received=NOW, boot="r0", fields=kept)
    return event, tuple(problems)


class TestParseEvent:
    def ev(self, text, skew=0):
        return parse_event(text, skew)

    def test_event(self):
        p = self.ev("EV seq=1042 ref=75 t=2026-11-22T10:00:02.500 type=DIAL digits=2252")
        assert p.seq == 1042 and not p.problems
        e = p.event
        assert (e.ref, e.type, e.time, e.fields) == (75, "DIAL", NOW + 2500, {"digits": "2252"})

    def test_skew_applies_and_missing_t_takes_receive_time(self):
        assert self.ev("EV seq=1 ref=1 type=RING_BACK t=2026-11-22T10:00:00", skew=-7).event.time == NOW - 7
        assert self.ev("EV seq=1 ref=1 type=RING_BACK").event.time == NOW

    @pytest.mark.parametrize(
        "text, seq",
        [
            ("EV ref=1 type=DIAL", None),
            ("EV seq=0 ref=1 type=DIAL", None),
            ("EV seq=x ref=1 type=DIAL", None),
            ("EV seq=9 type=DIAL", 9),
            ("EV seq=9 ref=1", 9),
            ("EV seq=9 ref=1 type=dial", 9),
        ],
    )
    def test_bad_seq_ref_type(self, text, seq):
        with pytest.raises(BadPacket) as e:
            self.ev(text)
        assert e.value.seq == seq

    def test_bad_field_is_dropped_not_the_event(self):
        p = self.ev("EV seq=5 ref=1 type=HOOK_OFF port=one t=2026-11-22T99:00:00")
        assert p.event.type == "HOOK_OFF" and "port" not in p.event.fields
        assert p.event.time == NOW
        assert any("port" in x for x in p.problems) and any("t " in x for x in p.problems)

    def test_overlong_digits_dropped(self):
        p = self.ev("EV seq=5 ref=1 type=DIAL digits=" + "1" * 65)
        assert "digits" not in p.event.fields and p.problems

    def test_unknown_type_kept(self):
        p = self.ev("EV seq=5 ref=1 type=FLASH_HOOK x=1")
        assert p.event.type == "FLASH_HOOK" and not p.problems

    def test_fields_and_problems_in_the_protocols_order_whatever_the_lines(self):
        # stored fields and the ERR's reason read alike in whichever order a
        # gateway writes its fields (the parser takes the few present, sorted)
        one = self.ev("EV seq=5 ref=1 type=CALL_IN info=x cui=A port=x cli=%01 pport=2 with=3")
        two = self.ev("EV with=3 pport=2 cli=%01 port=x cui=A info=x type=CALL_IN ref=1 seq=5")
        for p in (one, two):
            assert list(p.event.fields.items()) == [("pport", "2"), ("with", "3"), ("cui", "A"), ("info", "x")]
            assert p.problems == ("port is malformed", "cli is malformed")

    def test_a_type_is_checked_every_time(self):
        # known types are remembered; a bad one is refused however often it comes
        for _ in range(3):
            assert self.ev("EV seq=5 ref=1 type=DIAL").event.type == "DIAL"
            with pytest.raises(BadPacket):
                self.ev("EV seq=5 ref=1 type=Dial")
        with pytest.raises(BadPacket):
            self.ev("EV seq=5 ref=1 type=" + "A" * 33)

    @given(st.dictionaries(st.sampled_from(["seq", "ref", "type", "t", "port", "pport",
                                            "digits", "cli", "with", "info", "zz"]),
                           st.text(min_size=1, max_size=80)))
    def test_never_raises_but_bad_packet(self, fields):
        from cdrd.gateway.codec import format_message

        line = format_message("EV", fields).rstrip(b"\n")
        try:
            m = parse_line(line)
            if m is not None:
                S.parse_event(m.fields, "g_000000000000", "r0", 0, NOW)
        except BadPacket:
            pass

    @given(_event_fields(), st.sampled_from([0, -7, NOW, -NOW]))
    # the edges of seq, ref, type and the fields' rules, and fields out of
    # the protocol's order, every time
    @example({"info": "x", "pport": "2", "port": "x", "cli": "\x01", "type": "DIVERT", "ref": "1", "seq": "5"}, 0)
    @example({"seq": "9" * 18, "ref": "9" * 18, "type": "A" * 32, "port": "9" * 9, "info": "x" * 128}, 0)
    @example({"seq": "1" + "0" * 18, "ref": "1", "type": "DIAL"}, 0)
    @example({"seq": "1", "ref": "1" + "0" * 18, "type": "DIAL"}, 0)
    @example({"seq": "1", "ref": "\u0661", "type": "DIAL"}, 0)
    @example({"seq": "1", "ref": "1", "type": "A" * 33}, 0)
    @example({"seq": "1", "ref": "1", "type": "HOOK_OFF", "port": "1" * 10, "info": "x" * 129}, 0)
    @example({"type": "CALL_IN", "cli": "x" * 65, "ref": "0", "cui": "x" * 64, "seq": "1"}, 0)
    def test_matches_the_reference(self, fields, skew):
        # issue 15's shortcuts (seq, ref and type in one call, the shapes
        # remembered) against the plain reading, in any order, malformed or
        # not; the second call finds its shape remembered
        try:
            expected = _reference_event(fields, skew)
        except BadPacket as e:
            for _ in range(2):
                with pytest.raises(BadPacket) as got:
                    S.parse_event(fields, "8200_000C2A020082", "r0", skew, NOW)
                assert (got.value.reason, got.value.seq) == (e.reason, e.seq)
        else:
            for _ in range(2):
                event, problems = S.parse_event(fields, "8200_000C2A020082", "r0", skew, NOW)
                assert (event, problems) == expected
                assert list(event.fields) == list(expected[0].fields)


def test_bad_packet_meter():
    meter = S.BadPacketMeter()
    assert not any(meter.record(NOW + i * 7000) for i in range(9))  # 9 in 56 s
    assert meter.record(NOW + 59_000)  # the 10th within 60 s
    spaced = S.BadPacketMeter()
    assert not any(spaced.record(NOW + i * 7000) for i in range(30))


class TestAuditFixes:
    """Items of the gateway audit: each failed before its fix."""

    def test_non_ascii_auth_is_a_wrong_auth_not_a_crash(self):
        with pytest.raises(S.LoginRefused) as e:
            S.check_login(msg(LOGIN + " auth=\u00e9\u00e9"), NONCE, cfg())
        assert (e.value.code, e.value.reason) == ("auth", "wrong auth")

    def test_unsupported_proto_reason_has_no_control_bytes(self):
        with pytest.raises(S.LoginRefused) as e:
            S.check_login(msg(LOGIN.replace("proto=1", "proto=%00%1B%E2%80%AE")), NONCE, cfg())
        assert e.value.code == "proto"
        assert e.value.reason == "unsupported protocol \\x00\\x1b\\u202e"

    @pytest.mark.parametrize(
        "text, shown",
        [
            ("plain text, é and 中", "plain text, é and 中"),
            ("nul\x00here", "nul\\x00here"),
            ("line\nbreak\r", "line\\nbreak\\r"),
            ("del\x7f c1\x85 bidi\u202e", "del\\x7f c1\\x85 bidi\\u202e"),
        ],
    )
    def test_visible_escapes_what_cannot_be_shown(self, text, shown):
        assert S.visible(text) == shown

    def test_log_entry_texts_are_made_visible(self):
        e = S.log_entry(NOW, S.BAD_PACKET, "1.2.3.4:5", "gw\x00", "", "a\x00b")
        assert (e.gateway, e.detail) == ("gw\\x00", "a\\x00b")

    def test_skew_is_measured_when_the_login_arrived(self):
        # the store lookups took 10 s: the gateway's clock was right when it sent LOGIN
        out = S.decide_login(request(clock=NOW), None, set(), NOW + 10_000, "p", 5000, False,
                             received=NOW)
        assert out.state.skew_ms == 0
        assert out.state.login == NOW + 10_000

    def test_restart_ends_calls_at_the_latest_heard(self):
        # PINGs kept in memory are newer than the stored last-heard
        out = S.decide_login(request(callref=3), stored(), {75}, NOW, "p", 5000, False,
                             heard=NOW - 1000)
        assert out.restart.time == NOW - 1000
        older = S.decide_login(request(callref=3), stored(), {75}, NOW, "p", 5000, False,
                               heard=NOW - 9000)
        assert older.restart.time == NOW - 5000  # the stored one is later

    def test_last_heard_never_moves_back_at_login(self):
        # an event stamped 3 s ahead (clock within tolerance) was heard "then"
        out = S.decide_login(request(), stored(last_heard=NOW + 3000), set(), NOW, "p", 5000, False)
        assert out.state.last_heard == NOW + 3000


class TestEventTimeRange:
    def ev(self, text, skew=0):
        return parse_event(text, skew)

    def test_corrected_time_beyond_the_range_is_a_bad_t(self):
        skew = NOW - 946801058000  # a gateway clock 26 years behind
        p = self.ev("EV seq=7 ref=1 type=TALK t=9999-12-31T23:59:59.999", skew=skew)
        assert p.event.time == NOW  # the receive time
        assert p.seq == 7 and any("outside" in x for x in p.problems)

    def test_corrected_time_before_1970_is_a_bad_t(self):
        p = self.ev("EV seq=7 ref=1 type=TALK t=1969-12-31T23:59:59.999")
        assert p.event.time == NOW and p.problems

    def test_edges_of_the_range_are_kept(self):
        assert self.ev("EV seq=7 ref=1 type=TALK t=1970-01-01T00:00:00").event.time == 0
        last = self.ev("EV seq=7 ref=1 type=TALK t=2106-02-07T06:28:15.999")
        assert last.event.time == S.LATEST_EVENT_TIME and not last.problems
        past = self.ev("EV seq=7 ref=1 type=TALK t=2106-02-07T06:28:16.000")
        assert past.event.time == NOW and past.problems


# -- GatewaySession: the state machine without a transport ---------------------------

PLAIN = "LOGIN proto=1 gw=8200 mac=000C2A020082 fxs=2 fxo=2 isdn=0 callref=74 time=2026-11-22T10:00:00"


def session(**server) -> S.GatewaySession:
    return S.GatewaySession(C.parse({"server": {"allow_unknown_gateways": True, **server}}),
                            "127.0.0.1:2348", NONCE)


def logged_in(last=0) -> S.GatewaySession:
    s = session()
    (look_up,) = s.line(NOW, PLAIN.encode())
    outcome = s.decide(NOW, look_up, None, set(), False, None)
    actions = s.accepted(NOW, outcome.state, last, "7f3a")
    assert [type(a) for a in actions] == [S.Send] and actions[0].verb == "OK"
    assert actions[0].fields == {"session": "7f3a", "last": str(last)}
    s.flush()
    return s


def sends(actions):
    return [(a.verb, dict(a.fields)) for a in actions if isinstance(a, S.Send)]


class TestGatewaySession:
    def test_hello_then_login_looks_the_gateway_up(self):
        s = session()
        hello = s.hello(NOW)
        assert (hello.verb, hello.fields) == (
            "HELLO", {"proto": "1", "nonce": NONCE, "time": "2026-11-22T10:00:00.000Z"})
        (look_up,) = s.line(NOW, PLAIN.encode())
        assert isinstance(look_up, S.LookUp) and look_up.request.key == "8200_000C2A020082"
        assert (s.phase, look_up.received) == (S.LOGGING_IN, NOW)

    def test_a_refused_login_answers_logs_and_closes(self):
        s = S.GatewaySession(cfg(), "127.0.0.1:2348", NONCE)
        actions = s.line(NOW, PLAIN.encode())
        assert sends(actions) == [("ERR", {"code": "auth", "reason": "missing auth"})]
        assert [type(a) for a in actions] == [S.Send, S.Rejected, S.Close]
        assert actions[-1].why == S.LOGIN_REJECTED
        assert [e.event for e in s.flush().log] == ["Login Rejected"]

    def test_lines_before_ok_wait_and_run_after_it(self):
        s = session()
        (look_up,) = s.line(NOW, PLAIN.encode())
        assert s.line(NOW, b"EV seq=1 ref=1 type=HOOK_OFF port=1") == []
        assert s.line(NOW, b"PING") == []
        outcome = s.decide(NOW, look_up, None, set(), False, None)
        actions = s.accepted(NOW, outcome.state, 0, "7f3a")
        assert [a.verb for a in actions] == ["OK", "PONG"]
        batch = s.flush()
        assert [e.seq for e in batch.events] == [1] and batch.ack == 1

    def test_too_many_lines_before_ok_close(self):
        s = session()
        s.line(NOW, PLAIN.encode())
        for _ in range(S.MAX_QUEUED_LINES):
            assert s.line(NOW, b"PING") == []
        actions = s.line(NOW, b"EV seq=9 ref=1 type=X")
        assert sends(actions) == [("ERR", {"code": "bad", "seq": "9", "reason": "too many lines before OK"})]
        assert isinstance(actions[-1], S.Close) and s.phase == S.CLOSING

    def test_one_flush_is_one_batch_with_the_highest_seq_to_ack(self):
        s = logged_in(last=2)
        for seq in (1, 2, 3, 4, 7):  # two duplicates, then a gap
            assert s.line(NOW, f"EV seq={seq} ref=1 type=RING_BACK".encode()) == []
        batch = s.flush()
        assert [e.seq for e in batch.events] == [3, 4, 7]
        assert (batch.ack, batch.top, batch.received, batch.duplicates) == (7, 7, 5, 2)
        assert [(e.event, e.detail) for e in batch.log] == [("Sequence Gap", "expected seq 5, got 7")]
        assert s.flush() is None

    def test_duplicates_only_are_acked_without_a_write(self):
        s = logged_in(last=5)
        s.line(NOW, b"EV seq=4 ref=1 type=RING_BACK")
        batch = s.flush()
        assert (batch.events, batch.log, batch.ack) == ((), (), 4)

    def test_bad_packets_after_login_close_at_the_tenth_within_a_minute(self):
        s = logged_in()
        for n in range(9):
            actions = s.line(NOW + n * 5000, b"garbage!")
            assert [type(a) for a in actions] == [S.CountBadPacket, S.Send]
        actions = s.line(NOW + 45000, b"garbage!")
        assert isinstance(actions[-1], S.Close) and actions[-1].why == S.BAD_PACKET
        assert s.flush().log[-1].detail == "10 bad packets within 60 s: closed"

    def test_unknown_verb_and_second_login_are_bad_packets(self):
        s = logged_in()
        assert sends(s.line(NOW, b"EVENT seq=7")) == [
            ("ERR", {"code": "bad", "seq": "7", "reason": "unknown verb EVENT"})]
        assert sends(s.line(NOW, PLAIN.encode())) == [
            ("ERR", {"code": "bad", "reason": "already logged in"})]
        assert s.phase == S.LOGGED_IN

    def test_logout_stops_reading_and_keeps_acking(self):
        s = logged_in()
        s.line(NOW, b"EV seq=1 ref=1 type=HOOK_OFF port=1")
        (bye,) = s.line(NOW, b"LOGOUT")
        assert isinstance(bye, S.Bye) and s.talking
        assert s.line(NOW, b"PING") == []
        batch = s.flush()
        assert [e.event for e in batch.log] == ["Logout"] and batch.ack == 1

    def test_over_long_lines(self):
        s = logged_in()
        actions = s.too_long(NOW, b"EV seq=8 ref=1 type=DIAL digits=" + b"1" * 1100)
        assert sends(actions) == [("ERR", {"code": "bad", "seq": "8", "reason": "line longer than 1024 bytes"})]
        assert isinstance(actions[-1], S.Close)
        # while logging in, a whole line waits for the OK as every other one
        s = session()
        s.line(NOW, PLAIN.encode())
        assert s.too_long(NOW, b"x" * 2000) == []
        assert isinstance(s.too_long(NOW, b"x" * 2000, partial=True)[-1], S.Close)

    def test_timeouts_log_what_happened(self):
        s = session(login_timeout=10)
        assert s.timed_out(NOW).why == S.IDLE_TIMEOUT
        assert [(e.event, e.detail) for e in s.flush().log] == [("Gateway Disconnect", "no LOGIN within 10 s")]
        s = logged_in()
        s.timed_out(NOW)
        assert [(e.event, e.detail) for e in s.flush().log] == [("Idle Timeout", "silent for 90 s")]

    def test_finish_logs_a_disconnect_unless_the_log_said_why(self):
        s = logged_in()
        s.line(NOW, b"EV seq=1 ref=1 type=HOOK_OFF port=1")
        assert [e.event for e in s.finish(NOW, "connection lost")] == ["Gateway Disconnect"]
        assert s.flush() is None  # unflushed events are dropped: never acked, resent
        s = logged_in()
        entry, close = s.kicked_out(NOW)
        assert (entry.event, close.why) == ("Relogin Kickout", S.RELOGIN_KICKOUT)
        assert s.finish(NOW, "connection lost") == []
