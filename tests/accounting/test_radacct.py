"""
Integration: what a billing team reads.  The whole daemon (`twistd -n
cdrd`) sends its accounting to a real FreeRADIUS 3.2 running the stock
rlm_sql on PostgreSQL with Debian's `radacct` schema and queries
(`freeradius-postgresql`); the rows are then checked against cdrd's own
call records (/api/calls) and CDRs (/api/cdrs):

- one row per leg (every Acct-Session-Id FreeRADIUS received), its
  `acctuniqueid` the same in every packet of the leg;
- no row left open (`acctstoptime` set);
- `callingstationid`, `calledstationid` and `acctsessiontime` equal what
  the records and CDRs say (in the stock SQL escaping, `stock_escape`).

E1–E5, a rejected caller whose number needs escaping, and a load run
(`cdrd-sim load`); then two FreeRADIUS servers on one radacct with the
first stopped in the middle of a call.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict

import psycopg
import pytest

from tests.accounting.freeradius import FreeRadius, create_radacct, distinct
from tests.integration.daemon import ROOT, Daemon, environment

pytestmark = pytest.mark.integration

SECRET = "radacct-secret"
GW = "8200_000C2A020082"
#: rlm_sql's default safe_characters (Debian's mods-available/sql): every
#: other byte is written as "=XX"
SAFE = set(
    "@abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_: /"
)
GATEWAY_CONFIG = (
    f'\n[gateways."{GW}"]\n'
    'ports = { 1 = { exten = "201", ddi = "442079460201" }, '
    '2 = { exten = "202", ddi = "442079460202", cui = "ACCT-202" } }\n'
    'lines = { 1 = { cui = "CARRIER-ACME" } }\n'
)
REJECTED = '+44 20,7946"0999'


def stock_escape(text: str) -> str:
    """A value as the stock rlm_sql writes it into radacct."""
    return "".join(
        c if c in SAFE else "".join(f"={b:02X}" for b in c.encode()) for c in text
    )


def radius_config(*servers: FreeRadius, failover_after: int = 3) -> str:
    out = (
        "\n[radius]\n"
        "interim_interval = 0\n"
        # the stock queries cast NAS-IP-Address to inet, NOT NULL: required
        'nas_ip = "127.0.0.1"\n'
        "initial_timeout = 0.5\n"
        "max_timeout = 2.0\n"
        f"failover_after = {failover_after}\n"
    )
    for s in servers:
        out += f'[[radius.servers]]\naddress = "{s.address}"\nsecret = "{SECRET}"\n'
    return out


def sim(*args, timeout=120):
    done = subprocess.run(
        [sys.executable, "-m", "cdrd.sim.cli", *args],
        cwd=ROOT,
        env=environment(),
        capture_output=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def replay(daemon, script, *more):
    return sim(
        "replay", "--server", f"tcp:127.0.0.1:{daemon.gateway_port}",
        "--gw", "8200", "--mac", "000C2A020082", "--date", "2026-11-22", *more, script,
    )


def radacct(url) -> list[dict]:
    with psycopg.connect(url, connect_timeout=5) as conn:
        cur = conn.execute(
            "SELECT acctsessionid, acctuniqueid, username, host(nasipaddress) AS nasipaddress,"
            " nasportid, acctstarttime, acctstoptime, acctsessiontime,"
            " calledstationid, callingstationid, acctterminatecause FROM radacct"
        )
        names = [d.name for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def all_pages(daemon, path, key) -> list[dict]:
    out, offset = [], 0
    while True:
        page = daemon.api(f"{path}&limit=1000&offset={offset}")[key]
        out += page
        if len(page) < 1000:
            return out
        offset += 1000


def phone_cli(gateway: str, port) -> str:
    """A phone's CLI as call-records.md makes it (ddi, else exten, else the
    CUI, which for an unconfigured port is `<gateway>-<port>`)."""
    if gateway == GW and port in (1, 2):
        return f"44207946020{port}"
    return f"{gateway}-{port}"


def whole_seconds(seconds) -> int:
    return 0 if seconds is None else int(round(seconds * 1000)) // 1000


def mismatches(rows, records, cdrs, call_in_to, sent) -> list:
    """Every way the radacct rows disagree with cdrd's records and CDRs."""
    bad = []
    by_leg = defaultdict(list)
    for row in rows:
        by_leg[row["acctsessionid"]].append(row)
    # one row per leg that FreeRADIUS received, none more
    for leg, found in by_leg.items():
        if len(found) != 1:
            bad.append(("rows", leg, len(found)))
    if set(by_leg) != set(sent):
        bad.append(("legs", sorted(set(sent) ^ set(by_leg))))
    # a stable acctuniqueid: every packet of the leg hashed the same
    for leg, uniques in sent.items():
        row = by_leg.get(leg, [None])[0]
        if len(uniques) != 1 or row is None or row["acctuniqueid"] not in uniques:
            bad.append(("acctuniqueid", leg, uniques, row and row["acctuniqueid"]))
    for row in rows:
        if row["acctstoptime"] is None:
            bad.append(("open", row["acctsessionid"]))
    cdrs_billed = defaultdict(list)
    for c in cdrs:
        cdrs_billed[c["billed_call"]].append(c)
    transferred = {c["call"] for c in cdrs if c["call"] != c["billed_call"]}
    transferred |= {c["billed_call"] for c in cdrs if c["call"] != c["billed_call"]}
    for rec in records:
        call = rec["id"]
        legs = sorted(
            (int(k.rsplit("/", 1)[1]), by_leg[k][0]) for k in by_leg
            if k.rsplit("/", 1)[0] == call
        )
        rows_of = dict(legs)
        inbound = rows_of.get(0)
        if inbound is None:
            bad.append(("no inbound row", call))
            continue
        # the caller: the CLI of CALL_IN / REJECT, of PSTN_CALL_IN, or the phone's
        cli = rec["cli"] or rec["pstn_cli"] or phone_cli(rec["gateway"], rec["port"])
        number = (
            rec["dialed"].split(", ")[0] if rec["dialed"]
            else rec["pstn_dial"].split(", ")[0] if rec["pstn_dial"]
            else call_in_to.get(call, "")
        )
        want = {
            "callingstationid": stock_escape(cli),
            "calledstationid": stock_escape(number),
        }
        if call not in transferred:
            want["acctsessiontime"] = whole_seconds(rec["talk"])
        for name, value in want.items():
            if inbound[name] != value:
                bad.append((name, inbound["acctsessionid"], inbound[name], value))
        outbound = [row for n, row in legs if n > 0]
        if outbound and call not in transferred:
            # the leg answered is the last one; a leg replaced was never answered
            times = [r["acctsessiontime"] for r in outbound]
            if times != [0] * (len(times) - 1) + [whole_seconds(rec["talk"])]:
                bad.append(("acctsessiontime out", call, times, rec["talk"]))
        written = cdrs_billed.get(call)
        if written:
            # the Stop that carries the CDRs: its leg is the top CDR's
            top = written[-1]
            carrier = (outbound or [inbound])[-1] if call not in transferred else None
            if carrier is not None:
                for name, value in (
                    ("calledstationid", stock_escape(top["dialled"])),
                    ("acctsessiontime", whole_seconds(top["duration"])),
                ):
                    if carrier[name] != value:
                        bad.append((name, carrier["acctsessionid"], carrier[name], value))
    return bad


def sent_legs(radius_servers) -> dict[str, set[str]]:
    """Acct-Session-Id -> the Acct-Unique-Session-Ids of its packets, from
    the servers' detail files (the detail module runs after acct_unique)."""
    out: dict[str, set[str]] = defaultdict(set)
    for server in radius_servers:
        for r in server.records():
            out[r["Acct-Session-Id"][0]].add(r["Acct-Unique-Session-Id"][0])
    return out


def settle(daemon, calls_expected):
    def done():
        st = daemon.api("/api/accounting")
        calls = daemon.api("/api/calls?from=2026-01-01&to=2030-12-31&limit=1")
        return st["spool_depth"] == 0 and calls["total"] >= calls_expected
    daemon.wait_for(done, timeout=120, what="every call ended and answered")


def test_radacct_rows_match_the_call_records_and_cdrs(tmp_path, pg_database):
    _, url = pg_database
    create_radacct(url)
    radius = FreeRadius(tmp_path / "radius", secret=SECRET, sql=url)
    radius.start()
    daemon = Daemon(tmp_path, extra_config=radius_config(radius) + GATEWAY_CONFIG)
    daemon.start()
    try:
        replay(daemon, "example:all")
        script = tmp_path / "reject.gwp"
        cli = REJECTED.replace(" ", "%20")  # GWP/1 percent-encodes a space
        script.write_text(f"95 11:00:00.000 REJECT cli={cli} cause=barred\n")
        replay(daemon, str(script))
        summary = json.loads(
            sim(
                "load", "--server", f"tcp:127.0.0.1:{daemon.gateway_port}",
                "--gateways", "4", "--calls", "400", "--rate", "200", "--seed", "13",
                "--json",
            )
        )
        assert summary["complete"], summary
        examples = 6  # E1..E5 (6 calls) and the rejected caller
        settle(daemon, examples + 1 + summary["calls"])
        records = all_pages(daemon, "/api/calls?from=2026-01-01&to=2030-12-31", "records")
        cdrs = all_pages(daemon, "/api/cdrs?from=2026-01-01&to=2030-12-31", "cdrs")
        events = all_pages(daemon, "/api/events?from=2026-01-01&to=2030-12-31", "events")
        # let FreeRADIUS finish writing what it answered
        radius.wait_records(lambda r: len(distinct(r)) >= 2 * len(sent_legs([radius])))
        rows = radacct(url)
        sent = sent_legs([radius])
    finally:
        daemon.stop()
        radius.stop()
    call_in_to = {
        f"{e['gateway']}/{e['boot'] or '-'}/{e['ref']}": e.get("to") or ""
        for e in events if e["type"] == "CALL_IN"
    }
    bad = mismatches(rows, records, cdrs, call_in_to, sent)
    open_rows = sum(r["acctstoptime"] is None for r in rows)
    print(f"\nradacct: {len(rows)} rows, {open_rows} open, {len(records)} calls,"
          f" {len(cdrs)} CDRs, {len(bad)} mismatches")
    assert bad == []
    assert len(records) == examples + 1 + summary["calls"]
    # the worked examples, as a billing team reads them (by ref and leg)
    by_leg = {
        tuple(r["acctsessionid"].rsplit("/", 2)[1:]): r
        for r in rows if r["acctsessionid"].startswith(GW + "/")
    }
    e1_in, e1_out = by_leg["75", "0"], by_leg["75", "1"]
    assert (e1_in["calledstationid"], e1_in["callingstationid"]) == ("2252", "442079460201")
    assert e1_in["acctsessiontime"] == e1_out["acctsessiontime"] == 120
    assert e1_in["nasipaddress"] == "127.0.0.1" and e1_in["nasportid"] == "fxs/1"
    assert by_leg["77", "0"]["calledstationid"] == "2252"  # E3, from its Start
    assert by_leg["78", "2"]["calledstationid"] == "07700900123"  # E4's divert
    assert by_leg["79", "0"]["acctsessiontime"] == 595  # E5, its CDR: 595.900
    assert by_leg["80", "1"]["acctsessiontime"] == 530  # moved by the transfer
    rejected = by_leg["95", "0"]
    assert rejected["callingstationid"] == stock_escape(REJECTED) == "=2B44 20=2C7946=220999"
    # User-Name goes through the stock sql_user_name xlat first, which puts
    # a backslash before a double quote: '"' is "=5C=22" there, "=22" elsewhere
    assert rejected["username"] == "=2B44 20=2C7946=5C=220999"
    assert rejected["acctterminatecause"] == "Service-Unavailable"


def test_two_servers_on_one_radacct_close_every_row_across_a_failover(
    tmp_path, pg_database
):
    """A call starts while the first FreeRADIUS is up; it is stopped; the
    call ends: the Stops go to the second, which closes the rows the first
    opened, because both write to the same radacct."""
    _, url = pg_database
    create_radacct(url)
    first = FreeRadius(tmp_path / "radius1", secret=SECRET, sql=url)
    second = FreeRadius(tmp_path / "radius2", secret=SECRET, sql=url)
    first.start()
    second.start()
    daemon = Daemon(
        tmp_path,
        extra_config=radius_config(first, second, failover_after=2) + GATEWAY_CONFIG,
    )
    daemon.start()
    try:
        begin = tmp_path / "begin.gwp"
        begin.write_text(
            "96 12:00:00.000 HOOK_OFF port=1\n"
            "96 12:00:02.000 DIAL digits=07700900555\n"
            "96 12:00:03.000 RING_BACK\n"
            "96 12:00:05.000 TALK\n"
        )
        end = tmp_path / "end.gwp"
        end.write_text(
            "96 12:03:05.000 REMOTE_HOOK_ON\n"
            "96 12:03:06.000 HOOK_ON port=1\n"
        )
        replay(daemon, str(begin), "--boot", "failover")
        daemon.wait_for(
            lambda: len(distinct(first.records())) == 2, what="both Starts at the first"
        )
        first.stop()
        replay(daemon, str(end), "--boot", "failover")
        daemon.wait_for(
            lambda: daemon.api("/api/accounting")["spool_depth"] == 0
            and len(distinct(second.records())) == 2,
            timeout=60,
            what="both Stops at the second",
        )
        rows = radacct(url)
        sent = sent_legs([first, second])
        records = all_pages(daemon, "/api/calls?from=2026-11-22&to=2026-11-22", "records")
    finally:
        daemon.stop()
        first.stop()
        second.stop()
    assert {k[1] for k in distinct(first.records())} == {"Start"}
    assert {k[1] for k in distinct(second.records())} == {"Stop"}
    assert mismatches(rows, records, [], {}, sent) == []
    assert len(rows) == 2 and all(r["acctstoptime"] is not None for r in rows)
    assert {r["acctsessiontime"] for r in rows} == {180}  # TALK to REMOTE_HOOK_ON
