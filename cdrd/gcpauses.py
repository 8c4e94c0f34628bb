"""
Python's cyclic garbage collector stops every thread of cdrd while it runs:
the reactor (so every ACK) and the store's writer alike.

A full collection walks every object the collector tracks.  Most of them
are made at start-up and live as long as the process (Twisted, Klein,
Jinja2, prometheus_client, the config): measured under load (100
gateways, 1 000 calls/s), a full collection took ~62 ms, three times in
ten seconds.  ``freeze_when_running`` moves them into the collector's
permanent generation once the reactor runs (``gc.freeze``), so a full
collection walks only what cdrd made since (~4 ms; docs/benchmarks.md,
"Checkpoints and collector pauses").  Nothing frozen is lost: an object
is still freed when its last reference goes; only a reference cycle of
start-up objects that became garbage later would stay.

The daemon and its outputs process also collect young objects less often
(``collect_less_often``: ``THRESHOLDS``).  Python's default, a young
collection every 700 tracked objects made and not yet freed, walks a
busy cdrd's events, calls and batches while they are still in flight, so
they outlive two young collections and reach the old generation, whose
full collections then walk them again: under load at 3 000 calls/s, 1 300
young, 120 middle and 10 full collections in 8 s, 0.8 s of pauses in all
(each full one ~20 ms).  After 50 000, a steady load frees what it makes
before the next collection (none in 8 s at 1 000 calls/s); a backlog that
grows makes one every second or so, ~25 ms, and no full one (5 collections
in 8 s at 3 000 calls/s, 0.13 s; docs/benchmarks.md, "The parse path, the
sender's read-back and the collector", fourteenth session).  What that
costs: garbage in reference cycles waits for up to 50 000 tracked objects
(a few MB) rather than 700 before it is freed.

``PAUSES`` counts each collection's pause by generation, for
``cdrd_gc_pause_seconds``.  The callback runs in whichever thread made
the allocation that started the collection, inside that allocation: it
takes no lock and makes nothing but a float (prometheus_client's
histograms take a lock, which that thread may already hold), and the
collector reads the plain counts at scrape time.
"""

from __future__ import annotations

import bisect
import gc
import itertools
import time

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

#: seconds: a young collection is well under a millisecond, a full one
#: of an unfrozen process tens of milliseconds
PAUSE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
GENERATIONS = 3


class GcPauses:
    """The collector's pauses, counted per generation into `buckets` (a prometheus_client collector)."""

    def __init__(self, clock=time.perf_counter, buckets=PAUSE_BUCKETS):
        self.clock = clock
        self.buckets = tuple(buckets)
        self._counts = [[0] * (len(self.buckets) + 1) for _ in range(GENERATIONS)]
        self._sums = [0.0] * GENERATIONS
        self._began: float | None = None

    def install(self) -> None:
        if self.callback not in gc.callbacks:
            gc.callbacks.append(self.callback)

    def uninstall(self) -> None:
        if self.callback in gc.callbacks:
            gc.callbacks.remove(self.callback)

    def callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._began = self.clock()
            return
        if self._began is None:
            return  # installed during a collection
        seconds = self.clock() - self._began
        self._began = None
        generation = info["generation"]
        self._sums[generation] += seconds
        self._counts[generation][bisect.bisect_left(self.buckets, seconds)] += 1

    def collect(self):
        pauses = HistogramMetricFamily(
            "cdrd_gc_pause_seconds",
            "Pauses of Python's garbage collector (every thread waits), by generation (2: a full collection)",
            labels=["generation"],
        )
        for generation in range(GENERATIONS):
            counts = list(itertools.accumulate(self._counts[generation]))
            buckets = [(repr(float(b)), n) for b, n in zip(self.buckets, counts[:-1], strict=True)]
            buckets.append(("+Inf", counts[-1]))
            pauses.add_metric([str(generation)], buckets, sum_value=self._sums[generation])
        yield pauses
        yield GaugeMetricFamily(
            "cdrd_gc_frozen_objects",
            "Objects made before the reactor ran, moved out of the collector's reach (gc.freeze)",
            value=gc.get_freeze_count(),
        )


#: the process's one set of counts (gc.callbacks is the process's)
PAUSES = GcPauses()

#: gc.set_threshold in the daemon and its outputs process: a young
#: collection after 50 000 tracked objects made and not freed (Python's
#: default 700), the middle one after 20 young ones (10), a full one after
#: 10 middle ones, as by default (and then only if the old generation grew
#: by a quarter: Python's own rule)
THRESHOLDS = (50_000, 20, 10)


def collect_less_often() -> None:
    """The collector's `THRESHOLDS` for this process (the daemon's, its
    outputs process's: a process of cdrd's own, never the tests')."""
    gc.set_threshold(*THRESHOLDS)


def freeze_when_running(reactor) -> None:
    """Count the collector's pauses from now on, collect less often, and
    freeze what start-up made once the reactor runs (the daemon only: tests
    build many services in one process, and what they freeze would never
    be collected)."""
    PAUSES.install()
    collect_less_often()
    reactor.callWhenRunning(gc.freeze)
