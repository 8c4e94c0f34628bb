"""
``[outputs] delivery = "process"``: the setting, and the AMP between cdrd
(cdrd.outputs.process) and its outputs process (cdrd.outputs.child) over an
in-memory connection (twisted.test.iosim), with cdrd's real BatchWriter on
a MemoryStore.  The child process itself, kill -9 included, is in
tests/integration/test_outputs_process.py.
"""

from __future__ import annotations

import json
import pickle

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.test.iosim import connectedServerAndClient

from cdrd import config as C
from cdrd.accounting.service import AccountingService
from cdrd.interfaces import ILazyCdrSink, OutboxItem, WriteBatch
from cdrd.outputs import durable_sink, sink_settings
from cdrd.outputs.child import ChildAmp, RemoteWriter, _Relay
from cdrd.outputs.process import OutputsProcess, _ParentAmp
from cdrd.store.memory import MemoryStore
from cdrd.store.writer import BatchWriter

RADIUS = {"radius": {"servers": [{"address": "127.0.0.1:1813", "secret": "s"}]}}


# -- the setting ------------------------------------------------------------------


def test_delivery_is_inline_by_default_and_takes_process():
    assert C.parse({}).outputs.delivery == "inline"
    config = C.parse({"outputs": {"delivery": "process"}, "server": {"database": "sqlite:/tmp/x.sqlite"}})
    assert config.outputs.delivery == "process"


def test_a_bad_delivery_names_the_setting():
    with pytest.raises(C.ConfigError, match=r'^outputs\.delivery: .thread. is not "inline" or "process"$'):
        C.parse({"outputs": {"delivery": "thread"}})


def test_the_child_is_nice_10_by_default_and_takes_0_to_19():
    assert C.parse({}).outputs.nice == 10
    assert C.parse({"outputs": {"nice": 0}}).outputs.nice == 0
    assert C.parse({"outputs": {"nice": 19}}).outputs.nice == 19


@pytest.mark.parametrize(("value", "error"), [
    (20, r"^outputs\.nice: 20 is above 19 \(19 is the lowest priority\)$"),
    (-1, r"^outputs\.nice: -1 is below 0"),
])
def test_a_bad_nice_names_the_setting(value, error):
    with pytest.raises(C.ConfigError, match=error):
        C.parse({"outputs": {"nice": value}})


@pytest.mark.parametrize("database", ["postgresql://cdrd@127.0.0.1/cdrd", "memory:", "sqlite::memory:"])
def test_process_needs_a_sqlite_file(database):
    with pytest.raises(C.ConfigError, match=r'^outputs\.delivery: "process" needs a SQLite file'):
        C.parse({"outputs": {"delivery": "process"}, "server": {"database": database}})


# -- the sinks the child builds ------------------------------------------------------


def test_the_child_builds_the_sinks_cdrd_would_from_the_settings_it_is_sent(tmp_path):
    from cdrd.outputs.csvfile import CsvFileSink
    from cdrd.outputs.syslog import SyslogSink

    config = C.parse({**RADIUS, "syslog": {"target": "udp:127.0.0.1:514"}, "csv": {"directory": str(tmp_path)},
                      "server": {"timezone": "Europe/London"}})
    settings = pickle.loads(pickle.dumps(sink_settings(config)))  # as Start carries it
    assert settings["radius"] == config.radius
    clock = Clock()
    built = {name: durable_sink(name, settings, None, None, clock) for name in ("radius", "syslog", "csv")}
    assert [type(s) for s in built.values()] == [AccountingService, SyslogSink, CsvFileSink]
    assert [s.name for s in built.values()] == ["radius", "syslog", "csv"]
    with pytest.raises(ValueError, match="no durable sink is named 'kafka'"):
        durable_sink("kafka", settings, None, None, clock)


# -- the AMP between the two processes ----------------------------------------------


class Recorder:
    """A child-side sink: what cdrd told it."""

    def __init__(self, name):
        self.name = name
        self.running = True
        self.polls = 0
        self.stopped_legs = []
        self._stored = 0

    def poll(self):
        self.polls += 1

    def _leg_stopped(self, leg):
        self.stopped_legs.append(leg)

    def status(self):
        return {"sent": self.polls}


def pair(store):
    """cdrd's side and the child's, connected in memory; `pump.flush()` moves the bytes."""
    clock = Clock()
    config = C.parse({**RADIUS, "server": {"database": "sqlite:/tmp/x.sqlite"}, "outputs": {"delivery": "process"}})
    writer = BatchWriter(store, clock)
    owner = OutputsProcess(config, writer, clock)
    parent, child, pump = connectedServerAndClient(lambda: ChildAmp(clock), lambda: _ParentAmp(owner))
    return owner, parent, child, pump, clock


def settle(pump, clock):
    for _ in range(5):
        pump.flush()
        clock.advance(0)
    pump.flush()


def outbox(store, sink):
    return store.outbox(sink, 0, 10).result


def test_the_childs_writes_are_committed_by_cdrds_writer():
    store = MemoryStore()
    store.open()
    store.write(WriteBatch(outbox=[OutboxItem("radius", b"one", created=1), OutboxItem("syslog", b"two", created=1)]))
    [one] = outbox(store, "radius")
    owner, parent, child, pump, clock = pair(store)
    done = RemoteWriter(child).submit(WriteBatch(
        outbox_done=[("radius", one.id)], outbox=[OutboxItem("radius", b"\x00interim\xff", created=5)]))
    settle(pump, clock)
    assert done.called
    [interim] = outbox(store, "radius")
    assert (interim.payload, interim.created) == (b"\x00interim\xff", 5)
    assert [i.payload for i in outbox(store, "syslog")] == [b"two"]


def test_a_write_that_fails_in_cdrd_fails_in_the_child():
    class Refusing(MemoryStore):
        def write(self, batch):
            raise OSError("disk full")

    owner, parent, child, pump, clock = pair(Refusing())
    done = RemoteWriter(child).submit(WriteBatch(outbox_done=[("radius", 1)]))
    failures = []
    done.addErrback(failures.append)
    settle(pump, clock)
    assert failures  # the child's OutboxConsumer keeps the ids and retries


def test_added_tells_the_childs_sinks_once_a_turn():
    owner, parent, child, pump, clock = pair(MemoryStore())
    owner.child = type("Child", (), {"amp": parent})()
    radius, syslog = Recorder("radius"), Recorder("syslog")
    child.sinks = {"radius": radius, "syslog": syslog}
    owner.added("radius", ["leg/1"], 0)
    owner.added("syslog", [], 2)
    owner.added("radius", ["leg/2"], 0)
    settle(pump, clock)
    assert radius.stopped_legs == ["leg/1", "leg/2"] and radius.polls == 1
    assert syslog._stored == 2 and syslog.polls == 1


def test_the_status_reaches_the_remote_sinks_and_metrics():
    owner, parent, child, pump, clock = pair(MemoryStore())
    local = AccountingService(owner.config.radius, None, None, clock, clock)
    remote = owner.sink(local)
    assert ILazyCdrSink.providedBy(remote)
    assert remote.status()["spool_depth"] == 0  # the local twin's until the child reports
    figures = owner.radius_figures(local.client)
    child_radius = AccountingService(owner.config.radius, None, None, clock, clock)
    child_radius.stats_read = True
    child_radius._stats = (7, None)
    child_radius.client.servers[0].answered = 3
    child.sinks = {"radius": child_radius}
    child.report()
    settle(pump, clock)
    assert remote.status()["spool_depth"] == 7
    [server] = figures.servers
    assert (server.host, server.port, server.answered) == ("127.0.0.1", 1813, 3)


def test_no_status_before_the_outbox_figures_are_read():
    owner, parent, child, pump, clock = pair(MemoryStore())
    remote = owner.sink(AccountingService(owner.config.radius, None, None, clock, clock))
    child_radius = AccountingService(owner.config.radius, None, None, clock, clock)
    child_radius._stats = (0, None)  # not read yet: a depth of 0 would be a lie
    child.sinks = {"radius": child_radius}
    child.report()
    settle(pump, clock)
    assert owner.statuses == {}
    assert remote.status()["spool_depth"] == 0


def test_the_childs_log_events_reach_cdrds_log():
    owner, parent, child, pump, clock = pair(MemoryStore())
    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        relay = _Relay(child)
        relay({"log_format": "RADIUS server {server} not answering", "server": "127.0.0.1:1813",
               "log_level": LogLevel.warn,
               "log_namespace": "cdrd.accounting.client.RadiusClient", "log_time": 1.0})
        settle(pump, clock)
    finally:
        globalLogPublisher.removeObserver(seen.append)
    relayed = [e for e in seen if e.get("cdrd_outputs_child")]
    assert len(relayed) == 1
    e = relayed[0]
    assert e["log_namespace"] == "cdrd.accounting.client.RadiusClient" and e["log_level"].name == "warn"
    assert json.loads(json.dumps(e["server"])) == "127.0.0.1:1813"



def test_build_service_wires_the_remote_sinks_and_the_process():
    from cdrd.outputs.process import RemoteSink
    from cdrd.service import build_service

    config = C.parse({**RADIUS, "syslog": {"target": "tcp:127.0.0.1:514"},
                      "server": {"database": "sqlite:/tmp/x.sqlite"}, "outputs": {"delivery": "process"}})
    root = build_service(config, Clock(), store=MemoryStore())
    durable = [s for s in root.calls.sinks if s.name in ("radius", "syslog")]
    assert [type(s) for s in durable] == [RemoteSink, RemoteSink]
    [process] = [s for s in root if isinstance(s, OutputsProcess)]
    assert set(process.sinks) == {"radius", "syslog"}
    assert not any(isinstance(s, (AccountingService, RemoteSink)) for s in root)  # nothing delivers in cdrd
    inline = build_service(C.parse({**RADIUS}), Clock(), store=MemoryStore())
    assert not any(isinstance(s, OutputsProcess) for s in inline)
