"""
A real cdrd web endpoint for the browser tests, in its own process:

    python -m tests.web.serve PORTFILE [--users] [--outputs]

Serves WebApp on 127.0.0.1 (a free port, written to PORTFILE) over the
fixture day stored in SQLite (next to PORTFILE), with a LiveFeed.
`--users`: behind Basic auth, user "ops", password "s3cret pass".
`--outputs`: a RADIUS and a syslog status on the dashboard (one server
down, a backlog; syslog stalled), as cdrd's outputs report them.  ``POST /_test/event?ref=N&type=T&digits=D``
stores one event of the fixture gateway and tells the feed, exactly as the
BatchWriter's commit listener does in cdrd; ``POST /_test/log?event=E&gateway=G&mac=M``
likewise one gateway log entry.
"""

from __future__ import annotations

import os
import sys

from twisted.internet import defer, endpoints, task
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.web.resource import IResource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from cdrd.interfaces import WriteBatch
from cdrd.values import CallEvent, LogEntry
from cdrd.web import auth
from cdrd.web.app import WebApp
from cdrd.web.feed import LiveFeed
from tests.web import fixtures as F
from tests.web.store import make_store


class FixtureClock:
    """The real reactor's timers, with the wall clock moved to the fixture day."""

    def __init__(self, reactor, now: float):
        self._reactor = reactor
        self._offset = now - reactor.seconds()

    def seconds(self):
        return self._reactor.seconds() + self._offset

    def callLater(self, delay, f, *a, **kw):
        return self._reactor.callLater(delay, f, *a, **kw)

    def getDelayedCalls(self):
        return self._reactor.getDelayedCalls()


@implementer(IResource)
class TestRoot:
    isLeaf = True

    def __init__(self, web, store, feed, clock):
        self.web, self.store, self.feed, self.clock = web, store, feed, clock
        self.seq = 1000

    def getChildWithDefault(self, name, request):
        return self

    def render(self, request):
        if request.path == b"/_test/event" and request.method == b"POST":
            self.inject(request)
            return NOT_DONE_YET
        if request.path == b"/_test/log" and request.method == b"POST":
            self.inject_log(request)
            return NOT_DONE_YET
        return self.web.render(request)

    def inject(self, request):
        args = {k.decode(): v[-1].decode() for k, v in request.args.items()}
        self.seq += 1
        now = int(self.clock.seconds() * 1000)
        fields = {k: v for k, v in args.items() if k not in ("ref", "type")}
        event = CallEvent(
            gateway=F.GW,
            seq=self.seq,
            ref=int(args["ref"]),
            type=args["type"],
            time=now,
            received=now,
            boot="b1",
            fields=fields,
        )

        def stored(result):
            self.feed.events_stored(result.events)
            request.setHeader(b"content-type", b"text/plain")
            request.write(str(result.events[0].id).encode())
            request.finish()

        self.store.write(WriteBatch(events=(event,))).addCallback(stored)


    def inject_log(self, request):
        """POST /_test/log?event=E&gateway=G&mac=M: one gateway log entry,
        stored and told to the feed as the BatchWriter's listener does."""
        args = {k.decode(): v[-1].decode() for k, v in request.args.items()}
        entry = LogEntry(
            time=int(self.clock.seconds() * 1000), event=args["event"], peer="127.0.0.1:2348",
            gateway=args.get("gateway", "???"), mac=args.get("mac", ""),
        )

        def stored(result):
            self.feed.log_stored([entry])
            request.setHeader(b"content-type", b"text/plain")
            request.write(b"ok")
            request.finish()

        self.store.write(WriteBatch(log=(entry,))).addCallback(stored)


USER, PASSWORD = "ops", "s3cret pass"

RADIUS = {
    "enabled": True, "spool_depth": 37, "oldest_age": 95.5, "in_flight": 5, "queued": 32,
    "open_legs": 3, "sent": 18_412, "answered": 18_375, "retransmissions": 61,
    "interim_interval": 600, "vendor": 32473,
    "servers": [
        {"address": "192.0.2.10:1813", "active": False, "state": "down", "rtt_ms": None,
         "sent": 1203, "answered": 1180, "retransmissions": 57, "in_flight": 0,
         "socket_buffer": 212992, "send_errors": 3},
        {"address": "192.0.2.11:1813", "active": True, "state": "up", "rtt_ms": 2.71,
         "sent": 17_209, "answered": 17_195, "retransmissions": 4, "in_flight": 5,
         "socket_buffer": 212992, "send_errors": 0},
    ],
}
SYSLOG = {
    "target": "tcp:192.0.2.20:514", "format": "rfc5424", "facility": "local0",
    "connected": True, "queued": 1840, "in_flight": 1840, "sent": 52_310, "resent": 1840,
    "dropped": 0, "buffer": 100_000, "last_error": "", "framing": "octet-counting",
    "stalled": "the collector did not confirm (close its end) within 5 s",
    "connections": 412,
}


async def serve(reactor, portfile):
    # cdrd's default store, in the test's private directory
    store = make_store(f"sqlite:{os.path.dirname(portfile)}/cdrd.sqlite", reactor)
    await store.open()
    reactor.addSystemEventTrigger("before", "shutdown", store.close)
    await store.write(F.batch())
    feed = LiveFeed()
    clock = FixtureClock(reactor, F.t("13:00:00") / 1000)
    users = (
        {USER: auth.hash_password(PASSWORD, n=2**4, r=1, p=1)}
        if "--users" in sys.argv else None
    )
    status = (
        {"radius": lambda: RADIUS, "syslog": lambda: SYSLOG}
        if "--outputs" in sys.argv else None
    )
    web = WebApp(F.config(users=users), store, clock, feed=feed, status=status)
    site = Site(TestRoot(web.resource(), store, feed, clock))
    port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        site
    )
    with open(portfile + ".tmp", "w") as f:
        f.write(str(port.getHost().port))
    os.rename(portfile + ".tmp", portfile)
    await defer.Deferred()  # until killed


def main():
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    task.react(lambda reactor: defer.ensureDeferred(serve(reactor, sys.argv[1])))


if __name__ == "__main__":
    main()
