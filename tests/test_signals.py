"""
Unit: SIGTERM and SIGINT handled on the reactor's loop (cdrd.signals).

The handler itself writes no log line and takes no lock: it queues the
reactor's own handler, which the loop then runs as before.
"""

from __future__ import annotations

import os
import signal

from twisted.internet.selectreactor import SelectReactor
from twisted.logger import globalLogPublisher

from cdrd.signals import hand_to_the_loop


class Signals:
    """The few calls of the signal module hand_to_the_loop makes, on a dict."""

    def __init__(self, handlers):
        self.handlers = dict(handlers)

    def getsignal(self, number):
        return self.handlers.get(number, signal.SIG_DFL)

    def signal(self, number, handler):
        self.handlers[number] = handler


class Reactor:
    def __init__(self):
        self.queued = []
        self.handled = []

    def callFromThread(self, f, *args):
        self.queued.append((f, args))

    def sigTerm(self, number, frame=None):
        self.handled.append(("term", number))

    def sigInt(self, number, frame=None):
        self.handled.append(("int", number))


def test_the_reactors_handlers_are_replaced_by_ones_that_only_queue_them():
    reactor = Reactor()
    signals = Signals({signal.SIGTERM: reactor.sigTerm, signal.SIGINT: reactor.sigInt})
    assert hand_to_the_loop(reactor, signals) == [signal.SIGTERM, signal.SIGINT]
    signals.handlers[signal.SIGTERM](signal.SIGTERM, None)
    signals.handlers[signal.SIGINT](signal.SIGINT, None)
    assert reactor.handled == []  # nothing ran inside the handler
    for f, args in reactor.queued:
        f(*args)
    assert reactor.handled == [("term", signal.SIGTERM), ("int", signal.SIGINT)]


def test_a_handler_the_reactor_did_not_install_stays():
    reactor = Reactor()

    def debugger(number, frame):
        pass

    signals = Signals({signal.SIGTERM: reactor.sigTerm, signal.SIGINT: debugger})
    assert hand_to_the_loop(reactor, signals) == [signal.SIGTERM]
    assert signals.handlers[signal.SIGINT] is debugger
    # installSignalHandlers=False: nothing of the reactor's to replace
    untouched = Signals({})
    assert hand_to_the_loop(reactor, untouched) == []
    assert untouched.handlers == {}


def test_a_real_sigterm_logs_nothing_in_the_handler_and_stops_the_reactor_from_its_loop():
    reactor = SelectReactor()  # not installed, never run: its queue is read by hand
    events = []
    observer = events.append
    previous = signal.signal(signal.SIGTERM, reactor.sigTerm)
    try:
        assert hand_to_the_loop(reactor) == [signal.SIGTERM]
        globalLogPublisher.addObserver(observer)
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before kill returns
        finally:
            globalLogPublisher.removeObserver(observer)
        signal.signal(signal.SIGTERM, previous)
        assert events == []  # no log line from inside the signal handler
        assert reactor._exitSignal is None
        queued = list(reactor.threadCallQueue)
        assert [(f, args) for f, args, kw in queued] == [(reactor.sigTerm, (signal.SIGTERM,))]
        f, args, kw = queued[0]
        f(*args, **kw)  # what the loop does next: Twisted's handler, as before
        assert reactor._exitSignal == signal.SIGTERM  # twistd re-raises it at exit
    finally:
        signal.signal(signal.SIGTERM, previous)
        reactor.waker.connectionLost(None)  # its pipe's two descriptors
