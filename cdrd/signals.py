"""
SIGTERM and SIGINT, handled on the reactor's loop, not in the signal handler.

Twisted's own handlers (``reactor.sigTerm``, ``reactor.sigInt``) write
"Received SIGTERM, shutting down." to the log from inside the Python
signal handler.  A signal handler runs between two bytecodes of whatever
the main thread was doing.  When that was a log write, the thread is
inside the log file's lock: ``twisted.python.threadable`` makes it a
pure-Python RLock, which takes its inner lock one bytecode before it
records its owner.  A signal landing between the two makes the handler's
own log write wait on a lock its thread holds, for ever: cdrd hung on
SIGTERM under a gateway's log lines (CI, tests/integration/
test_flood_log.py, 2026-12-06), until its supervisor killed it and the
last seconds' in-memory counts were lost.

``hand_to_the_loop`` replaces the reactor's two handlers once they are
installed with ones that only queue them with ``callFromThread`` (a list
append and a byte on the reactor's waker pipe: no lock, no log).  The
reactor then runs its own handler from the loop, so the log line, the
clean stop and twistd's re-raised signal are Twisted's as before.
"""

from __future__ import annotations

import signal

#: the signals whose reactor handlers log: (signal, the reactor's handler's name)
HANDLED = ((signal.SIGTERM, "sigTerm"), (signal.SIGINT, "sigInt"))


def deferred_handler(reactor, name: str):
    """A signal handler that runs ``reactor.<name>(number)`` from the reactor's loop."""
    def handler(number, frame):
        reactor.callFromThread(getattr(reactor, name), number)
    handler.__qualname__ = f"deferred {name}"
    return handler


def hand_to_the_loop(reactor, signals=signal) -> list[int]:
    """
    Replace each handler the reactor installed (``HANDLED``) by
    `deferred_handler`; a handler someone else installed (a debugger's
    SIGINT) stays.  Call it once the reactor runs (``callWhenRunning``):
    the reactor installs its handlers as it starts.  Returns the signals
    replaced.
    """
    replaced = []
    for number, name in HANDLED:
        if signals.getsignal(number) == getattr(reactor, name):
            signals.signal(number, deferred_handler(reactor, name))
            replaced.append(number)
    return replaced
