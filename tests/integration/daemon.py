"""
A real cdrd process (``twistd -n cdrd``) for integration tests, and a tiny
blocking GWP/1 client for tests that need to control every byte.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from cdrd.gateway.codec import format_gateway_time, format_message, parse_line

ROOT = Path(__file__).resolve().parents[2]
TWISTD = Path(sys.executable).with_name("twistd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """
    `extra_config` is appended to the config file (tables after [server]);
    `server` adds lines to [server]; `gateway_endpoint` replaces the
    loopback TCP listener (its port is still `gateway_port`).
    """

    def __init__(self, tmp: Path, extra_config: str = "", database: str | None = None,
                 server: str = "", gateway_endpoint: str | None = None):
        self.tmp = tmp
        self.gateway_port = free_port()
        self.web_port = free_port()
        self.database = database or f"sqlite:{tmp / 'cdrd.sqlite'}"
        self.config = tmp / "cdrd.toml"
        endpoint = gateway_endpoint or f"tcp:{self.gateway_port}:interface=127.0.0.1"
        self.config.write_text(
            "[server]\n"
            f'gateway_endpoint = "{endpoint.format(port=self.gateway_port)}"\n'
            f'web_endpoint = "tcp:{self.web_port}:interface=127.0.0.1"\n'
            f'database = "{self.database}"\n'
            "allow_unknown_gateways = true\n" + server + extra_config
        )
        self.proc: subprocess.Popen | None = None
        self.logfile = tmp / "twistd.log"

    def spawn(self) -> Daemon:
        """Start the process; do not wait for anything."""
        self.proc = subprocess.Popen(
            [str(TWISTD), "-n", "--pidfile=", f"--logfile={self.logfile}", "cdrd",
             "--config", str(self.config)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # a hang at stop is then diagnosable: SIGABRT dumps every thread (stop())
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )
        return self

    def log_text(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def start(self, timeout: float = 20.0) -> Daemon:
        self.spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cdrd exited: {self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.web_port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"cdrd did not start: {self.output()}")

    def output(self) -> str:
        text = ""
        if self.proc is not None and self.proc.poll() is not None and self.proc.stdout:
            text += self.proc.stdout.read().decode(errors="replace")
        if self.logfile.exists():
            text += self.logfile.read_text(errors="replace")[-4000:]
        return text

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            pass
        # hung at stop: faulthandler writes every thread's stack on SIGABRT; keep it beside the log
        self.proc.send_signal(signal.SIGABRT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        stacks = self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""
        (self.tmp / "hung-at-stop.txt").write_text(stacks)
        print(f"cdrd did not exit within 20 s of SIGTERM; its threads:\n{stacks}", file=sys.stderr)
        return self.proc.returncode

    def api(self, path: str) -> dict:
        url = f"http://127.0.0.1:{self.web_port}{path}"
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())

    def wait_for(self, predicate, timeout=15.0, what="condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}\n{self.output()}")


class GatewayClient:
    """Blocking GWP/1 client: one line at a time, for exact assertions."""

    def __init__(self, port: int, timeout: float = 10.0, source: str | None = None):
        """`source`: the loopback address to connect from (e.g. "127.0.0.2")."""
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout,
            source_address=(source, 0) if source is not None else None)
        self.buf = b""
        self.hello = self.read()

    def send(self, verb: str, **fields) -> None:
        self.sock.sendall(format_message(verb, fields))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by server")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return parse_line(line)

    def login(self, gw="8200", mac="000C2A020082", callref=74, clock=None, **extra):
        """LOGIN with this machine's clock (skew 0), or `clock` (a gateway time)."""
        if clock is None:
            clock = format_gateway_time(int(time.time() * 1000))
        self.send("LOGIN", proto="1", gw=gw, mac=mac, fxs="2", fxo="2", isdn="0",
                  callref=str(callref), time=clock, **extra)
        return self.read()

    def close(self):
        self.sock.close()


def environment() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    return env
