"""CDRs and call ends for the outputs tests: the worked examples' lines."""

from __future__ import annotations

from cdrd.values import CallEnd, CallRecord, Cdr, cdr_id, parse_rfc3339

GW = "8200_000C2A020082"


def t(hms: str) -> int:
    return parse_rfc3339(f"2026-11-22T{hms}Z")


def cdr(call: str, n: int, start: str, ringing: int, duration: int | None, cui: str,
        dialled: str, cli: str, status: str = "") -> Cdr:
    return Cdr(
        id=cdr_id(call, n), call=call, gateway=GW, start=t(start), ringing=ringing,
        duration=duration, status=status, cui=cui, dialled=dialled, cli=cli,
    )


def call_end(ref: int, end: str, *cdrs: Cdr, begin: str | None = None) -> CallEnd:
    call = f"{GW}/b1/{ref}"
    record = CallRecord(
        id=call, gateway=GW, boot="b1", ref=ref, port=1, pport=None, notation="Call out",
        pstn=False, dialed="", begin=t(begin or end), connect=None, end=t(end), talk=None,
        pstn_dial="", pstn_time=None, cli="", pstn_cli="", cause="",
    )
    return CallEnd(record, tuple(cdrs))


def e1() -> CallEnd:
    c = f"{GW}/b1/75"
    return call_end(75, "10:02:07.250", cdr(c, 1, "10:00:07.250", 4250, 120000,
                                            "442079460201", "2252", "442079460201"))


def e4() -> CallEnd:
    c = f"{GW}/b1/78"
    return call_end(
        78, "10:25:18.200",
        cdr(c, 1, "10:20:18.000", 15900, 300000, "442079460201", "202", "442079460201"),
        cdr(c, 2, "10:20:18.000", 5000, 300000, "ACCT-202", "07700900123", "442079460201"),
    )


E1_LINE = "2026-11-22T10:00:07.250Z,4.250,120.000,442079460201,2252,442079460201"
E4_LINES = [
    "2026-11-22T10:20:18.000Z,15.900,300.000,442079460201,202,442079460201",
    "2026-11-22T10:20:18.000Z,5.000,300.000,ACCT-202,07700900123,442079460201",
]


def numbered(first: int, count: int, per_call: int = 3) -> list[CallEnd]:
    """`count` CDRs in calls of `per_call`: CUI "N<i>" in written order."""
    out = []
    i = first
    while i < first + count:
        ref = 1000 + i
        c = f"{GW}/b1/{ref}"
        k = min(per_call, first + count - i)
        cdrs = [
            cdr(c, j + 1, "11:00:00.000", 1000, 60000, f"N{i + j}", "2252", "442079460201")
            for j in range(k)
        ]
        out.append(call_end(ref, "11:01:00.000", *cdrs))
        i += k
    return out
