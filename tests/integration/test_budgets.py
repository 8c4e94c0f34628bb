"""
Integration: connection budgets of a real cdrd over real TCP (issue 11).
2,000 silent connections held from 127.0.0.1 do not keep a gateway on
127.0.0.2 out: the oldest of them give way, the gateway logs in at once.
"""

from __future__ import annotations

import resource
import socket

import pytest

from tests.integration.daemon import Daemon, GatewayClient

pytestmark = pytest.mark.integration

SILENT = 2000


def open_files(at_least: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < at_least:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(at_least, hard), hard))


def still_open(sock: socket.socket) -> bool:
    """Not closed by cdrd: nothing more to read after its HELLO, no end of stream."""
    sock.setblocking(False)
    try:
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return False
            data += chunk
    except BlockingIOError:
        return b"ERR" not in data
    except OSError:
        return False


def accepted(sock: socket.socket) -> socket.socket:
    """
    `sock` once cdrd has accepted it: its HELLO line read.  A connect
    returns when the kernel has the connection, and under a burst the
    listen queue can hand cdrd a later one first (CI, 2026-12-07); after
    the HELLO, the next connection is newer than this one for cdrd too.
    """
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(256)  # the socket's timeout bounds the wait
        if not chunk:
            break
        data += chunk
    return sock


def test_silent_connections_of_one_address_do_not_keep_a_gateway_out(tmp_path):
    open_files(SILENT + 512)
    # a login timeout far beyond the test: only the budgets make room
    daemon = Daemon(tmp_path, server="login_timeout = 600\nmax_connections = 10\n")
    silent: list[socket.socket] = []
    try:
        daemon.start()
        for _ in range(SILENT):  # bounded: one connect each, no retries
            silent.append(accepted(socket.create_connection(("127.0.0.1", daemon.gateway_port), timeout=30)))
        gateway = GatewayClient(daemon.gateway_port, timeout=60, source="127.0.0.2")
        assert gateway.hello.verb == "HELLO"
        ok = gateway.login()
        assert ok.verb == "OK", ok
        gateway.send("EV", seq="1", ref="1", type="HOOK_OFF", port="1")
        assert gateway.read().verb == "ACK"
        gateway.close()
        # the newest 64 (server.unauthenticated_per_address) of the flood are held
        held = [still_open(s) for s in silent]
        assert sum(held) == 64 and all(held[-64:])
        assert "gave way to newer ones" in daemon.log_text()
    finally:
        for s in silent:
            s.close()
        daemon.stop()
