"""
CsvFileSink: the CDR lines in one file a day, for operators who want files
(docs/outputs.md, "CSV files").  Off unless wired.

`<directory>/cdrs-YYYY-MM-DD.csv`, the day of the End of the call that wrote
the CDR in the configured zone, one CDR line (call-records.md) per line
followed by two fields, the call that created the CDR and the call that
billed it (`Cdr.csv_row`: `call`, `billed_call`), LF-terminated, no
header, appended in written order.  An in-memory ICdrSink:
it acts in `committed()`, so a crash between the store's commit and the
append loses those lines from the file (the store, syslog and RADIUS keep
them).  Lines committed in one reactor turn are appended with one write per
file; no fsync.
"""

from __future__ import annotations

import os
from datetime import datetime
from zoneinfo import ZoneInfo

from twisted.application.service import Service
from twisted.logger import Logger
from zope.interface import implementer

from cdrd.interfaces import ICdrSink
from cdrd.values import CallEnd


@implementer(ICdrSink)
class CsvFileSink(Service):
    name = "csv"
    log = Logger()

    def __init__(self, directory: str, clock, zone: ZoneInfo | str = "UTC"):
        self.directory = str(directory)
        self.clock = clock
        self.zone = ZoneInfo(zone) if isinstance(zone, str) else zone
        self._lines: dict[str, list[str]] = {}
        self._call = None
        self.written = 0
        self.errors = 0

    def path_for(self, ms: int) -> str:
        day = datetime.fromtimestamp(ms / 1000, self.zone).date()
        return os.path.join(self.directory, f"cdrs-{day.isoformat()}.csv")

    # -- ICdrSink -----------------------------------------------------------------

    def spool(self, outputs, now):
        return []  # not durable: see the module's docstring

    def committed(self, outputs):
        for o in outputs:
            if isinstance(o, CallEnd) and o.cdrs:
                lines = self._lines.setdefault(self.path_for(o.record.end), [])
                lines.extend(c.csv_row for c in o.cdrs)
        if self._lines and self._call is None:
            self._call = self.clock.callLater(0, self.flush)

    # -- files ----------------------------------------------------------------------

    def startService(self):
        os.makedirs(self.directory, exist_ok=True)
        Service.startService(self)

    def stopService(self):
        Service.stopService(self)
        if self._call is not None and self._call.active():
            self._call.cancel()
        self.flush()

    def flush(self):
        self._call = None
        batches, self._lines = self._lines, {}
        for path, lines in batches.items():
            try:
                with open(path, "a", encoding="utf-8", newline="") as f:
                    f.write("".join(line + "\n" for line in lines))
            except OSError as e:
                self.errors += 1
                self.log.error(
                    "CSV: cannot append {count} CDR lines to {path}: {error}",
                    count=len(lines), path=path, error=e.strerror or str(e),
                )
                continue
            self.written += len(lines)

    def status(self) -> dict:
        return {"directory": self.directory, "written": self.written, "errors": self.errors}
