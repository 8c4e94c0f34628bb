"""
Call-model products for the accounting tests: call-records.md's worked
examples (gateway 8200_000C2A020082, times 2026-11-22 UTC) run through the
real call model (`cdrd.calls.model.CallModel`), so the tests send what cdrd
sends.  Only `largest_stop` is made by hand: a shape at the bounds of
call-records.md that no worked example reaches.
"""

from __future__ import annotations

from cdrd.calls.model import CallModel
from cdrd.values import (
    CallEnd,
    Cdr,
    Leg,
    LegStart,
    LegStop,
    call_id,
    cdr_id,
    parse_rfc3339,
)
from tests.calls import helpers

GW = "8200_000C2A020082"


def t(hms: str) -> int:
    return parse_rfc3339(f"2026-11-22T{hms}Z")


def outputs(*texts: str) -> list:
    """The model's products for the events of `texts`, in order."""
    model = CallModel(helpers.example_config())
    events = []
    for text in texts:
        events += helpers.parse_events(
            text, first_seq=len(events) + 1, first_id=len(events) + 1
        )
    return [o for e in events for o in model.apply(e)]


def before_issue_13(products: list) -> list:
    """`products` as the model made them before the inbound leg's Start
    waited for the number dialled: the inbound leg without a number (how
    an older cdrd's outbox items, dial notes included, were made)."""
    from attrs import evolve

    from cdrd.values import LegAnswer

    out = []
    for o in products:
        if isinstance(o, (LegStart, LegAnswer, LegStop)) and o.leg.direction == "inbound":
            o = evolve(o, leg=evolve(o.leg, dialled=""))
        out.append(o)
    return out


def e1():
    """E1: 201 calls 2252, answered, 120 s; one CDR.  Products: Start in,
    Start out, Answer in, Answer out, Stop in, Stop out (the CDR), CallEnd."""
    return outputs(helpers.E1)


def e2():
    """E2: busy; no CDR."""
    return outputs(helpers.E2)


def e3():
    """E3: PSTN call in on a carrier line, never answered; the sticky CDR."""
    return outputs(helpers.E3)


def e4():
    """E4: 201 calls 202, diverted to 07700900123; two CDRs.  Products:
    Start in, Start out1, Stop out1 (replaced), Start out2, Answer in,
    Answer out2, Stop in, Stop out2 (the CDRs), CallEnd."""
    return outputs(helpers.E4)


def e5():
    """E5: attended transfer (calls 79 and 80); two CDRs of call 79."""
    return outputs(helpers.E5)


def all_examples():
    return outputs(helpers.E1, helpers.E2, helpers.E3, helpers.E4, helpers.E5)


def legs(products) -> set[str]:
    return {o.leg.id for o in products if isinstance(o, LegStart)}


def cdr_stop(products) -> LegStop:
    """The (first) LegStop that carries CDRs."""
    return next(o for o in products if isinstance(o, LegStop) and o.cdrs)


def cdr_lines(products) -> list[str]:
    return [c.line for o in products if isinstance(o, CallEnd) for c in o.cdrs]


def largest_stop():
    """
    The largest Stop call-records.md's bounds allow: a sticky inbound CDR
    and a stack of 1 + 8 diverts, every configured field 64 bytes, status
    words as long as causes get.
    """
    call = call_id(GW, "b" * 64, 4294967295)
    big = "9" * 64
    leg = Leg(
        f"{call}/0",
        call,
        GW,
        4294967295,
        "inbound",
        pport=1,
        cui="C" * 64,
        cli=big,
        dialled=big,
    )
    cdrs = tuple(
        Cdr(
            cdr_id(call, n),
            call,
            GW,
            t("10:00:00.000"),
            999999999,
            999999999999,
            "",
            "C" * 64,
            big,
            big,
        )
        for n in range(10)
    )
    return leg, LegStop(leg, t("23:59:59.999"), t("10:00:00.000"), "", cdrs)
