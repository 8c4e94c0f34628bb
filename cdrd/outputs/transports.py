"""
Where syslog messages go: the local socket, UDP or TCP.

A target never blocks: datagram sends are non-blocking and say at once
whether the kernel took the message; TCP writes go to a Twisted transport
registered as a streaming producer's consumer, so a slow collector pauses
the sink instead of growing the transport's buffer.

Each target tells its listener (the SyslogSink) what happens:

- ``target_ready()``: messages may be sent (connected, resumed, socket open);
- ``target_paused()``: TCP only: the transport's buffer is full;
- ``target_confirmed()``: TCP only: the collector closed its end after
  ours, so it read everything written on that connection;
- ``target_lost(reason)``: TCP only: the connection is gone otherwise; what
  was written and not confirmed must be sent again on the next one.
"""

from __future__ import annotations

import errno
import ipaddress
import random
import socket

from twisted.application.internet import backoffPolicy
from twisted.internet import defer, error
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

#: Errors of a datagram send after which the message is tried again later.
TRANSIENT = {
    errno.EAGAIN,
    errno.EWOULDBLOCK,
    errno.ENOBUFS,
    errno.ENOMEM,
    errno.ENOENT,  # unix: no socket at the path (the daemon is down)
    errno.ECONNREFUSED,  # unix: nobody reads the socket
    errno.ENOTCONN,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.EPERM,  # a firewall said no, for now
}


class MessageTooLong(Exception):
    """The target cannot carry this message at all (EMSGSIZE)."""


def parse_target(target: str) -> tuple[str, str, int | None]:
    """`unix:PATH`, `udp:HOST:PORT`, `tcp:HOST:PORT` -> (scheme, host or path, port)."""
    scheme, _, rest = target.partition(":")
    if scheme == "unix":
        return scheme, rest, None
    host, sep, port = rest.rpartition(":")
    if not sep:
        host, port = rest, "514"
    return scheme, host.strip("[]"), int(port)


def _ip_version(host: str) -> int | None:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


class UnixDatagramTarget:
    """
    The local syslog socket (`/dev/log` is SOCK_DGRAM on Debian): one
    unconnected non-blocking socket, one sendto() per message, so a restarted
    daemon (a new socket at the same path) is reached without reconnecting.
    """

    streaming = False

    def __init__(self, path: str, socket_factory=None):
        self.path = path
        self.description = f"unix:{path}"
        self._socket_factory = socket_factory or (
            lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        )
        self._socket = None
        self.last_error = ""

    @property
    def ready(self) -> bool:
        return self._socket is not None

    @property
    def connected(self) -> bool:
        return self._socket is not None and not self.last_error

    def start(self, listener) -> None:
        self._socket = self._socket_factory()
        self._socket.setblocking(False)
        listener.target_ready()

    def stop(self) -> defer.Deferred:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        return defer.succeed(None)

    def send(self, data: bytes) -> str | None:
        """None when the kernel took the message, else why not (try later)."""
        try:
            self._socket.sendto(data, self.path)
        except OSError as e:
            if e.errno == errno.EMSGSIZE:
                raise MessageTooLong(len(data)) from None
            if e.errno in TRANSIENT:
                self.last_error = e.strerror or str(e)
                return self.last_error
            raise
        self.last_error = ""
        return None


class UdpTarget:
    """
    A collector over UDP: one datagram per message from one socket bound to
    an ephemeral port (on loopback when the collector is there).  A host name
    is resolved once at start, again after a failure.
    """

    streaming = False
    log = Logger()

    def __init__(self, host: str, port: int, reactor, clock, resolve_retry: float = 5.0):
        self.host = host
        self.port = port
        self.description = f"udp:{host}:{port}"
        self.reactor = reactor
        self.clock = clock
        self.resolve_retry = resolve_retry
        self._address: tuple[str, int] | None = None
        self._port = None
        self._listener = None
        self._retry = None
        self.last_error = ""

    @property
    def ready(self) -> bool:
        return self._port is not None and self._address is not None

    @property
    def connected(self) -> bool:
        return self.ready and not self.last_error

    def start(self, listener) -> None:
        self._listener = listener
        if _ip_version(self.host) is not None:
            self._bind(self.host)
            return
        d = self.reactor.resolve(self.host)
        d.addCallbacks(self._bind, self._unresolved)

    def _unresolved(self, failure):
        error = f"cannot resolve {self.host}: {failure.getErrorMessage()}"
        if error != self.last_error:  # once, not at every retry
            self.log.warn("syslog: {error}; retrying every {delay}s", error=error, delay=self.resolve_retry)
        self.last_error = error
        self._retry = self.clock.callLater(self.resolve_retry, self.start, self._listener)

    def _bind(self, ip: str):
        version = _ip_version(ip)
        loopback = ipaddress.ip_address(ip).is_loopback
        if version == 6:
            interface = "::1" if loopback else "::"
        else:
            interface = "127.0.0.1" if loopback else ""
        self._port = self.reactor.listenUDP(0, DatagramProtocol(), interface=interface)
        self._address = (ip, self.port)
        self.last_error = ""
        self._listener.target_ready()

    def stop(self) -> defer.Deferred:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        port, self._port = self._port, None
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening)

    def send(self, data: bytes) -> str | None:
        try:
            self._port.write(data, self._address)
        except error.MessageLengthError:
            raise MessageTooLong(len(data)) from None
        except OSError as e:
            if e.errno == errno.EMSGSIZE:
                raise MessageTooLong(len(data)) from None
            if e.errno in TRANSIENT:
                self.last_error = e.strerror or str(e)
                return self.last_error
            raise
        self.last_error = ""
        return None


@implementer(IPushProducer)
class _TcpSyslogProtocol(Protocol):
    """Writes what the sink gives it; a collector sends nothing back."""

    def __init__(self, target: TcpTarget):
        self.target = target

    def connectionMade(self):
        if hasattr(self.transport, "setTcpKeepAlive"):
            self.transport.setTcpKeepAlive(1)
        self.transport.registerProducer(self, True)
        self.target._connected(self)

    def dataReceived(self, data):
        pass  # syslog over TCP is one way

    def connectionLost(self, reason):
        self.target._lost(self, reason)

    # IPushProducer: called by the transport
    def pauseProducing(self):
        self.target._paused(self)

    def resumeProducing(self):
        self.target._resumed(self)

    def stopProducing(self):
        pass  # connectionLost follows


class TcpTarget:
    """
    A collector over TCP (RFC 6587), reconnecting with exponential backoff
    (`initial_delay` doubling to `max_delay`, with jitter) for as long as the
    sink runs.

    Plain TCP syslog has no acknowledgement, and the collector's TCP ACK only
    says that the bytes reached its kernel: a collector that hangs (SIGSTOP,
    a full disk, a stuck output) and is then killed loses whatever sat unread
    in its socket.  So the proof of delivery is the end of a connection:
    `confirm()` half-closes it (a FIN after the last byte), a collector
    closes its own end once it has read to the end of the stream, and that
    clean close proves it read every byte (a socket closed with unread data
    sends a reset, not a FIN).  The listener hears `target_confirmed()`, and
    the target connects again at once.  A reset, or no close within
    `close_timeout` (the connection is then aborted), confirms nothing: the
    lines are sent again on the next connection and `stalled` says why.
    """

    streaming = True
    log = Logger()

    #: seconds a collector has to close its end after ours before the
    #: connection is aborted and its lines count as not delivered
    close_timeout = 5.0
    #: seconds stop() waits for that close (then aborts: the lines stay in
    #: the outbox for the next start)
    stop_timeout = 2.0

    def __init__(
        self,
        host: str,
        port: int,
        reactor,
        clock,
        initial_delay: float = 0.5,
        max_delay: float = 30.0,
        jitter=None,
        endpoint=None,
    ):
        self.host = host
        self.port = port
        self.description = f"tcp:{host}:{port}"
        self.clock = clock
        if endpoint is None:
            version = _ip_version(host)
            if version == 4:
                endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=10)
            elif version == 6:
                endpoint = TCP6ClientEndpoint(reactor, host, port, timeout=10)
            else:
                endpoint = HostnameEndpoint(reactor, host, port, timeout=10)
        self.endpoint = endpoint
        self._policy = backoffPolicy(
            initialDelay=initial_delay,
            maxDelay=max_delay,
            factor=2.0,
            jitter=jitter if jitter is not None else random.Random().random,
        )
        self._failures = 0  # in a row: the next retry waits policy(failures - 1)
        self._running = False
        self._attempt: defer.Deferred | None = None
        self._retry = None
        self._protocol: _TcpSyslogProtocol | None = None
        self._closing = False  # we half-closed; waiting for the collector's close
        self._close_timer = None
        self._paused_at: float | None = None
        self._stopped: list[defer.Deferred] = []
        self._listener = None
        self._stall = ""  # why the collector counts as stalled, "" when it is not
        # closed cleanly to confirm, reconnecting at once: still "connected"
        # for the operator (a status must not flicker at every confirmation)
        self._between = False
        self.connections = 0
        self.confirmations = 0
        self.last_error = ""

    @property
    def connected(self) -> bool:
        return self._protocol is not None or self._between

    @property
    def ready(self) -> bool:
        return self._protocol is not None and self._paused_at is None and not self._closing

    @property
    def stalled(self) -> str:
        """Why the collector is not taking lines ("" when it is)."""
        if self._stall:
            return self._stall
        if self._paused_at is not None:
            waited = self.clock.seconds() - self._paused_at
            if waited >= self.close_timeout:
                return f"the collector has not read for {waited:.0f} s"
        return ""

    def start(self, listener) -> None:
        self._listener = listener
        self._running = True
        self._connect()

    def stop(self) -> defer.Deferred:
        """
        Half-close, wait (at most `stop_timeout`) for the collector to close
        its end (what it confirms is reported), then abort.
        """
        self._running = False
        self._between = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._attempt is not None:
            self._attempt.cancel()
        if self._protocol is None:
            return defer.succeed(None)
        d = defer.Deferred()
        self._stopped.append(d)
        self._half_close(self.stop_timeout)
        return d

    def send(self, data: bytes) -> None:
        self._protocol.transport.write(data)
        return None

    def confirm(self) -> None:
        """Ask the collector to prove it read everything written so far."""
        if self._protocol is not None and not self._closing:
            self._half_close(self.close_timeout)

    # -- connecting ------------------------------------------------------------------

    def _connect(self):
        self._retry = None
        if not self._running or self._protocol is not None or self._attempt is not None:
            return
        factory = Factory.forProtocol(lambda: _TcpSyslogProtocol(self))
        self._attempt = d = self.endpoint.connect(factory)

        def failed(reason):
            self._attempt = None
            self._between = False
            if reason.check(defer.CancelledError) or not self._running:
                return
            self.last_error = reason.getErrorMessage()
            self._retry_later()

        def connected(_):
            self._attempt = None

        d.addCallbacks(connected, failed)

    def _retry_later(self, delay: float | None = None):
        if not self._running:
            return
        if delay is None:
            self._failures += 1
            delay = self._policy(self._failures - 1)
        self._retry = self.clock.callLater(delay, self._connect)

    def _half_close(self, timeout: float):
        protocol = self._protocol
        transport = protocol.transport
        if self._close_timer is not None and self._close_timer.active():
            if self._close_timer.getTime() - self.clock.seconds() <= timeout:
                return
            self._close_timer.cancel()
        self._closing = True
        self._close_timer = self.clock.callLater(timeout, self._not_closed, protocol, timeout)
        half_close = getattr(transport, "loseWriteConnection", None)
        if half_close is not None:
            half_close()
        else:  # a transport that cannot half-close: nothing can be confirmed
            transport.loseConnection()

    def _not_closed(self, protocol, timeout):
        self._close_timer = None
        if protocol is not self._protocol:
            return
        self._stall = (
            f"the collector did not confirm (close its end) within {timeout:g} s"
        )
        self.last_error = self._stall
        self.log.warn(
            "syslog: {target}: {stall}; aborting the connection, its lines are sent again",
            target=self.description,
            stall=self._stall,
        )
        protocol.transport.abortConnection()

    # -- from the protocol ----------------------------------------------------------

    def _connected(self, protocol):
        if not self._running:
            protocol.transport.abortConnection()
            return
        self._protocol = protocol
        self._between = False
        self._paused_at = None
        self._closing = False
        self.connections += 1
        if not self._stall:
            self._failures = 0
            self.last_error = ""
        if self.connections == 1 or self._failures:
            self.log.info("syslog: connected to {target}", target=self.description)
        self._listener.target_ready()

    def _lost(self, protocol, reason):
        if protocol is not self._protocol:
            return
        closing = self._closing
        self._protocol = None
        self._paused_at = None
        self._closing = False
        if self._close_timer is not None and self._close_timer.active():
            self._close_timer.cancel()
        self._close_timer = None
        clean = reason.check(error.ConnectionDone) is not None
        if clean and closing:
            # the collector read to our FIN and closed: every byte arrived
            self._stall = ""
            self._failures = 0
            self.last_error = ""
            self.confirmations += 1
            self._between = self._running
            self._listener.target_confirmed()
            if self._running:
                self._retry_later(0)
        else:
            if not self._stall:
                self.last_error = "" if clean else reason.getErrorMessage()
            if self._running:
                self.log.warn(
                    "syslog: connection to {target} lost: {reason}",
                    target=self.description,
                    reason=reason.getErrorMessage(),
                )
            self._listener.target_lost(reason)
            self._retry_later()
        waiting, self._stopped = self._stopped, []
        for d in waiting:
            d.callback(None)

    def _paused(self, protocol):
        if protocol is self._protocol and self._paused_at is None:
            self._paused_at = self.clock.seconds()
            self._listener.target_paused()

    def _resumed(self, protocol):
        if protocol is self._protocol:
            self._paused_at = None
            if not self._closing:
                self._listener.target_ready()


def make_target(target: str, reactor, clock):
    scheme, where, port = parse_target(target)
    if scheme == "unix":
        return UnixDatagramTarget(where)
    if scheme == "udp":
        return UdpTarget(where, port, reactor, clock)
    if scheme == "tcp":
        return TcpTarget(where, port, reactor, clock)
    raise ValueError(f"unknown syslog target {target!r}")
