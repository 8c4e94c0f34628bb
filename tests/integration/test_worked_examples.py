"""
The worked examples of call-records.md, end to end: a real cdrd process, the
events over TCP as a gateway sends them, the records and CDR lines read back
from the JSON API.  Byte for byte.
"""

from __future__ import annotations

import pytest

from tests.integration.daemon import Daemon, GatewayClient
from tests.integration.test_daemon import PORTS, read_until_ack

pytestmark = pytest.mark.integration

EXAMPLES = """
75 10:00:00.000 HOOK_OFF port=1
75 10:00:02.500 DIAL digits=2252
75 10:00:03.000 RING_BACK
75 10:00:07.250 TALK info=C(18)%20M(17)
75 10:00:09.000 DIAL digits=3
75 10:02:07.250 HOOK_ON port=1
76 10:05:00.000 HOOK_OFF port=1
76 10:05:01.000 DIAL digits=2253
76 10:05:01.400 BUSY
76 10:05:03.000 HOOK_ON port=1
77 10:10:00.000 PSTN_CALL_IN cli=02071234567 pport=1
77 10:10:00.500 PSTN_HOOK_OFF pport=1
77 10:10:00.600 PSTN_CONNECTED pport=1
77 10:10:01.000 DIAL digits=2252
77 10:10:02.000 RING_BACK
77 10:10:20.000 PSTN_HOOK_ON pport=1
77 10:10:20.000 HOOK_ON
78 10:20:00.000 HOOK_OFF port=1
78 10:20:02.000 DIAL digits=202
78 10:20:02.100 RING_BACK
78 10:20:12.100 DIVERT to=07700900123 by=202 port=2 cause=cfnr
78 10:20:13.000 RING_BACK
78 10:20:18.000 TALK
78 10:25:18.000 REMOTE_HOOK_ON
78 10:25:18.200 HOOK_ON port=1
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

CDRS = [
    # E1
    "2026-11-22T10:00:07.250Z,4.250,120.000,442079460201,2252,442079460201",
    # E3 (sticky, never answered)
    "2026-11-22T10:10:00.000Z,18.000,-cancelled,CARRIER-ACME,2252,02071234567",
    # E4
    "2026-11-22T10:20:18.000Z,15.900,300.000,442079460201,202,442079460201",
    "2026-11-22T10:20:18.000Z,5.000,300.000,ACCT-202,07700900123,442079460201",
    # E5
    "2026-11-22T10:30:04.100Z,3.000,595.900,442079460201,202,442079460201",
    "2026-11-22T10:31:10.000Z,7.000,530.000,ACCT-202,07700900999,442079460202",
]

# ref: (notation, port, dialed, talk s, end, cause, pstn time s)
RECORDS = {
    75: ("Call out", 1, "2252, 3", 120.0, "2026-11-22T10:02:07.250Z", "", None),
    76: ("Call out failed", 1, "2253", None, "2026-11-22T10:05:03.000Z", "busy", None),
    77: ("Call out failed", None, "2252", None, "2026-11-22T10:10:20.000Z", "cancelled", 19.4),
    78: ("Call out", 1, "202", 300.0, "2026-11-22T10:25:18.200Z", "", None),
    79: ("Call out", 1, "202", 595.9, "2026-11-22T10:40:00.000Z", "", None),
    80: ("Call out", 2, "07700900999", 50.0, "2026-11-22T10:32:00.000Z", "transferred", None),
}


def events():
    from cdrd.gateway.codec import unescape

    for line in EXAMPLES.strip().splitlines():
        ref, t, etype, *fields = line.split()
        yield ref, f"2026-11-22T{t}", etype, dict(
            (k, unescape(v)) for k, v in (f.split("=", 1) for f in fields)
        )


def test_worked_examples_byte_for_byte(tmp_path):
    csv_dir = tmp_path / "cdrs"
    daemon = Daemon(tmp_path, PORTS + f'\n[csv]\ndirectory = "{csv_dir}"\n').start()
    try:
        client = GatewayClient(daemon.gateway_port)
        assert client.login().verb == "OK"
        n = 0
        for n, (ref, t, etype, fields) in enumerate(events(), start=1):
            client.send("EV", seq=str(n), ref=ref, t=t, type=etype, **fields)
        read_until_ack(client, n)
        client.send("LOGOUT")
        assert client.read().verb == "BYE"

        def cdrs():
            found = daemon.api("/api/cdrs?gateway=8200_000C2A020082&limit=100")["cdrs"]
            return found if len(found) >= len(CDRS) else None

        found = daemon.wait_for(cdrs, what="all CDRs")
        assert [c["line"] for c in found] == CDRS
        # the optional CSV file of the day holds the same lines
        day_file = csv_dir / "cdrs-2026-11-22.csv"
        daemon.wait_for(lambda: day_file.exists() and day_file.read_text().count("\n") >= len(CDRS),
                        what="the CSV file")
        # each row: the line byte for byte, then the creating and billed calls
        rows = day_file.read_text().splitlines()
        assert [r.rsplit(",", 2)[0] for r in rows] == CDRS
        assert [r.rsplit(",", 2)[1:] for r in rows] == [
            [c["call"], c["billed_call"]] for c in found
        ]
        # E5's second CDR: created by call 80, billed by call 79
        e5 = found[-1]
        assert (e5["call"].rsplit("/", 1)[1], e5["billed_call"].rsplit("/", 1)[1]) == ("80", "79")
        assert all(c["call"] == c["billed_call"] for c in found[:-1])

        page = daemon.api("/api/calls?gateway=8200_000C2A020082&from=2026-11-22&to=2026-11-22")
        assert page["total"] == page["filtered"] == 6
        got = {
            r["ref"]: (r["notation"], r["port"], r["dialed"], r["talk"], r["end"], r["cause"],
                       r["pstn_time"])
            for r in page["records"]
        }
        assert got == RECORDS
        e3 = [r for r in page["records"] if r["ref"] == 77][0]
        assert (e3["pstn_cli"], e3["pport"]) == ("02071234567", 1)
        pstn = daemon.api("/api/calls?gateway=8200_000C2A020082&from=2026-11-22&to=2026-11-22&filter=pstn")
        assert (pstn["total"], pstn["filtered"]) == (6, 1)
    finally:
        daemon.stop()
