"""
A real rsyslog (Debian's `rsyslog`) for the integration tests: `rsyslogd -n
-f FILE -i PIDFILE` with a private config in a temp directory, imudp and
imtcp on loopback high ports, imuxsock on two private socket paths (never the
system's /dev/log): `log.sock` as Debian's /dev/log is (imuxsock's special
parser: syslog(3)'s format, no RFC 5424) and `log5424.sock` with the regular
parser chain; and one omfile with a raw template the tests read:

    <facility> <severity> <hostname> <app-name> <procid> <msgid> <msg>
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.processes import terminate

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"

CONFIG = """\
global(workDirectory="{dir}" maxMessageSize="8k")
module(load="imuxsock" SysSock.Use="off")
module(load="imudp")
module(load="imtcp")
input(type="imuxsock" Socket="{socket}" CreatePath="on")
input(type="imuxsock" Socket="{socket5424}" CreatePath="on" UseSpecialParser="off"
      ParseHostname="on")
input(type="imudp" address="127.0.0.1" port="{udp}")
input(type="imtcp" address="127.0.0.1" port="{tcp}")
template(name="cdrraw" type="string"
         string="%syslogfacility-text% %syslogseverity-text% %hostname% %app-name% %procid% %msgid% %msg%\\n")
action(type="omfile" file="{out}" template="cdrraw")
"""


def free_port() -> int:
    """A loopback port free for both UDP and TCP right now."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind(("127.0.0.1", port))
        except OSError:
            continue
        if port > 20000:
            return port
    raise RuntimeError("no free loopback port")


class Rsyslog:
    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.udp = free_port()
        self.tcp = free_port()
        self.socket = str(self.dir / "log.sock")
        self.socket5424 = str(self.dir / "log5424.sock")
        self.out = self.dir / "cdrs.log"
        self.conf = self.dir / "rsyslog.conf"
        self.pidfile = self.dir / "rsyslogd.pid"
        self.conf.write_text(
            CONFIG.format(dir=self.dir, socket=self.socket, socket5424=self.socket5424,
                          udp=self.udp, tcp=self.tcp, out=self.out)
        )
        self.process: subprocess.Popen | None = None
        self.probes = 0

    def start(self, timeout: float = 15.0) -> None:
        """Start it and wait until every input delivers (a probe per input)."""
        if not Path(RSYSLOGD).exists():
            raise RuntimeError("rsyslogd is not installed (Debian package rsyslog)")
        self.pidfile.unlink(missing_ok=True)
        with open(self.dir / "rsyslogd.out", "ab") as out:
            self.process = subprocess.Popen(
                [RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.pidfile)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for send in (self._probe_udp, self._probe_tcp, self._probe_unix, self._probe_unix5424):
            self.probes += 1
            msgid = f"probe{self.probes}"
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"rsyslogd exited: {self.log_text()}")
                try:
                    send(msgid)
                except OSError:
                    pass
                if any(r[3] == "probe" and r[6].strip() == msgid for r in self.records()):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"rsyslogd did not come up: {self.log_text()}")
                time.sleep(0.1)

    def _message(self, msgid: str) -> bytes:
        return f"<191>1 2026-11-22T00:00:00.000Z probe probe - {msgid} - {msgid}".encode()

    def _probe_udp(self, msgid):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(self._message(msgid), ("127.0.0.1", self.udp))

    def _probe_tcp(self, msgid):
        with socket.create_connection(("127.0.0.1", self.tcp), timeout=1) as s:
            m = self._message(msgid)
            s.sendall(b"%d %s" % (len(m), m))

    def _probe_unix(self, msgid):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(f"<191>Nov 22 00:00:00 probe: {msgid}".encode(), self.socket)

    def _probe_unix5424(self, msgid):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(self._message(msgid), self.socket5424)

    def stop(self) -> None:
        if self.process is None:
            return
        terminate(self.process)
        self.process = None

    def log_text(self) -> str:
        path = self.dir / "rsyslogd.out"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def records(self) -> list[list[str]]:
        """[facility, severity, hostname, app-name, procid, msgid, msg] per
        complete line.  omfile writes a batch in 4 KiB chunks, so a read while
        rsyslog writes can end inside a line: that tail is not a line yet."""
        if not self.out.exists():
            return []
        *lines, _tail = self.out.read_text().split("\n")
        return [line.split(" ", 6) for line in lines]

    def cdr_records(self) -> list[list[str]]:
        return [r for r in self.records() if r[3] != "probe"]

