"""
The SQL both SQL stores share.  Everything here runs in a store thread on a
DB-API connection; the dialect subclasses (sqlite.py, postgresql.py) own
the threads, the connections and how a write transaction begins.

Statements are written with ``?`` placeholders; PostgreSQL's ``%s`` is
substituted by ``SqlStore.sql``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import orjson
from attrs import evolve
from twisted.logger import Logger

from cdrd.interfaces import (
    CALL_SORTS,
    CDR_SORTS,
    RETENTION_KINDS,
    SUMMARY_GROUPS,
    CallPage,
    CallStats,
    CallTotals,
    CuiTotals,
    Expired,
    ModelCursor,
    OutboxItem,
    SummaryPage,
    SummaryRow,
    WriteResult,
    summary_sort_key,
)
from cdrd.store.schema import (
    ALL_GATEWAYS,
    ANSWER_SUMS,
    ANSWERED_COLUMNS,
    ATTEMPT_NOTATIONS,
    FILTER_COLUMN,
    FILTER_NOTATION,
    FILTER_SUMS,
    HOUR_COLUMNS,
    HOUR_MS,
    MIGRATIONS,
    NOTATION_COLUMNS,
    NUMBER_COLUMNS,
    QUARTER_MS,
    SCHEMA_VERSION_DDL,
    TALK_COLUMNS,
    SchemaTooNew,
    log_gateway_keys,
    migration_statements,
)
from cdrd.values import CallEvent, CallRecord, Cdr, GatewayState, LogEntry, stored_event

EVENT_COLS = "id, gateway, seq, boot, ref, type, time, received, fields"
LOG_COLS = "id, time, event, peer, gateway, mac, detail, count"
GATEWAY_FIELDS = (
    "key", "id", "mac", "last_seq", "boot", "boot_token", "restarts", "fxs", "fxo",
    "isdn", "callref", "firmware", "peer", "login", "skew_ms", "last_heard", "online",
)
GATEWAY_COLS = ", ".join(GATEWAY_FIELDS)
CALL_COLS = (
    "id, gateway, boot, ref, port, pport, notation, pstn, dialed, begin_ms, connect_ms,"
    " end_ms, talk, pstn_dial, pstn_time, cli, pstn_cli, cause"
)
CDR_COLS = "id, call, gateway, start, ringing, duration, status, cui, dialled, cli, billed_call"


def _fields_json(fields) -> str:
    """
    An event's fields as compact JSON, keys sorted, UTF-8 as it is (once
    per event stored, in the store's thread, which shares the GIL with the
    reactor: orjson, issue 15).  What JSON cannot hold raises TypeError.
    """
    return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS).decode() if fields else "{}"


def _event(row) -> CallEvent:
    id_, gateway, seq, boot, ref, type_, time, received, fields = row
    # read back from the store: checked when it came in (`stored_event`)
    return stored_event(gateway, seq, ref, type_, time, received, boot, orjson.loads(fields) or {}, id_)


def _log(row) -> LogEntry:
    id_, time, event, peer, gateway, mac, detail, count = row
    return LogEntry(time=time, event=event, peer=peer, gateway=gateway, mac=mac, detail=detail, id=id_, count=count)


def _gateway(row) -> GatewayState:
    values = dict(zip(GATEWAY_FIELDS, row, strict=True))
    values["online"] = bool(values["online"])
    return GatewayState(**values)


def _gateway_row(g: GatewayState) -> tuple:
    return tuple(int(g.online) if f == "online" else getattr(g, f) for f in GATEWAY_FIELDS)


def _record(row) -> CallRecord:
    (id_, gateway, boot, ref, port, pport, notation, pstn, dialed, begin, connect, end,
     talk, pstn_dial, pstn_time, cli, pstn_cli, cause) = row
    return CallRecord(
        id=id_, gateway=gateway, boot=boot, ref=ref, port=port, pport=pport,
        notation=notation, pstn=bool(pstn), dialed=dialed, begin=begin, connect=connect,
        end=end, talk=talk, pstn_dial=pstn_dial, pstn_time=pstn_time, cli=cli,
        pstn_cli=pstn_cli, cause=cause,
    )


def _record_row(r: CallRecord) -> tuple:
    return (
        r.id, r.gateway, r.boot, r.ref, r.port, r.pport, r.notation, int(r.pstn), r.dialed,
        r.begin, r.connect, r.end, r.talk, r.pstn_dial, r.pstn_time, r.cli, r.pstn_cli, r.cause,
    )


def _cdr(row) -> Cdr:
    id_, call, gateway, start, ringing, duration, status, cui, dialled, cli, billed_call = row
    return Cdr(
        id=id_, call=call, gateway=gateway, start=start, ringing=ringing,
        duration=duration, status=status, cui=cui, dialled=dialled, cli=cli,
        billed_call=billed_call,
    )


def _cdr_row(c: Cdr) -> tuple:
    return (c.id, c.call, c.gateway, c.start, c.ringing, c.duration, c.status, c.cui, c.dialled, c.cli,
            c.billed_call)


#: CallQuery.sort / CdrQuery.sort -> column
CALL_SORT_COLUMN = {c: c for c in CALL_SORTS} | {"begin": "begin_ms", "end": "end_ms"}
CDR_SORT_COLUMN = {c: c for c in CDR_SORTS} | {"written": "seq"}


def _numbers_of(r: CallRecord) -> set[str]:
    """The distinct numbers a number search finds a record by."""
    return {n for n in (r.dialed, r.cli, r.pstn_dial, r.pstn_cli) if n}


#: a number search reads the numbers dictionary (docs/store.md, "Number
#: search") when its text is at least a trigram long and holds no LIKE
#: wildcard or escape, and matches at most MAX_NUMBERS numbers; else it
#: scans the calls of its range
MIN_NUMBER_TEXT = 3
MAX_NUMBERS = 10_000
#: a search that reads the numbers' postings counts (and sums its totals)
#: exactly up to this many matching calls; beyond it the count stops at the
#: cap (CallPage.capped, CallTotals.capped). On the 10M SQLite bench store
#: a text in 10 % of the calls has a million postings: counting them took
#: 235 ms; counting 50,000 takes 8-11 ms, summing their totals 28-32 ms
#: (100,000: 16-21 and 55-61 ms, too near 100 ms p95 at the server once
#: both run; docs/store.md, "Number search"; SqlStore.number_count_cap)
NUMBER_COUNT_CAP = 50_000


def uses_dictionary(text: str) -> bool:
    """Can the numbers dictionary answer a number search for `text`
    (before counting its matches against MAX_NUMBERS)?"""
    return len(text) >= MIN_NUMBER_TEXT and not any(c in text for c in "%_\\")


def postings_serve(query) -> bool:
    """Does call_numbers carry every term of the query but the number?"""
    return query.cui is None and query.cause is None


def _like_pattern(text: str) -> str:
    """A LIKE pattern (ESCAPE '\\') matching `text` anywhere."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


#: the columns that may be NULL (the others order without a NULLS clause,
#: which PostgreSQL needs to walk an index in order)
NULLABLE = frozenset({"talk", "port", "pport", "connect_ms", "pstn_time", "duration"})


def _order(column: str, descending: bool, tie: str) -> str:
    """ORDER BY the same on both engines: NULLs first ascending, last descending."""
    direction = "DESC" if descending else "ASC"
    nulls = (" NULLS LAST" if descending else " NULLS FIRST") if column in NULLABLE else ""
    return f"{column} {direction}{nulls}, {tie} {direction}"


def _totals_row(row) -> CallTotals:
    n, a, t, ta, talk = (int(x or 0) for x in row)
    return CallTotals(calls=n, answered=a, attempts=t, attempts_answered=ta, talk=talk)


def _edge(gateway, since, until) -> _Where:
    """The calls of `gateway` (None: any) with Begin in [since, until): an
    edge of a range whose whole hours call_hours answers."""
    edge = _Where()
    if gateway is not None:
        edge.add("gateway = ?", gateway)
    return edge.range("begin_ms", since, until)


def _shifted(column: str, shift) -> str:
    """`column` (ms UTC) plus the zone's offset at that instant: local
    wall-clock ms (IStore.call_summary's `shift`), as SQL."""
    if not shift:
        return column
    if len(shift) == 1:
        return f"({column} + {int(shift[0][1])})"
    # before each change the offset of the one before it
    cases = " ".join(
        f"WHEN {column} < {int(change)} THEN {int(offset)}"
        for (_, offset), (change, _) in zip(shift, shift[1:], strict=False)
    )
    return f"({column} + CASE {cases} ELSE {int(shift[-1][1])} END)"


def _summary_order(sort, descending: bool, time: bool) -> str:
    """ORDER BY of a summary's groups g(k, n, a, t, ta, talk): as summary_sort_key."""
    up, down = ("DESC", "ASC") if descending else ("ASC", "DESC")
    if sort is None:
        return f"k {up}" if time else f"n {down}, k {up}"
    if sort == "key":
        return f"k {up}"
    value = {
        "calls": "n", "answered": "a", "minutes": "talk",
        "asr": "CASE WHEN t > 0 THEN CAST(ta AS DOUBLE PRECISION) / CAST(t AS DOUBLE PRECISION) END",
        "acd": "CASE WHEN ta > 0 THEN CAST(talk AS DOUBLE PRECISION) / CAST(ta AS DOUBLE PRECISION) END",
    }[sort]
    nulls = " NULLS LAST" if descending else " NULLS FIRST"
    return f"{value} {up}{nulls if sort in ('asr', 'acd') else ''}, k {up}"


class _Where:
    """AND-ed conditions and their parameters."""

    def __init__(self):
        self.terms: list[str] = []
        self.params: list = []

    def add(self, term: str, *params) -> _Where:
        self.terms.append(term)
        self.params.extend(params)
        return self

    def range(self, column: str, since, until) -> _Where:
        if since is not None:
            self.add(f"{column} >= ?", since)
        if until is not None:
            self.add(f"{column} < ?", until)
        return self

    @property
    def sql(self) -> str:
        return " WHERE " + " AND ".join(self.terms) if self.terms else ""


#: a number search whose postings number at least this many looks for its
#: page in a stretch of its dates first (SqlStore._postings_page)
DENSE_POSTINGS = 5_000

#: rows of one multi-row INSERT, and its parameters at most (SQLite allows
#: 32 766 since 3.32; PostgreSQL 65 535)
MAX_ROWS = 500
MAX_PARAMS = 30_000


def _no_rows() -> int:
    """The row count of no statement."""
    return 0


def _split_insert(statement: str) -> tuple[str, str, str]:
    """``INSERT ... VALUES (?, ?) ON ...`` -> ("INSERT ... VALUES ", "(?, ?)", " ON ...")."""
    head, sep, rest = statement.partition("VALUES (")
    if not sep:
        raise ValueError(f"not an INSERT ... VALUES (...): {statement!r}")
    values, _, tail = rest.partition(")")
    return head + "VALUES ", f"({values})", tail


_HOUR_INDEX = {c: i for i, c in enumerate(HOUR_COLUMNS)}


def _last_by(rows, key):
    """One row per key, the last (a multi-row upsert may not touch a row twice)."""
    return list({key(r): r for r in rows}.values())


def _hours(since, until):
    """
    Split [since, until) (None: open) into the whole hours that call_hours
    answers, (h1, h2) or None, and the edges before and after them that the
    calls table answers.
    """
    since = 0 if since is None else since
    until = 2**62 if until is None else until
    h1 = -(-since // HOUR_MS) * HOUR_MS
    h2 = until // HOUR_MS * HOUR_MS
    if h1 >= h2:
        return None, [(since, until)] if since < until else []
    return (h1, h2), [(a, b) for a, b in ((since, h1), (h2, until)) if a < b]


def _window_ranges(since, until, windows):
    """
    The disjoint [a, b) ranges of Begin that both [since, until) (None:
    open) and one of `windows` cover, in order: a time-of-day search
    counted range by range, whole hours from call_hours.
    """
    lo = 0 if since is None else since
    hi = 2**62 if until is None else until
    out: list[list[int]] = []
    for a, b in sorted(windows):
        a, b = max(a, lo), min(b, hi)
        if a >= b:
            continue
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


#: CallQuery's search terms besides `windows`
_SEARCH_TERMS = ("number", "cui", "min_talk", "max_talk", "cause")


def _only_windows(query) -> bool:
    """Is a time-of-day window the query's only search term?"""
    return query.windows is not None and all(getattr(query, t) is None for t in _SEARCH_TERMS)


#: the number searches whose matching numbers a store keeps (the report
#: page runs its search's match three or four times: calls, totals, tabs),
#: and the numbers' ids kept over all of them (~60 bytes each: ~6 MB)
NUMBER_MATCHES_KEPT = 256
NUMBER_MATCHES_IDS = 100_000


class _NumberMatches:
    """
    What SqlStore._match_numbers found per text: (the ids, or None for
    more than MAX_NUMBERS; the dictionary's highest id then, and that
    number's row, which tells the same dictionary).  Numbers are never
    deleted or changed, so a later search of the same text adds only what
    the numbers above that id match.  The least recently searched
    texts go first (NUMBER_MATCHES_KEPT texts, NUMBER_MATCHES_IDS ids).
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.texts: OrderedDict[str, tuple[frozenset[int] | None, int, tuple | None]] = OrderedDict()
        self.ids = 0  # kept, over every text: the memory bound

    def get(self, text: str):
        """What `text` matched, or None; it is now the most recently searched."""
        with self.lock:
            known = self.texts.get(text)
            if known is not None:
                self.texts.move_to_end(text)
            return known

    def keep(self, text: str, entry) -> None:
        size = len(entry[0] or ())
        with self.lock:
            old = self.texts.get(text)
            if old is not None and old[1] > entry[1]:
                return  # a newer match of the text is kept already
            if old is not None:
                self.ids -= len(self.texts.pop(text)[0] or ())
            if size > NUMBER_MATCHES_IDS:
                return
            self.texts[text] = entry
            self.ids += size
            while len(self.texts) > NUMBER_MATCHES_KEPT or self.ids > NUMBER_MATCHES_IDS:
                _, (gone, *_) = self.texts.popitem(last=False)
                self.ids -= len(gone or ())


class SqlStore:
    """
    IStore over SQL.  Subclasses provide ``dialect``, ``_run(fn, *args,
    write=bool)`` (fn(cursor, *args) in a store thread, inside a
    transaction, committed after: a Deferred) and ``_begin_write(cursor)``.
    """

    dialect = "sqlite"
    #: `_many` writes its rows in statements of power-of-two sizes (300
    #: rows: 256 + 32 + 8 + 4), so that a few statement texts serve every
    #: batch and the driver's statement cache keeps them compiled: SQLite
    #: compiles a 300-row INSERT in about twice the time it takes to run
    #: it, and batch sizes vary from one transaction to the next (issue 15)
    fixed_chunks = False
    #: ASCII case-insensitive LIKE (SQLite's LIKE is; PostgreSQL's ILIKE)
    like = "LIKE"
    #: NUMBER_COUNT_CAP; a store's own, so that tests can lower it
    number_count_cap = NUMBER_COUNT_CAP
    _logger = Logger()  # not `log`: IStore.log is a query

    def sql(self, statement: str) -> str:
        return statement

    def _exec(self, cur, statement, params=()):
        cur.execute(self.sql(statement), params)
        return cur

    def _many(self, cur, statement, rows) -> Callable[[], int]:
        """
        Run an ``INSERT ... VALUES (?, ...) [ON CONFLICT ...]`` for every row,
        a few hundred rows per statement; a function returning the rows
        inserted (read as late as possible: see ``_send``).

        Not ``executemany``: the sqlite3 module lets go of the GIL around
        every row's step, and while the reactor thread is busy each row then
        waits for the GIL to come back (measured: 1 300 rows/s against
        77 000 with multi-row VALUES).  Fewer statements also mean fewer
        round trips to PostgreSQL.
        """
        if not rows:
            return _no_rows
        head, values, tail = _split_insert(statement)
        width = len(rows[0])
        chunk = max(1, min(MAX_ROWS, MAX_PARAMS // width))
        if self.fixed_chunks:
            chunk = 1 << (chunk.bit_length() - 1)
        counts = []
        i, n = 0, len(rows)
        while i < n:
            size = min(chunk, n - i)
            if self.fixed_chunks:
                size = 1 << (size.bit_length() - 1)  # 300 rows: 256 + 32 + 8 + 4
            part = rows[i:i + size]
            i += size
            counts.append(self._send_rows(cur, head, values, tail, size, [v for row in part for v in row]))
        if len(counts) == 1:
            return counts[0]
        return lambda: sum(count() for count in counts)

    def _send_rows(self, cur, head: str, values: str, tail: str, size: int, params) -> Callable[[], int]:
        """``_send`` of `head` + `size` times `values` + `tail` (a multi-row INSERT)."""
        return self._send(cur, self.sql(f"{head}{', '.join([values] * size)}{tail}"), params)

    def _send(self, cur, statement: str, params) -> Callable[[], int]:
        """
        Run a statement (in the dialect's SQL) whose answer is not needed at
        once; a function returning its row count.  SQLite runs it here;
        PostgreSQL sends it in pipeline mode and goes on, so that a write
        transaction waits for the server once for many statements.
        """
        cur.execute(statement, params)
        count = max(cur.rowcount, 0)
        return lambda: count

    def _ask(self, cur, statement: str, params=()) -> Callable[[], list]:
        """A query (``?`` placeholders) whose rows are read later: a function returning them."""
        rows = self._exec(cur, statement, params).fetchall()
        return lambda: rows

    # -- schema ----------------------------------------------------------------

    def _migrate(self, cur) -> int:
        self._exec(cur, SCHEMA_VERSION_DDL)
        version = self._exec(cur, "SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
        if version > len(MIGRATIONS):
            raise SchemaTooNew(
                f"the database has schema version {version}, this cdrd knows up to {len(MIGRATIONS)}"
            )
        for index in range(version, len(MIGRATIONS)):
            # some rebuild tables of every stored call (9: the numbers'
            # postings, ~3 min a million calls): the operator sees it begin
            self._logger.info(
                "store schema: migrating to version {version} of {last}; gateways wait until it ends",
                version=index + 1, last=len(MIGRATIONS),
            )
            for statement in migration_statements(self.dialect, index):
                self._exec(cur, statement)
            self._logger.info("store schema migrated to version {version}", version=index + 1)
        if version < len(MIGRATIONS):
            self._exec(cur, "DELETE FROM schema_version")
            self._exec(cur, "INSERT INTO schema_version (version) VALUES (?)", (len(MIGRATIONS),))
        return len(MIGRATIONS)

    # -- the one way in --------------------------------------------------------

    def write(self, batch):
        return self._run(self._write, batch, write=True)

    def _write(self, cur, batch) -> WriteResult:
        # Every statement whose answer the rest needs is sent before the
        # first answer is read: PostgreSQL pipelines them (a round trip for
        # the lot, not one each: cdrd.store.postgresql), SQLite runs each
        # at once.  One writer at a time (BEGIN IMMEDIATE / the advisory
        # lock), so the event rows above `before` are exactly this batch's
        # inserts, in the batch's order; duplicates are the events not among them.
        if batch.events:
            before = self._ask(cur, "SELECT COALESCE(MAX(id), 0) FROM events")
            count = self._many(
                cur,
                "INSERT INTO events (gateway, seq, boot, ref, type, time, received, fields)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(e.gateway, e.seq, e.boot, e.ref, e.type, e.time, e.received, _fields_json(e.fields))
                 for e in batch.events],
            )
            after = self._event_id_later(cur)
        self._many(
            cur,
            "INSERT INTO log (time, event, peer, gateway, mac, detail, count) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(e.time, e.event, e.peer, e.gateway, e.mac, e.detail, e.count) for e in batch.log],
        )
        set_count = self.sql(
            "UPDATE log SET count = ? WHERE time = ? AND event = ? AND peer = ? AND gateway = ? AND mac = ?"
        )
        for c in batch.log_counts:  # a few a batch: one per coalesced entry every few seconds
            self._send(
                cur,
                set_count,
                (c.count, c.entry.time, c.entry.event, c.entry.peer, c.entry.gateway, c.entry.mac),  # log_time
            )
        if batch.gateways:
            updates = ", ".join(f"{f} = excluded.{f}" for f in GATEWAY_FIELDS[1:])
            marks = ", ".join("?" * len(GATEWAY_FIELDS))
            self._many(
                cur,
                f"INSERT INTO gateways ({GATEWAY_COLS}) VALUES ({marks})"
                f" ON CONFLICT (key) DO UPDATE SET {updates}",
                [_gateway_row(g) for g in _last_by(batch.gateways, lambda g: g.key)],
            )
        new_cdrs = self._new_rows(cur, "cdrs", batch.cdrs)
        self._many(
            cur,
            "INSERT INTO cursors (gateway, applied, replay_from) VALUES (?, ?, ?)"
            " ON CONFLICT (gateway) DO UPDATE SET applied = excluded.applied,"
            " replay_from = excluded.replay_from",
            [(c.gateway, c.applied, c.replay_from) for c in _last_by(batch.cursors, lambda c: c.gateway)],
        )
        self._many(
            cur,
            "INSERT INTO outbox (sink, payload, created) VALUES (?, ?, ?)",
            [(o.sink, bytes(o.payload), o.created) for o in batch.outbox],
        )
        if batch.records:
            # after this batch's outbox items: the record waits for them too
            mark = self._ask(cur, "SELECT COALESCE(MAX(id), 0) FROM outbox")
            new_records = self._new_records(cur, batch.records)
        done: dict[str, list[int]] = {}
        for sink, item_id in batch.outbox_done:
            done.setdefault(sink, []).append(item_id)
        for sink, ids in done.items():
            for i in range(0, len(ids), MAX_ROWS):
                part = ids[i:i + MAX_ROWS]
                self._send(
                    cur, self.sql(f"DELETE FROM outbox WHERE sink = ? AND id IN ({', '.join('?' * len(part))})"),
                    (sink, *part),
                )
        # the answers: what was new decides the rest
        inserted = []
        if batch.events:
            first, n = before()[0][0], count()
            if n == len(batch.events) and after() - first == n:
                # every event inserted, in order, ids consecutive: no read back
                inserted = [e.with_id(first + i) for i, e in enumerate(batch.events, 1)]
            else:
                rows = self._exec(
                    cur, "SELECT id, gateway, seq FROM events WHERE id > ? ORDER BY id", (first,)
                ).fetchall()
                i = 0
                for e in batch.events:
                    if i < len(rows) and rows[i][1] == e.gateway and rows[i][2] == e.seq:
                        inserted.append(e.with_id(rows[i][0]))
                        i += 1
                if i != len(rows):
                    raise RuntimeError("events inserted by another writer during a write transaction")
        if batch.cdrs:
            new = new_cdrs()
            self._many(
                cur,
                f"INSERT INTO cdrs ({CDR_COLS}) VALUES ({', '.join('?' * 11)}) ON CONFLICT DO NOTHING",
                [_cdr_row(c) for c in new],
            )
            self._count_cdr_hours(cur, [(c.gateway, c.start, c.duration) for c in new])
        if batch.records:
            new, stored_mark = new_records(), mark()[0][0]
            self._many(
                cur,
                f"INSERT INTO calls ({CALL_COLS}, outbox_mark) VALUES ({', '.join('?' * 19)})",
                [(*_record_row(r), stored_mark) for r in new],
            )
            self._count_hours(cur, new)
            self._index_numbers(cur, new)
        return WriteResult(events=tuple(inserted))

    def _event_id_later(self, cur) -> Callable[[], int]:
        """The highest event id right after this transaction's inserts, read later."""
        after = self._last_event_id(cur)
        return lambda: after

    def _last_event_id(self, cur) -> int:
        """The highest event id, right after this transaction's inserts."""
        return self._exec(cur, "SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]

    def _new_records(self, cur, records) -> Callable[[], list]:
        """The records not stored yet (a record is stored once), first of each id; read later."""
        return self._new_rows(cur, "calls", records)

    def _new_rows(self, cur, table: str, values) -> Callable[[], list]:
        """
        The `values` (records, CDRs) whose id `table` does not hold yet,
        first of each id: a function returning them (asked now, read later).
        """
        fresh = {}
        for v in values:
            fresh.setdefault(v.id, v)
        ids = list(fresh)
        stored = [
            self._ask(cur, f"SELECT id FROM {table} WHERE id IN ({', '.join('?' * len(chunk))})", chunk)
            for chunk in (ids[i:i + MAX_ROWS] for i in range(0, len(ids), MAX_ROWS))
        ]

        def new() -> list:
            for rows in stored:
                for (known,) in rows():
                    del fresh[known]
            return list(fresh.values())
        return new

    def _count_cdr_hours(self, cur, cdrs, sign: int = 1) -> None:
        """Add CDRs, (gateway, start, duration) each, to cdr_hours (sign -1: take them off)."""
        sums: dict[tuple[str, int], list[int]] = {}
        for gateway, start, duration in cdrs:
            hour = start // HOUR_MS * HOUR_MS
            for g in (gateway, ALL_GATEWAYS):
                row = sums.setdefault((g, hour), [0, 0, 0])
                row[0] += 1
                if duration is not None:
                    row[1] += 1
                    row[2] += duration
        self._add_hours(cur, "cdr_hours", ("cdrs", "answered", "duration"), sums, sign)

    def _add_hours(self, cur, table: str, columns, sums, sign: int) -> None:
        """Add `sums` ((gateway, hour) -> a value per column) to an hourly
        table, times `sign`; taking off (-1) deletes the hours left empty
        (their first column, the count, at 0)."""
        adds = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in columns)
        self._many(
            cur,
            f"INSERT INTO {table} (gateway, hour, {', '.join(columns)})"
            f" VALUES ({', '.join('?' * (2 + len(columns)))})"
            f" ON CONFLICT (gateway, hour) DO UPDATE SET {adds}",
            [(g, h, *(sign * n for n in row)) for (g, h), row in sums.items()],
        )
        if sign < 0:
            hours = sorted({h for _, h in sums})
            for i in range(0, len(hours), MAX_ROWS):
                part = hours[i:i + MAX_ROWS]
                self._exec(
                    cur,
                    f"DELETE FROM {table} WHERE hour IN ({', '.join('?' * len(part))}) AND {columns[0]} <= 0",
                    part,
                )

    def _count_hours(self, cur, records, sign: int = 1) -> None:
        """Add `records` to call_hours (sign -1: take them off)."""
        sums: dict[tuple[str, int], list[int]] = {}
        index = _HOUR_INDEX
        for r in records:
            hour = r.begin // HOUR_MS * HOUR_MS
            answered = r.connect is not None
            attempt = r.notation in ATTEMPT_NOTATIONS
            for gateway in (r.gateway, ALL_GATEWAYS):
                row = sums.get((gateway, hour))
                if row is None:
                    row = sums[(gateway, hour)] = [0] * len(HOUR_COLUMNS)
                row[0] += 1
                row[1] += r.pstn
                column = NOTATION_COLUMNS.get(r.notation)
                if column is not None:
                    row[index[column]] += 1
                row[index["answered"]] += answered
                if answered and r.notation in ANSWERED_COLUMNS:
                    row[index[ANSWERED_COLUMNS[r.notation]]] += 1
                    if r.notation in TALK_COLUMNS:
                        row[index[TALK_COLUMNS[r.notation]]] += r.talk or 0
                if r.pstn:
                    row[index["pstn_answered"]] += answered
                if attempt:
                    row[index["attempts"]] += 1
                    row[index["pstn_attempts"]] += r.pstn
                    if answered:
                        row[index["attempts_answered"]] += 1
                        row[index["talk"]] += r.talk or 0
                        if r.pstn:
                            row[index["pstn_attempts_answered"]] += 1
                            row[index["pstn_talk"]] += r.talk or 0
        self._add_hours(cur, "call_hours", HOUR_COLUMNS, sums, sign)

    def _index_numbers(self, cur, records, sign: int = 1) -> None:
        """
        Add `records`' numbers to the numbers dictionary and their postings
        to call_numbers (sign -1: delete the postings; the numbers stay in
        the dictionary).  The numbers' ids are looked up by the statements
        themselves, not read back: a write waits for no answer here
        (PostgreSQL's pipeline, ``_send``).
        """
        numbers = sorted({n for r in records for n in _numbers_of(r)})
        if not numbers:
            return
        rows = []
        for r in records:
            mine = sorted(_numbers_of(r))
            for n in mine:
                others = [o for o in mine if o != n] + [None, None, None]
                rows.append((n, r.begin, r.id, r.gateway, r.notation, int(r.pstn), r.connect, r.talk,
                             *others[:3]))
        if sign > 0:
            self._many(cur, "INSERT INTO numbers (number) VALUES (?) ON CONFLICT DO NOTHING",
                       [(n,) for n in numbers])
            # l1..l3: those of the call's other numbers whose id is lower, else 0
            lower = ", ".join(
                f"COALESCE((SELECT o.id FROM numbers o WHERE o.number = v.column{c} AND o.id < n.id), 0)"
                for c in (9, 10, 11)
            )
            self._many(
                cur,
                f"INSERT INTO call_numbers (number_id, begin_ms, call_id, {', '.join(NUMBER_COLUMNS)},"
                " l1, l2, l3) SELECT n.id, CAST(v.column2 AS BIGINT), v.column3, v.column4, v.column5,"
                " CAST(v.column6 AS SMALLINT), CAST(v.column7 AS BIGINT), CAST(v.column8 AS BIGINT),"
                f" {lower} FROM (VALUES ({', '.join('?' * 11)})) AS v JOIN numbers n ON n.number = v.column1",
                rows,
            )
            return
        for i in range(0, len(rows), MAX_ROWS):
            part = rows[i:i + MAX_ROWS]
            self._send(
                cur,
                self.sql(
                    "DELETE FROM call_numbers WHERE (number_id, begin_ms, call_id) IN"
                    " (SELECT n.id, CAST(v.column2 AS BIGINT), v.column3 FROM"
                    f" (VALUES {', '.join(['(?, ?, ?)'] * len(part))}) AS v JOIN numbers n ON n.number = v.column1)"
                ),
                [v for row in part for v in row[:3]],
            )

    # -- queries ---------------------------------------------------------------

    def _read(self, fn, *args):
        return self._run(fn, *args, write=False)

    def gateway(self, key):
        def q(cur):
            row = self._exec(cur, f"SELECT {GATEWAY_COLS} FROM gateways WHERE key = ?", (key,)).fetchone()
            return None if row is None else _gateway(row)
        return self._read(q)

    def gateways(self):
        def q(cur):
            rows = self._exec(cur, f"SELECT {GATEWAY_COLS} FROM gateways ORDER BY key").fetchall()
            return [_gateway(r) for r in rows]
        return self._read(q)

    def log(self, query):
        where = _Where()
        if query.gateway is not None:
            gw, mac = log_gateway_keys(query.gateway)
            if mac is None:
                where.add("gateway = ?", gw)
            else:
                where.add("(gateway = ? OR (gateway = ? AND UPPER(mac) = ?))", query.gateway, gw, mac)
        where.range("time", query.since, query.until)

        def q(cur):
            rows = self._exec(
                cur,
                f"SELECT {LOG_COLS} FROM log{where.sql} ORDER BY time DESC, id DESC LIMIT ? OFFSET ?",
                (*where.params, query.limit, query.offset),
            ).fetchall()
            return [_log(r) for r in rows]
        return self._read(q)

    def events(self, query):
        where = _Where()
        if query.gateway is not None:
            where.add("gateway = ?", query.gateway)
        if query.ref is not None:
            where.add("ref = ?", query.ref)
        where.range("time", query.since, query.until)
        order = "DESC" if query.newest_first else "ASC"

        def q(cur):
            if query.gateway is not None and query.ref is None:
                # a gateway's events, through (gateway, seq) and the
                # unsequenced index (_gateway_events)
                events = self._gateway_events(
                    cur, where, limit=query.limit + query.offset, newest_first=query.newest_first)
                return events[query.offset:]
            rows = self._exec(
                cur,
                f"SELECT {EVENT_COLS} FROM events{where.sql} ORDER BY id {order} LIMIT ? OFFSET ?",
                (*where.params, query.limit, query.offset),
            ).fetchall()
            return [_event(r) for r in rows]
        return self._read(q)

    def events_after(self, gateway, after_id, limit):
        def q(cur):
            if gateway is not None:
                return self._gateway_events_after(cur, gateway, after_id, limit)
            rows = self._exec(
                cur, f"SELECT {EVENT_COLS} FROM events WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit),
            ).fetchall()
            return [_event(r) for r in rows]
        return self._read(q)

    # A gateway's events in id order, without an index on (gateway, id):
    # every write transaction touched that index's last page of each
    # gateway that sent (docs/store.md, "Events by gateway").  A gateway's
    # events that have a seq are in the same order by seq as by id: seq
    # grows by one per event, per gateway, across connections; an event at
    # or below the highest seq stored is a duplicate, never stored
    # (gateway-protocol.md, 5); and one writer stores a gateway's events
    # at a time (its session, then its lease).  So (gateway, seq), unique
    # anyway, reads them in id order.  cdrd's own events (seq NULL: a
    # restart's, an authorization's) come by id through the same index on
    # SQLite (its entries end in the rowid), through a partial index on
    # PostgreSQL (events_gateway_unsequenced); the two are merged by id.

    def _gateway_events(self, cur, where: _Where, limit: int, newest_first: bool = False,
                        after: tuple[int, int] | None = None) -> list:
        """
        The first `limit` events by id (`newest_first`: the last) that match
        `where`, whose first term is ``gateway = ?``.  `after`: (seq, id),
        only the events after the one with that seq, or id when it has none.
        """
        order = "DESC" if newest_first else "ASC"
        sequenced, unsequenced = " AND seq IS NOT NULL", " AND seq IS NULL"
        seq_params: tuple = ()
        id_params: tuple = ()
        if after is not None:
            sequenced, seq_params = " AND seq > ?", (after[0],)
            unsequenced, id_params = " AND seq IS NULL AND id > ?", (after[1],)
        rows = self._exec(
            cur,
            f"SELECT {EVENT_COLS} FROM events{where.sql}{sequenced} ORDER BY seq {order} LIMIT ?",
            (*where.params, *seq_params, limit),
        ).fetchall()
        rows += self._exec(
            cur,
            f"SELECT {EVENT_COLS} FROM events{where.sql}{unsequenced} ORDER BY id {order} LIMIT ?",
            (*where.params, *id_params, limit),
        ).fetchall()
        rows.sort(key=lambda r: r[0], reverse=newest_first)
        return [_event(r) for r in rows[:limit]]

    def _gateway_events_after(self, cur, gateway: str, after_id: int, limit: int) -> list:
        """`gateway`'s first `limit` events whose id is above `after_id`."""
        return self._gateway_events(
            cur, _Where().add("gateway = ?", gateway), limit,
            after=(self._seq_at(cur, gateway, after_id), after_id))

    def _seq_at(self, cur, gateway: str, event_id: int) -> int:
        """The highest seq of `gateway`'s events with an id up to `event_id` (0: none)."""
        if event_id <= 0:
            return 0
        # the event itself, or the next: usually the gateway's (a cursor's
        # applied, or a replay's first event less one)
        rows = self._exec(
            cur, "SELECT id, gateway, seq FROM events WHERE id IN (?, ?)", (event_id, event_id + 1),
        ).fetchall()
        for id_, gw, seq in sorted(rows):
            if gw == gateway and seq is not None:
                return seq if id_ == event_id else seq - 1
        # between two of cdrd's own events, other gateways' or deleted
        # ones: walk down from the gateway's newest event (those above
        # `event_id` are the ones its caller reads next anyway)
        row = self._exec(
            cur,
            "SELECT seq FROM events WHERE gateway = ? AND seq IS NOT NULL AND id <= ?"
            " ORDER BY seq DESC LIMIT 1",
            (gateway, event_id),
        ).fetchone()
        return 0 if row is None else row[0]

    def _cui_prefix(self, where: _Where, prefix: str) -> _Where:
        """CUIs that start with `prefix`, through an index on cui."""
        if self.dialect == "sqlite":
            # binary collation: UTF-8 byte order; every string that starts
            # with the prefix lies in [prefix, prefix + U+10FFFF)
            return where.add(
                f"cui >= ? AND cui < ? AND SUBSTR(cui, 1, {len(prefix)}) = ?",
                prefix, prefix + "\U0010ffff", prefix,
            )
        # PostgreSQL: the same range in byte order (~>=~, ~<~), which the
        # text_pattern_ops index (CUI_PREFIX_MIGRATION) serves under any
        # collation and in a generic plan too; LIKE keeps exactly the prefix
        return where.add(
            "cui ~>=~ ? AND cui ~<~ ? AND cui LIKE ? ESCAPE '\\'",
            prefix, prefix + "\U0010ffff", _like_pattern(prefix)[1:],
        )

    def _match_numbers(self, cur, text: str) -> list[int] | None:
        """The ids of the numbers that contain `text` (ASCII letters in
        either case), through the trigram index; None where the search
        scans calls instead (MIN_NUMBER_TEXT, MAX_NUMBERS)."""
        if not uses_dictionary(text):
            return None
        matches = self._number_matches()
        known = matches.get(text)
        if known is not None and self._exec(
                cur, "SELECT number FROM numbers WHERE id = ?", (known[1],)).fetchone() != known[2]:
            # the dictionary is not the one the match was kept from (a
            # database restored, or an asynchronous replica promoted): again
            known = None
        if known is not None and known[0] is None:
            return None  # too many numbers match, and numbers are never deleted
        # the dictionary's highest id first, then the match: the match sees
        # at least every number up to it (one writer at a time: ids become
        # visible in order), so the next search of the text reads only the
        # numbers added since, by their ids
        seen, anchor = self._exec(
            cur, "SELECT id, number FROM numbers ORDER BY id DESC LIMIT 1").fetchone() or (0, None)
        since = 0 if known is None else known[1]
        if known is not None and since >= seen:
            found = set(known[0])  # nothing added since: no query
        else:
            found = self._numbers_matching(cur, _like_pattern(text), since)
            if known is not None:
                found |= known[0]
        ids = None if len(found) > MAX_NUMBERS else frozenset(found)
        matches.keep(text, (ids, seen, None if anchor is None else (anchor,)))
        return None if ids is None else sorted(ids)

    def _numbers_matching(self, cur, pattern: str, since: int) -> set[int]:
        """The ids above `since` of the numbers LIKE `pattern` (at most
        MAX_NUMBERS + 1 of them), through the trigram index."""
        if self.dialect == "sqlite":
            # FTS5 finds the candidates (its trigrams fold case beyond
            # ASCII); LIKE on the number keeps exactly what LIKE matches
            statement = (
                "SELECT id FROM numbers WHERE id IN (SELECT rowid FROM numbers_trigram WHERE number LIKE ?)"
                " AND number LIKE ? ESCAPE '\\' AND id > ? LIMIT ?"
            )
            params = (pattern, pattern, since, MAX_NUMBERS + 1)
        else:
            statement = f"SELECT id FROM numbers WHERE number {self.like} ? ESCAPE '\\' AND id > ? LIMIT ?"
            params = (pattern, since, MAX_NUMBERS + 1)
        return {int(r[0]) for r in self._exec(cur, statement, params).fetchall()}

    def _number_matches(self) -> _NumberMatches:
        matches = self.__dict__.get("_matches")
        if matches is None:
            matches = self.__dict__.setdefault("_matches", _NumberMatches())
        return matches

    def _number_postings(self, query, numbers: list[int], match: str, match_params) -> _Where:
        """
        The postings (call_numbers) of a number search whose terms
        call_numbers carries (not cui, not cause): one row per matching
        call, under the lowest of its numbers that match, with the
        gateway, dates, filter, talk and time of day applied.
        """
        ids = ", ".join(str(int(i)) for i in numbers) or "0"
        where = _Where().add(f"number_id IN ({ids})")
        for lower in ("l1", "l2", "l3"):
            # most postings have no lower number (0): no lookup in the list
            where.add(f"({lower} = 0 OR {lower} NOT IN ({ids}))")
        if query.gateway is not None:
            where.add("gateway = ?", query.gateway)
        where.range("begin_ms", query.since, query.until)
        where.add(match, *match_params)
        rest = self._call_search(evolve(query, number=None))
        where.terms += rest.terms
        where.params += rest.params
        return where

    def _postings_page(self, cur, query, postings: _Where, filtered: int) -> list[str]:
        """
        The call ids of a number search's page, from its postings in Begin
        order.  A short text over a year matches a million postings, and
        one page read and sorted every one of them (0.4 s on PostgreSQL
        at ten million records).  Where the matches are dense, the page is
        first looked for in the stretch of the dates at the page's end that
        should hold it four times over (from the count): rows outside it
        all sort after the rows inside, so when it holds the whole page the
        page is exact; only when it does not is the whole range read.
        """
        def page(where: _Where) -> list[str]:
            return [r[0] for r in self._exec(
                cur,
                f"SELECT call_id FROM call_numbers{where.sql}"
                f" ORDER BY {_order('begin_ms', query.descending, 'call_id')} LIMIT ? OFFSET ?",
                (*where.params, query.limit, query.offset),
            ).fetchall()]

        since, until, want = query.since, query.until, query.offset + query.limit
        if (query.after is None and since is not None and until is not None
                and filtered >= DENSE_POSTINGS and want * 8 <= filtered):
            span = max(HOUR_MS, -(-4 * want * (until - since) // filtered))
            if span < until - since:
                window = _Where()
                window.terms, window.params = list(postings.terms), list(postings.params)
                if query.descending:
                    window.add("begin_ms >= ?", until - span)
                else:
                    window.add("begin_ms < ?", since + span)
                ids = page(window)
                if len(ids) == query.limit:
                    return ids
        return page(postings)

    def _count_postings(self, cur, postings: _Where) -> int | None:
        """How many postings match (one a call), reading at most
        number_count_cap + 1 of them; None: more than the cap."""
        cap = self.number_count_cap
        n = self._exec(
            cur,
            f"SELECT COUNT(*) FROM (SELECT 1 FROM call_numbers{postings.sql} LIMIT ?) AS capped",
            (*postings.params, cap + 1),
        ).fetchone()[0]
        return None if n > cap else int(n)

    def _call_search(self, query, numbers: list[int] | None = None) -> _Where:
        """The search terms of a CallQuery (not gateway, dates or filter);
        `numbers`: the ids of the numbers that match query.number, where
        the dictionary found them (_match_numbers)."""
        where = _Where()
        if numbers is not None and query.number is not None:
            # the calls among these numbers' postings in the dates
            postings = _Where().add(f"number_id IN ({', '.join(str(int(i)) for i in numbers) or '0'})")
            postings.range("begin_ms", query.since, query.until)
            where.add(f"id IN (SELECT call_id FROM call_numbers{postings.sql})", *postings.params)
        elif query.number is not None:
            pattern = _like_pattern(query.number)
            columns = ("dialed", "cli", "pstn_dial", "pstn_cli")
            where.add(
                " OR ".join(f"{c} {self.like} ? ESCAPE '\\'" for c in columns).join("()"),
                *[pattern] * len(columns),
            )
        if query.cui is not None:
            # a CDR of the call has a CUI with this prefix; its start is
            # within the call's, so the dates bound the CDRs read too
            cdrs = self._cui_prefix(_Where(), query.cui)
            cdrs.range("start", query.since, query.until)
            where.add(f"id IN (SELECT call FROM cdrs{cdrs.sql})", *cdrs.params)
        if query.min_talk is not None:
            where.add("COALESCE(talk, 0) >= ?", query.min_talk)
        if query.max_talk is not None:
            where.add("COALESCE(talk, 0) <= ?", query.max_talk)
        if query.windows is not None:
            if not query.windows:
                where.add("1 = 0")
            else:
                where.add(
                    " OR ".join(["(begin_ms >= ? AND begin_ms < ?)"] * len(query.windows)).join("()"),
                    *[t for w in query.windows for t in w],
                )
        if query.cause is not None:
            where.add("cause = ?", query.cause)
        return where

    def _call_where(self, query, numbers: list[int] | None = None):
        """(where of gateway and dates, filter's term and params, search terms)."""
        if query.filter not in FILTER_COLUMN:
            raise ValueError(f"unknown call filter {query.filter!r}")
        where = _Where()
        if query.gateway is not None:
            where.add("gateway = ?", query.gateway)
        where.range("begin_ms", query.since, query.until)
        if query.filter == "all":
            match, match_params = "1 = 1", ()
        elif query.filter == "pstn":
            match, match_params = "pstn = 1", ()
        else:
            match, match_params = "notation = ?", (FILTER_NOTATION[query.filter],)
        return where, match, match_params, self._call_search(query, numbers)

    def calls(self, query):
        from twisted.internet import defer

        if query.sort not in CALL_SORTS:
            return defer.fail(ValueError(f"unknown call sort {query.sort!r}"))
        if query.after is not None and query.sort != "begin":
            return defer.fail(ValueError("keyset paging (after) needs sort begin"))
        try:
            self._call_where(query)
        except ValueError:
            return defer.fail()
        order = _order(CALL_SORT_COLUMN[query.sort], query.descending, "id")

        def q(cur):
            numbers = self._match_numbers(cur, query.number) if query.number is not None else None
            where, match, match_params, search = self._call_where(query, numbers)
            all_terms = [*where.terms, match, *search.terms]
            all_params = [*where.params, *match_params, *search.params]
            page_terms, page_params = list(all_terms), list(all_params)
            if query.after is not None:
                begin, after_id = query.after
                op = "<" if query.descending else ">"
                page_terms.append(f"(begin_ms {op} ? OR (begin_ms = ? AND id {op} ?))")
                page_params += [begin, begin, after_id]
            total, filtered = self._call_counts(
                cur, query.gateway, query.since, query.until, FILTER_COLUMN[query.filter],
                match, match_params,
            )
            postings = None
            capped = False
            if numbers is not None and postings_serve(query):
                # index-only over the matching numbers' postings
                postings = self._number_postings(query, numbers, match, match_params)
                filtered = self._count_postings(cur, postings)
                capped = filtered is None
                if capped:
                    filtered = self.number_count_cap
            elif _only_windows(query):
                # whole hours of each window from call_hours, its edges by index
                filtered = 0
                for a, b in _window_ranges(query.since, query.until, query.windows):
                    filtered += self._call_counts(
                        cur, query.gateway, a, b, FILTER_COLUMN[query.filter], match, match_params,
                    )[1]
            elif search.terms:
                filtered = self._exec(
                    cur, f"SELECT COUNT(*) FROM calls WHERE {' AND '.join(all_terms)}", all_params
                ).fetchone()[0]
            records = ()
            if query.limit > 0 and query.offset < filtered:
                if postings is not None and query.sort == "begin":
                    # the page's ids from the postings, then only those rows
                    if query.after is not None:
                        begin, after_id = query.after
                        op = "<" if query.descending else ">"
                        postings.add(f"(begin_ms {op} ? OR (begin_ms = ? AND call_id {op} ?))",
                                     begin, begin, after_id)
                    ids = self._postings_page(cur, query, postings, filtered)
                    rows = self._exec(
                        cur,
                        f"SELECT {CALL_COLS} FROM calls WHERE id IN ({', '.join('?' * len(ids)) or 'NULL'})"
                        f" ORDER BY {order}",
                        ids,
                    ).fetchall()
                else:
                    # page ids from the index, then only those rows
                    rows = self._exec(
                        cur,
                        f"SELECT {CALL_COLS} FROM calls WHERE id IN ("
                        f" SELECT id FROM calls WHERE {' AND '.join(page_terms)}"
                        f" ORDER BY {order} LIMIT ? OFFSET ?) ORDER BY {order}",
                        (*page_params, query.limit, query.offset),
                    ).fetchall()
                records = tuple(_record(r) for r in rows)
            return CallPage(total=int(total), filtered=int(filtered), records=records, capped=capped)
        return self._read(q)

    def call_totals(self, query):
        from twisted.internet import defer

        try:
            where, match, match_params, search = self._call_where(query)
        except ValueError:
            return defer.fail()
        fast = not search.terms or _only_windows(query)
        if query.windows is None:
            ranges = [(query.since, query.until)]
        else:
            ranges = _window_ranges(query.since, query.until, query.windows)

        def q(cur):
            if not fast:
                numbers = self._match_numbers(cur, query.number) if query.number is not None else None
                if numbers is not None and postings_serve(query):
                    # index-only over the matching numbers' postings
                    postings = self._number_postings(query, numbers, match, match_params)
                    if self._count_postings(cur, postings) is None:
                        # counted first: summing reads three times as long
                        return CallTotals(calls=self.number_count_cap, capped=True)
                    return _totals_row(self._exec(
                        cur, f"SELECT COUNT(*), {ANSWER_SUMS} FROM call_numbers{postings.sql}", postings.params
                    ).fetchone())
                _, _, _, search = self._call_where(query, numbers)
                terms = [*where.terms, match, *search.terms]
                params = [*where.params, *match_params, *search.params]
                return _totals_row(self._exec(
                    cur, f"SELECT COUNT(*), {ANSWER_SUMS} FROM calls WHERE {' AND '.join(terms)}", params
                ).fetchone())
            sums = [0] * 5
            rows = []
            edges = []
            for since, until in ranges:
                whole, around = _hours(since, until)
                edges += around
                if whole is not None:
                    rows.append(self._exec(
                        cur,
                        f"SELECT {FILTER_SUMS[query.filter]}"
                        " FROM call_hours WHERE gateway = ? AND hour >= ? AND hour < ?",
                        (ALL_GATEWAYS if query.gateway is None else query.gateway, *whole),
                    ).fetchone())
            for a, b in edges:
                edge = _edge(query.gateway, a, b)
                edge.add(match, *match_params)
                rows.append(self._exec(
                    cur, f"SELECT COUNT(*), {ANSWER_SUMS} FROM calls{edge.sql}", edge.params
                ).fetchone())
            for row in rows:
                for i, n in enumerate(row):
                    sums[i] += int(n or 0)
            return _totals_row(sums)
        return self._read(q)

    def call_summary(self, query, group, prefix=None, bucket=None, limit=1000, offset=0,
                     sort=None, descending=False, shift=None):
        from twisted.internet import defer

        if group not in SUMMARY_GROUPS or (group == "time" and not bucket):
            return defer.fail(ValueError(f"unknown summary group {group!r} (bucket {bucket!r})"))
        try:
            order_key = summary_sort_key(sort, group == "time")
            where, match, match_params, search = self._call_where(query)
        except ValueError:
            return defer.fail()
        terms = [*where.terms, match, *search.terms]
        params = [*where.params, *match_params, *search.params]
        if group == "caller":
            key = "cli"
        elif group == "destination":
            key = f"SUBSTR(dialed, 1, {int(prefix)})" if prefix else "dialed"
        elif group == "gateway":
            key = "gateway"
        else:
            bucket = int(bucket)
            key = f"{_shifted('begin_ms', shift)} / {bucket}"
        # gateway and hour-multiple buckets over every record: call_hours
        # (an hour's row lies in one bucket where the zone's offsets and
        # their changes are whole hours)
        whole_hours = all(a % HOUR_MS == 0 and o % HOUR_MS == 0 for a, o in shift or ())
        fast = (
            query.filter == "all" and not search.terms
            and (group == "gateway" or (group == "time" and bucket % HOUR_MS == 0 and whole_hours))
        )

        def q(cur):
            if not fast:
                # one GROUP BY, ordered and paged by the database
                return self._paged_groups(
                    cur,
                    f"SELECT {key}, COUNT(*), {ANSWER_SUMS} FROM calls"
                    f" WHERE {' AND '.join(terms) or '1 = 1'} GROUP BY {key}",
                    params, sort, descending, group == "time", limit, offset,
                    scale=bucket if group == "time" else None,
                )
            sums: dict = {}

            def add(rows):
                for k, *counts in rows:
                    if group == "time":
                        k = int(k) * bucket
                    row = sums.setdefault(k, [0] * 5)
                    for i, n in enumerate(counts):
                        row[i] += int(n or 0)

            whole, edges = _hours(query.since, query.until)
            if whole is not None:
                hours = _Where()
                if query.gateway is not None:
                    hours.add("gateway = ?", query.gateway)
                elif group == "time":
                    # every gateway's hours are summed in the "*" rows:
                    # a year reads 8 760 rows, not one per gateway too
                    hours.add("gateway = ?", ALL_GATEWAYS)
                else:
                    hours.add("gateway <> ?", ALL_GATEWAYS)
                hours.range("hour", *whole)
                hkey = "gateway" if group == "gateway" else f"{_shifted('hour', shift)} / {bucket}"
                add(self._exec(
                    cur,
                    f"SELECT {hkey}, SUM(calls), SUM(answered), SUM(attempts),"
                    f" SUM(attempts_answered), SUM(talk) FROM call_hours{hours.sql} GROUP BY {hkey}",
                    hours.params,
                ).fetchall())
            for a, b in edges:
                edge = _edge(query.gateway, a, b)
                add(self._exec(
                    cur,
                    f"SELECT {key}, COUNT(*), {ANSWER_SUMS} FROM calls{edge.sql} GROUP BY {key}",
                    edge.params,
                ).fetchall())
            rows = [SummaryRow(key=str(k), totals=_totals_row(v)) for k, v in sums.items()]
            rows.sort(key=order_key, reverse=descending)
            return SummaryPage(groups=len(rows), rows=tuple(rows[offset:offset + limit]))
        return self._read(q)

    def call_record(self, call_id):
        def q(cur):
            row = self._exec(cur, f"SELECT {CALL_COLS} FROM calls WHERE id = ?", (call_id,)).fetchone()
            return None if row is None else _record(row)
        return self._read(q)

    def _call_counts(self, cur, gateway, since, until, column, match, match_params):
        """(total, filtered): whole hours from call_hours, the rest from the index."""
        whole, edges = _hours(since, until)
        total = filtered = 0
        if whole is not None:
            row = self._exec(
                cur,
                f"SELECT COALESCE(SUM(calls), 0), COALESCE(SUM({column}), 0) FROM call_hours"
                " WHERE gateway = ? AND hour >= ? AND hour < ?",
                (ALL_GATEWAYS if gateway is None else gateway, *whole),
            ).fetchone()
            total, filtered = int(row[0]), int(row[1])
        for a, b in edges:
            where = _Where()
            if gateway is not None:
                where.add("gateway = ?", gateway)
            where.range("begin_ms", a, b)
            # one index-only pass counts both
            row = self._exec(
                cur,
                f"SELECT COUNT(*), COALESCE(SUM(CASE WHEN {match} THEN 1 ELSE 0 END), 0)"
                f" FROM calls{where.sql}",
                (*match_params, *where.params),
            ).fetchone()
            total += int(row[0])
            filtered += int(row[1])
        return total, filtered

    def call_quarters(self, gateway, since, until):
        # A skip-scan: one index seek per quarter hour that has a call.
        gw = "gateway = ? AND " if gateway is not None else ""
        gw_params = (gateway,) if gateway is not None else ()
        since = 0 if since is None else since
        until = 2**62 if until is None else until
        statement = (
            "WITH RECURSIVE q(b) AS ("
            f" SELECT (SELECT MIN(begin_ms) FROM calls WHERE {gw}begin_ms >= ? AND begin_ms < ?)"
            " UNION ALL"
            f" SELECT (SELECT MIN(begin_ms) FROM calls WHERE {gw}"
            f"  begin_ms >= (q.b / {QUARTER_MS} + 1) * {QUARTER_MS} AND begin_ms < ?)"
            " FROM q WHERE q.b IS NOT NULL"
            f") SELECT b / {QUARTER_MS} * {QUARTER_MS} FROM q WHERE b IS NOT NULL"
        )

        def q(cur):
            rows = self._exec(
                cur, statement, (*gw_params, since, until, *gw_params, until)
            ).fetchall()
            return [int(r[0]) for r in rows]
        return self._read(q)

    def call_stats(self, since, until, bucket):
        bucket = int(bucket)
        from_calls = (
            f"SELECT gateway, begin_ms / {bucket} AS b, COUNT(*), {ANSWER_SUMS}"
            " FROM calls WHERE begin_ms >= ? AND begin_ms < ? GROUP BY gateway, b"
        )
        from_hours = (
            f"SELECT gateway, hour / {bucket} AS b, SUM(calls), SUM(answered), SUM(attempts),"
            " SUM(attempts_answered), SUM(talk) FROM call_hours"
            " WHERE gateway <> ? AND hour >= ? AND hour < ? GROUP BY gateway, b"
        )
        if bucket % HOUR_MS == 0:
            whole, edges = _hours(since, until)
        else:
            whole, edges = None, [(since, until)]

        def q(cur):
            sums: dict[tuple[str, int], list[int]] = {}

            def add(rows):
                for g, b, *counts in rows:
                    row = sums.setdefault((g, int(b) * bucket), [0] * 5)
                    for i, n in enumerate(counts):
                        row[i] += int(n or 0)

            if whole is not None:
                add(self._exec(cur, from_hours, (ALL_GATEWAYS, *whole)).fetchall())
            for a, b in edges:
                add(self._exec(cur, from_calls, (a, b)).fetchall())
            return [
                CallStats(gateway=g, start=b, calls=n, answered=a, attempts=t,
                          attempts_answered=ta, talk=talk)
                for (g, b), (n, a, t, ta, talk) in sorted(sums.items())
            ]
        return self._read(q)

    def _cdr_where(self, query) -> _Where:
        where = _Where()
        if query.gateway is not None:
            where.add("gateway = ?", query.gateway)
        if query.cui is not None:
            self._cui_prefix(where, query.cui)
        if query.call is not None:
            where.add("call = ?", query.call)
        where.range("start", query.since, query.until)
        if query.number is not None:
            pattern = _like_pattern(query.number)
            where.add(f"(dialled {self.like} ? ESCAPE '\\' OR cli {self.like} ? ESCAPE '\\')", pattern, pattern)
        if query.min_duration is not None:
            where.add("COALESCE(duration, 0) >= ?", query.min_duration)
        if query.max_duration is not None:
            where.add("COALESCE(duration, 0) <= ?", query.max_duration)
        if query.windows is not None:
            if not query.windows:
                where.add("1 = 0")
            else:
                where.add(
                    " OR ".join(["(start >= ? AND start < ?)"] * len(query.windows)).join("()"),
                    *[t for w in query.windows for t in w],
                )
        if query.cause is not None:
            where.add("status = ?", query.cause)
        if query.cuis is not None:
            if not query.cuis:
                where.add("1 = 0")
            else:
                where.add(f"cui IN ({', '.join('?' * len(query.cuis))})", *query.cuis)
        return where

    def cdrs(self, query):
        from twisted.internet import defer

        if query.sort not in CDR_SORTS:
            return defer.fail(ValueError(f"unknown CDR sort {query.sort!r}"))
        if query.after is not None and query.sort != "written":
            return defer.fail(ValueError("keyset paging (after) needs sort written"))
        where = self._cdr_where(query)
        page_where = _Where()
        page_where.terms, page_where.params = list(where.terms), list(where.params)
        if query.after is not None:
            op = "<" if query.descending else ">"
            page_where.add(f"seq {op} COALESCE((SELECT seq FROM cdrs WHERE id = ?), 0)", query.after)
        if query.sort == "written":
            order = "seq DESC" if query.descending else "seq"
        else:
            order = _order(CDR_SORT_COLUMN[query.sort], query.descending, "seq")

        def q(cur):
            total = self._cdr_count(cur, query, where)
            page = []
            if query.limit > 0 and query.offset < total:
                rows = self._exec(
                    cur,
                    f"SELECT {CDR_COLS} FROM cdrs WHERE seq IN ("
                    f" SELECT seq FROM cdrs{page_where.sql} ORDER BY {order} LIMIT ? OFFSET ?) ORDER BY {order}",
                    (*page_where.params, query.limit, query.offset),
                ).fetchall()
                page = [_cdr(r) for r in rows]
            return int(total), page
        return self._read(q)

    def _cdr_count(self, cur, query, where: _Where) -> int:
        """The CDRs a query matches: a search by gateway and time only sums
        cdr_hours over its whole hours and counts its edges by index."""
        plain = all(getattr(query, term) is None for term in (
            "cui", "call", "number", "min_duration", "max_duration", "windows", "cause", "cuis"))
        if not plain:
            return int(self._exec(cur, f"SELECT COUNT(*) FROM cdrs{where.sql}", where.params).fetchone()[0])
        whole, edges = _hours(query.since, query.until)
        total = 0
        if whole is not None:
            total += int(self._exec(
                cur, "SELECT COALESCE(SUM(cdrs), 0) FROM cdr_hours WHERE gateway = ? AND hour >= ? AND hour < ?",
                (ALL_GATEWAYS if query.gateway is None else query.gateway, *whole),
            ).fetchone()[0])
        for a, b in edges:
            edge = _Where()
            if query.gateway is not None:
                edge.add("gateway = ?", query.gateway)
            edge.range("start", a, b)
            total += int(self._exec(cur, f"SELECT COUNT(*) FROM cdrs{edge.sql}", edge.params).fetchone()[0])
        return total

    def cui_totals(self, query):
        where = self._cdr_where(query)

        def q(cur):
            rows = self._exec(
                cur,
                "SELECT cui, COUNT(*), COUNT(duration), COALESCE(SUM(duration), 0)"
                f" FROM cdrs{where.sql} GROUP BY cui ORDER BY cui",
                where.params,
            ).fetchall()
            return [CuiTotals(cui=c, cdrs=int(n), answered=int(a), duration=int(d)) for c, n, a, d in rows]
        return self._read(q)

    def cui_summary(self, query, limit=100, offset=0, sort=None, descending=False):
        from twisted.internet import defer

        try:
            summary_sort_key(sort, False)  # a sort it does not know is a ValueError
        except ValueError:
            return defer.fail()
        where = self._cdr_where(query)
        groups_sql = (
            "SELECT cui, COUNT(*), COUNT(duration), COUNT(*), COUNT(duration), COALESCE(SUM(duration), 0)"
            f" FROM cdrs{where.sql} GROUP BY cui"
        )

        def q(cur):
            # grouped, ordered and paged by the database: a day of every
            # gateway holds thousands of CUIs, and building and sorting them
            # all here cost more than the SQL
            return self._paged_groups(cur, groups_sql, where.params, sort, descending, False, limit, offset)
        return self._read(q)

    def _paged_groups(self, cur, groups_sql: str, params, sort, descending: bool, time: bool,
                      limit: int, offset: int, scale: int | None = None) -> SummaryPage:
        """
        A SummaryPage of `groups_sql`'s groups (key, calls, answered,
        attempts, answered attempts, talk), ordered as summary_sort_key
        and paged by the database, counted with them (a second query only
        when the page is empty); `scale`: a time key is a bucket number,
        its key the bucket's start.
        """
        rows = self._exec(
            cur,
            f"WITH g(k, n, a, t, ta, talk) AS ({groups_sql})"
            " SELECT k, n, a, t, ta, talk, COUNT(*) OVER () FROM g"
            f" ORDER BY {_summary_order(sort, descending, time)} LIMIT ? OFFSET ?",
            (*params, int(limit), int(offset)),
        ).fetchall()
        if rows:
            groups = int(rows[0][6])
        else:
            groups = int(self._exec(cur, f"SELECT COUNT(*) FROM ({groups_sql}) g", params).fetchone()[0])
        return SummaryPage(groups=groups, rows=tuple(
            SummaryRow(key=str(int(r[0]) * scale) if scale else str(r[0]), totals=_totals_row(r[1:6]))
            for r in rows
        ))

    def outbox_matching(self, sink, text, limit):
        contains = "INSTR(payload, ?) > 0" if self.dialect == "sqlite" else "POSITION(? IN payload) > 0"

        def q(cur):
            rows = self._exec(
                cur,
                f"SELECT id, sink, payload, created FROM outbox WHERE sink = ? AND {contains}"
                " ORDER BY id LIMIT ?",
                (sink, text.encode("utf-8"), limit),
            ).fetchall()
            return [OutboxItem(sink=s, payload=bytes(p), created=c, id=i) for i, s, p, c in rows]
        return self._read(q)

    def cursors(self):
        def q(cur):
            rows = self._exec(cur, "SELECT gateway, applied, replay_from FROM cursors").fetchall()
            return {g: ModelCursor(gateway=g, applied=a, replay_from=r) for g, a, r in rows}
        return self._read(q)

    def ended_calls(self, gateway, since):
        def q(cur):
            rows = self._exec(
                cur,
                "SELECT boot, ref FROM calls WHERE gateway = ? AND end_ms >= ? ORDER BY end_ms, id",
                (gateway, since),
            ).fetchall()
            return [(b, int(r)) for b, r in rows]
        return self._read(q)

    def outbox(self, sink, after_id, limit):
        def q(cur):
            rows = self._exec(
                cur,
                "SELECT id, sink, payload, created FROM outbox WHERE sink = ? AND id > ?"
                " ORDER BY id LIMIT ?",
                (sink, after_id, limit),
            ).fetchall()
            return [OutboxItem(sink=s, payload=bytes(p), created=c, id=i) for i, s, p, c in rows]
        return self._read(q)

    def outbox_stats(self, sink):
        def q(cur):
            depth = self._exec(cur, "SELECT COUNT(*) FROM outbox WHERE sink = ?", (sink,)).fetchone()[0]
            if not depth:
                return 0, None
            oldest = self._exec(
                cur, "SELECT created FROM outbox WHERE sink = ? ORDER BY id LIMIT 1", (sink,)
            ).fetchone()
            return int(depth), (None if oldest is None else oldest[0])
        return self._read(q)

    # -- retention (docs/store.md, "Retention") -------------------------------

    def expire(self, kind, before, limit, after=None, stale_after=0):
        from twisted.internet import defer

        if kind not in RETENTION_KINDS:
            return defer.fail(ValueError(f"unknown retention kind {kind!r}"))
        fn = getattr(self, f"_expire_{kind}")
        return self._run(fn, int(before), int(limit), after, int(stale_after), write=True)

    def _oldest_first(self, cur, table, column, before, limit, after, extra=""):
        """Rows (id, column, ...) of `table` with column < before after the
        keyset `after` = (column, id), the oldest first, at most `limit`."""
        where = _Where().add(f"{column} < ?", before)
        if after is not None:
            t, i = after
            where.add(f"{column} >= ? AND ({column} > ? OR id > ?)", t, t, i)
        return self._exec(
            cur,
            f"SELECT id, {column}{extra} FROM {table}{where.sql} ORDER BY {column}, id LIMIT ?",
            (*where.params, limit),
        ).fetchall()

    def _delete_ids(self, cur, table, column, ids) -> int:
        deleted = 0
        for i in range(0, len(ids), MAX_ROWS):
            part = ids[i:i + MAX_ROWS]
            deleted += max(self._exec(
                cur, f"DELETE FROM {table} WHERE {column} IN ({', '.join('?' * len(part))})", part
            ).rowcount, 0)
        return deleted

    @staticmethod
    def _next(rows, limit):
        return (rows[-1][1], rows[-1][0]) if len(rows) >= limit else None

    def _expire_log(self, cur, before, limit, after, stale_after) -> Expired:
        rows = self._oldest_first(cur, "log", "time", before, limit, after)
        deleted = self._delete_ids(cur, "log", "id", [r[0] for r in rows])
        return Expired(deleted=deleted, after=self._next(rows, limit))

    def _replay_from(self, cur) -> dict[str, int]:
        return dict(self._exec(cur, "SELECT gateway, replay_from FROM cursors").fetchall())

    def _expire_events(self, cur, before, limit, after, stale_after) -> Expired:
        rows = self._oldest_first(cur, "events", "time", before, limit, after, ", gateway")
        replay = self._replay_from(cur)
        # a gateway without a cursor: its recovery replays everything
        ids = [i for i, _, g in rows if i < replay.get(g, 0)]
        deleted = self._delete_ids(cur, "events", "id", ids)
        return Expired(deleted=deleted, after=self._next(rows, limit))

    def _expire_records(self, cur, before, limit, after, stale_after) -> Expired:
        rows = self._oldest_first(
            cur, "calls", "begin_ms", before, limit, after, ", gateway, end_ms, outbox_mark")
        if not rows:
            return Expired(deleted=0)
        first_undelivered = self._exec(cur, "SELECT MIN(id) FROM outbox").fetchone()[0]
        replay = self._replay_from(cur)
        held_since = {}  # gateway -> records that end from then on are kept
        for g in {r[2] for r in rows}:
            if g in replay:
                first = self._gateway_events_after(cur, g, replay[g] - 1, 1)
                if first:
                    held_since[g] = first[0].time - stale_after
        ids = [
            i for i, _, g, end, mark in rows
            if (first_undelivered is None or mark < first_undelivered)
            and (g not in held_since or end < held_since[g])
        ]
        records = []
        for i in range(0, len(ids), MAX_ROWS):
            part = ids[i:i + MAX_ROWS]
            records += [_record(r) for r in self._exec(
                cur, f"SELECT {CALL_COLS} FROM calls WHERE id IN ({', '.join('?' * len(part))})", part
            ).fetchall()]
        gone = []  # (gateway, start, duration) of the CDRs deleted, for cdr_hours
        for i in range(0, len(ids), MAX_ROWS):
            part = ids[i:i + MAX_ROWS]
            marks = ", ".join("?" * len(part))
            gone += self._exec(
                cur,
                f"DELETE FROM cdrs WHERE billed_call IN ({marks}) OR (billed_call = '' AND call IN ({marks}))"
                " RETURNING gateway, start, duration",
                (*part, *part),
            ).fetchall()
        cdrs = len(gone)
        self._count_cdr_hours(cur, gone, sign=-1)
        deleted = self._delete_ids(cur, "calls", "id", ids)
        self._count_hours(cur, records, sign=-1)
        self._index_numbers(cur, records, sign=-1)
        return Expired(deleted=deleted, cdrs=cdrs, after=self._next(rows, limit))

    def oldest(self):
        def q(cur):
            out = {}
            for kind, table, column in (
                ("events", "events", "time"), ("log", "log", "time"), ("records", "calls", "begin_ms"),
            ):
                row = self._exec(cur, f"SELECT MIN({column}) FROM {table}").fetchone()
                out[kind] = None if row[0] is None else int(row[0])
            return out
        return self._read(q)

    def reclaim(self, pages):
        from twisted.internet import defer

        return defer.succeed((0, 0))
