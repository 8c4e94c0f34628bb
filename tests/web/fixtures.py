"""A day of one gateway's traffic: the worked examples' records, CDRs, events and log."""

from __future__ import annotations

from datetime import date  # noqa: F401  (tests build days with F.date)

from attrs import evolve

from cdrd import config as C
from cdrd.interfaces import WriteBatch
from cdrd.values import (
    CallEvent,
    CallRecord,
    Cdr,
    GatewayState,
    LogEntry,
    call_id,
    cdr_id,
    parse_rfc3339,
)

GW = "8200_000C2A020082"
GW2 = "8300_000C2A0200AA"
DAY = "2026-11-22"


def t(hms: str, day: str = DAY) -> int:
    return parse_rfc3339(f"{day}T{hms}Z")


def config(timezone="UTC", users=None) -> C.Config:
    data = {
        "server": {"timezone": timezone},
        "gateways": {GW: {"ports": {"1": {"exten": "201"}}}, GW2: {}},
    }
    parsed = C.parse(data)
    if users:
        # not through C.parse: a test may need a hash the config refuses
        # (the web layer must still fail closed on it)
        parsed = evolve(parsed, web=C.WebConfig(users=users))
    return parsed


def callers(n: int = 10) -> list:
    """`n` more calls in on the fixture day, 13:00, 13:01, ..., each from a
    caller of its own (0700, 0701, ...): a summary with more groups."""
    return [
        record(200 + i, "Call in", t(f"13:{i:02d}:00"), t(f"13:{i:02d}:30"), cli=f"07{i:02d}")
        for i in range(n)
    ]


def record(
    ref,
    notation,
    begin,
    end,
    *,
    gateway=GW,
    port=1,
    pport=None,
    dialed="",
    connect=None,
    talk=None,
    pstn=False,
    cli="",
    pstn_cli="",
    pstn_dial="",
    pstn_time=None,
    cause="",
):
    return CallRecord(
        id=call_id(gateway, "b1", ref),
        gateway=gateway,
        boot="b1",
        ref=ref,
        port=port,
        pport=pport,
        notation=notation,
        pstn=pstn,
        dialed=dialed,
        begin=begin,
        connect=connect,
        end=end,
        talk=talk,
        pstn_dial=pstn_dial,
        pstn_time=pstn_time,
        cli=cli,
        pstn_cli=pstn_cli,
        cause=cause,
    )


RECORDS = (
    record(
        75,
        "Call out",
        t("10:00:00"),
        t("10:02:07.250"),
        dialed="2252, 3",
        connect=t("10:00:07.250"),
        talk=120_000,
    ),
    record(
        76, "Call out failed", t("10:05:00"), t("10:05:03"), dialed="2253", cause="busy"
    ),
    record(
        77,
        "Call out failed",
        t("10:10:00"),
        t("10:10:20"),
        port=None,
        pport=1,
        dialed="2252",
        pstn=True,
        pstn_cli="02071234567",
        pstn_time=19_400,
        cause="cancelled",
    ),
    record(
        81,
        "Call in",
        t("11:00:00"),
        t("11:03:00"),
        cli="<script>alert(1)</script>",
        connect=t("11:00:05"),
        talk=175_000,
    ),
    record(
        82, "Call in reject", t("11:30:00"), t("11:30:00"), cli="0800", cause="no-port"
    ),
    record(83, "Hook On/Off", t("12:00:00"), t("12:00:04")),
    record(84, "Other", t("12:30:00"), t("12:30:01")),
    # another day, another gateway
    record(
        90,
        "Call out",
        t("09:00:00", "2026-11-20"),
        t("09:01:00", "2026-11-20"),
        dialed="100",
        connect=t("09:00:10", "2026-11-20"),
        talk=50_000,
    ),
    record(
        91,
        "Call out",
        t("09:00:00"),
        t("09:02:00"),
        gateway=GW2,
        dialed="555",
        connect=t("09:00:30"),
        talk=90_000,
    ),
)

E1_CDR = Cdr(
    id=cdr_id(call_id(GW, "b1", 75), 0),
    call=call_id(GW, "b1", 75),
    gateway=GW,
    start=t("10:00:07.250"),
    ringing=4250,
    duration=120_000,
    status="",
    cui="442079460201",
    dialled="2252",
    cli="442079460201",
)
E3_CDR = Cdr(
    id=cdr_id(call_id(GW, "b1", 77), 0),
    call=call_id(GW, "b1", 77),
    gateway=GW,
    start=t("10:10:00"),
    ringing=18_000,
    duration=None,
    status="cancelled",
    cui="CARRIER-ACME",
    dialled="2252",
    cli="02071234567",
    billed_call=call_id(GW, "b1", 77),
)
GW2_CDR = Cdr(
    id=cdr_id(call_id(GW2, "b1", 91), 0),
    call=call_id(GW2, "b1", 91),
    gateway=GW2,
    start=t("09:00:30"),
    ringing=2000,
    duration=90_000,
    status="",
    cui="ACME, Ltd",
    dialled="555",
    cli="201",
)

EVENTS = tuple(
    CallEvent(
        gateway=GW,
        seq=i + 1,
        ref=75,
        type=typ,
        time=t(hms),
        received=t(hms),
        boot="b1",
        fields=f,
    )
    for i, (hms, typ, f) in enumerate(
        [
            ("10:00:00", "HOOK_OFF", {"port": "1"}),
            ("10:00:02.500", "DIAL", {"digits": "2252"}),
            ("10:00:03", "RING_BACK", {}),
            ("10:00:07.250", "TALK", {"info": "C(18) M(17)"}),
            ("10:00:09", "DIAL", {"digits": "3"}),
            ("10:02:07.250", "HOOK_ON", {"port": "1"}),
        ]
    )
)

LOG = (
    LogEntry(
        time=t("08:00:00"),
        event="Login",
        peer="127.0.0.1:2348",
        gateway="8200",
        mac="000C2A020082",
        detail="Gateway[8200] MAC[000C2A020082] From [127.0.0.1:2348] FXS(2) FXO(2) ISDN(0) CallRef(74) Login!",
    ),
    LogEntry(
        time=t("09:00:00"),
        event="Bad Packet",
        peer="127.0.0.1:2349",
        gateway="???",
        detail="<b>not a verb</b>",
    ),
    LogEntry(
        time=t("09:00:00", "2026-11-21"),
        event="Logout",
        peer="127.0.0.1:2348",
        gateway="8200",
        mac="000C2A020082",
    ),
)

GATEWAYS = (
    GatewayState(
        key=GW,
        id="8200",
        mac="000C2A020082",
        fxs=2,
        fxo=2,
        isdn=0,
        callref=84,
        peer="127.0.0.1:2348",
        login=t("08:00:00"),
        last_heard=t("12:30:01"),
        online=True,
        boot="b1",
    ),
    GatewayState(
        key=GW2,
        id="8300",
        mac="000C2A0200AA",
        fxs=4,
        fxo=0,
        peer="127.0.0.1:2400",
        login=t("07:00:00"),
        skew_ms=-3_600_000,
        online=False,
    ),
)


def batch() -> WriteBatch:
    return WriteBatch(
        events=EVENTS,
        log=LOG,
        gateways=GATEWAYS,
        records=RECORDS,
        cdrs=(E1_CDR, E3_CDR, GW2_CDR),
    )
