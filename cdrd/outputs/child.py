"""
The outputs process: ``python -m cdrd.outputs.child``, started by cdrd
(cdrd.outputs.process) with AMP on its stdin and stdout.

It runs the durable sinks cdrd names in `Start` (AccountingService,
SyslogSink, CsvFileSink, unchanged) over a read-only connection to the
store and a writer that hands their writes to cdrd (`Write`): the outbox
ids their peers confirmed, the Interim-Updates they make.  It ends when
its stdin closes (cdrd stopped, or died: kill -9 included).
"""

from __future__ import annotations

import json
import os
import pickle
import signal
from base64 import b64encode

import orjson
from twisted.application.service import MultiService
from twisted.internet import defer, task
from twisted.logger import Logger, eventAsJSON, formatEvent, globalLogBeginner
from twisted.protocols import amp
from twisted.python.threadpool import ThreadPool

from cdrd.gcpauses import collect_less_often
from cdrd.outputs import durable_sink
from cdrd.outputs.process import CHUNK, STATUS_INTERVAL, Added, Log, Start, Status, Stop, Write
from cdrd.store.sqlite import SQLiteStore

#: Largest log event relayed as it is (an AMP value is at most 64 KiB).
MAX_EVENT = 60_000


class ReadOnlySQLite(SQLiteStore):
    """The store as the child reads it: no migration, no lock, query_only connections."""

    def open(self):
        if self._pool is None:
            self._pool = ThreadPool(1, 1, name=f"cdrd-outputs-read:{self.path}")
            self._pool.start()
        return defer.succeed(None)

    def _writer(self):
        return self._reader()

    def activate(self, on_lost=None, poll=None):
        raise RuntimeError("the outputs process never writes to the store")

    def close(self):
        return super().close().addBoth(lambda r: (self._close_readers(), r)[1])


class RemoteWriter:
    """An IBatchWriter for the sinks: their outbox writes, committed by cdrd's writer."""

    def __init__(self, child: ChildAmp):
        self.child = child

    def submit(self, batch):
        done = [[sink, i] for sink, i in batch.outbox_done]
        items = [[o.sink, b64encode(o.payload).decode(), o.created] for o in batch.outbox]
        calls = [
            self.child.callRemote(Write, done=orjson.dumps(done[i:i + CHUNK]).decode(), items="[]")
            for i in range(0, len(done), CHUNK)
        ]
        calls += [self.child.callRemote(Write, done="[]", items=orjson.dumps([item]).decode()) for item in items]
        return defer.gatherResults(calls, consumeErrors=True).addCallback(lambda _: None)


class ChildAmp(amp.AMP):
    log = Logger()

    def __init__(self, reactor):
        super().__init__()
        self.reactor = reactor
        self.services = MultiService()
        self.sinks: dict = {}
        self.store = None
        self._status_loop = None
        self._reported = None  # the last status sent

    @Start.responder
    def start(self, settings):
        s = pickle.loads(settings)  # noqa: S301 - from cdrd, our parent, over our stdin
        os.nice(s["nice"])  # a restarted child too: each starts at cdrd's niceness
        self.store = ReadOnlySQLite(s["database"][len("sqlite:"):], self.reactor)
        writer = RemoteWriter(self)
        for name in s["sinks"]:  # in cdrd's order
            self.sinks[name] = durable_sink(name, s["settings"], self.store, writer, self.reactor)
        for sink in self.sinks.values():
            sink.setServiceParent(self.services)
        self.store.open()
        self.services.startService()
        self._status_loop = loop = task.LoopingCall(self.report)
        loop.clock = self.reactor
        loop.start(STATUS_INTERVAL, now=True).addErrback(lambda f: self.log.failure("status reports failed", f))
        self.log.info("outputs process started: {sinks}", sinks=", ".join(self.sinks))
        return {}

    @Added.responder
    def added(self, sinks, legs, cdrs):
        for name in sinks:
            sink = self.sinks.get(name)
            if sink is None or not sink.running:
                continue
            if name == "radius":
                for leg in legs:
                    sink._leg_stopped(leg)
            elif name == "syslog":
                sink._stored += cdrs
            sink.poll()
        return {}

    @Stop.responder
    @defer.inlineCallbacks
    def stop(self):
        if self._status_loop is not None and self._status_loop.running:
            self._status_loop.stop()
        if self.services.running:
            yield self.services.stopService()
        self.report()
        if self.store is not None:
            yield self.store.close()
        return {}

    def report(self) -> None:
        """Send the sinks' status when it changed (once the RADIUS outbox's figures are read)."""
        if not all(getattr(sink, "stats_read", True) for sink in self.sinks.values()):
            return
        status = {name: sink.status() for name, sink in self.sinks.items()}
        radius = self.sinks.get("radius")
        if radius is not None:
            status["radius_servers"] = [
                {"host": s.host, "port": s.port, "by_status": s.by_status, "answered": s.answered,
                 "retransmissions": s.retransmissions, "up": s.up, "rtt_ms": s.rtt_ms}
                for s in radius.client.servers
            ]
        text = json.dumps(status, default=str)
        if text != self._reported:
            self._reported = text
            self.callRemote(Status, status=text)

    def connectionLost(self, reason):
        # cdrd is gone (after a Stop, or killed): close the store first.
        # Its reading thread is not a daemon thread: left running, the
        # interpreter would wait for it at exit for good, and this process
        # would outlive cdrd holding the database open.
        super().connectionLost(reason)
        closed = self.store.close() if self.store is not None else defer.succeed(None)
        closed.addErrback(lambda f: self.log.failure("closing the store failed", f))
        closed.addCallback(lambda _: self._exit())

    def _exit(self) -> None:
        if getattr(self.reactor, "running", False):
            self.reactor.stop()


class _Relay:
    """A log observer: the child's log events, into cdrd's log."""

    def __init__(self, proto: ChildAmp):
        self.proto = proto
        self.busy = False

    def __call__(self, event):
        if self.busy or self.proto.transport is None:
            return
        self.busy = True
        try:
            try:
                text = eventAsJSON(event)
            except Exception:  # noqa: BLE001 - sent as text then
                text = None
            if text is None or len(text.encode()) > MAX_EVENT:
                short = {k: event[k] for k in ("log_level", "log_namespace", "log_time") if k in event}
                short.update(log_format="{text}", text=(formatEvent(event) or "")[: MAX_EVENT // 4])
                text = eventAsJSON(short)
            self.proto.callRemote(Log, event=text)
        finally:
            self.busy = False


def main() -> None:
    from twisted.internet import reactor, stdio

    # Ctrl-C reaches the whole process group: cdrd stops this process itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # young objects collected as in cdrd itself (cdrd.gcpauses): the
    # requests in flight are not walked again and again
    collect_less_often()
    proto = ChildAmp(reactor)
    globalLogBeginner.beginLoggingTo([_Relay(proto)], redirectStandardIO=False)
    stdio.StandardIO(proto, reactor=reactor)
    reactor.run(installSignalHandlers=False)


if __name__ == "__main__":
    from cdrd.outputs import child  # its classes under their own names in the log

    child.main()
