"""
The downloads (docs/web.md, "Pages"): a Klein app of its own, mounted by
WebApp for the paths that end in .csv.

    /report.csv    the report's search, every page of it, as the report shows it
    /cdrs.csv      the billing lines of the search, byte for byte
    /summary.csv   the summary's groups with their totals

Streamed a chunk at a time at the pace the client reads (`Export`): a big
export never sits in memory whole, and stops when the client goes.
"""

from __future__ import annotations

from urllib.parse import unquote

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from werkzeug.exceptions import NotFound
from zope.interface import implementer

from cdrd.values import csv_line, rfc3339
from cdrd.web.api import summary_csv_rows
from cdrd.web.query import CALL_PARAMS, CDR_PARAMS, BadParameter, call_query, cdr_query, parse_search
from cdrd.web.render import REPORT_COLUMNS, report_cells

#: records read per store query while exporting CSV
EXPORT_CHUNK = 1000
#: an export never runs away with the server: at most this many rows
EXPORT_MAX = 1_000_000


def _rfc(ms):
    return None if ms is None else rfc3339(ms)


class Exports:
    app = Klein()
    log = Logger()

    def __init__(self, web):
        self.web = web

    @app.handle_errors(BadParameter)
    async def bad_parameter(self, request, failure):
        return await self.web.error_page(request, 400, "Bad request", str(failure.value))

    @app.handle_errors(NotFound)
    async def not_found(self, request, failure):
        path = unquote(request.path.decode("utf-8", "replace"))
        return await self.web.error_page(request, 404, "Not found", f"There is no download at {path}.")

    @app.route("/report.csv", methods=["GET"])
    async def report_csv(self, request):
        web = self.web
        s = parse_search(request, web.zone, default_day=web.today(), allowed=CALL_PARAMS)
        name = f"cdr-report-{s.gateway or 'all'}-{s.day_from}-{s.day_to}-{s.filter}.csv"
        download_headers(request, name)
        export = Export(request)
        head = REPORT_COLUMNS + ("Gateway", "Begin (UTC)", "End (UTC)", "Call ID")
        await export.write(csv_row(head))
        n = 0
        after = None  # keyset paging: each chunk costs its own length
        while n < EXPORT_MAX and not export.gone:
            page = await web.store.calls(
                call_query(s, limit=EXPORT_CHUNK, offset=0, after=after, keyset=True))
            rows = []
            for r in page.records:
                n += 1
                cells = report_cells(n, r, web.clocks)
                utc = (r.gateway, _rfc(r.begin), _rfc(r.end), r.id)
                rows.append(csv_row(tuple(map(spreadsheet_safe, cells)) + utc))
            await export.write(b"".join(rows))
            if len(page.records) < EXPORT_CHUNK:
                break
            after = (page.records[-1].begin, page.records[-1].id)
        export.done()
        return None

    @app.route("/cdrs.csv", methods=["GET"])
    async def cdrs_csv(self, request):
        web = self.web
        s = parse_search(request, web.zone, default_day=web.today(), allowed=CDR_PARAMS)
        download_headers(request, f"cdrs-{s.gateway or 'all'}-{s.day_from}-{s.day_to}.csv")
        export = Export(request)
        # the billing feed: the FireBrick lines byte for byte, then the
        # creating and the billed call (Cdr.csv_row) (never altered for
        # spreadsheets, see docs/web.md), at the pace the client reads
        n = 0
        after = None
        while n < EXPORT_MAX and not export.gone:
            _, page = await web.store.cdrs(
                cdr_query(s, limit=EXPORT_CHUNK, offset=0, after=after, keyset=True))
            await export.write("".join(c.csv_row + "\r\n" for c in page).encode("utf-8"))
            n += len(page)
            if len(page) < EXPORT_CHUNK:
                break
            after = page[-1].id
        export.done()
        return None


    @app.route("/summary.csv", methods=["GET"])
    async def summary_csv(self, request):
        # the API's summary (its parameters, its checks) with every group,
        # as the API's CSV
        return await self.web.api._csv(request)


async def stream_summary_csv(request, summary, name: str) -> None:
    """Every group of `summary` as CSV, written EXPORT_CHUNK rows at a time
    at the pace the client reads."""
    download_headers(request, name)
    export = Export(request)
    chunk = []
    for row in summary_csv_rows(summary):
        chunk.append(row)
        if len(chunk) >= EXPORT_CHUNK:
            await export.write(b"".join(chunk))
            chunk = []
            if export.gone:
                break
    if chunk:
        await export.write(b"".join(chunk))
    export.done()


def download_headers(request, name: str) -> None:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    request.setHeader(b"content-type", b"text/csv; charset=utf-8")
    request.setHeader(b"content-disposition", f'attachment; filename="{safe}"'.encode())
    request.setHeader(b"cache-control", b"no-store")


@implementer(IPushProducer)
class Export:
    """
    Paces a streamed download to its client: a producer of the request's
    connection, so `write` waits while the client's socket pushes back, and
    `gone` turns true (and waits end) once the client left.
    """

    def __init__(self, request):
        self.request = request
        self.paused = False
        self.gone = False
        self._waiting: Deferred | None = None
        request.registerProducer(self, True)
        request.notifyFinish().addErrback(lambda _: self.stopProducing())

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        self._wake()

    def stopProducing(self):
        self.gone = True
        self._wake()

    def _wake(self):
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(None)

    async def write(self, data: bytes) -> None:
        if self.gone:
            return
        self.request.write(data)
        while self.paused and not self.gone:
            self._waiting = Deferred()
            await self._waiting

    def done(self):
        if not self.gone:
            self.request.unregisterProducer()


#: what a spreadsheet takes for a formula at the start of a cell (OWASP)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str) -> str:
    """A report cell that a spreadsheet shows as text, never runs: one that
    starts like a formula gets a leading ' (OWASP "CSV injection")."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def csv_row(cells) -> bytes:
    """A download's row, CRLF-terminated (RFC 4180), by cdrd's one encoder."""
    return (csv_line(cells) + "\r\n").encode("utf-8")
