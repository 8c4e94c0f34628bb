"""
The durable sinks' delivery in a child process (``[outputs] delivery =
"process"``; docs/architecture.md, "Process model").

The outbox is the hand-off.  The ingest path stays in cdrd's process and
commits every durable sink's outbox items with the call's records, as
inline; what reads, sends and confirms them (the RADIUS client, the syslog
target, the CSV files) runs in ``python -m cdrd.outputs.child``, started
here and restarted by a ProcessMonitor if it dies.  The child speaks AMP
over its stdin and stdout:

- cdrd to the child: `Start` (the sinks' settings), `Added` after each
  derived commit (the legs it stopped, the CDRs it wrote), `Stop`;
- the child to cdrd: `Write` (outbox ids its peers confirmed, and the
  Interim-Updates it makes), answered once cdrd's writer committed them:
  the BatchWriter stays the store's only writer; `Status` (each sink's
  status and the RADIUS servers' figures, every STATUS_INTERVAL) and `Log`
  (its log events, re-emitted in cdrd's log).

The child reads the outboxes over a read connection of its own (SQLite's
WAL).  kill -9 of either process loses nothing: what was not confirmed
stays in the outbox, and a new child reads it from the start (at least
once, stable ids), as a restart of cdrd does.
"""

from __future__ import annotations

import os
import pickle
import sys
from base64 import b64decode
from types import SimpleNamespace

import orjson
from twisted.application.service import Service
from twisted.internet import defer, error, protocol
from twisted.logger import Logger, eventFromJSON, globalLogPublisher
from twisted.protocols import amp
from twisted.runner.procmon import ProcessMonitor
from zope.interface import alsoProvides, implementer

from cdrd.interfaces import ICdrSink, ILazyCdrSink, OutboxItem, WriteBatch
from cdrd.outputs import sink_settings
from cdrd.values import CallEnd, LegStop

NAME = "cdrd-outputs"
#: Seconds between the child's looks at its status (sent when it changed).
STATUS_INTERVAL = 0.25
#: Seconds cdrd waits for the child to stop (then it is killed).
STOP_TIMEOUT = 10.0
#: Most outbox ids in one AMP value (each value is at most 64 KiB).
CHUNK = 2000
#: Most leg ids in one `Added` (a leg id is under 100 bytes).
LEGS = 500


# -- the protocol --------------------------------------------------------------


class Start(amp.Command):
    """The sinks to run: a pickle of `ChildSettings`."""

    arguments = [(b"settings", amp.String())]
    response = []


class Added(amp.Command):
    """A derived commit added to these sinks' outboxes."""

    arguments = [(b"sinks", amp.ListOf(amp.Unicode())), (b"legs", amp.ListOf(amp.Unicode())),
                 (b"cdrs", amp.Integer())]
    requiresAnswer = False


class Stop(amp.Command):
    arguments = []
    response = []


class Write(amp.Command):
    """JSON: done [[sink, id], ...], items [[sink, base64 payload, created], ...]."""

    arguments = [(b"done", amp.Unicode()), (b"items", amp.Unicode())]
    response = []


class Status(amp.Command):
    """JSON: {sink: status(), "radius_servers": [...]}."""

    arguments = [(b"status", amp.Unicode())]
    requiresAnswer = False


class Log(amp.Command):
    """One log event (twisted.logger's eventAsJSON)."""

    arguments = [(b"event", amp.Unicode())]
    requiresAnswer = False


def settings_for(config, sinks) -> bytes:
    """What the child needs of the config, for `Start`."""
    return pickle.dumps({
        "sinks": list(sinks),
        "settings": sink_settings(config),
        "database": config.server.database,
        "nice": config.outputs.nice,
    })


# -- cdrd's side -----------------------------------------------------------------


class _ParentAmp(amp.AMP):
    def __init__(self, owner: OutputsProcess):
        super().__init__()
        self.owner = owner

    @Write.responder
    def write(self, done, items):
        batch = WriteBatch(
            outbox_done=[(sink, int(i)) for sink, i in orjson.loads(done)],
            outbox=[OutboxItem(sink, b64decode(p), created=c) for sink, p, c in orjson.loads(items)],
        )
        return defer.maybeDeferred(self.owner.writer.submit, batch).addCallback(lambda _: {})

    @Status.responder
    def status(self, status):
        self.owner.statuses = orjson.loads(status)
        return {}

    @Log.responder
    def log_event(self, event):
        e = eventFromJSON(event)
        e["cdrd_outputs_child"] = True
        globalLogPublisher(e)
        return {}


class _Pipe:
    """The child's stdin as the transport AMP writes to (a process has no peer address)."""

    def __init__(self, process):
        self.process = process

    def write(self, data):
        self.process.write(data)

    def writeSequence(self, data):
        self.process.writeSequence(data)

    def loseConnection(self):
        self.process.closeStdin()

    def getPeer(self):
        return ("process", getattr(self.process, "pid", None))

    getHost = getPeer


class _ChildProcess(protocol.ProcessProtocol):
    """The child's stdio: AMP on 0 and 1, its stderr into cdrd's log."""

    def __init__(self, owner: OutputsProcess, name: str):
        self.owner = owner
        self.name = name
        self.amp = _ParentAmp(owner)
        self.ended = defer.Deferred()
        self.pid = None
        self._err = b""

    def connectionMade(self):
        self.pid = self.transport.pid
        self.amp.makeConnection(_Pipe(self.transport))
        self.owner._connected(self)

    def childDataReceived(self, fd, data):
        if fd == 1:
            self.amp.dataReceived(data)
            return
        self._err += data
        *lines, self._err = self._err.split(b"\n")
        for line in lines:
            self.owner.log.warn("outputs process: {line}", line=line.decode("utf-8", "replace"))

    def processEnded(self, reason):
        try:
            self.amp.connectionLost(reason)
            self.owner._ended(self, reason)
        finally:
            self.ended.callback(None)


class OutputsProcess(ProcessMonitor):
    """
    Runs the child, restarts it when it dies (a ProcessMonitor's backoff),
    and relays: `sink(local)` gives the ICdrSink the CallService writes to.
    """

    minRestartDelay = 0.5
    maxRestartDelay = 5.0
    log = Logger()

    def __init__(self, config, writer, reactor, args=None):
        super().__init__(reactor=reactor)
        self.config = config
        self.writer = writer
        self.sinks: dict[str, RemoteSink] = {}
        self.statuses: dict = {}
        self.child: _ChildProcess | None = None
        self.starts = 0  # children started (tests, the log)
        self._added: tuple[set, list, int] | None = None
        args = args or [sys.executable, "-m", "cdrd.outputs.child"]
        # cwd None: cdrd's own when it starts the child (after twistd's --rundir)
        self.addProcess(NAME, args, env=dict(os.environ), cwd=None)

    def sink(self, local) -> RemoteSink:
        remote = RemoteSink(local, self)
        self.sinks[remote.name] = remote
        return remote

    def radius_figures(self, local_client):
        """What /metrics reads of the RADIUS client (its servers' figures)."""
        return _RadiusFigures(self, local_client)

    # -- the child ---------------------------------------------------------------

    def startProcess(self, name):
        if name in self.protocols:
            return
        process = self._processes[name]
        proto = _ChildProcess(self, name)
        self.protocols[name] = proto
        self.timeStarted[name] = self._clock.seconds()
        try:
            self._reactor.spawnProcess(
                proto, process.args[0], process.args, env=process.env, path=process.cwd,
                childFDs={0: "w", 1: "r", 2: "r"},
            )
        except OSError:
            self.log.failure("outputs process: cannot start {args}", args=process.args)
            self._monitoredProcessExited(name)

    def _connected(self, child: _ChildProcess) -> None:
        self.child = child
        self.starts += 1
        settings = settings_for(self.config, self.sinks)
        child.amp.callRemote(Start, settings=settings).addErrback(
            lambda f: None if self.child is not child else self.log.failure("outputs process: start failed", f)
        )

    def _ended(self, child: _ChildProcess, reason) -> None:
        if self.child is child:
            self.child = None
        syslog = self.statuses.get("syslog")
        if syslog is not None:
            syslog["connected"] = False  # nothing sends meanwhile
        if self.running:
            self.log.warn("outputs process {pid} ended ({why}): restarting it; it reads the outboxes again",
                          pid=child.pid, why=reason.getErrorMessage())
        self._monitoredProcessExited(child.name)

    def stopService(self):
        Service.stopService(self)
        for call in list(self.restart.values()):
            if call.active():
                call.cancel()
        child = self.protocols.get(NAME)
        if child is None:
            return defer.succeed(None)
        return defer.ensureDeferred(self._stop_child(child))

    async def _stop_child(self, child: _ChildProcess):
        timeout = self._clock.callLater(STOP_TIMEOUT, self._kill, child)
        try:
            if self.child is child:
                try:
                    await child.amp.callRemote(Stop)
                except Exception:  # noqa: BLE001 - it ends anyway
                    pass
            child.transport.closeStdin()  # the child's reactor stops on it
            await child.ended
        finally:
            if timeout.active():
                timeout.cancel()

    @staticmethod
    def _kill(child: _ChildProcess) -> None:
        try:
            child.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass

    # -- relaying ------------------------------------------------------------------

    def added(self, sink: str, legs, cdrs: int) -> None:
        """Tell the child once a turn what the derived commits added."""
        if self._added is None:
            self._added = (set(), [], 0)
            self._clock.callLater(0, self._send_added)
        sinks, stopped, count = self._added
        sinks.add(sink)
        stopped.extend(legs)
        self._added = (sinks, stopped, count + cdrs)

    def _send_added(self) -> None:
        (sinks, legs, cdrs), self._added = self._added, None
        child = self.child
        if child is None:
            return  # the next child reads the outboxes from their start
        legs = legs or [""]  # a message even without stopped legs
        for i in range(0, len(legs), LEGS):
            part = [leg for leg in legs[i:i + LEGS] if leg]
            child.amp.callRemote(Added, sinks=sorted(sinks), legs=part, cdrs=cdrs if i == 0 else 0)


@implementer(ICdrSink)
class RemoteSink:
    """
    A durable sink as the CallService sees it: spools as its local (never
    started) twin does, and tells the child what was committed.
    """

    def __init__(self, local, owner: OutputsProcess):
        self.local = local
        self.owner = owner
        self.name = local.name
        self.spool = local.spool
        if ILazyCdrSink.providedBy(local):
            alsoProvides(self, ILazyCdrSink)
            self.spool_facts = local.spool_facts

    def committed(self, outputs):
        if self.name == "radius" and not self.local.config.enabled:
            return
        legs = [o.leg.id for o in outputs if isinstance(o, LegStop)]
        cdrs = sum(len(o.cdrs) for o in outputs if isinstance(o, CallEnd))
        if self.name != "radius" and not cdrs:
            return
        self.owner.added(self.name, legs, cdrs)

    def status(self) -> dict:
        """The child's last report (STATUS_INTERVAL), or the local twin's before the first."""
        status = self.owner.statuses.get(self.name)
        return dict(status) if status is not None else self.local.status()


class _RadiusFigures:
    """The RADIUS servers' counters as /metrics reads them (RadiusClient.servers)."""

    def __init__(self, owner: OutputsProcess, local_client):
        self.owner = owner
        self.local = local_client

    @property
    def servers(self):
        relayed = self.owner.statuses.get("radius_servers")
        if relayed is None:
            return self.local.servers
        return [SimpleNamespace(**s) for s in relayed]
