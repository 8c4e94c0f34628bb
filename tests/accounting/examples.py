"""
Call-model products for the accounting tests, after call-records.md's
worked examples (gateway 8200_000C2A020082, times 2026-11-22 UTC).
"""

from __future__ import annotations

from cdrd.values import Cdr, Leg, LegAnswer, LegStart, LegStop, call_id, cdr_id, parse_rfc3339

GW = "8200_000C2A020082"


def t(hms: str) -> int:
    return parse_rfc3339(f"2026-11-22T{hms}Z")


def e1():
    """E1: 201 calls 2252, answered, 120 s; one CDR."""
    call = call_id(GW, "b1", 75)
    inbound = Leg(f"{call}/0", call, GW, 75, "inbound", port=1,
                  cui="442079460201", cli="442079460201", dialled="2252")
    outbound = Leg(f"{call}/1", call, GW, 75, "outbound",
                   cui="442079460201", cli="442079460201", dialled="2252")
    cdr = Cdr(cdr_id(call, 1), call, GW, t("10:00:07.250"), 4250, 120000, "",
              "442079460201", "2252", "442079460201")
    assert cdr.line == "2026-11-22T10:00:07.250Z,4.250,120.000,442079460201,2252,442079460201"
    return [
        LegStart(inbound, t("10:00:00.000")),
        LegStart(outbound, t("10:00:02.500")),
        LegAnswer(inbound, t("10:00:07.250")),
        LegAnswer(outbound, t("10:00:07.250")),
        LegStop(outbound, t("10:02:07.250"), t("10:00:07.250"), ""),
        LegStop(inbound, t("10:02:07.250"), t("10:00:07.250"), "", (cdr,)),
    ]


def e4():
    """E4: 201 calls 202, diverted to 07700900123; two CDRs on the last Stop."""
    call = call_id(GW, "b1", 78)
    inbound = Leg(f"{call}/0", call, GW, 78, "inbound", port=1,
                  cui="442079460201", cli="442079460201", dialled="202")
    out1 = Leg(f"{call}/1", call, GW, 78, "outbound", port=2,
               cui="442079460201", cli="442079460201", dialled="202")
    out2 = Leg(f"{call}/2", call, GW, 78, "outbound",
               cui="ACCT-202", cli="442079460201", dialled="07700900123")
    cdrs = (
        Cdr(cdr_id(call, 1), call, GW, t("10:20:18.000"), 15900, 300000, "",
            "442079460201", "202", "442079460201"),
        Cdr(cdr_id(call, 2), call, GW, t("10:20:18.000"), 5000, 300000, "",
            "ACCT-202", "07700900123", "442079460201"),
    )
    return [
        LegStart(inbound, t("10:20:00.000")),
        LegStart(out1, t("10:20:02.000")),
        LegStop(out1, t("10:20:12.100"), None, "replaced"),
        LegStart(out2, t("10:20:12.100")),
        LegAnswer(inbound, t("10:20:18.000")),
        LegAnswer(out2, t("10:20:18.000")),
        LegStop(out2, t("10:25:18.000"), t("10:20:18.000"), ""),
        LegStop(inbound, t("10:25:18.200"), t("10:20:18.000"), "", cdrs),
    ]


def largest_stop():
    """
    The largest Stop call-records.md allows: a sticky inbound CDR and a stack
    of 1 + 8 diverts, every field 64 bytes, status words as long as causes get.
    """
    call = call_id(GW, "b" * 64, 4294967295)
    big = "9" * 64
    leg = Leg(f"{call}/0", call, GW, 4294967295, "inbound", pport=1,
              cui="C" * 64, cli=big, dialled=big)
    cdrs = tuple(
        Cdr(cdr_id(call, n), call, GW, t("10:00:00.000"), 999999999, 999999999999, "",
            "C" * 64, big, big)
        for n in range(10)
    )
    return leg, LegStop(leg, t("23:59:59.999"), t("10:00:00.000"), "", cdrs)
