"""
A real HAProxy (Debian's `haproxy`) running etc/haproxy.cfg with loopback
addresses: the frontend on a free port, one server line per cdrd node.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.integration.daemon import ROOT, free_port
from tests.processes import terminate

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
CONFIG = ROOT / "etc" / "haproxy.cfg"


def loopback_config(port: int, nodes: list[tuple[int, int]]) -> str:
    """etc/haproxy.cfg with `bind` on `port` and a server per (gateway port, probe port)."""
    text = CONFIG.read_text()
    text = re.sub(r"^(\s*)log /dev/log.*$", r"\1log stdout format raw local0", text, flags=re.M)
    text = re.sub(r"^(\s*)bind \S+", rf"\1bind 127.0.0.1:{port}", text, flags=re.M)
    servers = "".join(
        f"    server node{n} 127.0.0.1:{gwp} check port {probe}\n" for n, (gwp, probe) in enumerate(nodes, 1)
    )
    text, count = re.subn(r"(^\s*server .*\n)+", servers, text, flags=re.M)
    assert count == 1, "etc/haproxy.cfg: one block of server lines expected"
    return text


class HAProxy:
    def __init__(self, directory: Path, nodes: list[tuple[int, int]]):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = self.dir / "haproxy.cfg"
        self.config.write_text(loopback_config(self.port, nodes))
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> HAProxy:
        check = subprocess.run([HAPROXY, "-c", "-q", "-f", str(self.config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr + check.stdout
        self.proc = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(self.config)],
            stdout=open(self.dir / "haproxy.log", "wb"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.log_text()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def log_text(self) -> str:
        path = self.dir / "haproxy.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        terminate(self.proc)
        self.proc = None
