"""
Where syslog messages go: the local socket, UDP or TCP.

A target never blocks: datagram sends are non-blocking and say at once
whether the kernel took the message; TCP writes go to a Twisted transport
registered as a streaming producer's consumer, so a slow collector pauses
the sink instead of growing the transport's buffer.

Each target tells its listener (the SyslogSink) what happens:

- ``target_ready()``: messages may be sent (connected, resumed, socket open);
- ``target_paused()``: TCP only: the transport's buffer is full;
- ``target_lost(reason)``: TCP only: the connection is gone; what was
  written but not yet confirmed must be sent again on the next one.
"""

from __future__ import annotations

import errno
import ipaddress
import random
import socket

from twisted.application.internet import ClientService, backoffPolicy
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
        self.last_error = f"cannot resolve {self.host}: {failure.getErrorMessage()}"
        self.log.warn("syslog: {error}; retrying in {delay}s", error=self.last_error,
                      delay=self.resolve_retry)
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
    """

    streaming = True
    log = Logger()

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
        policy = backoffPolicy(
            initialDelay=initial_delay,
            maxDelay=max_delay,
            factor=2.0,
            jitter=jitter if jitter is not None else random.Random().random,
        )
        # ClientService counts failed attempts from 1: the first retry (after
        # a lost connection or a failed attempt) waits initial_delay
        self._policy = lambda attempt: policy(max(0, attempt - 1))
        self._service: ClientService | None = None
        self._protocol: _TcpSyslogProtocol | None = None
        self._paused_now = False
        self._listener = None
        self.connections = 0
        self.last_error = ""

    @property
    def connected(self) -> bool:
        return self._protocol is not None

    @property
    def ready(self) -> bool:
        return self._protocol is not None and not self._paused_now

    def start(self, listener) -> None:
        self._listener = listener
        factory = Factory.forProtocol(lambda: _TcpSyslogProtocol(self))
        self._service = ClientService(
            self.endpoint, factory, retryPolicy=self._policy, clock=self.clock
        )
        self._service.startService()

    def stop(self) -> defer.Deferred:
        """Close the connection after what was written (its buffer) went out."""
        service, self._service = self._service, None
        if service is None:
            return defer.succeed(None)
        return service.stopService()

    def send(self, data: bytes) -> None:
        self._protocol.transport.write(data)
        return None

    # -- from the protocol ----------------------------------------------------------

    def _connected(self, protocol):
        self._protocol = protocol
        self._paused_now = False
        self.connections += 1
        self.last_error = ""
        self.log.info("syslog: connected to {target}", target=self.description)
        self._listener.target_ready()

    def _lost(self, protocol, reason):
        if protocol is not self._protocol:
            return
        self._protocol = None
        self._paused_now = False
        clean = reason.check(error.ConnectionDone) is not None
        self.last_error = "" if clean else reason.getErrorMessage()
        self.log.warn(
            "syslog: connection to {target} lost: {reason}",
            target=self.description,
            reason=reason.getErrorMessage(),
        )
        self._listener.target_lost(reason)

    def _paused(self, protocol):
        if protocol is self._protocol:
            self._paused_now = True
            self._listener.target_paused()

    def _resumed(self, protocol):
        if protocol is self._protocol:
            self._paused_now = False
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
