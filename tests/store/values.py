"""Values for the store tests."""

from __future__ import annotations

import random

from attrs import evolve

from cdrd.interfaces import ModelCursor, OutboxItem
from cdrd.values import CallEvent, CallRecord, Cdr, GatewayState, LogEntry, call_id, cdr_id

KEY = "8200_000C2A020082"
KEY2 = "8201_000C2A020083"
DAY = 1795305600000  # 2026-11-22T00:00:00Z
HOUR = 3_600_000
NOTATIONS = ["Call out", "Call out failed", "Call in", "Call in reject", "Hook On/Off", "Other"]


def event(seq, ref=1, type="HOOK_OFF", time=DAY, gateway=KEY, boot="b1", **fields):
    return CallEvent(gateway=gateway, seq=seq, ref=ref, type=type, time=time,
                     received=time + 5, boot=boot, fields=fields)


def log_entry(time, event="Login", gateway="8200", mac="000C2A020082", detail="", peer="127.0.0.1:2348"):
    return LogEntry(time=time, event=event, peer=peer, gateway=gateway, mac=mac, detail=detail)


def gateway_state(key=KEY, **kw):
    gw, mac = key.split("_")
    defaults = dict(
        key=key, id=gw, mac=mac, last_seq=7, boot="b1", boot_token="b1", restarts=0,
        fxs=2, fxo=2, isdn=0, callref=74, firmware="1.2", peer="127.0.0.1:2348",
        login=DAY, skew_ms=-250, last_heard=DAY + 1000, online=True,
    )
    defaults.update(kw)
    return GatewayState(**defaults)


def record(ref, begin, gateway=KEY, boot="b1", notation="Call out", pstn=False, **kw):
    values = dict(
        id=call_id(gateway, boot, ref), gateway=gateway, boot=boot, ref=ref, port=1, pport=None,
        notation=notation, pstn=pstn, dialed="2252, 3", begin=begin, connect=begin + 2000,
        end=begin + 60_000, talk=58_000, pstn_dial="", pstn_time=None, cli="201",
        pstn_cli="", cause="",
    )
    values.update(kw)
    return CallRecord(**values)


def cdr(call, n, start, gateway=KEY, cui="ACCT-1", duration=4250, status="", billed_call=None):
    return Cdr(id=cdr_id(call, n), call=call, gateway=gateway, start=start, ringing=1500,
               duration=duration, status=status, cui=cui, dialled="2252", cli="201",
               billed_call=call if billed_call is None else billed_call)


def cursor(gateway=KEY, applied=10, replay_from=5):
    return ModelCursor(gateway=gateway, applied=applied, replay_from=replay_from)


def item(sink, payload, created=DAY):
    return OutboxItem(sink=sink, payload=payload, created=created)


def random_records(n, seed=7):
    """Records over two gateways and three days, every notation, some PSTN,
    some sharing a begin (the id breaks the tie)."""
    rnd = random.Random(seed)
    out = []
    for ref in range(n):
        gateway = rnd.choice([KEY, KEY2])
        begin = DAY - HOUR * 24 + rnd.randrange(0, 3 * 24 * HOUR // 60_000) * 60_000
        out.append(record(ref, begin, gateway=gateway, notation=rnd.choice(NOTATIONS),
                          pstn=rnd.random() < 0.3))
    return out


def searchable(n, seed=11):
    """Records with varied numbers, talk and causes, and CDRs of about half
    of them with a few CUIs: what the search contract tests walk."""
    rnd = random.Random(seed)
    numbers = ["2252", "0207123456", "201", "44207946", "2_5%", "", "901252"]
    causes = ["", "busy", "cancelled", "no answer"]
    cuis = ["ACME-1", "ACME-2", "BETA", "acme-3"]
    records, cdrs = [], []
    for ref in range(n):
        gateway = rnd.choice([KEY, KEY2])
        begin = DAY - HOUR * 24 + rnd.randrange(0, 3 * 24 * HOUR // 60_000) * 60_000 + rnd.randrange(0, 2) * 1000
        answered = rnd.random() < 0.6
        talk = rnd.choice([0, 999, 1000, 30_000, 61_000, 600_000]) if answered else None
        r = record(
            ref, begin, gateway=gateway, notation=rnd.choice(NOTATIONS), pstn=rnd.random() < 0.3,
            dialed=rnd.choice(numbers), cli=rnd.choice(numbers), pstn_dial=rnd.choice(numbers),
            pstn_cli=rnd.choice(numbers), connect=begin + 1000 if answered else None, talk=talk,
            cause=rnd.choice(causes), port=rnd.choice([None, 1, 2]),
        )
        records.append(r)
        for k in range(rnd.choice([0, 0, 1, 2])):
            c = cdr(r.id, k, begin + 500 * k, gateway=gateway, cui=rnd.choice(cuis),
                    duration=talk, status="" if answered else rnd.choice(causes[1:]))
            cdrs.append(evolve(c, dialled=rnd.choice(numbers), cli=rnd.choice(numbers)))
    return records, cdrs
