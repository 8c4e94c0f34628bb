"""
A process running cdrd's AccountingService over a real SQLite store and
BatchWriter, for the kill -9 test:

    python -m tests.accounting.spool_process DB PORT SECRET [--spool]

--spool stores the Starts and Stops of worked examples E1 and E4 in the
outbox in one transaction (as the CallService does), then delivers.
"""

from __future__ import annotations

import sys

from twisted.internet import defer, reactor

from cdrd.accounting.service import AccountingService
from cdrd.config import RadiusConfig, RadiusServer
from cdrd.interfaces import OutboxItem, WriteBatch
from cdrd.store import open_store
from cdrd.store.writer import BatchWriter
from tests.accounting import examples


@defer.inlineCallbacks
def run(argv):
    path, port, secret = argv[0], int(argv[1]), argv[2]
    store = open_store(f"sqlite:{path}", reactor)
    yield store.open()
    writer = BatchWriter(store, reactor)
    writer.startService()
    cfg = RadiusConfig(
        servers=(RadiusServer("127.0.0.1", port, secret),),
        nas_ip="192.0.2.10",
        interim_interval=0,
        initial_timeout=0.5,
        max_timeout=2.0,
    )
    svc = AccountingService(cfg, store, writer, reactor, reactor)
    svc.startService()
    if "--spool" in argv:
        outputs = examples.e1() + examples.e4()
        now = int(reactor.seconds() * 1000)
        yield writer.submit(
            WriteBatch(
                outbox=[OutboxItem("radius", p, now) for p in svc.spool(outputs, now)]
            )
        )
        svc.committed(outputs)
        sys.stdout.write("spooled\n")
        sys.stdout.flush()


def main(argv):
    reactor.callWhenRunning(run, argv)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
