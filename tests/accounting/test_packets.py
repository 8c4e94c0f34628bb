"""Unit: payloads, attributes, splitting, the vendor dictionary."""

from __future__ import annotations

import json

from attrs import evolve as attrs_evolve
from attrs import fields as attrs_fields
from hypothesis import given
from hypothesis import strategies as st

from cdrd.accounting import packets
from cdrd.accounting.packets import Payload, encode_request, load_dictionary, spool
from cdrd.values import CallEnd, Cdr, Leg, LegAnswer, LegStart, LegStop
from tests.accounting import examples
from tests.accounting.fakes import decode

D = load_dictionary(32473)


def test_vendor_number_is_rewritten_for_pyrad():
    d = load_dictionary(12345)
    assert d.vendors.GetForward("cdrd") == 12345
    assert d.attributes["cdrd-CDR"].vendor == "cdrd"
    p = spool([examples.cdr_stop(examples.e1())], 0, None, True)[0]
    _, raw, _ = encode_request(d, p, b"s", 1, 0)
    # Vendor-Specific (26) carries the configured number
    assert (12345).to_bytes(4, "big") in raw
    assert (32473).to_bytes(4, "big") not in raw


def test_payload_round_trip_and_event_time():
    outputs = examples.e1()
    ps = spool(outputs, 0, "192.0.2.10", True)
    # Start in (with its number), Start out, answers, Stops
    assert [p.kind for p in ps] == ["req", "req", "open", "open", "req", "req"]
    for p in ps:
        assert Payload.from_bytes(p.to_bytes()) == p
        json.loads(p.to_bytes())
    assert ps[0].event == examples.t("10:00:00.000")


def test_payloads_an_older_cdrd_stored_are_read_as_before():
    # before orjson, the stdlib wrote the outbox: non-ASCII as \u escapes
    leg = Leg("c/0", "c", "g", 1, "inbound", port=1, cui="Zoë", cli="201")
    for p in packets.spool_facts([LegStart(leg, 5000)], 0, True):
        d = {"k": p.kind, "leg": p.leg, "s": p.status, "t": p.event, "f": p.facts, "ans": p.answered}
        older = json.JSONEncoder(separators=(",", ":")).encode(d).encode()
        assert b"\\u00eb" in older and "ë".encode() in p.to_bytes()
        assert Payload.from_bytes(older) == Payload.from_bytes(p.to_bytes()) == p


def test_payload_has_no_check_the_sender_would_skip():
    # the sender reads payloads back and expands them with values.unchecked
    # (issue 15): a validator or converter added here would not run there
    for cls in (Payload, Leg):
        for a in attrs_fields(cls):
            assert a.validator is None and a.converter is None, f"{cls.__name__}.{a.name}"


def test_a_legs_facts_of_another_length_read_as_leg_reads_them():
    # facts an older cdrd wrote without the last of Leg's fields (its
    # default then) expand as before; the whole ones without attrs' __init__
    leg = Leg("c/0", "c", "g", 1, "inbound", port=1, cui="Zoë", cli="201")
    whole = packets.spool_facts([LegStart(leg, 5000)], 0, True)[0]
    facts = whole.facts[0]
    assert len(facts) == len(attrs_fields(Leg))
    shorter = attrs_evolve(whole, facts=(facts[:-1], *whole.facts[1:]))
    assert packets.expand(shorter, None, D) == packets.expand(whole, None, D)
    assert packets.expand(whole, None, D)[0].attributes == tuple(
        packets.request_attributes(packets.leg_attributes(leg, None), "Start", 5000))


def test_no_interim_markers_when_interims_are_off():
    ps = spool(examples.e1(), 0, None, False)
    assert [p.kind for p in ps] == ["req", "req", "req", "req"]


def test_start_attributes_and_delay():
    p = spool(examples.e1()[:1], 0, "192.0.2.10", True)[0]
    now = examples.t("10:00:07.999")
    pkt, raw, delay = encode_request(D, p, b"s", 7, now)
    assert delay == 7
    got = decode(raw, D)
    assert got.id == 7
    assert got["Acct-Status-Type"] == ["Start"]
    assert got["Acct-Delay-Time"] == [7]
    assert got["Event-Timestamp"] == [examples.t("10:00:00.000") // 1000]
    assert got["User-Name"] == ["442079460201"]
    assert got["Chargeable-User-Identity"] == [b"442079460201"]
    assert got["NAS-Port-Id"] == ["fxs/1"]
    assert got["cdrd-Leg-Direction"] == ["inbound"]
    assert "Acct-Session-Time" not in got and "cdrd-CDR" not in got


def test_ipv6_nas_address():
    p = spool(examples.e1()[:1], 0, "2001:db8::10", True)[0]
    got = decode(encode_request(D, p, b"s", 1, 0)[1], D)
    assert got["NAS-IPv6-Address"] == ["2001:db8::10"]
    assert "NAS-IP-Address" not in got


def test_user_name_falls_back_to_cli_and_fxo_port():
    leg = Leg("c/0", "c", "g", 1, "inbound", pport=2, cli="02071234567", dialled="2252")
    p = spool([LegStart(leg, 0)], 0, None, True)[0]
    got = decode(encode_request(D, p, b"s", 1, 0)[1], D)
    assert got["User-Name"] == ["02071234567"]
    assert got["NAS-Port"] == [2] and got["NAS-Port-Id"] == ["fxo/2"]
    assert "Chargeable-User-Identity" not in got


def test_terminate_causes():
    tc = packets.terminate_cause
    assert tc("") == tc("cancelled") == "User-Request"
    assert (
        tc("busy")
        == tc("failed")
        == tc("rejected")
        == tc("no-route")
        == "Service-Unavailable"
    )
    assert tc("replaced") == "Port-Unneeded"
    assert tc("gateway-restart") == "NAS-Reboot"
    assert tc("stale") == "Lost-Service"


def test_stop_carries_session_time_and_cdrs_in_order():
    stop = examples.cdr_stop(examples.e4())
    assert len(stop.cdrs) == 2
    p = spool([stop], 0, None, True)[0]
    got = decode(encode_request(D, p, b"s", 1, stop.time)[1], D)
    assert got["Acct-Session-Time"] == [300]
    assert got["cdrd-CDR"] == [c.line for c in stop.cdrs]
    assert got["cdrd-CDR-Id"] == [c.id for c in stop.cdrs]


def test_largest_stop_is_one_packet_within_limits():
    _, stop = examples.largest_stop()
    ps = spool([stop], 0, "192.0.2.10", True)
    assert len(ps) == 1
    pkt, raw, _ = encode_request(D, ps[0], b"s", 1, 0)
    assert 3000 < len(raw) <= packets.MAX_PACKET
    assert len(decode(raw, D)["cdrd-CDR"]) == 10


def _cdr(n, text="x"):
    return Cdr(f"{n:032x}", "c", "g", 0, 0, 1000, "", text, text, text)


def test_too_many_cdrs_split_into_numbered_stops():
    leg = Leg("c/0", "c", "g", 1, "inbound", port=1, cui="a", cli="b")
    cdrs = tuple(_cdr(n, "7" * 60) for n in range(40))
    ps = spool([LegStop(leg, 5000, 1000, "", cdrs)], 0, None, True)
    assert len(ps) > 1
    lines = []
    for n, p in enumerate(ps, 1):
        _, raw, _ = encode_request(D, p, b"s", 1, 0)
        got = decode(raw, D)
        assert len(raw) <= packets.MAX_PACKET
        assert got["cdrd-CDR-Part"] == [f"{n}/{len(ps)}"]
        assert got["Acct-Session-Id"] == ["c/0"] and got["Acct-Status-Type"] == ["Stop"]
        lines += got["cdrd-CDR"]
    assert lines == [c.line for c in cdrs]


@given(
    st.lists(
        st.text(
            alphabet=st.characters(blacklist_categories=("Cs",)),
            min_size=1,
            max_size=200,
        ),
        min_size=1,
        max_size=12,
    )
)
def test_long_lines_arrive_whole_in_continuations(texts):
    leg = Leg("c/0", "c", "g", 1, "inbound", port=1, cui="a", cli="b")
    cdrs = tuple(_cdr(n, text) for n, text in enumerate(texts))
    ps = spool([LegStop(leg, 5000, 1000, "", cdrs)], 0, None, True)
    assert_within_limits(ps)
    for p in ps:
        got = decode(encoded(p)[0], D)
        assert all(len(v.encode()) <= packets.MAX_VENDOR_VALUE for v in got["cdrd-CDR"])
    assert reassemble_stops(ps) == ([c.line for c in cdrs], [c.id for c in cdrs])


def test_interim_from_marker():
    answer = examples.e1()[2]
    marker = spool([answer], 0, None, True)[0]
    assert isinstance(answer, LegAnswer) and marker.kind == "open"
    p = packets.interim(marker, answer.time + 600_400)
    got = decode(encode_request(D, p, b"s", 1, answer.time + 600_400)[1], D)
    assert got["Acct-Status-Type"] == ["Interim-Update"]
    assert got["Acct-Session-Time"] == [600]
    assert got["Acct-Session-Id"] == [answer.leg.id]


# -- sizes: exact, and every packet within FreeRADIUS's limits ------------------


def encoded(payload, dictionary=D):
    """(bytes, number of attributes) of `payload` as sent."""
    _, raw, _ = encode_request(dictionary, payload, b"s", 1, payload.event)
    count, i = 0, 20
    while i < len(raw):
        count += 1
        i += raw[i + 1]
    return raw, count


def assert_within_limits(payloads):
    for p in payloads:
        raw, count = encoded(p)
        assert len(raw) == packets.packet_size(D, p.attributes)  # exact, not estimated
        assert count == len(p.attributes) + 1  # + Acct-Delay-Time
        assert len(raw) <= packets.MAX_PACKET and count <= packets.MAX_ATTRIBUTES


def reassemble_stops(payloads):
    return reassemble_records([decode(encoded(p)[0], D) for p in payloads])


def reassemble_records(got):
    """What billing does with a leg's Stop(s) (decoded packets or detail
    records): parts in order, continuations appended to the n-th CDR of the
    whole Stop.  (lines, ids)"""
    got = list(got)
    if len(got) > 1:
        got.sort(key=lambda g: int(g["cdrd-CDR-Part"][0].split("/")[0]))
        assert [g["cdrd-CDR-Part"][0] for g in got] == [
            f"{k}/{len(got)}" for k in range(1, len(got) + 1)
        ]
    else:
        assert "cdrd-CDR-Part" not in got[0]
    lines, ids = [], []
    for g in got:
        lines += g.get("cdrd-CDR", [])
        ids += g.get("cdrd-CDR-Id", [])
        for value in g.get("cdrd-CDR-Continued", []):
            n, _, text = value.partition(":")
            lines[int(n) - 1] += text
    return lines, ids


def test_stop_sizes_are_exact_up_to_4096_bytes():
    """The audit's Stop (call-records.md's largest, plus a longer transfer
    chain), grown a digit at a time: every Stop is within 4096 bytes, one
    packet up to exactly 4096, then two (the old estimate missed
    Acct-Status-Type and Event-Timestamp and sent 4097 bytes)."""
    leg, stop = examples.largest_stop()
    sizes = []
    for extra in range(0, 1500, 7):
        cdrs = [
            attrs_evolve(
                c,
                cui=c.cui[:20],
                dialled=c.dialled[:20] + "7" * (extra // 17 + (i < extra % 17)),
                cli=c.cli[:20],
            )
            for i, c in enumerate(list(stop.cdrs) + [stop.cdrs[0]] * 7)
        ]
        ps = spool(
            [LegStop(leg, stop.time, stop.answered, "gateway-restart", tuple(cdrs))],
            0,
            "192.0.2.10",
            False,
        )
        assert_within_limits(ps)
        assert reassemble_stops(ps) == ([c.line for c in cdrs], [c.id for c in cdrs])
        sizes.append((len(ps), len(encoded(ps[0])[0])))
    one = [size for n, size in sizes if n == 1]
    assert max(one) >= packets.MAX_PACKET - 12 and any(n == 2 for n, _ in sizes)


def test_exactly_4096_bytes_is_one_packet():
    """A tenth CDR grown a byte at a time: one packet up to exactly 4096
    bytes, two from 4097."""
    leg, stop = examples.largest_stop()
    seen = []
    for n in range(0, 2000):
        cdrs = stop.cdrs[:9] + (attrs_evolve(stop.cdrs[9], dialled="1" * n),)
        ps = spool([LegStop(leg, stop.time, stop.answered, "", cdrs)], 0, None, False)
        assert_within_limits(ps)
        seen.append((len(ps), len(encoded(ps[0])[0])))
        if len(ps) == 2:
            break
    assert seen[-2] == (1, packets.MAX_PACKET) and seen[-1][0] == 2


def test_attribute_limit_counts_acct_delay_time():
    attrs = [("Acct-Status-Type", "Stop")] + [("cdrd-CDR-Continued", "1:x")] * 198
    assert packets.fits(D, attrs)  # 199 + Acct-Delay-Time = 200
    assert not packets.fits(D, attrs + [("cdrd-CDR-Continued", "1:x")])


def test_a_cdr_larger_than_a_packet_spans_stops():
    leg = Leg("c/0", "c", "g", 1, "inbound", port=1, cui="a", cli="b")
    big = _cdr(1, "8" * 5000)
    cdrs = (_cdr(0, "small"), big, _cdr(2, "é" * 3000), _cdr(3, "tail"))
    ps = spool([LegStop(leg, 5000, 1000, "", cdrs)], 0, None, True)
    assert len(ps) >= 4
    assert_within_limits(ps)
    assert reassemble_stops(ps) == ([c.line for c in cdrs], [c.id for c in cdrs])


LONG = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=400)


@given(
    st.builds(
        Leg,
        id=LONG.map(lambda s: "g/b/1/" + s),
        call=LONG,
        gateway=LONG,
        ref=st.integers(0, 10**12),
        direction=st.sampled_from(["inbound", "outbound"]),
        port=st.none() | st.integers(0, 10**12),
        cui=LONG,
        cli=LONG,
        dialled=LONG,
    ),
    st.lists(st.tuples(LONG, st.integers(0, 12000)), max_size=8),
    st.none() | LONG,
)
def test_every_stop_fits_whatever_the_input(leg, texts, peer):
    """Leg values far over an attribute, CDRs of any length: every packet
    within 4096 bytes and 200 attributes, every CDR whole."""
    cdrs = tuple(_cdr(n, text + "9" * pad) for n, (text, pad) in enumerate(texts))
    leg = attrs_evolve(leg, peer=peer or "")
    outputs = [
        LegStart(leg, 0),
        LegAnswer(leg, 1000),
        LegStop(leg, 5000, 1000, "", cdrs),
    ]
    ps = spool(outputs, 0, "2001:db8::1", True)
    reqs = [p for p in ps if p.kind == "req"]
    assert_within_limits(reqs)
    if packets.called_later(leg):
        # room for the longest first dialled number a note can add
        assert_within_limits([packets.with_called(p, "9" * 253) for p in reqs])
    stops = [p for p in reqs if p.status == "Stop"]
    assert reassemble_stops(stops) == ([c.line for c in cdrs], [c.id for c in cdrs])


def multi_sessions(payloads):
    return {
        (p.leg.split("/", 2)[2], p.status): dict(p.attributes)[
            "Acct-Multi-Session-Id"
        ].split("/", 2)[2]
        for p in payloads
        if p.kind == "req"
    }


def test_cdrs_of_a_transfer_are_booked_to_their_call():
    """E5: 202's consultation call 80 is joined into call 79 by the
    transfer; its leg 80/1 ends with call 79 and carries 79's CDRs: that
    Stop has Acct-Multi-Session-Id 79, so billing grouping on it books the
    CDRs to call 79.  The leg's Start and Interims stay with call 80."""
    outputs = examples.e5()
    ps = spool(outputs, 0, None, True)
    got = multi_sessions(ps)
    assert got[("80/1", "Start")] == "80"
    assert got[("80/1", "Stop")] == "79"
    assert got[("80/0", "Stop")] == "80" and got[("79/1", "Stop")] == "79"
    (cdr_stop,) = [p for p in ps if any(n == "cdrd-CDR" for n, _ in p.attributes)]
    assert cdr_stop.leg.endswith("/80/1")
    assert (
        dict(cdr_stop.attributes)["Acct-Multi-Session-Id"] == "8200_000C2A020082/b1/79"
    )
    # the second CDR was created by call 80: cdrd-CDR-Call names it
    assert [v for n, v in cdr_stop.attributes if n == "cdrd-CDR-Call"] == [
        "2:8200_000C2A020082/b1/80"
    ]
    call_end = next(o for o in outputs if isinstance(o, CallEnd) and o.cdrs)
    assert call_end.record.id == "8200_000C2A020082/b1/79"
    assert [c.billed_call for c in call_end.cdrs] == [call_end.record.id] * 2
    assert [c.line for c in call_end.cdrs] == [
        "2026-11-22T10:30:04.100Z,3.000,595.900,442079460201,202,442079460201",
        "2026-11-22T10:31:10.000Z,7.000,530.000,ACCT-202,07700900999,442079460202",
    ]


def test_caller_transferred_leg_is_booked_to_the_call_it_ends_in():
    from tests.calls import helpers

    outputs = examples.outputs(
        helpers.E5.replace("TRANSFER with=79", "TRANSFER with=79 role=caller")
    )
    got = multi_sessions(spool(outputs, 0, None, True))
    # 80/1 replaced 79's caller leg 79/0 (which ends then, with call 79)
    assert got[("79/0", "Stop")] == "79"
    assert got[("80/1", "Stop")] == "79" and got[("79/1", "Stop")] == "79"
    assert got[("80/0", "Stop")] == "80"


def pyrad_request(dictionary, payload, secret, ident, delay):
    """The same request built by pyrad alone: AddAttribute and RequestPacket."""
    from pyrad.packet import AccountingRequest, AcctPacket

    pkt = AcctPacket(code=AccountingRequest, id=ident, secret=secret, dict=dictionary)
    for name, value in (*payload.attributes, ("Acct-Delay-Time", delay)):
        attr = dictionary.attributes[name]
        if isinstance(value, str) and attr.type == "octets":
            value = "0x" + value.encode().hex()
        pkt.AddAttribute(name, value)
    return pkt.RequestPacket()


@given(
    st.builds(
        Leg,
        id=LONG.map(lambda s: "g/b/1/" + s[:60]),
        call=st.just("g/b/1"),
        gateway=st.text(max_size=60),
        ref=st.integers(0, 2**32 - 1),
        direction=st.sampled_from(["inbound", "outbound"]),
        port=st.none() | st.integers(0, 2**32 - 1),
        cui=LONG,
        cli=LONG,
        dialled=LONG,
    ),
    st.lists(LONG, max_size=4),
    st.integers(0, 255),
    st.integers(0, 2**32 - 1),
    st.sampled_from(["192.0.2.10", "2001:db8::10", None]),
)
def test_encoding_is_pyrads_byte_for_byte(leg, texts, ident, delay, nas_ip):
    """cdrd encodes a request's attributes once and frames each
    transmission itself (bench/radius.py): the bytes are pyrad's."""
    d = load_dictionary(12345)
    cdrs = tuple(_cdr(n, text or "x") for n, text in enumerate(texts))
    outputs = [LegStart(leg, 0), LegStop(leg, 5000, 1000, "cancelled", cdrs)]
    for p in spool(outputs, 0, nas_ip, True):
        if p.kind != "req":
            continue
        raw = packets.request_bytes(
            packets.encode_attributes(d, p.attributes), ident, b"k3y", delay
        )
        assert raw == pyrad_request(d, p, b"k3y", ident, delay)
        pkt = packets.sent_packet(d, raw, b"k3y")
        reply = pkt.CreateReply()
        reply.code = 5
        data = reply.ReplyPacket()
        assert pkt.VerifyReply(pkt.CreateReply(packet=data), data)


def test_facts_are_stored_smaller_and_expand_to_the_requests():
    """What the ingest path stores (spool_facts) comes back from the
    outbox's bytes as the same requests spool() builds, and is smaller."""
    from cdrd.accounting.packets import expand, spool_facts, spool_facts_bytes

    outputs = examples.all_examples()
    # and a caller who dialled only after the Start (a dial note)
    outputs = outputs + [
        LegStart(Leg("n/0", "n", "g", 9, "inbound", port=1, cli="201"), 1000),
        LegStart(Leg("n/1", "n", "g", 9, "outbound", pport=2, cli="201", dialled="0123"), 2000),
    ]
    for nas_ip in (None, "192.0.2.10", "2001:db8::1"):
        for interims in (True, False):
            facts = spool_facts(outputs, 0, interims)
            # the ingest path's bytes, made without the Payloads, are theirs
            assert spool_facts_bytes(outputs, 0, interims) == [f.to_bytes() for f in facts]
            assert {f.kind for f in facts} == ({"req", "dial", "open"} if interims else {"req", "dial"})
            stored = [Payload.from_bytes(f.to_bytes()) for f in facts]
            assert [p for f in stored for p in expand(f, nas_ip, D)] == spool(
                outputs, 0, nas_ip, interims
            )
    built = spool(outputs, 0, "192.0.2.10", True)
    facts = spool_facts(outputs, 0, True)
    assert len(facts) == len(built)  # no Stop of the examples is split
    assert sum(len(f.to_bytes()) for f in facts) < 0.6 * sum(len(p.to_bytes()) for p in built)


def test_a_stop_of_facts_splits_when_expanded():
    from cdrd.accounting.packets import expand, spool_facts

    leg = Leg("c/0", "c", "g", 1, "inbound", port=1, cui="a", cli="b")
    cdrs = tuple(_cdr(n, "7" * 60) for n in range(40))
    (facts,) = spool_facts([LegStop(leg, 5000, 1000, "", cdrs)], 0, True)
    parts = expand(Payload.from_bytes(facts.to_bytes()), None, D)
    assert len(parts) > 1
    assert [dict(p.attributes)["cdrd-CDR-Part"] for p in parts] == [
        f"{n}/{len(parts)}" for n in range(1, len(parts) + 1)
    ]


def test_facts_that_are_no_request_are_refused():
    import pytest

    from cdrd.accounting.packets import expand

    leg = ["c/0", "c", "g", 1, "inbound", 1, None, "", "", "", ""]
    for bad in (
        Payload("req", "c/0", "Interim-Update", 0, facts=(leg,)),
        Payload("dial", "c/0", "", 0, facts=(leg,)),
        Payload("req", "c/0", "Start", 0, facts=(leg[:3],)),
        Payload("req", "c/0", "Stop", 0, facts=(leg, 1)),
    ):
        with pytest.raises((ValueError, TypeError)):
            expand(bad, None, D)


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("Acct-Status-Type"), st.sampled_from(["Start", "Stop", "Interim-Update"])),
            st.tuples(st.just("Acct-Terminate-Cause"), st.sampled_from(
                sorted(set(packets.TERMINATE_CAUSES.values()) | {"Service-Unavailable"}))),
            st.tuples(st.just("NAS-IP-Address"), st.ip_addresses(v=4).map(str)),
            st.tuples(st.just("NAS-Port"), st.integers(0, 2**32 - 1)),
            st.tuples(st.just("Event-Timestamp"), st.integers(0, 2**32 - 1)),
            st.tuples(st.just("User-Name"), st.text(max_size=80)),
            st.tuples(st.just("cdrd-CDR"), st.text(max_size=80)),
            st.tuples(st.just("cdrd-Call-Ref"), st.integers(0, 2**32 - 1)),
        ),
        max_size=100,
    ),
    st.integers(0, 255),
)
def test_each_attributes_encoder_is_pyrads_for_every_value(attributes, ident):
    """The encoders made once per attribute (kept whole encodings of
    enumerations and addresses, more distinct values than are kept) give
    pyrad's bytes, one attribute's values together as pyrad keeps them."""
    d = load_dictionary(4242)
    p = Payload("req", "g/b/1/1", "Start", 0, tuple(attributes))
    raw = packets.request_bytes(packets.encode_attributes(d, p.attributes), ident, b"k3y", 0)
    assert raw == pyrad_request(d, p, b"k3y", ident, 0)


def test_a_value_over_its_attribute_names_it():
    for name, fit in (("User-Name", packets.MAX_VALUE), ("cdrd-CDR", packets.MAX_VENDOR_VALUE)):
        packets.encode_attributes(D, [(name, "x" * fit)])
        try:
            packets.encode_attributes(D, [(name, "é" * fit)])
        except ValueError as e:
            assert str(e) == f"{name}: {2 * fit} bytes, at most {fit} fit"
        else:
            raise AssertionError(f"{name}: {2 * fit} bytes encoded")
