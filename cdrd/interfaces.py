"""
The boundaries between cdrd's rooms.

Implementations use ``@implementer`` and are checked with ``verifyObject``
in their tests.  Every method that does I/O returns a Deferred.
"""

from __future__ import annotations

from attrs import field, frozen
from zope.interface import Attribute, Interface

from cdrd.values import (
    CallEvent,
    CallRecord,
    Cdr,
    GatewayState,
    LogEntry,
)

# -- what a store writes in one transaction -----------------------------------


@frozen
class ModelCursor:
    """
    How far the call model got for one gateway, written in the same
    transaction as the records, CDRs and outbox items it produced.

    After a restart the model replays the gateway's events with
    ``id >= replay_from`` (the first event of its oldest open call, joined
    calls included) and writes nothing for those with ``id <= applied``.
    """

    gateway: str
    applied: int  # highest event id whose products are stored
    replay_from: int  # lowest event id an open call depends on; applied+1 if none


@frozen
class OutboxItem:
    """A durable message for one output (RADIUS request, syslog line)."""

    sink: str  # "radius", "syslog", ...
    payload: bytes
    created: int  # ms UTC
    id: int | None = None


@frozen
class WriteBatch:
    """
    Everything one transaction writes.  A store applies all of it or none.

    - events: inserted unless (gateway, seq) is stored already (seq None is
      always inserted); the store assigns increasing ids in commit order.
    - log: gateway log entries, appended.
    - log_counts: the counts of coalesced log entries stored before (in an
      earlier batch), set (see LogCount).
    - gateways: upserted by key.
    - records, cdrs: inserted unless their id is stored already (a call is
      recorded once; a CDR is written once, whatever is replayed).
    - cursors: upserted by gateway.
    - outbox: appended; outbox_done: (sink, id) pairs deleted.
    """

    events: tuple[CallEvent, ...] = field(default=(), converter=tuple)
    log: tuple[LogEntry, ...] = field(default=(), converter=tuple)
    gateways: tuple[GatewayState, ...] = field(default=(), converter=tuple)
    records: tuple[CallRecord, ...] = field(default=(), converter=tuple)
    cdrs: tuple[Cdr, ...] = field(default=(), converter=tuple)
    cursors: tuple[ModelCursor, ...] = field(default=(), converter=tuple)
    outbox: tuple[OutboxItem, ...] = field(default=(), converter=tuple)
    outbox_done: tuple[tuple[str, int], ...] = field(default=(), converter=tuple)
    log_counts: tuple[LogCount, ...] = field(default=(), converter=tuple)

    def senders(self) -> set[str]:
        """The gateways whose own (seq-numbered) events the batch carries."""
        return {e.gateway for e in self.events if e.seq is not None}

    def derived(self) -> bool:
        """
        True when the batch holds only what is derived from stored events
        (records, CDRs, cursors, the outboxes): no events, log or gateway
        state.  A store with a derived lane writes such batches beside the
        events' transactions (IDerivedLane.write_derived).
        """
        return not (self.events or self.log or self.gateways or self.log_counts)

    def has_derived(self) -> bool:
        """True when the batch writes derived rows (records, CDRs, cursors, the outboxes)."""
        return bool(self.records or self.cdrs or self.cursors or self.outbox or self.outbox_done)


@frozen
class LogCount:
    """
    The count so far of a gateway log entry that stands for repeats
    (cdrd.gateway.coalesce): the stored rows with the entry's time, event,
    peer, gateway and MAC get `count` (the coalescer never opens two
    entries alike).  Absolute, not an increment: writing it twice is
    harmless.  No row (deleted by retention, or its insert failed): nothing.
    """

    entry: LogEntry  # as written in the earlier batch
    count: int


@frozen
class WriteResult:
    """The events a batch inserted (duplicates left out), with their ids."""

    events: tuple[CallEvent, ...] = ()


# -- what retention deletes -------------------------------------------------

#: the kinds of rows retention deletes ([retention] <kind>_days)
RETENTION_KINDS = ("events", "log", "records")


@frozen
class Expired:
    """What one ``IStore.expire`` batch did."""

    deleted: int  # rows of the kind deleted (records: call records)
    cdrs: int = 0  # records: the CDRs deleted with them
    #: where the next batch of the same sweep goes on (a position in the
    #: kind's time order); None: nothing older than the cutoff is left to look at
    after: tuple[int, str | int] | None = field(default=None, converter=lambda v: None if v is None else tuple(v))


# -- what the pages and the API ask -----------------------------------------

CALL_FILTERS = ("all", "in", "out", "pstn", "out-failed", "in-reject", "other")
#: the columns a call page may be sorted by (CallQuery.sort)
CALL_SORTS = (
    "begin", "end", "talk", "dialed", "cli", "pstn_dial", "pstn_cli", "cause",
    "gateway", "notation", "ref", "port",
)
#: the orders of a CDR page (CdrQuery.sort): written (the billing feed's
#: order) or by one of these columns
CDR_SORTS = ("written", "start", "duration", "ringing", "cui", "dialled", "cli", "status", "gateway")
#: what a call summary groups by (IStore.call_summary)
SUMMARY_GROUPS = ("caller", "destination", "gateway", "time")
#: what a call summary's groups may be ordered by (IStore.call_summary):
#: the group's key, or one of its totals
SUMMARY_SORTS = ("key", "calls", "answered", "minutes", "asr", "acd")


@frozen
class CallQuery:
    """
    Call records by gateway and Begin in [since, until) (ms UTC; the web
    layer turns the configured zone's dates into these), with a report
    filter.  ``total`` counts gateway and dates, ``filtered`` the filter too.
    """

    gateway: str | None = None
    since: int | None = None
    until: int | None = None
    filter: str = "all"
    limit: int = 100
    offset: int = 0
    #: keyset paging (exports): only records after this (begin, id) in the
    #: page order; `total` and `filtered` still count the whole search
    after: tuple[int, str] | None = field(default=None, converter=lambda v: None if v is None else tuple(v))
    #: search terms (all optional, AND-ed; `filtered` counts them, `total`
    #: does not): `number` a substring of dialed, cli, pstn_dial or pstn_cli
    #: (ASCII case-insensitive); `cui` a prefix of the CUI of one of the
    #: call's CDRs; talk in [min_talk, max_talk] ms (unanswered: 0);
    #: `windows` Begin within one of these [since, until) ranges (the
    #: time-of-day search, made ranges by the web layer); `cause` exactly
    number: str | None = None
    cui: str | None = None
    min_talk: int | None = None
    max_talk: int | None = None
    windows: tuple[tuple[int, int], ...] | None = field(
        default=None, converter=lambda v: None if v is None else tuple(tuple(w) for w in v)
    )
    cause: str | None = None
    #: the page order: one of CALL_SORTS, then id; `after` needs "begin"
    sort: str = "begin"
    descending: bool = False


@frozen
class CallPage:
    total: int
    filtered: int
    records: tuple[CallRecord, ...]
    #: `filtered` stopped at the store's count cap (a number search over
    #: very many calls, docs/store.md "Number search"): at least that many
    #: match; the records are still the search's, in order
    capped: bool = False


@frozen
class CallStats:
    """
    Counts of the call records of one gateway whose Begin falls in one
    bucket [start, start + bucket): what the dashboard's chart, ASR and ACD
    need, summed by the store instead of read record by record.
    """

    gateway: str
    start: int  # ms UTC, a multiple of the bucket
    calls: int
    answered: int  # records with a Connect
    attempts: int  # notation in ATTEMPT_NOTATIONS (cdrd.store.schema)
    attempts_answered: int
    talk: int  # ms: the Time of the answered attempts, summed


@frozen
class CdrQuery:
    gateway: str | None = None
    since: int | None = None  # on start, ms UTC, inclusive
    until: int | None = None  # exclusive
    cui: str | None = None
    call: str | None = None
    limit: int = 100
    offset: int = 0
    #: keyset paging (exports): only CDRs written after the CDR of this id;
    #: the total still counts the whole search
    after: str | None = None
    #: search terms, AND-ed (`cui` above is a prefix): `number` a substring
    #: of dialled or cli; duration in [min_duration, max_duration] ms
    #: (unanswered: 0); `windows` start within one of these ranges; `cause`
    #: the status exactly
    number: str | None = None
    min_duration: int | None = None
    max_duration: int | None = None
    windows: tuple[tuple[int, int], ...] | None = field(
        default=None, converter=lambda v: None if v is None else tuple(tuple(w) for w in v)
    )
    cause: str | None = None
    #: only CDRs of these CUIs exactly (the per-CUI totals of one page's CUIs)
    cuis: tuple[str, ...] | None = field(default=None, converter=lambda v: None if v is None else tuple(v))
    #: "written" (the default; what `after` pages) or a CDR_SORTS column, then written order
    sort: str = "written"
    descending: bool = False


@frozen
class CallTotals:
    """
    The totals of a search: calls, answered (a Connect), attempts (notation
    in ATTEMPT_NOTATIONS), answered attempts, and their talk (ms).  ASR and
    ACD are over attempts, as on the dashboard.
    """

    calls: int = 0
    answered: int = 0
    attempts: int = 0
    attempts_answered: int = 0
    talk: int = 0  # ms: the talk of the answered attempts, summed
    #: more calls than the store's count cap match (`calls` is the cap, the
    #: other totals 0: not summed; docs/store.md "Number search")
    capped: bool = False

    @property
    def minutes(self) -> float:
        return self.talk / 60_000

    @property
    def asr(self) -> float | None:
        """Answered attempts / attempts, 0..1; None without attempts."""
        return self.attempts_answered / self.attempts if self.attempts else None

    @property
    def acd(self) -> float | None:
        """Mean talk of an answered attempt, seconds; None without one."""
        return self.talk / 1000 / self.attempts_answered if self.attempts_answered else None


@frozen
class SummaryRow:
    """One group of a call summary: its key and its totals."""

    key: str
    totals: CallTotals


@frozen
class SummaryPage:
    """A page of a call summary: how many groups in all, and the page's."""

    groups: int
    rows: tuple[SummaryRow, ...]


def shifted(ms: int, shift) -> int:
    """`ms` plus the offset that IStore.call_summary's `shift` gives it."""
    offset = shift[0][1] if shift else 0
    for since, o in shift or ():
        if ms < since:
            break
        offset = o
    return ms + offset


def summary_sort_key(sort: str | None, time: bool):
    """
    The order of IStore.call_summary's groups as a key function of a
    SummaryRow (for sorted(..., reverse=descending)), and the order the SQL
    stores write as ORDER BY: `sort` None is time order for time groups and
    the most calls first (then the key) for the others; otherwise `sort`'s
    value, then the key, both in the one direction, where a missing ASR or
    ACD counts least.
    """
    def key_of(row):
        return int(row.key) if time else row.key

    if sort is None:
        if time:
            return key_of
        return lambda row: (-row.totals.calls, row.key)
    if sort not in SUMMARY_SORTS:
        raise ValueError(f"unknown summary sort {sort!r}")
    if sort == "key":
        return key_of

    def value(row):
        t = row.totals
        if sort in ("asr", "acd"):
            if not t.attempts if sort == "asr" else not t.attempts_answered:
                return (0, 0.0, key_of(row))
            v = t.attempts_answered / t.attempts if sort == "asr" else t.talk / t.attempts_answered
            return (1, v, key_of(row))
        return (1, {"calls": t.calls, "answered": t.answered, "minutes": t.talk}[sort], key_of(row))
    return value


@frozen
class CuiTotals:
    """The CDRs of one CUI in a search: how many, answered, their duration (ms)."""

    cui: str
    cdrs: int
    answered: int
    duration: int


@frozen
class EventQuery:
    gateway: str | None = None
    ref: int | None = None
    since: int | None = None  # on time, ms UTC
    until: int | None = None
    limit: int = 100
    offset: int = 0
    newest_first: bool = True


@frozen
class LogQuery:
    gateway: str | None = None  # a key "<gw>_<MAC>" or a bare gw id
    since: int | None = None
    until: int | None = None
    limit: int = 100
    offset: int = 0


class IStore(Interface):
    """
    cdrd's durable state: events, gateway log, gateways, call records, CDRs,
    the call model's cursors and the outputs' outboxes.

    ``write`` is the only way in: one transaction per call, durable (synced)
    when its Deferred fires.  Callers batch; the store never blocks the
    reactor.
    """

    def open():
        """Connect, create or migrate the schema.  Deferred[None]."""

    def close():
        """Finish what is in flight and disconnect.  Deferred[None]."""

    def activate(on_lost=None, poll=None):
        """
        After open(): Deferred[None] firing once this process is the one cdrd
        that writes to the store.  SQLite: one process per file (a second
        fails with StoreInUse).  PostgreSQL: at once, every node is active
        (each gateway's writes are fenced by its lease: ILeasedStore).
        Memory: at once.
        """

    def write(batch):
        """Apply a WriteBatch in one durable transaction.  Deferred[WriteResult]."""

    def gateway(key):
        """Deferred[GatewayState | None]."""

    def gateways():
        """Deferred[list[GatewayState]], ordered by key."""

    def log(query):
        """Deferred[list[LogEntry]] for a LogQuery, newest first."""

    def events(query):
        """Deferred[list[CallEvent]] for an EventQuery."""

    def events_after(gateway, after_id, limit):
        """Replay: Deferred[list[CallEvent]] of `gateway` (None: every
        gateway) with id > after_id, by id."""

    def calls(query):
        """Deferred[CallPage] for a CallQuery, ordered by begin then id."""

    def call_quarters(gateway, since, until):
        """Deferred[list[int]]: the distinct quarter hours (ms UTC, multiples
        of 900 000) in which a record of `gateway` (None: any) begins, in
        [since, until).  Every zone's offset is a multiple of 15 minutes, so
        the calendar maps them to local days exactly."""

    def call_stats(since, until, bucket):
        """Deferred[list[CallStats]]: per gateway and per `bucket` ms (a
        divisor of a day, e.g. 3 600 000) of Begin in [since, until), the
        buckets that hold a record, ordered by gateway then start."""

    def cdrs(query):
        """Deferred[tuple[int, list[Cdr]]]: total matching, and the page, in
        written order (oldest first) or the query's sort."""

    def call_totals(query):
        """Deferred[CallTotals] of every record a CallQuery matches (its
        limit, offset, after and sort ignored)."""

    def call_summary(query, group, prefix=None, bucket=None, limit=1000, offset=0,
                     sort=None, descending=False, shift=None):
        """
        Deferred[SummaryPage]: the records a CallQuery matches grouped by
        `group` (SUMMARY_GROUPS): "caller" (cli), "destination" (dialed,
        its first `prefix` characters with `prefix`), "gateway", or "time"
        (Begin in buckets of `bucket` ms; key: the bucket's start, ms as
        text).  With `shift`, ((from_ms, offset_ms), ...) by from_ms: the
        zone's UTC offset from each instant on (the first's before it too),
        a time group buckets Begin + its offset, so that a day's bucket
        starts at local midnight and its key is local wall-clock ms.
        Ordered by `sort` (SUMMARY_SORTS; summary_sort_key), `descending`;
        `groups` counts them all, `rows` are `limit` of them from `offset`.
        """

    def cui_totals(query):
        """Deferred[list[CuiTotals]] per CUI of the CDRs a CdrQuery matches
        (limit, offset, after and sort ignored), by CUI."""

    def cui_summary(query, limit=100, offset=0, sort=None, descending=False):
        """
        Deferred[SummaryPage]: the CDRs a CdrQuery matches (its own limit,
        offset, after and sort ignored) grouped by CUI, each group's
        totals as a call summary's (calls and attempts: the CDRs; answered:
        those with a duration; talk: their durations), ordered as
        `summary_sort_key(sort, False)` and paged by the store: `groups`
        counts them all, `rows` are `limit` of them from `offset`.
        """

    def call_record(call_id):
        """Deferred[CallRecord | None]: the record of one call id."""

    def outbox_matching(sink, text, limit):
        """Deferred[list[OutboxItem]] of `sink` whose payload contains the
        UTF-8 of `text`, by id, at most `limit` (what is still spooled of
        one call)."""

    def cursors():
        """Deferred[dict[str, ModelCursor]]: the call model's cursor per gateway."""

    def ended_calls(gateway, since):
        """Deferred[list[tuple[str, int]]]: (boot, ref) of calls of `gateway`
        recorded with End >= since (ms): the model ignores late events for
        them after a restart."""

    def outbox(sink, after_id, limit):
        """Deferred[list[OutboxItem]] of `sink` with id > after_id, by id."""

    def outbox_stats(sink):
        """Deferred[tuple[int, int | None]]: (depth, created ms of the oldest)."""

    def expire(kind, before, limit, after=None, stale_after=0):
        """
        Retention: delete, in one short write transaction, at most `limit`
        rows of `kind` (RETENTION_KINDS) older than `before` (ms UTC), the
        oldest first, from `after` on (the previous batch's Expired.after).
        Deferred[Expired].

        - "events": Time < before, but never an event the call model's
          recovery replays (id >= its gateway's cursor replay_from, or a
          gateway without a cursor).
        - "log": Time < before.
        - "records": Begin < before, with the CDRs the call wrote
          (billed_call; created by it for rows without one), and their
          counts taken off the hourly sums; but never a record written
          while an outbox item that is still there was already stored (an
          output has not delivered it), nor one of a gateway that ended
          within `stale_after` ms before the first event its recovery
          replays (recovery marks those calls ended).
        """

    def oldest():
        """Deferred[dict[str, int | None]]: per RETENTION_KINDS the time (ms
        UTC) of the oldest row held (events and log: Time; records: Begin),
        None when there is none."""

    def reclaim(pages):
        """Give at most `pages` free pages of the file back to the file
        system (SQLite incremental vacuum).  Deferred[tuple[int, int]]:
        (pages given back, free pages left).  Stores that reuse their
        space themselves (PostgreSQL, memory) return (0, 0)."""


class ILeasedStore(IStore):
    """
    A store several active cdrd nodes share (PostgreSQL; docs/store.md,
    "Several nodes"): each gateway is owned by the node holding its lease,
    and every write for a gateway checks the lease's fencing token in its
    own transaction (a node that lost it gets LeaseLost and writes nothing).
    """

    leases = Attribute("This node's cdrd.store.leases.Leases: its name, lease length and held tokens.")

    def take_lease(gateway):
        """Deferred[Taken]: this node owns `gateway` from the commit on, whoever held it."""

    def take_expired_lease(key):
        """Deferred[Taken | None]: `key`'s lease if nobody holds it live (else None)."""

    def renew_leases():
        """Deferred[list[str]]: renews this node's leases; the keys it found taken."""

    def orphans(limit):
        """Deferred[list[str]]: gateways nobody holds live that have calls to end."""

    def log_between(first, last):
        """Deferred[list[LogEntry]]: the gateway log entries with ids first..last."""

    def listen(received):
        """Call received(payload: dict) for every commit of any node, until close()."""


class IDerivedLane(Interface):
    """
    A store whose derived rows go in transactions of their own, beside the
    events' (PostgreSQL; docs/store.md, "Two write lanes"): the BatchWriter
    then writes them in a second lane.
    """

    def write_derived(batch):
        """
        Apply a WriteBatch of derived rows only (``batch.derived()``) in
        one durable transaction of its own.  Deferred[WriteResult];
        ValueError for a batch with events, log or gateway state.
        """


class IBatchWriter(Interface):
    """
    The only writer of a store (cdrd.store.writer.BatchWriter): batches
    submitted in one reactor turn commit in one transaction (group commit).
    """

    pending = Attribute("Events submitted and not yet committed (int): the back-pressure figure.")
    busy = Attribute("A transaction is in flight or submissions wait (bool).")
    refusing = Attribute(
        "Why the store refuses writes (str: disk full, database down), or None while it takes them.")

    def submit(batch):
        """Deferred[WriteResult] firing once the transaction holding the
        WriteBatch `batch` has committed, or failing with the store's failure
        (then none of it was applied)."""

    def flushed():
        """Deferred firing once everything submitted so far is committed."""

    def add_listener(fn):
        """Call fn(merged WriteBatch, WriteResult) after each commit, in
        commit order, before the submitters' Deferreds fire."""

    def remove_listener(fn):
        """Stop calling fn; ValueError if it was not added."""


class ICdrSink(Interface):
    """
    An output of the call model: every product of the model (leg starts,
    answers and stops for accounting; CallEnd with the call's CDRs in
    written order) reaches each sink exactly once, in the order produced.

    Durable sinks (RADIUS, syslog, CSV files) return payloads from ``spool``: they are
    stored in the sink's outbox in the same transaction as the records and
    CDRs, then ``committed`` tells the sink to deliver from its outbox.
    In-memory sinks (the live web feed) return nothing from ``spool`` and
    act in ``committed``.
    """

    name = Attribute("The outbox name (str); unique among sinks.")

    def spool(outputs, now):
        """Pure: list[bytes] to store in this sink's outbox for `outputs`
        (a sequence of cdrd.values.ModelOutput)."""

    def committed(outputs):
        """`outputs` and their outbox items are durable: deliver."""


class ILazyCdrSink(ICdrSink):
    """
    A durable sink whose outbox items may be compact facts that the sink
    builds its messages from when it reads them (RADIUS: attributes, sizes,
    split Stops), so that the ingest path pays only for the facts.  The
    CallService stores ``spool_facts`` instead of ``spool`` for it; the
    sink reads both forms.
    """

    def spool_facts(outputs, now):
        """Pure: list[bytes] to store in this sink's outbox for `outputs`,
        delivering what ``spool`` would (in order; maybe fewer items)."""


class IEventListener(Interface):
    """Told of gateway events and log entries once they are stored (live pages)."""

    def events_stored(events):
        """A sequence of CallEvent with ids, in commit order."""

    def log_stored(entries):
        """A sequence of LogEntry, in commit order."""
