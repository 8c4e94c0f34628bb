"""
The store's schema: portable DDL (SQLite and PostgreSQL), a schema_version
table, and an ordered list of migrations applied at open().

A migration is a list of statements.  ``{pk}`` (an integer key assigned in
insert order), ``{blob}`` and ``{serial}`` are filled in per dialect; all
else is plain SQL both engines run.  Times are integer ms UTC (BIGINT);
booleans are SMALLINT 0/1.  Append new migrations at the end; never edit
one that has shipped.
"""

from __future__ import annotations

from cdrd.values import split_gateway_key

#: CallQuery.filter -> the record's notation (``pstn`` and ``all`` are not
#: notations: see MemoryStore.calls / SqlStore.calls).
FILTER_NOTATION = {
    "in": "Call in",
    "out": "Call out",
    "out-failed": "Call out failed",
    "in-reject": "Call in reject",
    "other": "Other",
}

#: The notations that count as attempts to reach a party, for ASR and ACD
#: (Hook On/Off and Other are not attempts).
ATTEMPT_NOTATIONS = ("Call out", "Call out failed", "Call in", "Call in reject")

QUARTER_MS = 900_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000

#: call_hours.gateway of the rows that count every gateway (no gateway key
#: can be "*": ids are [0-9A-Za-z_-])
ALL_GATEWAYS = "*"

#: call_hours' count columns per notation, and the filter each serves
NOTATION_COLUMNS = {
    "Call in": "n_in",
    "Call out": "n_out",
    "Call out failed": "n_out_failed",
    "Call in reject": "n_in_reject",
    "Other": "n_other",
    "Hook On/Off": "n_hook",
}
FILTER_COLUMN = {"all": "calls", "pstn": "pstn"} | {
    f: NOTATION_COLUMNS[n] for f, n in FILTER_NOTATION.items()
}
#: the count columns of call_hours as migration 2 made them, in order
HOUR_COLUMNS_2 = (
    "calls", "pstn", *NOTATION_COLUMNS.values(),
    "answered", "attempts", "attempts_answered", "talk",
)
#: FILTER_SUMS_MIGRATION: per filter, the answered calls and their talk, so that a
#: filtered total reads call_hours too: a_<notation> answered calls of the
#: notation, talk_<notation> their talk (attempt notations only: other
#: calls' talk is not summed), and the PSTN calls' answered, attempts,
#: answered attempts and talk
ANSWERED_COLUMNS = {n: "a" + NOTATION_COLUMNS[n][1:] for n in FILTER_NOTATION.values()}
TALK_COLUMNS = {n: "talk" + NOTATION_COLUMNS[n][1:] for n in FILTER_NOTATION.values() if n in ATTEMPT_NOTATIONS}
PSTN_COLUMNS = ("pstn_answered", "pstn_attempts", "pstn_attempts_answered", "pstn_talk")
FILTER_HOUR_COLUMNS = (*ANSWERED_COLUMNS.values(), *TALK_COLUMNS.values(), *PSTN_COLUMNS)
#: every count column of call_hours, in order
HOUR_COLUMNS = HOUR_COLUMNS_2 + FILTER_HOUR_COLUMNS


def _filter_sums(f: str) -> tuple[str, ...]:
    """call_hours' columns that sum a CallQuery.filter's CallTotals
    (calls, answered, attempts, attempts_answered, talk): "0" where none."""
    if f == "all":
        return ("calls", "answered", "attempts", "attempts_answered", "talk")
    if f == "pstn":
        return ("pstn", *PSTN_COLUMNS)
    n = FILTER_NOTATION[f]
    if n in ATTEMPT_NOTATIONS:
        return (NOTATION_COLUMNS[n], ANSWERED_COLUMNS[n], NOTATION_COLUMNS[n], ANSWERED_COLUMNS[n], TALK_COLUMNS[n])
    return (NOTATION_COLUMNS[n], ANSWERED_COLUMNS[n], "0", "0", "0")


#: CallQuery.filter -> "SUM(..), .." of call_hours giving its CallTotals
FILTER_SUMS = {
    f: ", ".join(c if c == "0" else f"SUM({c})" for c in _filter_sums(f)) for f in FILTER_COLUMN
}


def quarter(ms: int) -> int:
    return ms // QUARTER_MS * QUARTER_MS


def log_gateway_keys(query: str) -> tuple[str, str | None]:
    """(gw id, MAC or None) a LogQuery.gateway stands for."""
    split = split_gateway_key(query)
    if split is None:
        return query, None
    return split


def log_gateway_match(query: str, gateway: str, mac: str) -> bool:
    """A LogQuery.gateway: a key "<gw>_<MAC>" matches id and MAC, a bare id the id."""
    if query == gateway:
        return True
    gw, want = log_gateway_keys(query)
    return want is not None and gw == gateway and mac.upper() == want


DIALECTS = {
    "sqlite": {
        "pk": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "blob": "BLOB",
        "without_rowid": " WITHOUT ROWID",
        # NUMBERS_MIGRATION: a trigram index over the numbers dictionary
        # (FTS5 external content: it stores the trigrams, not the numbers),
        # filled after the rows are in, then kept by a trigger
        "trigram_table": "CREATE VIRTUAL TABLE numbers_trigram USING fts5("
                         "number, content='numbers', content_rowid='id', tokenize='trigram', detail='none')",
        "trigram_fill": "INSERT INTO numbers_trigram (numbers_trigram) VALUES ('rebuild')",
        "trigram_keep": "CREATE TRIGGER numbers_trigram_insert AFTER INSERT ON numbers BEGIN"
                        " INSERT INTO numbers_trigram (rowid, number) VALUES (new.id, new.number); END",
        # CUI_PREFIX_MIGRATION: SQLite compares text bytewise (BINARY): its
        # index serves a prefix range as it is
        "cui_index_drop": "SELECT 1",
        "cui_index": "SELECT 1",
        # EVENTS_BY_SEQ_MIGRATION: UNIQUE (gateway, seq) holds cdrd's own
        # events (seq NULL) too, in rowid order after the gateway's key:
        # it reads them by id as it is
        "unsequenced_index": "SELECT 1",
    },
    "postgresql": {
        "pk": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        "blob": "BYTEA",
        "without_rowid": "",
        # pg_trgm (postgresql-contrib, part of Debian's postgresql package;
        # a trusted extension: the database's owner may create it)
        "trigram_table": "CREATE EXTENSION IF NOT EXISTS pg_trgm",
        "trigram_fill": "CREATE INDEX numbers_trigram ON numbers USING gin (number gin_trgm_ops)",
        "trigram_keep": "SELECT 1",  # the index keeps itself
        # CUI_PREFIX_MIGRATION: under any collation but C (C.UTF-8 and
        # en_US.UTF-8 included) a btree in the collation's order cannot
        # serve "cui starts with": text_pattern_ops orders bytewise, as
        # the prefix range (~>=~ / ~<~) and LIKE 'prefix%' need; with seq,
        # a page of a prefix's CDRs is index-only (SQLite's indexes carry
        # the rowid, seq, already)
        "cui_index_drop": "DROP INDEX cdrs_cui_start",
        "cui_index": "CREATE INDEX cdrs_cui_start ON cdrs (cui text_pattern_ops, start, gateway, duration, seq)",
        # EVENTS_BY_SEQ_MIGRATION: the unique index's equal keys (gateway,
        # NULL) are in heap order, not id order: cdrd's own events by id
        # need an index of their own (one per call with authorize = true)
        "unsequenced_index": "CREATE INDEX events_gateway_unsequenced ON events (gateway, id) WHERE seq IS NULL",
    },
}

MIGRATIONS: list[list[str]] = [
    # 1: the first schema
    [
        """CREATE TABLE events (
            id {pk},
            gateway TEXT NOT NULL,
            seq BIGINT,
            boot TEXT NOT NULL,
            ref BIGINT NOT NULL,
            type TEXT NOT NULL,
            time BIGINT NOT NULL,
            received BIGINT NOT NULL,
            fields TEXT NOT NULL,
            UNIQUE (gateway, seq)
        )""",
        "CREATE INDEX events_gateway_id ON events (gateway, id)",
        "CREATE INDEX events_gateway_ref ON events (gateway, ref, id)",
        "CREATE INDEX events_time ON events (time)",
        """CREATE TABLE log (
            id {pk},
            time BIGINT NOT NULL,
            event TEXT NOT NULL,
            peer TEXT NOT NULL,
            gateway TEXT NOT NULL,
            mac TEXT NOT NULL,
            detail TEXT NOT NULL
        )""",
        "CREATE INDEX log_time ON log (time, id)",
        "CREATE INDEX log_gateway_time ON log (gateway, time, id)",
        """CREATE TABLE gateways (
            key TEXT PRIMARY KEY,
            id TEXT NOT NULL,
            mac TEXT NOT NULL,
            last_seq BIGINT NOT NULL,
            boot TEXT NOT NULL,
            boot_token TEXT,
            restarts BIGINT NOT NULL,
            fxs INTEGER NOT NULL,
            fxo INTEGER NOT NULL,
            isdn INTEGER NOT NULL,
            callref BIGINT NOT NULL,
            firmware TEXT NOT NULL,
            peer TEXT NOT NULL,
            login BIGINT,
            skew_ms BIGINT NOT NULL,
            last_heard BIGINT,
            online SMALLINT NOT NULL
        )""",
        """CREATE TABLE calls (
            id TEXT PRIMARY KEY,
            gateway TEXT NOT NULL,
            boot TEXT NOT NULL,
            ref BIGINT NOT NULL,
            port INTEGER,
            pport INTEGER,
            notation TEXT NOT NULL,
            pstn SMALLINT NOT NULL,
            dialed TEXT NOT NULL,
            begin_ms BIGINT NOT NULL,
            connect_ms BIGINT,
            end_ms BIGINT NOT NULL,
            talk BIGINT,
            pstn_dial TEXT NOT NULL,
            pstn_time BIGINT,
            cli TEXT NOT NULL,
            pstn_cli TEXT NOT NULL,
            cause TEXT NOT NULL
        )""",
        # The report's queries are index-only on these: counts by filter,
        # the page's ids in (begin, id) order, quarters by skip-scan.
        "CREATE INDEX calls_gateway_begin ON calls (gateway, begin_ms, id, notation, pstn)",
        "CREATE INDEX calls_begin ON calls (begin_ms, id, notation, pstn)",
        "CREATE INDEX calls_gateway_end ON calls (gateway, end_ms)",
        """CREATE TABLE cdrs (
            seq {pk},
            id TEXT NOT NULL UNIQUE,
            call TEXT NOT NULL,
            gateway TEXT NOT NULL,
            start BIGINT NOT NULL,
            ringing BIGINT NOT NULL,
            duration BIGINT,
            status TEXT NOT NULL,
            cui TEXT NOT NULL,
            dialled TEXT NOT NULL,
            cli TEXT NOT NULL
        )""",
        "CREATE INDEX cdrs_start ON cdrs (start, seq)",
        "CREATE INDEX cdrs_gateway_start ON cdrs (gateway, start, seq)",
        "CREATE INDEX cdrs_cui ON cdrs (cui, seq)",
        "CREATE INDEX cdrs_call ON cdrs (call, seq)",
        """CREATE TABLE cursors (
            gateway TEXT PRIMARY KEY,
            applied BIGINT NOT NULL,
            replay_from BIGINT NOT NULL
        )""",
        """CREATE TABLE outbox (
            id {pk},
            sink TEXT NOT NULL,
            payload {blob} NOT NULL,
            created BIGINT NOT NULL
        )""",
        "CREATE INDEX outbox_sink_id ON outbox (sink, id)",
    ],
]

_ATTEMPT = "notation IN (" + ", ".join(f"'{n}'" for n in ATTEMPT_NOTATIONS) + ")"

#: SQL over calls: answered, attempts, answered attempts, their talk (ms),
#: summed as CallStats and call_hours count them
ANSWER_SUMS = (
    "SUM(CASE WHEN connect_ms IS NOT NULL THEN 1 ELSE 0 END),"
    f" SUM(CASE WHEN {_ATTEMPT} THEN 1 ELSE 0 END),"
    f" SUM(CASE WHEN {_ATTEMPT} AND connect_ms IS NOT NULL THEN 1 ELSE 0 END),"
    f" SUM(CASE WHEN {_ATTEMPT} AND connect_ms IS NOT NULL THEN COALESCE(talk, 0) ELSE 0 END)"
)


def _hour_sums(gateway_expr: str, group: str) -> str:
    """The SELECT that backfills call_hours from calls (migration 2)."""
    by_notation = ", ".join(
        f"SUM(CASE WHEN notation = '{n}' THEN 1 ELSE 0 END)" for n in NOTATION_COLUMNS
    )
    return (
        f"SELECT {gateway_expr}, begin_ms / {HOUR_MS} * {HOUR_MS}, COUNT(*), SUM(pstn), {by_notation},"
        f" {ANSWER_SUMS} FROM calls GROUP BY {group}"
    )


MIGRATIONS.append([
    # 2: per gateway (and for all, gateway "*") and per hour of Begin, the
    # counts the report's totals and the dashboard need: a count over a month
    # or a year reads hundreds of rows, not millions.  Written in the same
    # transaction as the records it counts.
    f"""CREATE TABLE call_hours (
        gateway TEXT NOT NULL,
        hour BIGINT NOT NULL,
        {", ".join(f"{c} BIGINT NOT NULL" for c in HOUR_COLUMNS_2)},
        PRIMARY KEY (gateway, hour)
    )""",
    # the dashboard: every gateway's hours of the last day
    "CREATE INDEX call_hours_hour ON call_hours (hour, gateway)",
    f"INSERT INTO call_hours (gateway, hour, {', '.join(HOUR_COLUMNS_2)}) "
    + _hour_sums("gateway", f"gateway, begin_ms / {HOUR_MS}"),
    f"INSERT INTO call_hours (gateway, hour, {', '.join(HOUR_COLUMNS_2)}) "
    + _hour_sums(f"'{ALL_GATEWAYS}'", f"begin_ms / {HOUR_MS}"),
])

MIGRATIONS.append([
    # the call whose end wrote a CDR (its final RADIUS Stop carries it):
    # the creating call `call` but for a CDR moved in by a transfer.  Rows
    # stored before have '' (not known then).
    "ALTER TABLE cdrs ADD COLUMN billed_call TEXT NOT NULL DEFAULT ''",
])

MIGRATIONS.append([
    # retention (docs/store.md, "Retention"): the highest outbox id stored
    # when a record was written (0: the outbox was empty).  While an outbox
    # item with an id at or below it is left, an output may not have
    # delivered the record, and retention keeps it.  Rows stored before
    # count as written now.
    "ALTER TABLE calls ADD COLUMN outbox_mark BIGINT NOT NULL DEFAULT 0",
    "UPDATE calls SET outbox_mark = (SELECT COALESCE(MAX(id), 0) FROM outbox)",
    # the CDRs a record's deletion takes with it
    "CREATE INDEX cdrs_billed_call ON cdrs (billed_call)",
])

MIGRATIONS.append([
    # the billing page's totals per CUI (docs/web.md): for the CUIs of one
    # page, index-only over each CUI's range of start; and a search by CUI
    # prefix filters start in the index, reading only the rows it keeps
    # (the old (cui, seq) index read every CDR of the prefix ever written)
    "CREATE INDEX cdrs_cui_start ON cdrs (cui, start, gateway, duration)",
    "DROP INDEX cdrs_cui",
    # per gateway (and for all, gateway "*") and per hour of start, the CDRs'
    # count, answered and duration: the billing page's count over a month or
    # a year reads hundreds of rows, not millions (like call_hours).  Written
    # in the same transaction as the CDRs it counts.
    """CREATE TABLE cdr_hours (
        gateway TEXT NOT NULL,
        hour BIGINT NOT NULL,
        cdrs BIGINT NOT NULL,
        answered BIGINT NOT NULL,
        duration BIGINT NOT NULL,
        PRIMARY KEY (gateway, hour)
    )""",
    "INSERT INTO cdr_hours (gateway, hour, cdrs, answered, duration)"
    f" SELECT gateway, start / {HOUR_MS} * {HOUR_MS}, COUNT(*), COUNT(duration), COALESCE(SUM(duration), 0)"
    f" FROM cdrs GROUP BY gateway, start / {HOUR_MS}",
    "INSERT INTO cdr_hours (gateway, hour, cdrs, answered, duration)"
    f" SELECT '{ALL_GATEWAYS}', start / {HOUR_MS} * {HOUR_MS}, COUNT(*), COUNT(duration),"
    f" COALESCE(SUM(duration), 0) FROM cdrs GROUP BY start / {HOUR_MS}",
])

MIGRATIONS.append([
    # a coalesced gateway log entry (cdrd.gateway.coalesce): how many times
    # it happened within its minute; entries stored before happened once
    "ALTER TABLE log ADD COLUMN count BIGINT NOT NULL DEFAULT 1",
])

MIGRATIONS.append([
    # 7: several active nodes on one PostgreSQL (docs/store.md, "Several
    # nodes"): who owns each gateway, with a fencing token every write of
    # the gateway checks; `expires` is the database's clock in ms.  Rows
    # whose key starts with "#" are cluster-wide work (the outputs'
    # delivery, retention), not gateways.  SQLite has the table and never
    # uses it: one cdrd per file.
    """CREATE TABLE gateway_leases (
        gateway TEXT PRIMARY KEY,
        node TEXT NOT NULL,
        token BIGINT NOT NULL,
        expires BIGINT NOT NULL
    )""",
    "CREATE INDEX gateway_leases_node ON gateway_leases (node)",
])


def _filter_hour_sums(gateway_expr: str, group: str) -> str:
    """The SELECT that backfills FILTER_SUMS_MIGRATION's call_hours columns from calls."""
    answered = "connect_ms IS NOT NULL"
    sums = [f"SUM(CASE WHEN notation = '{n}' AND {answered} THEN 1 ELSE 0 END) AS {c}"
            for n, c in ANSWERED_COLUMNS.items()]
    sums += [f"SUM(CASE WHEN notation = '{n}' AND {answered} THEN COALESCE(talk, 0) ELSE 0 END) AS {c}"
             for n, c in TALK_COLUMNS.items()]
    sums += [
        f"SUM(CASE WHEN pstn = 1 AND {answered} THEN 1 ELSE 0 END) AS pstn_answered",
        f"SUM(CASE WHEN pstn = 1 AND {_ATTEMPT} THEN 1 ELSE 0 END) AS pstn_attempts",
        f"SUM(CASE WHEN pstn = 1 AND {_ATTEMPT} AND {answered} THEN 1 ELSE 0 END) AS pstn_attempts_answered",
        f"SUM(CASE WHEN pstn = 1 AND {_ATTEMPT} AND {answered} THEN COALESCE(talk, 0) ELSE 0 END) AS pstn_talk",
    ]
    return (
        f"SELECT {gateway_expr} AS gateway, begin_ms / {HOUR_MS} * {HOUR_MS} AS hour, {', '.join(sums)}"
        f" FROM calls GROUP BY {group}"
    )


MIGRATIONS.append([
    # 8 (issue 14): call_hours sums every filter's totals, not only its
    # count: the totals of a month of Call Out read hundreds of rows, not
    # the 400 000 calls
    *(f"ALTER TABLE call_hours ADD COLUMN {c} BIGINT NOT NULL DEFAULT 0" for c in FILTER_HOUR_COLUMNS),
    *(
        f"UPDATE call_hours SET {', '.join(f'{c} = t.{c}' for c in FILTER_HOUR_COLUMNS)}"
        f" FROM ({_filter_hour_sums(gw, group)}) AS t"
        " WHERE call_hours.gateway = t.gateway AND call_hours.hour = t.hour"
        for gw, group in (("gateway", f"gateway, begin_ms / {HOUR_MS}"),
                          (f"'{ALL_GATEWAYS}'", f"begin_ms / {HOUR_MS}"))
    ),
])
#: the schema version that added the filter sums (its number moves at merges)
FILTER_SUMS_MIGRATION = len(MIGRATIONS)

#: the columns of calls a number search reads, copied into call_numbers
#: (docs/store.md, "Number search")
NUMBER_COLUMNS = ("gateway", "notation", "pstn", "connect_ms", "talk")

MIGRATIONS.append([
    # 9 (issue 14): a number search without scanning calls.  `numbers` is
    # the dictionary of distinct numbers (Dialed, Caller ID, PSTN Dial,
    # PSTN Caller ID); a substring finds its numbers through a trigram
    # index over it (FTS5 / pg_trgm), then each number's postings in
    # call_numbers: one row per call and distinct number of the call, in
    # Begin order, with what the search's filters and totals read (index
    # only).  l1..l3 are the call's other numbers with a lower id (0: none):
    # a call that matches through several numbers counts under the lowest.
    # Rows are written in the same transaction as their calls; numbers stay
    # when retention deletes their calls.
    """CREATE TABLE numbers (
        id {pk},
        number TEXT NOT NULL UNIQUE
    )""",
    """CREATE TABLE call_numbers (
        number_id BIGINT NOT NULL,
        begin_ms BIGINT NOT NULL,
        call_id TEXT NOT NULL,
        gateway TEXT NOT NULL,
        notation TEXT NOT NULL,
        pstn SMALLINT NOT NULL,
        connect_ms BIGINT,
        talk BIGINT,
        l1 BIGINT NOT NULL,
        l2 BIGINT NOT NULL,
        l3 BIGINT NOT NULL,
        PRIMARY KEY (number_id, begin_ms, call_id)
    ){without_rowid}""",
    "INSERT INTO numbers (number) SELECT number FROM ("
    " SELECT dialed AS number FROM calls UNION SELECT cli FROM calls"
    " UNION SELECT pstn_dial FROM calls UNION SELECT pstn_cli FROM calls"
    ") AS u WHERE number <> '' ORDER BY number",
    f"INSERT INTO call_numbers (number_id, begin_ms, call_id, {', '.join(NUMBER_COLUMNS)}, l1, l2, l3)"
    f" SELECT number_id, begin_ms, call_id, {', '.join(NUMBER_COLUMNS)},"
    " LAG(number_id, 1, 0) OVER w, LAG(number_id, 2, 0) OVER w, LAG(number_id, 3, 0) OVER w"
    f" FROM (SELECT DISTINCT n.id AS number_id, c.begin_ms, c.id AS call_id,"
    f" {', '.join('c.' + c for c in NUMBER_COLUMNS)}"
    " FROM calls c JOIN numbers n ON n.number IN (c.dialed, c.cli, c.pstn_dial, c.pstn_cli)) AS d"
    " WINDOW w AS (PARTITION BY call_id ORDER BY number_id)"
    # in key order: the table grows at its end, not at random pages
    " ORDER BY number_id, begin_ms, call_id",
    "{trigram_table}",
    "{trigram_fill}",
    "{trigram_keep}",
])
#: the schema version that added the numbers dictionary
NUMBERS_MIGRATION = len(MIGRATIONS)

MIGRATIONS.append([
    # 10: the billing CDRs' search by CUI prefix through the index on
    # PostgreSQL (it read every CDR of the dates: 0.8-1 s p95 over a month
    # of ten million records); nothing on SQLite
    "{cui_index_drop}",
    "{cui_index}",
])
#: the schema version whose cdrs_cui_start serves a CUI prefix on PostgreSQL
CUI_PREFIX_MIGRATION = len(MIGRATIONS)

MIGRATIONS.append([
    # 11 (issue 15): a gateway's events in id order through (gateway, seq),
    # which is unique anyway (and on PostgreSQL an index of cdrd's own
    # events, seq NULL), not through (gateway, id): that index took a leaf
    # of every gateway that sent in each write transaction, 132 of 716 WAL
    # pages at 2 000 calls/s from 100 gateways (docs/store.md, "Events by
    # gateway")
    "{unsequenced_index}",
    "DROP INDEX events_gateway_id",
])
#: the schema version that reads a gateway's events through (gateway, seq)
EVENTS_BY_SEQ_MIGRATION = len(MIGRATIONS)

SCHEMA_VERSION_DDL = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"


def migration_statements(dialect: str, index: int) -> list[str]:
    """The statements of migration `index` (0-based) for `dialect`."""
    subst = DIALECTS[dialect]
    return [s.format(**subst) for s in MIGRATIONS[index]]


class SchemaTooNew(Exception):
    """The database was written by a newer cdrd: refuse to touch it."""
