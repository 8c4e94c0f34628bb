"""
A process running cdrd's AccountingService over a file-backed outbox, for
the kill -9 test:  python -m tests.accounting.spool_process STORE PORT SECRET [--spool]

--spool stores the Starts and Stops of worked examples E1 and E4 in the
outbox (as the CallService does) before delivering.
"""

from __future__ import annotations

import sys

from twisted.internet import reactor

from cdrd.accounting.service import AccountingService
from cdrd.config import RadiusConfig, RadiusServer
from tests.accounting import examples
from tests.accounting.outbox import FileOutboxStore, Writer


def main(argv):
    path, port, secret = argv[0], int(argv[1]), argv[2]
    store = FileOutboxStore(path)
    cfg = RadiusConfig(
        servers=(RadiusServer("127.0.0.1", port, secret),),
        nas_ip="192.0.2.10", interim_interval=0,
        initial_timeout=0.5, max_timeout=2.0,
    )
    svc = AccountingService(cfg, store, Writer(store), reactor, reactor)
    svc.startService()
    if "--spool" in argv:
        outputs = examples.e1() + examples.e4()
        now = int(reactor.seconds() * 1000)
        store.spooled("radius", svc.spool(outputs, now), created=now)
        svc.committed(outputs)
        sys.stdout.write("spooled\n")
        sys.stdout.flush()
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
