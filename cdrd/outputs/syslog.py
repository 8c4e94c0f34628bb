"""
SyslogSink: every CDR that cdrd writes, as one syslog message, an ICdrSink
named "syslog" (docs/outputs.md).

The CallService stores `spool()`'s payloads in the "syslog" outbox in the
same transaction as the CDRs, then calls `committed()`.  The sink reads the
outbox in id order into a small in-memory window, sends, and deletes what
was sent (batched deletions through the writer).  A restart, or kill -9,
reads the outbox again from the start: no CDR line is lost, some may be sent
twice (consumers deduplicate on the MSGID, the CDR id).

- Datagram targets (unix, UDP): an item is deleted once the kernel took it.
- TCP: an item is deleted once the collector confirmed it: `confirm_after`
  seconds after the first write on a connection (or at `max_unconfirmed`
  lines) the sink half-closes it, and the collector's clean close proves it
  read every byte (transports.TcpTarget).  A reset, or no close in time,
  confirms nothing: what was written is sent again, first, on the next
  connection: in order, at least once.
- The outbox is bounded at `config.buffer` CDRs: beyond it the oldest unsent
  lines are deleted unsent, counted in status()["dropped"] and logged.
  Syslog is a log; the store and RADIUS are the records of truth.

Nothing here blocks: the store and the writer return Deferreds, datagram
sends are non-blocking, TCP writes respect the transport's backpressure, and
a burst is sent `turn` messages per reactor turn (over TCP in one write).
"""

from __future__ import annotations

import socket
from collections import deque

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from cdrd.config import SYSLOG_FACILITIES, SyslogConfig
from cdrd.interfaces import ICdrSink
from cdrd.outputs import messages
from cdrd.outputs.messages import CdrEntry
from cdrd.outputs.transports import MessageTooLong, make_target
from cdrd.store.outbox import OutboxConsumer
from cdrd.values import CallEnd

SINK = "syslog"


@implementer(ICdrSink)
class SyslogSink(Service):
    """CDR lines to a syslog target (unix:PATH, udp:HOST:PORT, tcp:HOST:PORT)."""

    name = SINK
    log = Logger()

    #: CDRs read ahead from the outbox, not yet sent.
    window = 1000
    #: TCP: messages written on one connection before the collector is asked
    #: to confirm them (and the most that wait, written, for a confirmation).
    max_unconfirmed = 20_000
    #: Messages sent per reactor turn before yielding to other work.
    turn = 256
    #: TCP: seconds after a connection's first line before the collector is
    #: asked to confirm (a line waits about this long before deletion).
    confirm_after = 0.5
    #: Datagram targets: seconds between two turns, so a burst (after an
    #: outage, at start) does not overrun the collector's socket buffer:
    #: at most turn / datagram_pause = 25 600 lines/s.
    datagram_pause = 0.01
    #: Datagram targets: retry delays after a refused send (a full receive
    #: queue is retried almost at once, a missing daemon backs off to 5 s).
    retry_initial = 0.005
    retry_max = 5.0
    #: Seconds between re-reads of the outbox depth (it is counted in between).
    resync_interval = 30.0
    #: Seconds between two warnings about dropped lines.
    drop_report_interval = 60.0

    def __init__(self, config: SyslogConfig, store, writer, clock, reactor, target=None):
        if not config.target and target is None:
            raise ValueError("syslog.target is not set")
        self.config = config
        self.store = store
        self.writer = writer
        self.clock = clock
        self.reactor = reactor
        self.facility = SYSLOG_FACILITIES[config.facility]
        self.hostname = config.hostname or socket.gethostname()
        self.target = target if target is not None else make_target(config.target, reactor, clock)
        self._pending: deque[tuple[int, CdrEntry]] = deque()
        self._unconfirmed: deque[tuple[int, float, CdrEntry]] = deque()
        # the outbox's reading and batched deletions; the policy is here
        self.outbox = OutboxConsumer(SINK, store, writer, clock, received=self._read, retry=self._pump)
        self._stored = 0  # outbox depth, counted (resynced every resync_interval)
        self._started = False  # the outbox depth is known, the target started
        self._stopping = False
        self._wake_call = None
        self._confirm_call = None
        self._retry_delay = self.retry_initial
        self._resync: task.LoopingCall | None = None
        self._drops_reported = 0
        self._drop_report_at: float | None = None
        self._run = 0  # startService calls: results of an older run are ignored
        self._refusing = False
        self.sent = 0
        self.resent = 0
        self.dropped = 0
        self.unreadable = 0

    # -- ICdrSink -------------------------------------------------------------------

    def spool(self, outputs, now):
        """Pure: one payload per CDR, in written order (CdrEntry.to_bytes)."""
        return [entry.to_bytes() for entry in messages.spool(outputs)]

    def poll(self):
        """Another cdrd node may have added to the outbox: read on (cdrd.cluster)."""
        self.outbox.added()
        self._pump()

    def committed(self, outputs):
        count = sum(len(o.cdrs) for o in outputs if isinstance(o, CallEnd))
        if not count:
            return
        self._stored += count
        self.outbox.added()
        self._pump()

    # -- the message ------------------------------------------------------------------

    def message(self, entry: CdrEntry) -> bytes:
        """The syslog message of one CDR, framed for the target."""
        if self.config.message_format == "rfc3164":
            # syslog(3) sends no hostname on the local socket; the daemon adds it
            local = self.target.description.startswith("unix:")
            hostname = None if local and self.config.hostname is None else self.hostname
            msg = messages.rfc3164(entry, self.facility, hostname, self.config.app_name)
        else:
            msg = messages.rfc5424(entry, self.facility, self.hostname, self.config.app_name)
        if not self.target.streaming:
            return msg
        if self.config.framing == "lf":
            return messages.lf_framed(msg)
        return messages.octet_counted(msg)

    # -- service ------------------------------------------------------------------------

    def startService(self):
        Service.startService(self)
        self._stopping = False
        self._started = False
        self._pending.clear()
        self._unconfirmed.clear()
        self.outbox.start()
        self._run += 1
        self._start()

    def _start(self):
        if not self.running:
            return
        run = self._run
        d = defer.maybeDeferred(self.store.outbox_stats, SINK)

        def started(stats):
            if not self.running or run != self._run:
                return
            self._stored = stats[0] or 0
            self._started = True
            self.log.info(
                "syslog: sending CDRs to {target} ({syslog_format}); {depth} waiting in the outbox",
                target=self.target.description,
                syslog_format=self.config.message_format,
                depth=self._stored,
            )
            self.target.start(self)
            self._resync = task.LoopingCall(self._resync_depth)
            self._resync.clock = self.clock
            self._resync.start(self.resync_interval, now=False)
            self._pump()

        def failed(failure):
            if not self.running or run != self._run:
                return
            self.log.failure("syslog: reading the outbox failed; retrying", failure)
            self._wake_call = self.clock.callLater(1.0, self._start)

        d.addCallbacks(started, failed)

    def stopService(self):
        Service.stopService(self)
        self._stopping = True
        self.outbox.stop()
        for name in ("_wake_call", "_confirm_call"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)
        if self._resync is not None and self._resync.running:
            self._resync.stop()
        d = self.target.stop() if self._started else defer.succeed(None)
        d.addBoth(lambda _: self.outbox.drain())
        return d

    # -- the target's listener ------------------------------------------------------------

    def target_ready(self):
        self._retry_delay = self.retry_initial
        self._schedule_confirm()
        self._pump()

    def target_paused(self):
        pass  # _send checks target.ready

    def target_confirmed(self):
        # the collector read everything written on the connection that ended
        while self._unconfirmed:
            self._delete(self._unconfirmed.popleft()[0])

    def target_lost(self, reason):
        again = [(item_id, entry) for item_id, _, entry in self._unconfirmed]
        self._unconfirmed.clear()
        if self._stopping:
            return  # not confirmed: they stay in the outbox for the next start
        self._pending.extendleft(reversed(again))
        self.resent += len(again)

    # -- the pump -----------------------------------------------------------------------

    def _pump(self):
        if not self.running or not self._started:
            return
        self._drop_excess()
        self._send()
        self._read_more()

    def _wake(self, delay):
        if self._wake_call is None or not self._wake_call.active():
            self._wake_call = self.clock.callLater(delay, self._woken)

    def _woken(self):
        self._wake_call = None
        self._pump()

    def _send(self):
        if self.target.streaming:
            self._send_stream()
        else:
            self._send_datagrams()

    def _send_stream(self):
        """One write of up to `turn` framed messages per reactor turn."""
        if not (self._pending and self.target.ready):
            return
        room = min(self.turn, self.max_unconfirmed - len(self._unconfirmed), len(self._pending))
        if room <= 0:
            self.target.confirm()  # a full connection: have it confirmed now
            return
        now = self.clock.seconds()
        chunk = []
        for _ in range(room):
            item_id, entry = self._pending.popleft()
            chunk.append(self.message(entry))
            self._unconfirmed.append((item_id, now, entry))
        self.target.send(b"".join(chunk))
        self.sent += len(chunk)
        self._schedule_confirm()
        if self._pending:
            self._wake(0)  # let the reactor breathe (and the transport write)

    def _send_datagrams(self):
        budget = self.turn
        while self._pending and self.target.ready:
            if budget == 0:
                self._wake(self.datagram_pause)  # pace: spare the collector's buffer
                return
            item_id, entry = self._pending[0]
            try:
                refused = self.target.send(self.message(entry))
            except MessageTooLong:
                self._pending.popleft()
                self.log.error(
                    "syslog: CDR {id} is too long for {target}; dropped",
                    id=entry.id,
                    target=self.target.description,
                )
                self.dropped += 1
                self._delete(item_id)
                continue
            except OSError as e:
                refused = e.strerror or str(e)
                self.log.warn("syslog: sending to {target} failed: {error}",
                              target=self.target.description, error=refused)
            if refused is not None:
                if not self._refusing:
                    self._refusing = True
                    self.log.warn(
                        "syslog: {target} refuses messages ({error}); CDR lines wait "
                        "in the outbox and are retried",
                        target=self.target.description,
                        error=refused,
                    )
                self._wake(self._retry_delay)
                self._retry_delay = min(self.retry_max, self._retry_delay * 2)
                return
            if self._refusing:
                self._refusing = False
                self.log.info("syslog: {target} takes messages again",
                              target=self.target.description)
            self._retry_delay = self.retry_initial
            self._pending.popleft()
            self.sent += 1
            budget -= 1
            self._delete(item_id)

    def _read_more(self):
        if self.outbox.reading or self.outbox.caught_up:
            return
        room = self.window - len(self._pending)
        excess = self._stored - self.config.buffer
        limit = max(room, min(excess, self.window))
        if limit <= 0:
            return
        self.outbox.read(limit)

    def _read(self, items):
        if not self.running:
            return
        for item in items:
            try:
                entry = CdrEntry.from_bytes(item.payload)
            except ValueError as e:
                # cannot be sent in any form: deleted, counted, logged
                self.log.error("syslog: unreadable outbox item {id} dropped: {error}",
                               id=item.id, error=str(e))
                self.unreadable += 1
                self.dropped += 1
                self._delete(item.id)
                continue
            self._pending.append((item.id, entry))
        self._pump()

    # -- confirming TCP writes ------------------------------------------------------------

    def _schedule_confirm(self):
        if not self._unconfirmed or (self._confirm_call is not None and self._confirm_call.active()):
            return
        delay = self._unconfirmed[0][1] + self.confirm_after - self.clock.seconds()
        self._confirm_call = self.clock.callLater(max(0.0, delay), self._confirm)

    def _confirm(self):
        self._confirm_call = None
        if not self.running or not self._unconfirmed or not self.target.connected:
            return  # target_ready() schedules it again
        if self.clock.seconds() - self._unconfirmed[0][1] >= self.confirm_after:
            self.target.confirm()
        else:
            self._schedule_confirm()

    # -- the bound -----------------------------------------------------------------------

    def _drop_excess(self):
        excess = self._stored - self.config.buffer
        dropped = 0
        while excess > 0 and self._pending:
            self._delete(self._pending.popleft()[0])
            excess -= 1
            dropped += 1
        if dropped:
            self.dropped += dropped
            self._report_drops()

    def _report_drops(self):
        now = self.clock.seconds()
        if self._drop_report_at is not None and now < self._drop_report_at:
            return
        self._drop_report_at = now + self.drop_report_interval
        self.log.warn(
            "syslog: {target} is behind and the buffer of {buffer} CDRs is full: "
            "dropped the {new} oldest unsent CDR lines ({dropped} in all); "
            "the store and RADIUS still hold them",
            target=self.target.description,
            buffer=self.config.buffer,
            new=self.dropped - self._drops_reported,
            dropped=self.dropped,
        )
        self._drops_reported = self.dropped

    @defer.inlineCallbacks
    def _resync_depth(self):
        if self.outbox.deleting or self.outbox.reading:
            return
        try:
            depth, _ = yield self.store.outbox_stats(SINK)
        except Exception:  # noqa: BLE001 - a statistic only; logged, next round retries
            self.log.failure("syslog: outbox statistics failed")
            return
        if not self.outbox.deleting:
            self._stored = depth or 0

    # -- deleting what was sent --------------------------------------------------------------

    def _delete(self, item_id: int):
        self._stored -= 1
        self.outbox.delete(item_id)

    # -- visibility -----------------------------------------------------------------------

    def status(self) -> dict:
        """JSON-able, for the web page and the metrics."""
        out = {
            "target": self.target.description,
            "format": self.config.message_format,
            "facility": self.config.facility,
            "connected": bool(self.running and self._started and self.target.connected),
            "queued": max(0, self._stored),
            "in_flight": len(self._unconfirmed),
            "sent": self.sent,
            "resent": self.resent,
            "dropped": self.dropped,
            "buffer": self.config.buffer,
            "last_error": self.target.last_error,
        }
        if self.target.streaming:
            out["framing"] = self.config.framing
            out["stalled"] = self.target.stalled
            out["connections"] = self.target.connections
        return out
