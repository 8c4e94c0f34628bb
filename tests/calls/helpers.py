"""The worked examples' event form, and the examples' gateway config."""

from __future__ import annotations

from urllib.parse import unquote

from cdrd.config import Config, GatewayConfig, LineConfig, PortConfig, ServerConfig
from cdrd.values import CallEvent, parse_rfc3339

GW = "8200_000C2A020082"
DAY = "2026-11-22T"


def example_config(
    trust_cui: bool = False, max_divert_depth: int = 8, stale_after: float = 86400.0
) -> Config:
    return Config(
        server=ServerConfig(max_divert_depth=max_divert_depth, stale_after=stale_after),
        gateways={
            GW: GatewayConfig(
                key=GW,
                trust_cui=trust_cui,
                ports={
                    1: PortConfig(exten="201", ddi="442079460201"),
                    2: PortConfig(exten="202", ddi="442079460202", cui="ACCT-202"),
                },
                lines={1: LineConfig(cui="CARRIER-ACME")},
            )
        },
    )


def t(hms: str) -> int:
    return parse_rfc3339(DAY + hms + "Z")


def parse_events(
    text: str,
    gateway: str = GW,
    boot: str = "b1",
    first_seq: int = 1,
    first_id: int | None = 1,
) -> list[CallEvent]:
    """`75 10:00:02.500 DIAL digits=2252` lines as CallEvents, seq/id counting up."""
    events = []
    for line in text.strip().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        ref, hms, kind, *pairs = line.split(" ")
        fields = {}
        for pair in pairs:
            k, _, v = pair.partition("=")
            fields[k] = unquote(v)
        n = len(events)
        time = t(hms)
        events.append(
            CallEvent(
                gateway=gateway,
                seq=first_seq + n,
                ref=int(ref),
                type=kind,
                time=time,
                received=time,
                boot=boot,
                fields=fields,
                id=None if first_id is None else first_id + n,
            )
        )
    return events


E1 = """
75 10:00:00.000 HOOK_OFF port=1
75 10:00:02.500 DIAL digits=2252
75 10:00:03.000 RING_BACK
75 10:00:07.250 TALK info=C(18)%20M(17)
75 10:00:09.000 DIAL digits=3
75 10:02:07.250 HOOK_ON port=1
"""
E2 = """
76 10:05:00.000 HOOK_OFF port=1
76 10:05:01.000 DIAL digits=2253
76 10:05:01.400 BUSY
76 10:05:03.000 HOOK_ON port=1
"""
E3 = """
77 10:10:00.000 PSTN_CALL_IN cli=02071234567 pport=1
77 10:10:00.500 PSTN_HOOK_OFF pport=1
77 10:10:00.600 PSTN_CONNECTED pport=1
77 10:10:01.000 DIAL digits=2252
77 10:10:02.000 RING_BACK
77 10:10:20.000 PSTN_HOOK_ON pport=1
77 10:10:20.000 HOOK_ON
"""
E4 = """
78 10:20:00.000 HOOK_OFF port=1
78 10:20:02.000 DIAL digits=202
78 10:20:02.100 RING_BACK
78 10:20:12.100 DIVERT to=07700900123 by=202 port=2 cause=cfnr
78 10:20:13.000 RING_BACK
78 10:20:18.000 TALK
78 10:25:18.000 REMOTE_HOOK_ON
78 10:25:18.200 HOOK_ON port=1
"""
E5 = """
79 10:30:00.000 HOOK_OFF port=1
79 10:30:01.000 DIAL digits=202
79 10:30:01.100 RING_BACK
79 10:30:04.100 TALK
79 10:31:00.000 HOLD
80 10:31:00.500 HOOK_OFF port=2
80 10:31:02.000 DIAL digits=07700900999
80 10:31:03.000 RING_BACK
80 10:31:10.000 TALK
80 10:32:00.000 TRANSFER with=79
79 10:40:00.000 REMOTE_HOOK_ON
79 10:40:00.000 HOOK_ON port=1
"""
ALL = E1 + E2 + E3 + E4 + E5


def run(model, events):
    out = []
    for e in events:
        out.extend(model.apply(e))
    return out
