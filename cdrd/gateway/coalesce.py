"""
Repeated gateway log entries stored as one, with a count (issue 11): a
client that opens thousands of garbage connections makes one `Bad Packet`
row a minute, not thousands, and a flapping gateway one `Gateway
Disconnect` row.

`Bad Packet`, `Gateway Disconnect` and `Login Rejected` entries are
coalesced per (event, host, gateway, MAC) over fixed windows of `window`
s: the first entry of a window is written at once (count 1, in its own
connection's batch, as any entry), the repeats are only counted here, in
memory; every `interval` s the counts that changed are written as
`WriteBatch.log_counts` (one UPDATE per entry, not one per repeat).  A
window's last count is written when it ends; `close()` (cdrd stopping)
writes every count now and lets later entries through uncoalesced.

Bounded, whatever clients send:
- rows: at most one per window of each (event, host, gateway, MAC) that
  is tracked;
- tracked windows: at most `max_windows` in all and `per_address` per
  host.  A host over its share has its new entries of each event counted
  in one window with gateway `*` ("gateways vary"), and once the table is
  full every host's in one window with peer and gateway `*`;
- so at most `max_windows` + 3 rows a window in all, `per_address` + 3
  per host, and memory of `max_windows` entries.

Everything else goes to the writer unchanged; `submit` stands in for the
writer's.
"""

from __future__ import annotations

from collections import Counter

from attrs import define, evolve, field
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from cdrd.gateway.session import BAD_PACKET, DISCONNECT, LOGIN_REJECTED
from cdrd.interfaces import LogCount, WriteBatch, WriteResult
from cdrd.values import LogEntry

#: the entries a flood repeats
COALESCED = frozenset({BAD_PACKET, DISCONNECT, LOGIN_REJECTED})
WINDOW = 60.0  # seconds one row stands for
INTERVAL = 5.0  # seconds between writes of the counts
MAX_WINDOWS = 4096  # windows tracked in all
PER_ADDRESS = 32  # windows tracked per host
#: the host and gateway of the windows that hold the repeats over the caps
ANY = "*"


@define
class _Window:
    entry: LogEntry  # as written first, count 1: the row's identity
    opened: float
    count: int = 1
    written: int = 1  # the count sent to the store


@define(eq=False)
class GatewayLogCoalescer:
    writer: object  # IBatchWriter
    clock: IReactorTime
    window: float = WINDOW
    interval: float = INTERVAL
    max_windows: int = MAX_WINDOWS
    per_address: int = PER_ADDRESS
    #: every entry submitted, by event, repeats included (the metrics)
    counted: Counter = field(factory=Counter)
    closed: bool = False
    _windows: dict = field(factory=dict)
    _hosts: Counter = field(factory=Counter)  # host -> its windows
    _ended: list = field(factory=list)  # final counts of windows ended since the last write
    _call: object = None  # the scheduled write of the counts
    _last: defer.Deferred | None = None  # the writer's Deferred of the last batch handed on

    log = Logger()

    @property
    def tracked(self) -> int:
        return len(self._windows)

    # -- the writer's API ----------------------------------------------------

    def submit(self, batch: WriteBatch) -> defer.Deferred:
        """
        The writer's `submit`, with the repeats taken out of `batch.log`.
        A batch left empty fires once every batch handed on before it has
        (its submitter's callbacks too): a gateway's ACKs stay in order.
        """
        log = self._admit(batch.log) if batch.log else batch.log
        if log != batch.log:  # repeats taken out, or an entry over the caps rewritten
            batch = evolve(batch, log=log)
            if batch == _EMPTY:
                return self._after_last()
        self._last = d = self.writer.submit(batch)
        return d

    def _after_last(self) -> defer.Deferred:
        done = defer.Deferred()
        if self._last is None:
            done.callback(WriteResult())
            return done

        def fire(result):
            done.callback(WriteResult())
            return result

        # added now, after the submitter's own callbacks of that batch
        self._last.addBoth(fire)
        return done

    def close(self) -> defer.Deferred:
        """cdrd is stopping: write every count now; later entries go through as they are."""
        self.closed = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        counts, self._ended = self._ended, []
        counts += [self._count(w) for w in self._windows.values() if w.count > w.written]
        self._windows.clear()
        self._hosts.clear()
        return self._write(counts)

    # -- windows -------------------------------------------------------------

    def _admit(self, log) -> tuple[LogEntry, ...]:
        kept = []
        now = self.clock.seconds()
        for entry in log:
            self.counted[entry.event] += 1
            if self.closed or entry.event not in COALESCED:
                kept.append(entry)
                continue
            host = entry.peer.rpartition(":")[0] or entry.peer
            key = (entry.event, host, entry.gateway, entry.mac)
            w = self._live(key, now)
            if w is None:
                key, entry = self._room(key, entry, now)
                w = self._live(key, now)
            if w is None:
                self._windows[key] = _Window(entry, now)
                self._hosts[key[1]] += 1
                kept.append(entry)
            else:
                w.count += 1
            self._schedule()
        return tuple(kept)

    def _live(self, key, now: float) -> _Window | None:
        """The window of `key`, if one is open (one that is over is ended here)."""
        w = self._windows.get(key)
        if w is not None and now - w.opened >= self.window:
            self._end(key, w)
            return None
        return w

    def _room(self, key, entry: LogEntry, now: float):
        """(key, entry) of the window a new one goes to: its own, or one over the caps."""
        event, host, _, _ = key
        if len(self._windows) >= self.max_windows:
            self._sweep(now)
        if len(self._windows) >= self.max_windows:
            return (event, ANY, ANY, ANY), evolve(
                entry, peer=ANY, gateway=ANY, mac="",
                detail=f"from more than {self.max_windows} addresses; the first {entry.peer}: {entry.detail}")
        if self._hosts[host] >= self.per_address and host != ANY:
            return (event, host, ANY, ANY), evolve(
                entry, gateway=ANY, mac="", detail=f"gateways vary; the first: {entry.detail}")
        return key, entry

    def _end(self, key, w: _Window) -> None:
        del self._windows[key]
        self._hosts[key[1]] -= 1
        if not self._hosts[key[1]]:
            del self._hosts[key[1]]
        if w.count > w.written:
            self._ended.append(self._count(w))

    def _sweep(self, now: float) -> None:
        for key, w in list(self._windows.items()):
            if now - w.opened >= self.window:
                self._end(key, w)

    # -- writing the counts --------------------------------------------------

    def _count(self, w: _Window) -> LogCount:
        w.written = w.count
        return LogCount(w.entry, w.count)

    def _schedule(self) -> None:
        if self._call is None and not self.closed:
            self._call = self.clock.callLater(self.interval, self.flush)

    def flush(self) -> defer.Deferred:
        """Write the counts that changed; end the windows that are over."""
        self._call = None
        self._sweep(self.clock.seconds())
        counts, self._ended = self._ended, []
        counts += [self._count(w) for w in self._windows.values() if w.count > w.written]
        if self._windows:
            self._schedule()
        return self._write(counts)

    def _write(self, counts: list[LogCount]) -> defer.Deferred:
        if not counts:
            return defer.succeed(None)
        d = self.writer.submit(WriteBatch(log_counts=counts))

        def failed(failure):
            # the writer logged the store's error; the counts of windows
            # still open are written again with their next repeat
            self.log.warn("{n} coalesced gateway log counts not stored: {error}",
                          n=len(counts), error=failure.getErrorMessage())
            for c in counts:
                for w in self._windows.values():
                    if w.entry is c.entry:
                        w.written = 0

        return d.addCallbacks(lambda _: None, failed)


_EMPTY = WriteBatch()
