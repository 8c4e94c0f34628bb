"""
Issue 14's store changes, the old SQL against the new, alternating in one
process on the ten-million-record bench store (opened read-only;
bench/report.py fills it and applies the migrations):

    .venv/bin/python bench/report_sql.py [--path var/bench/report-10000000-100-365.sqlite]
                                         [--match number]

Prints the median and the max ms of each; docs/benchmarks.md quotes a run.
The number searches run as cdrd/store/sql.py's `calls` and `call_totals`
(the store's code, on this process's connection): "old" is the LIKE scan
of the calls (what every number search did before migration 9, the
dictionary left out), "new" the numbers dictionary and its postings.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import time

import cdrd.store.sql as store_sql
from cdrd.interfaces import CallQuery
from cdrd.store.schema import ANSWER_SUMS, FILTER_SUMS

DAY, HOUR = 86_400_000, 3_600_000
SUMS = "SUM(calls), SUM(answered), SUM(attempts), SUM(attempts_answered), SUM(talk)"


def cases(until: int):
    """(name, old statements, new statements, rounds): as cdrd/store/sql.py runs them."""
    month, year = until - 31 * DAY, until - 365 * DAY
    windows = [(month + d * DAY + 9 * HOUR, month + d * DAY + 10 * HOUR) for d in range(31)]
    hours = "FROM call_hours WHERE gateway {} ? AND hour >= ? AND hour < ?"
    return [
        (
            "totals, all gateways, 31 days, Call Out",
            [(f"SELECT COUNT(*), {ANSWER_SUMS} FROM calls"
              " WHERE begin_ms >= ? AND begin_ms < ? AND notation = ?", (month, until, "Call out"))],
            [(f"SELECT {FILTER_SUMS['out']} {hours.format('=')}", ("*", month, until))],
            7,
        ),
        (
            "count, time of day 09-10, 31 days",
            [("SELECT COUNT(*) FROM calls WHERE begin_ms >= ? AND begin_ms < ? AND 1 = 1 AND ("
              + " OR ".join(["(begin_ms >= ? AND begin_ms < ?)"] * len(windows)) + ")",
              (month, until, *[t for w in windows for t in w]))],
            [(f"SELECT COALESCE(SUM(calls), 0) {hours.format('=')}", ("*", a, b)) for a, b in windows],
            7,
        ),
        (
            "summary by hour/day, all gateways, 365 days",
            [(f"SELECT hour / {HOUR}, {SUMS} {hours.format('<>')} GROUP BY hour / {HOUR}", ("*", year, until))],
            [(f"SELECT hour / {HOUR}, {SUMS} {hours.format('=')} GROUP BY hour / {HOUR}", ("*", year, until))],
            7,
        ),
    ]


def number_cases(until: int):
    """(name, query, the store's method, rounds): the number searches."""
    month, year = until - 31 * DAY, until - 365 * DAY
    one = until - 3 * DAY
    return [
        ("number 1 %, one day: count + page", CallQuery(since=one, until=one + DAY, number="4420794612"),
         "calls", 7),
        ("number 1 %, 31 days: count + page", CallQuery(since=month, until=until, number="4420794612"),
         "calls", 5),
        ("number 1 %, 31 days: totals", CallQuery(since=month, until=until, number="4420794612"),
         "call_totals", 5),
        ("number 1 %, 365 days: count + page", CallQuery(since=year, until=until, number="4420794612"),
         "calls", 3),
        ("number 1 %, 365 days: totals", CallQuery(since=year, until=until, number="4420794612"),
         "call_totals", 3),
        ("number 10 %, 31 days: count + page", CallQuery(since=month, until=until, number="42079461"),
         "calls", 5),
        ("number one caller, 365 days: count + page",
         CallQuery(since=year, until=until, number="442079461234"), "calls", 3),
    ]


def run_numbers(conn, until: int, match: str | None) -> None:
    store = store_sql.SqlStore()
    store._read = lambda fn, *args: fn(conn.cursor(), *args)  # at once, on this connection
    dictionary = store_sql.MIN_NUMBER_TEXT

    def run(query, method, old: bool) -> float:
        store_sql.MIN_NUMBER_TEXT = 10**6 if old else dictionary
        began = time.perf_counter()
        getattr(store, method)(query)
        return (time.perf_counter() - began) * 1000

    for name, query, method, rounds in number_cases(until):
        if match and match not in name:
            continue
        run(query, method, True), run(query, method, False)  # warm the pages
        times: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(rounds):
            times["old"].append(run(query, method, True))
            times["new"].append(run(query, method, False))
        o, n = times["old"], times["new"]
        print(f"{name:48} {statistics.median(o):8.1f} {statistics.median(n):8.1f} {max(o):8.1f} {max(n):8.1f}",
              flush=True)
    store_sql.MIN_NUMBER_TEXT = dictionary


def main() -> None:
    p = argparse.ArgumentParser(description="issue 14's store changes, old SQL against new")
    p.add_argument("--path", default="var/bench/report-10000000-100-365.sqlite")
    p.add_argument("--match", help="only the cases whose name contains this")
    args = p.parse_args()
    conn = sqlite3.connect(f"file:{args.path}?mode=ro", uri=True)
    last = conn.execute("SELECT MAX(hour) FROM call_hours").fetchone()[0]
    until = last // DAY * DAY + DAY

    def run(statements) -> float:
        began = time.perf_counter()
        for sql, params in statements:
            conn.execute(sql, params).fetchall()
        return (time.perf_counter() - began) * 1000

    print(f"{'query (SQL only, ms)':48} {'old p50':>8} {'new p50':>8} {'old max':>8} {'new max':>8}")
    for name, old, new, rounds in cases(until):
        if args.match and args.match not in name:
            continue
        run(old), run(new)  # warm the pages
        times: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(rounds):
            times["old"].append(run(old))
            times["new"].append(run(new))
        o, n = times["old"], times["new"]
        print(f"{name:48} {statistics.median(o):8.1f} {statistics.median(n):8.1f} {max(o):8.1f} {max(n):8.1f}",
              flush=True)

    run_numbers(conn, until, args.match)


if __name__ == "__main__":
    main()
