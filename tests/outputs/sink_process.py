"""
A process running cdrd's SyslogSink over a real SQLiteStore and BatchWriter,
for the kill -9 test:

    python -m tests.outputs.sink_process DB TARGET [--spool FIRST COUNT]

--spool writes COUNT CDRs (numbered from FIRST) with their syslog outbox
items in one transaction, as the CallService does, then tells the sink.
It prints "ready" once that is durable, then delivers until killed.
"""

from __future__ import annotations

import sys

from twisted.internet import defer, reactor

from cdrd.config import SyslogConfig
from cdrd.interfaces import OutboxItem, WriteBatch
from cdrd.outputs.syslog import SyslogSink
from cdrd.store.sqlite import SQLiteStore
from cdrd.store.writer import BatchWriter
from tests.outputs.cdrs import numbered


async def main(argv):
    path, target = argv[0], argv[1]
    store = SQLiteStore(path, reactor)
    await store.open()
    writer = BatchWriter(store, reactor)
    writer.startService()
    sink = SyslogSink(SyslogConfig(target=target, hostname="pbx-test"), store, writer,
                      reactor, reactor)
    sink.startService()
    if "--spool" in argv:
        i = argv.index("--spool")
        first, count = int(argv[i + 1]), int(argv[i + 2])
        outputs = numbered(first, count)
        now = int(reactor.seconds() * 1000)
        await writer.submit(WriteBatch(
            records=[o.record for o in outputs],
            cdrs=[c for o in outputs for c in o.cdrs],
            outbox=[OutboxItem("syslog", p, now) for p in sink.spool(outputs, now)],
        ))
        sink.committed(outputs)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await defer.Deferred()  # until killed


if __name__ == "__main__":
    defer.ensureDeferred(main(sys.argv[1:])).addErrback(
        lambda f: (f.printTraceback(file=sys.stderr), reactor.stop())
    )
    reactor.run()
