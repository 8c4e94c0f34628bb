"""
CsvFileSink: the CDR lines in one file a day, for operators who want files
(docs/outputs.md, "CSV files").  Off unless wired.

`<directory>/cdrs-YYYY-MM-DD.csv`, the day of the End of the call that wrote
the CDR in the configured zone, one CDR line (call-records.md) per line
followed by two fields, the call that created the CDR and the call that
billed it (`Cdr.csv_row`: `call`, `billed_call`), LF-terminated, no
header, appended in written order.

A durable ICdrSink: `spool()` makes one outbox item per CDR (its file's day
and its row), which the CallService commits with the CDRs.  The sink reads
its outbox (OutboxConsumer), appends a page's rows with one write per file in
a thread of the reactor's pool (never on the reactor thread), flushes and
fsyncs each file (and the directory when it created the file), and only then
deletes the items.  So a crash loses no committed row: what was not yet
written and synced is still in the outbox and is appended after the restart
(at least once: a crash between the fsync and the deletion's commit appends
those rows again).  A file that cannot be written keeps its rows in the
outbox; they are retried with a growing delay, logged and counted.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

from twisted.application.service import Service
from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import implementer

from cdrd.interfaces import ICdrSink
from cdrd.store.outbox import OutboxConsumer
from cdrd.values import CallEnd

SINK = "csv"


def append_synced(directory: str, files: dict[str, list[str]]) -> dict[str, str | None]:
    """
    Blocking, for a thread: append each file's rows in one write, flush and
    fsync it (and fsync the directory after creating a file).  Returns, per
    file name, None or why it failed.
    """
    errors: dict[str, str | None] = {}
    created = False
    for name, rows in files.items():
        path = os.path.join(directory, name)
        try:
            created |= not os.path.exists(path)
            with open(path, "a", encoding="utf-8", newline="") as f:
                f.write("".join(row + "\n" for row in rows))
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            errors[name] = e.strerror or str(e)
        else:
            errors[name] = None
    if created:
        try:
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass  # the file itself is synced; a directory that refuses fsync keeps its entry as the FS does
    return errors


@implementer(ICdrSink)
class CsvFileSink(Service):
    name = SINK
    log = Logger()

    #: Outbox items read (and appended) at a time.
    page = 1000
    #: Seconds before a failed append is tried again (doubling up to retry_max).
    retry_initial = 1.0
    retry_max = 60.0

    def __init__(
        self,
        directory: str,
        store,
        writer,
        clock,
        reactor,
        zone: ZoneInfo | str = "UTC",
        in_thread: Callable[..., defer.Deferred] | None = None,
    ):
        self.directory = str(directory)
        self.clock = clock
        self.zone = ZoneInfo(zone) if isinstance(zone, str) else zone
        # runs append_synced off the reactor thread; tests hand in their own
        self.in_thread = in_thread or (
            lambda f, *a: threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *a)
        )
        self.outbox = OutboxConsumer(SINK, store, writer, clock, received=self._append, retry=self._pump)
        self._writing: defer.Deferred | None = None
        self._held: list[tuple[list[int], dict[str, list[str]]]] = []  # rows whose file failed
        self._retry_call = None
        self._retry_delay = self.retry_initial
        self.written = 0
        self.errors = 0

    def file_for(self, ms: int) -> str:
        day = datetime.fromtimestamp(ms / 1000, self.zone).date()
        return f"cdrs-{day.isoformat()}.csv"

    def path_for(self, ms: int) -> str:
        return os.path.join(self.directory, self.file_for(ms))

    # -- ICdrSink -----------------------------------------------------------------

    def spool(self, outputs, now):
        """Pure: one payload per CDR, `<file name> <row>`, in written order."""
        return [
            f"{self.file_for(o.record.end)} {c.csv_row}".encode()
            for o in outputs
            if isinstance(o, CallEnd)
            for c in o.cdrs
        ]

    def poll(self):
        """Another cdrd node may have added to the outbox: read on (cdrd.cluster)."""
        self.outbox.added()
        self._pump()

    def committed(self, outputs):
        if any(isinstance(o, CallEnd) and o.cdrs for o in outputs):
            self.outbox.added()
            self._pump()

    # -- files ----------------------------------------------------------------------

    def startService(self):
        os.makedirs(self.directory, exist_ok=True)
        Service.startService(self)
        self.outbox.start()
        self._held.clear()
        self._pump()

    @defer.inlineCallbacks
    def stopService(self):
        Service.stopService(self)
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None
        self.outbox.stop()
        if self._writing is not None:
            yield self._writing
        yield self.outbox.drain()

    def _pump(self):
        if not self.running or self._writing is not None or self._retry_call is not None:
            return
        if self._held:
            self._write(*self._held.pop(0))
        elif not (self.outbox.reading or self.outbox.caught_up):
            self.outbox.read(self.page)

    def _append(self, items):
        if not self.running:
            return
        files: dict[str, list[str]] = {}
        ids: dict[str, list[int]] = {}
        for item in items:
            name, _, row = item.payload.decode("utf-8").partition(" ")
            files.setdefault(name, []).append(row)
            ids.setdefault(name, []).append(item.id)
        if files:
            self._write(ids, files)
        else:
            self._pump()

    def _write(self, ids: dict[str, list[int]], files: dict[str, list[str]]):
        d = self.in_thread(append_synced, self.directory, files)
        self._writing = d
        d.addCallback(self._written, ids, files)
        d.addErrback(lambda f: self.log.failure("CSV: appending CDR lines failed", f))
        d.addBoth(self._idle)

    def _written(self, errors, ids, files):
        failed_ids, failed_files = {}, {}
        for name, error in errors.items():
            if error is None:
                self.written += len(files[name])
                for item_id in ids[name]:
                    self.outbox.delete(item_id)
                continue
            self.errors += 1
            self.log.error(
                "CSV: cannot append {count} CDR lines to {path}: {error}; kept, retried in {delay:g} s",
                count=len(files[name]), path=os.path.join(self.directory, name), error=error,
                delay=self._retry_delay,
            )
            failed_ids[name], failed_files[name] = ids[name], files[name]
        if failed_files:
            # kept (in the outbox and here, in order) until they are written
            self._held.insert(0, (failed_ids, failed_files))
            if self.running:
                self._retry_call = self.clock.callLater(self._retry_delay, self._retried)
            self._retry_delay = min(self.retry_max, self._retry_delay * 2)
        else:
            self._retry_delay = self.retry_initial

    def _idle(self, _):
        self._writing = None
        self._pump()

    def _retried(self):
        self._retry_call = None
        self._pump()

    def status(self) -> dict:
        return {"directory": self.directory, "written": self.written, "errors": self.errors}
