"""
A real FreeRADIUS (Debian's `freeradius`) for the integration tests and the
benchmark: a private minimal raddb in a temp directory, an accounting
listener on a loopback high port, the detail module writing one file that
the tests read, and our dictionary.cdrd $INCLUDEd.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

FREERADIUS = shutil.which("freeradius") or "/usr/sbin/freeradius"
DICTIONARIES = Path(__file__).resolve().parents[2] / "dictionaries"  # -> cdrd/accounting/dictionaries


def free_udp_port() -> int:
    """A free loopback UDP port (and its TCP twin, for good measure)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port > 20000:
            return port
    return port


RADIUSD_CONF = """\
prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = /var
sbindir = /usr/sbin
logdir = {dir}/log
raddbdir = {dir}
radacctdir = {dir}/acct
name = radiusd
confdir = {dir}
modconfdir = {dir}/mods-config
run_dir = {dir}/run
db_dir = {dir}
libdir = /usr/lib/freeradius
pidfile = {dir}/run/radiusd.pid
max_request_time = 30
cleanup_delay = 5
max_requests = 65536
hostname_lookups = no
log {{
    destination = files
    file = {dir}/log/radius.log
    auth = no
}}
security {{
    allow_core_dumps = no
    max_attributes = 200
    reject_delay = 0
    status_server = yes
}}
thread pool {{
    start_servers = 4
    max_servers = 16
    min_spare_servers = 2
    max_spare_servers = 8
    max_requests_per_server = 0
}}
client loopback {{
    ipaddr = 127.0.0.1
    secret = {secret}
    require_message_authenticator = no
}}
modules {{
    detail {{
        filename = {dir}/acct/detail
        escape_filenames = no
        permissions = 0600
        header = "%t"
        locking = no
    }}
    always ok {{
        rcode = ok
    }}
}}
server default {{
    listen {{
        type = acct
        ipaddr = 127.0.0.1
        port = {port}
    }}
    authorize {{
        Autz-Type Status-Server {{
            ok
        }}
    }}
    preacct {{
        ok
    }}
    accounting {{
        detail
        ok
    }}
}}
"""


class FreeRadius:
    """One FreeRADIUS process; `start()` waits until it answers."""

    def __init__(
        self,
        directory: Path,
        secret: str = "testing123",
        port: int | None = None,
        vendor: int | None = None,
    ):
        self.dir = Path(directory)
        self.secret = secret
        self.port = port or free_udp_port()
        self.vendor = vendor
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def detail_path(self) -> Path:
        return self.dir / "acct" / "detail"

    def write_config(self) -> None:
        for sub in ("log", "acct", "run", "mods-config"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "radiusd.conf").write_text(
            RADIUSD_CONF.format(dir=self.dir, secret=self.secret, port=self.port)
        )
        cdrd_dict = (DICTIONARIES / "dictionary.cdrd").read_text()
        if self.vendor is not None:
            # what the operator does for their own number: edit the VENDOR line
            cdrd_dict = re.sub(
                r"^VENDOR\s+cdrd\s+\d+",
                f"VENDOR\t\tcdrd\t\t\t\t{self.vendor}",
                cdrd_dict,
                flags=re.M,
            )
        (self.dir / "dictionary.cdrd").write_text(cdrd_dict)
        (self.dir / "dictionary").write_text(
            "$INCLUDE /usr/share/freeradius/dictionary\n"
            f"$INCLUDE {self.dir}/dictionary.cdrd\n"
        )

    def start(self, timeout: float = 20.0) -> None:
        self.write_config()
        log = open(self.dir / "log" / "stdout.log", "ab")
        self.proc = subprocess.Popen(
            [FREERADIUS, "-f", "-d", str(self.dir), "-n", "radiusd"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"freeradius exited with {self.proc.returncode}:\n{self.log_text()}"
                )
            if self.ping():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"freeradius did not answer in {timeout}s:\n{self.log_text()}"
        )

    def ping(self) -> bool:
        """One Status-Server, answered within 0.3 s."""
        from pyrad.packet import AcctPacket, StatusServer

        from cdrd.accounting.packets import load_dictionary

        pkt = AcctPacket(
            code=StatusServer,
            id=1,
            secret=self.secret.encode(),
            dict=load_dictionary(self.vendor or 32473),
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.3)
            s.sendto(pkt.RequestPacket(), ("127.0.0.1", self.port))
            try:
                data = s.recv(4096)
            except (TimeoutError, ConnectionRefusedError):
                return False
        return len(data) >= 20 and data[0] == 5

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def log_text(self) -> str:
        out = []
        for name in ("stdout.log", "radius.log"):
            p = self.dir / "log" / name
            if p.exists():
                out.append(p.read_text(errors="replace")[-4000:])
        return "\n".join(out)

    def records(self) -> list[dict[str, list[str]]]:
        """Every request in the detail file, in order, duplicates included."""
        if not self.detail_path.exists():
            return []
        return parse_detail(self.detail_path.read_text(errors="replace"))

    def wait_records(
        self, predicate, timeout: float = 20.0
    ) -> list[dict[str, list[str]]]:
        deadline = time.monotonic() + timeout
        while True:
            recs = self.records()
            if predicate(recs) or time.monotonic() > deadline:
                return recs
            time.sleep(0.05)


#: What is not part of a request's identity: Acct-Delay-Time changes at every
#: resend; FreeRADIUS adds the rest.
RESEND_FIELDS = frozenset({"Acct-Delay-Time", "Timestamp", "Acct-Unique-Session-Id"})


def request_key(record) -> tuple:
    """One accounting request: (Acct-Session-Id, status, Event-Timestamp,
    cdrd-CDR-Part)."""
    return tuple(
        (record.get(name) or [None])[0]
        for name in (
            "Acct-Session-Id",
            "Acct-Status-Type",
            "Event-Timestamp",
            "cdrd-CDR-Part",
        )
    )


def distinct(records) -> dict[tuple, dict[str, list[str]]]:
    """request_key -> its first record, in order."""
    out: dict[tuple, dict[str, list[str]]] = {}
    for r in records:
        out.setdefault(request_key(r), r)
    return out


def duplicates(records, retransmissions: int) -> int:
    """
    How many records repeat a request, checked to be what at-least-once
    allows: a retransmission that reached the server too (identical but for
    Acct-Delay-Time), at most one per retransmission cdrd made.
    """
    first = distinct(records)
    extra = 0
    for r in records:
        original = first[request_key(r)]
        if r is original:
            continue
        extra += 1
        same = {k: v for k, v in r.items() if k not in RESEND_FIELDS}
        assert same == {k: v for k, v in original.items() if k not in RESEND_FIELDS}, (
            "a duplicate that is not a retransmission",
            r,
            original,
        )
    assert extra <= retransmissions, (extra, retransmissions)
    return extra


def parse_detail(text: str) -> list[dict[str, list[str]]]:
    """The complete records of a detail file: FreeRADIUS ends each with an
    empty line, so a record it is still writing is left for the next read."""
    out: list[dict[str, list[str]]] = []
    current: dict[str, list[str]] | None = None
    for line in text.splitlines():
        if not line.strip():
            if current is not None:
                out.append(current)
            current = None
            continue
        if not line[0].isspace():
            current = {}
            continue
        if current is None:
            continue
        name, _, value = line.strip().partition(" = ")
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        current.setdefault(name, []).append(value)
    return out


def kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
