"""
RetentionService: deletes what [retention] no longer keeps (docs/store.md,
"Retention").

One sweep at start-up (after the call model recovered: cdrd starts it
after the CallService) and then every ``interval`` seconds.  A sweep walks
each kind that has a limit, oldest first, in batches of ``batch`` rows:
one ``IStore.expire`` call, so one short write transaction in the store's
own thread, then a pause at least as long as that batch took before the
next.  Ingest writes queue for the same writer between two batches, so an
ACK waits for at most one batch, and the sweep takes at most about half
of the writer's time.  What the store keeps back (events recovery
replays, records an output has not delivered) is the store's rule:
IStore.expire.

After a sweep that deleted rows the store gives the freed pages back
(``IStore.reclaim``: SQLite's incremental vacuum), again in short steps.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger

from cdrd.config import RetentionConfig
from cdrd.interfaces import RETENTION_KINDS
from cdrd.store.schema import DAY_MS

#: the shortest pause between two batches, seconds
MIN_PAUSE = 0.005
#: pages one reclaim step gives back (4 KiB pages: 4 MiB)
RECLAIM_PAGES = 1024


class RetentionService(Service):
    """
    `store` an IStore, `clock` an IReactorTime, `config` the
    RetentionConfig; `stale_after` (s) the server's: records of calls that
    ended that long before an open call's first event stay for recovery.
    """

    log = Logger()
    name = "retention"

    def __init__(self, store, clock, config: RetentionConfig, stale_after: float = 86400.0,
                 min_pause: float = MIN_PAUSE, reclaim_pages: int = RECLAIM_PAGES):
        self.store = store
        self.clock = clock
        self.config = config
        self.stale_after_ms = int(stale_after * 1000)
        self.min_pause = min_pause
        self.reclaim_pages = reclaim_pages
        #: rows deleted since start, per kind, and the CDRs with the records
        self.deleted = {kind: 0 for kind in RETENTION_KINDS} | {"cdrs": 0}
        #: the oldest row held per kind (ms UTC), as the last sweep found it
        self.oldest: dict[str, int | None] = {kind: None for kind in RETENTION_KINDS}
        self.sweeps = 0  # sweeps finished, for tests and status
        self.reclaimed = 0  # pages given back since start
        self._loop: task.LoopingCall | None = None
        self._sweeping: defer.Deferred | None = None
        self._pause: defer.Deferred | None = None

    @property
    def active(self) -> bool:
        """Something has a limit: a sweep has work to look for."""
        return any(self.config.days(kind) for kind in RETENTION_KINDS)

    def kept(self) -> dict[str, dict]:
        """Per kind: the days kept (0 = forever) and the oldest held (ms or None)."""
        return {kind: {"days": self.config.days(kind), "oldest": self.oldest[kind]} for kind in RETENTION_KINDS}

    # -- lifecycle -------------------------------------------------------------

    def startService(self):
        super().startService()
        self._loop = task.LoopingCall(self.sweep)
        self._loop.clock = self.clock
        self._loop.start(self.config.interval, now=True).addErrback(
            lambda f: self.log.failure("retention: the sweeps stopped", f))

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._pause is not None:
            self._pause.cancel()  # the sweep ends at its next step
        d, self._sweeping = self._sweeping, None
        if d is None:
            return defer.succeed(None)
        done = defer.Deferred()
        d.addBoth(lambda _: done.callback(None))
        return done

    # -- a sweep ---------------------------------------------------------------

    def sweep(self) -> defer.Deferred:
        """One sweep over every kind; fires when it is over (never fails)."""
        if self._sweeping is not None:
            return defer.succeed(None)  # the last one still runs: it covers this one
        d = self._sweeping = defer.ensureDeferred(self._sweep())

        def over(result):
            if self._sweeping is d:
                self._sweeping = None
            return result
        d.addBoth(over)
        # a copy for the caller: over() must run whatever the caller adds
        out = defer.Deferred()
        d.addBoth(out.callback)
        return out

    async def _sweep(self) -> None:
        started = self.clock.seconds()
        now = int(started * 1000)
        deleted = {kind: 0 for kind in RETENTION_KINDS} | {"cdrs": 0}
        pages = 0
        try:
            for kind in RETENTION_KINDS:
                days = self.config.days(kind)
                if days:
                    await self._expire(kind, now - days * DAY_MS, deleted)
            if any(deleted.values()):
                pages = await self._reclaim()
            self.oldest = dict(await self.store.oldest())
        except defer.CancelledError:
            return  # stopping: the next start sweeps again
        except Exception as e:
            # the store is down or refuses writes: the writer says so; the
            # rows wait for the next sweep
            self.log.warn(
                "retention: sweep stopped after {events} events, {log} log entries,"
                " {records} call records: {error}",
                error=str(e) or type(e).__name__, **{k: deleted[k] for k in RETENTION_KINDS},
            )
            return
        finally:
            for kind, n in deleted.items():
                self.deleted[kind] += n
            self.reclaimed += pages
        self.sweeps += 1
        if any(deleted.values()):
            self.log.info(
                "retention: deleted {events} events, {log} log entries, {records} call records"
                " with {cdrs} CDRs in {seconds:.1f} s; {pages} free pages given back",
                seconds=self.clock.seconds() - started, pages=pages, **deleted,
            )

    async def _expire(self, kind: str, before: int, deleted: dict) -> None:
        after = None
        while self.running:
            begun = self.clock.seconds()
            got = await self.store.expire(
                kind, before, self.config.batch, after, stale_after=self.stale_after_ms)
            deleted[kind] += got.deleted
            deleted["cdrs"] += got.cdrs
            if got.after is None:
                return
            after = got.after
            await self._rest(self.clock.seconds() - begun)

    async def _reclaim(self) -> int:
        given = 0
        while self.running:
            begun = self.clock.seconds()
            freed, left = await self.store.reclaim(self.reclaim_pages)
            given += freed
            if not freed or not left:
                break
            await self._rest(self.clock.seconds() - begun)
        return given

    async def _rest(self, took: float) -> None:
        """Leave the writer to the ingest at least as long as the last step had it."""
        if not self.running:
            raise defer.CancelledError()
        self._pause = task.deferLater(self.clock, max(self.min_pause, took), lambda: None)
        try:
            await self._pause
        finally:
            self._pause = None
