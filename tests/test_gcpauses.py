"""
Unit: the garbage collector's pauses as cdrd_gc_pause_seconds (cdrd.gcpauses),
counted from gc.callbacks without a lock, and the frozen start-up objects.
"""

from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.testing import MemoryReactorClock

from cdrd import gcpauses
from cdrd.gcpauses import GcPauses


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def samples(collector) -> dict:
    registry = CollectorRegistry()
    registry.register(collector)
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def pause(pauses: GcPauses, clock: Clock, generation: int, seconds: float) -> None:
    pauses.callback("start", {"generation": generation})
    clock.now += seconds
    pauses.callback("stop", {"generation": generation, "collected": 0, "uncollectable": 0})


def test_each_pause_lands_in_its_generation_and_bucket():
    clock = Clock()
    # binary fractions: the clock's arithmetic is exact
    pauses = GcPauses(clock=clock, buckets=(0.25, 0.5, 1.0))
    pause(pauses, clock, 0, 0.125)
    pause(pauses, clock, 0, 0.25)  # on a bound: that bucket (le)
    pause(pauses, clock, 2, 0.75)
    pause(pauses, clock, 2, 2.0)   # above every bound: +Inf only
    got = samples(pauses)
    bucket = "cdrd_gc_pause_seconds_bucket"
    assert got[(bucket, (("generation", "0"), ("le", "0.25")))] == 2
    assert got[(bucket, (("generation", "0"), ("le", "+Inf")))] == 2
    assert got[("cdrd_gc_pause_seconds_count", (("generation", "0"),))] == 2
    assert got[(bucket, (("generation", "2"), ("le", "0.5")))] == 0
    assert got[(bucket, (("generation", "2"), ("le", "1.0")))] == 1
    assert got[(bucket, (("generation", "2"), ("le", "+Inf")))] == 2
    assert got[("cdrd_gc_pause_seconds_sum", (("generation", "2"),))] == 2.75
    assert got[("cdrd_gc_pause_seconds_count", (("generation", "1"),))] == 0
    assert got[("cdrd_gc_frozen_objects", ())] == gc.get_freeze_count()


def test_a_stop_without_its_start_counts_nothing():
    # installed while a collection ran: its end alone is no pause
    clock = Clock()
    pauses = GcPauses(clock=clock)
    pauses.callback("stop", {"generation": 2, "collected": 0, "uncollectable": 0})
    assert samples(pauses)[("cdrd_gc_pause_seconds_count", (("generation", "2"),))] == 0


def test_installed_it_counts_real_collections_once_and_uninstalls():
    pauses = GcPauses()
    pauses.install()
    pauses.install()  # once: a second install adds no second callback
    try:
        assert gc.callbacks.count(pauses.callback) == 1
        gc.collect(2)
        gc.collect(0)
    finally:
        pauses.uninstall()
    assert pauses.callback not in gc.callbacks
    got = samples(pauses)
    assert got[("cdrd_gc_pause_seconds_count", (("generation", "2"),))] >= 1
    assert got[("cdrd_gc_pause_seconds_count", (("generation", "0"),))] >= 1
    gc.collect(2)
    assert samples(pauses)[("cdrd_gc_pause_seconds_count", (("generation", "2"),))] == \
        got[("cdrd_gc_pause_seconds_count", (("generation", "2"),))]


def test_the_daemon_freezes_once_the_reactor_runs(monkeypatch):
    frozen = []
    monkeypatch.setattr(gcpauses.gc, "freeze", lambda: frozen.append(True))
    monkeypatch.setattr(gcpauses, "PAUSES", GcPauses())
    reactor = MemoryReactorClock()
    thresholds = gc.get_threshold()
    gcpauses.freeze_when_running(reactor)
    try:
        assert gcpauses.PAUSES.callback in gc.callbacks
        assert frozen == []  # not while start-up still builds
        reactor.run()
        assert frozen == [True]
    finally:
        gcpauses.PAUSES.uninstall()
        gc.set_threshold(*thresholds)  # the daemon's, not the tests' that follow


def _young_collections(make: int) -> int:
    """Young collections while `make` tracked objects are made and kept."""
    seen = []

    def count(phase, info):
        if phase == "start" and info["generation"] == 0:
            seen.append(1)

    gc.collect()
    gc.callbacks.append(count)
    try:
        kept = [[] for _ in range(make)]
    finally:
        gc.callbacks.remove(count)
    assert len(kept) == make
    return len(seen)


def test_the_daemon_collects_young_objects_less_often(monkeypatch):
    # freeze_when_running (the daemon's start-up, and collect_less_often in
    # its outputs process) sets THRESHOLDS: objects in flight are not
    # walked every 700 made (Python's default)
    monkeypatch.setattr(gcpauses.gc, "freeze", lambda: None)
    monkeypatch.setattr(gcpauses, "PAUSES", GcPauses())
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        assert _young_collections(20_000) >= 20
        gcpauses.freeze_when_running(MemoryReactorClock())
        assert gc.get_threshold() == gcpauses.THRESHOLDS
        assert _young_collections(20_000) == 0
    finally:
        gc.set_threshold(*before)
        gcpauses.PAUSES.uninstall()
