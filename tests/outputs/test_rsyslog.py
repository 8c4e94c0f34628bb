"""
Integration: the SyslogSink against a real rsyslog started here (imudp,
imtcp, imuxsock on private loopback ports and sockets), its omfile read
back: every CDR line once, in stack order, with facility, severity,
hostname, app-name and MSGID; over UDP, TCP and the local socket; after
rsyslog restarts; and across a collector that hangs and is killed.  The
sink runs over cdrd's own MemoryStore and BatchWriter, as cdrd wires it.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from cdrd.config import SyslogConfig
from cdrd.interfaces import OutboxItem, WriteBatch
from cdrd.outputs.syslog import SyslogSink
from cdrd.store.memory import MemoryStore
from cdrd.store.writer import BatchWriter
from tests.outputs.cdrs import numbered
from tests.outputs.rsyslog import Rsyslog

pytestmark = pytest.mark.integration


@pytest.fixture
def rsyslog(tmp_path):
    server = Rsyslog(tmp_path / "rsyslog")
    server.start()
    yield server
    server.stop()


async def until(predicate, timeout=20.0, step=0.05):
    for _ in range(int(timeout / step)):
        if predicate():
            return True
        await task.deferLater(reactor, step, lambda: None)
    return predicate()


class Outbox:
    """cdrd's MemoryStore and BatchWriter on the real reactor."""

    def __init__(self):
        self.store = MemoryStore()
        self.store.open()
        self.writer = BatchWriter(self.store, reactor)
        self.writer.startService()

    @property
    def depth(self) -> int:
        """CDR lines in the syslog outbox (MemoryStore answers at once)."""
        result = []
        self.store.outbox_stats("syslog").addCallback(result.append)
        return result[0][0]

    async def close(self):
        await self.writer.stopService()


def sink_for(target, **kw):
    outbox = Outbox()
    cfg = SyslogConfig(target=target, hostname="pbx-test", **kw)
    sink = SyslogSink(cfg, outbox.store, outbox.writer, reactor, reactor)
    return sink, outbox


async def commit(sink, outbox, outputs):
    """What the CallService does: the CDRs and their outbox items in one
    transaction through the writer, then committed()."""
    now = int(reactor.seconds() * 1000)
    await outbox.writer.submit(WriteBatch(
        records=[o.record for o in outputs],
        cdrs=[c for o in outputs for c in o.cdrs],
        outbox=[OutboxItem("syslog", p, now) for p in sink.spool(outputs, now)],
    ))
    sink.committed(outputs)


def expected(outputs):
    """(id, line) of every CDR, in written order."""
    return [(c.id, c.line) for o in outputs for c in o.cdrs]


def rfc5424_seen(rsyslog, facility):
    recs = rsyslog.cdr_records()
    for r in recs:
        assert r[:5] == [facility, "info", "pbx-test", "cdrd", "-"], r
    return [(r[5], r[6]) for r in recs]


def rfc3164_seen(rsyslog, facility, hostname):
    recs = rsyslog.cdr_records()
    for r in recs:
        assert r[:4] == [facility, "info", hostname, "cdrd"], r
        assert r[5] == "-" and r[6].startswith(" "), r
    # the CDR id rides in the tag's brackets: rsyslog's procid
    return [(r[4], r[6][1:]) for r in recs]


@pytest_twisted.ensureDeferred
async def test_udp_every_line_once_in_order(rsyslog):
    sink, store = sink_for(f"udp:127.0.0.1:{rsyslog.udp}", facility="local3")
    sink.startService()
    try:
        outputs = []
        for batch in range(5):
            calls = numbered(batch * 30, 30)
            outputs += calls
            await commit(sink, store, calls)
        want = expected(outputs)
        assert len(want) == 150
        assert await until(lambda: len(rsyslog.cdr_records()) >= 150)
        await until(lambda: store.depth == 0)
    finally:
        await sink.stopService()
        await store.close()
    assert rfc5424_seen(rsyslog, "local3") == want
    assert store.depth == 0
    assert sink.status()["sent"] == 150 and sink.status()["dropped"] == 0


@pytest_twisted.ensureDeferred
async def test_tcp_octet_counting_survives_an_rsyslog_restart(rsyslog):
    sink, store = sink_for(f"tcp:127.0.0.1:{rsyslog.tcp}")
    sink.startService()
    try:
        assert await until(lambda: sink.status()["connected"])
        before = numbered(0, 200)
        await commit(sink, store, before)
        assert await until(lambda: len(rsyslog.cdr_records()) >= 200)
        assert await until(lambda: store.depth == 0)  # written and confirmed

        rsyslog.stop()
        assert await until(lambda: not sink.status()["connected"])
        during = numbered(200, 100)
        await commit(sink, store, during)
        await task.deferLater(reactor, 1.5, lambda: None)
        assert store.depth == 100  # waiting in the outbox, nothing lost
        assert sink.status()["queued"] == 100

        rsyslog.start()
        assert await until(lambda: len(rsyslog.cdr_records()) >= 300, timeout=40)
        assert await until(lambda: store.depth == 0)
        assert sink.status()["connected"]
    finally:
        await sink.stopService()
        await store.close()
    seen = rfc5424_seen(rsyslog, "local0")
    assert seen == expected(before + during)


@pytest_twisted.ensureDeferred
async def test_tcp_a_hung_collector_then_killed_loses_no_line(rsyslog):
    """rsyslog hangs (SIGSTOP): its kernel still accepts and ACKs what cdrd
    writes, which sits unread in its socket; it is then killed (-9) and
    started again.  Nothing written to the hung collector counts as
    delivered: every line arrives, in order (at least once)."""
    sink, store = sink_for(f"tcp:127.0.0.1:{rsyslog.tcp}")
    sink.target.close_timeout = 1.0  # the default 5 s, shortened for the test
    sink.startService()
    try:
        assert await until(lambda: sink.status()["connected"])
        before = numbered(0, 99)
        await commit(sink, store, before)
        assert await until(lambda: len(rsyslog.cdr_records()) >= 99)
        assert await until(lambda: store.depth == 0)

        rsyslog.process.send_signal(signal.SIGSTOP)
        during = []
        for first in range(99, 399, 30):  # lines keep coming during the hang
            calls = numbered(first, 30)
            during += calls
            await commit(sink, store, calls)
            await task.deferLater(reactor, 0.1, lambda: None)
        assert await until(lambda: sink.status()["stalled"], timeout=10)
        status = sink.status()
        assert store.depth == 300 and status["queued"] == 300  # none confirmed
        assert "did not confirm" in status["stalled"]

        rsyslog.process.send_signal(signal.SIGKILL)  # a watchdog kills it
        rsyslog.process.wait(10)
        rsyslog.process = None
        rsyslog.start()
        assert await until(lambda: store.depth == 0, timeout=60)
        assert sink.status()["stalled"] == ""
    finally:
        await sink.stopService()
        await store.close()
    seen = rfc5424_seen(rsyslog, "local0")
    want = expected(before + during)
    assert list(dict.fromkeys(seen)) == want
    assert set(seen) == set(want)


@pytest_twisted.ensureDeferred
async def test_tcp_lf_framing_rfc3164(rsyslog):
    sink, store = sink_for(
        f"tcp:127.0.0.1:{rsyslog.tcp}", format="rfc3164", framing="lf", facility="local7"
    )
    sink.startService()
    try:
        outputs = numbered(0, 40)
        await commit(sink, store, outputs)
        assert await until(lambda: len(rsyslog.cdr_records()) >= 40)
        assert await until(lambda: store.depth == 0)
    finally:
        await sink.stopService()
        await store.close()
    assert rfc3164_seen(rsyslog, "local7", "pbx-test") == expected(outputs)


@pytest_twisted.ensureDeferred
async def test_local_socket_default_format_survives_an_rsyslog_restart(rsyslog):
    # log.sock parses as Debian's /dev/log does: syslog(3)'s format
    store = Outbox()
    sink = SyslogSink(
        SyslogConfig(target=f"unix:{rsyslog.socket}", facility="local1"),
        store.store, store.writer, reactor, reactor,
    )
    assert sink.status()["format"] == "rfc3164"
    sink.startService()
    try:
        before = numbered(0, 30)
        await commit(sink, store, before)
        assert await until(lambda: len(rsyslog.cdr_records()) >= 30)
        assert await until(lambda: store.depth == 0)

        rsyslog.stop()
        during = numbered(30, 30)
        await commit(sink, store, during)
        assert await until(lambda: sink.status()["last_error"] != "")
        assert store.depth == 30
        assert not sink.status()["connected"]

        rsyslog.start()
        assert await until(lambda: len(rsyslog.cdr_records()) >= 60, timeout=30)
        assert await until(lambda: store.depth == 0)
    finally:
        await sink.stopService()
        await store.close()
    # no hostname on the local socket: the daemon puts its own
    hostname = rsyslog.cdr_records()[0][2]
    assert hostname and hostname != "pbx-test"
    assert rfc3164_seen(rsyslog, "local1", hostname) == expected(before + during)


@pytest_twisted.ensureDeferred
async def test_local_socket_rfc5424(rsyslog):
    sink, store = sink_for(f"unix:{rsyslog.socket5424}", format="rfc5424", facility="local2")
    sink.startService()
    try:
        outputs = numbered(0, 25)
        await commit(sink, store, outputs)
        assert await until(lambda: len(rsyslog.cdr_records()) >= 25)
        assert await until(lambda: store.depth == 0)
    finally:
        await sink.stopService()
        await store.close()
    assert rfc5424_seen(rsyslog, "local2") == expected(outputs)


# -- kill -9 -------------------------------------------------------------------


def run_sink(db, target, *args):
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.outputs.sink_process", str(db), target, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    line = proc.stdout.readline()
    if line != b"ready\n":
        proc.kill()
        raise AssertionError(f"sink process did not start: {line!r} {proc.stderr.read()!r}")
    return proc


def kill9(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def outbox_depth(db):
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM outbox WHERE sink = 'syslog'").fetchone()[0]


@pytest_twisted.ensureDeferred
async def test_kill_9_loses_no_line(rsyslog, tmp_path):
    """CDRs stored with their outbox items while rsyslog is down, cdrd
    killed -9, rsyslog up, cdrd again: every line arrives, in order, once."""
    db = tmp_path / "cdrd.sqlite"
    target = f"tcp:127.0.0.1:{rsyslog.tcp}"
    rsyslog.stop()
    first = run_sink(db, target, "--spool", "0", "60")
    try:
        await task.deferLater(reactor, 0.5, lambda: None)
    finally:
        kill9(first)
    assert outbox_depth(db) == 60
    rsyslog.start()
    second = run_sink(db, target)
    try:
        assert await until(lambda: len(rsyslog.cdr_records()) >= 60, timeout=30)
        assert await until(lambda: outbox_depth(db) == 0, timeout=10)
    finally:
        kill9(second)
    assert rfc5424_seen(rsyslog, "local0") == expected(numbered(0, 60))
