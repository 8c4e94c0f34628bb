"""
A real FreeRADIUS (Debian's `freeradius`) for the integration tests and the
benchmark: a private minimal raddb in a temp directory, an accounting
listener on a loopback high port, the detail module writing one file that
the tests read, and our dictionary.cdrd $INCLUDEd.

With `sql=` (a PostgreSQL URL), the stock rlm_sql as a billing team runs
it (Debian's `freeradius-postgresql`): the `sql` module with Debian's own
PostgreSQL `queries.conf`, the stock policies (`acct_unique` in preacct),
`radacct` made from Debian's `schema.sql` (`create_radacct`).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.processes import terminate

FREERADIUS = shutil.which("freeradius") or "/usr/sbin/freeradius"
DICTIONARIES = Path(__file__).resolve().parents[2] / "dictionaries"  # -> cdrd/accounting/dictionaries
#: Debian's stock FreeRADIUS configuration (packages freeradius and
#: freeradius-postgresql): the SQL schema and queries, and the policies.
RADDB = Path("/etc/freeradius/3.0")
PG_SQL = RADDB / "mods-config" / "sql" / "main" / "postgresql"


def create_radacct(url: str) -> None:
    """Debian's stock PostgreSQL schema (radacct and the rest) in `url`."""
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute((PG_SQL / "schema.sql").read_text())


SQL_MODULE = """\
    # %{{tolower:...}} in the stock queries comes from rlm_expr
    expr {{
    }}
    sql {{
        dialect = "postgresql"
        driver = "rlm_sql_postgresql"
        postgresql {{
            send_application_name = yes
        }}
        radius_db = "{conninfo}"
        acct_table1 = "radacct"
        acct_table2 = "radacct"
        postauth_table = "radpostauth"
        authcheck_table = "radcheck"
        groupcheck_table = "radgroupcheck"
        authreply_table = "radreply"
        groupreply_table = "radgroupreply"
        usergroup_table = "radusergroup"
        delete_stale_sessions = yes
        pool {{
            start = 1
            min = 1
            max = 8
            spare = 2
            uses = 0
            retry_delay = 1
            lifetime = 0
            idle_timeout = 60
        }}
        client_table = "nas"
        group_attribute = "SQL-Group"
        $INCLUDE {queries}
    }}
"""


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_udp_port() -> int:
    """
    A loopback UDP port that is free now, for a FreeRADIUS that binds it
    later.  It is taken below the kernel's ephemeral range, so that no
    socket the kernel numbers meanwhile (another test's `bind(0)`, any UDP
    client) can take it first, and at random, so that test runs at the same
    time seldom pick the same; `FreeRadius.start` handles the rest.
    """
    low, _ = _ephemeral_range()
    top = low - 1 if low > 11000 else 29999
    pick = random.SystemRandom()
    for _ in range(200):
        port = pick.randint(10000, top)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free UDP port in 10000-{top} on 127.0.0.1")


class DetailCorrupt(AssertionError):
    """A record of the detail file that does not parse whole (two writers interleaved)."""


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
    require_message_authenticator = {require_ma}
}}
modules {{
    detail {{
        filename = {dir}/acct/detail
        escape_filenames = no
        permissions = 0600
        header = "%t"
        # yes: FreeRADIUS's threads then take the file in turn.  With "no"
        # two threads write one file at once, and a record over stdio's
        # 4 kB buffer is split by another (a large Stop read without its
        # session id: the flaky test of issue 11)
        locking = yes
    }}
    always ok {{
        rcode = ok
    }}
{sql_module}{files_module}}}
{policy}
server default {{
    listen {{
        type = acct
        ipaddr = 127.0.0.1
        port = {port}
    }}
{auth_listen}    authorize {{
{authorize}        Autz-Type Status-Server {{
            ok
        }}
    }}
    preacct {{
{preacct}        ok
    }}
    accounting {{
        detail
{accounting}        ok
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
        sql: str | None = None,
        users: str | None = None,
    ):
        self.dir = Path(directory)
        self.secret = secret
        # an automatic port may be exchanged for another if FreeRADIUS
        # cannot bind it, as long as nobody has been told it (`port`)
        self._port = port or free_udp_port()
        self._port_fixed = port is not None
        self.vendor = vendor
        self.sql = sql  # a PostgreSQL URL: the stock rlm_sql writes radacct there
        # a `users` file: an auth listener (auth_port) whose authorize runs
        # the stock `files` module on it, e.g. to answer with a CUI
        self.users = users
        self._auth_port = free_udp_port() if users is not None else None
        self.proc: subprocess.Popen | None = None

    @property
    def port(self) -> int:
        self._port_fixed = True
        return self._port

    @property
    def auth_port(self) -> int | None:
        self._port_fixed = True
        return self._auth_port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def detail_path(self) -> Path:
        return self.dir / "acct" / "detail"

    def write_config(self) -> None:
        for sub in ("log", "acct", "run", "mods-config"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        sql_module = policy = preacct = accounting = ""
        files_module = auth_listen = authorize = ""
        if self.users is not None:
            (self.dir / "users").write_text(self.users)
            files_module = (
                f"    files {{\n        filename = {self.dir}/users\n    }}\n"
            )
            auth_listen = (
                "    listen {\n        type = auth\n        ipaddr = 127.0.0.1\n"
                f"        port = {self._auth_port}\n    }}\n"
            )
            authorize = "        files\n"
            # BlastRADIUS: FreeRADIUS 3.2.1 signs its answers only when asked
            sign = "update reply {\n            &Message-Authenticator := 0x00\n        }\n"
            auth_listen += (
                f"    post-auth {{\n        {sign}"
                f"        Post-Auth-Type REJECT {{\n            {sign}        }}\n    }}\n"
            )
        if self.sql is not None:
            sql_module = SQL_MODULE.format(
                conninfo=libpq_conninfo(self.sql), queries=PG_SQL / "queries.conf"
            )
            # the stock policies: acct_unique makes Acct-Unique-Session-Id
            policy = f"policy {{\n$INCLUDE {RADDB}/policy.d/\n}}\n"
            preacct = "        acct_unique\n"
            accounting = "        sql\n"
        (self.dir / "radiusd.conf").write_text(
            RADIUSD_CONF.format(
                dir=self.dir,
                secret=self.secret,
                port=self._port,
                sql_module=sql_module,
                policy=policy,
                preacct=preacct,
                accounting=accounting,
                files_module=files_module,
                auth_listen=auth_listen,
                authorize=authorize,
                # BlastRADIUS: an Access-Request must carry one (cdrd's do)
                require_ma="yes" if self.users is not None else "no",
            )
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

    #: what FreeRADIUS logs when another socket holds its port
    BIND_FAILED = re.compile(r"Failed binding to \S+ address .* port (\d+).*: Address already in use")

    def start(self, timeout: float = 20.0, attempts: int = 5) -> None:
        """
        Start it and wait until it has bound its ports and answers a
        Status-Server.  A port that something else took since it was picked
        (FreeRADIUS binds late) is picked again where nobody has been told
        it yet; a port already given out is tried again after a pause (its
        holder may be short-lived), `attempts` times in all.
        """
        for attempt in range(1, attempts + 1):
            outcome = self._start_once(timeout)
            if outcome is None:
                return
            if attempt == attempts:
                raise RuntimeError(
                    f"freeradius could not bind port {outcome} in {attempts} attempts:\n{self.log_text()}")
            if self._port_fixed:
                time.sleep(0.5 * attempt)
            else:
                self._port = free_udp_port()
                if self._auth_port is not None:
                    self._auth_port = free_udp_port()

    def _start_once(self, timeout: float) -> int | None:
        """None once it is up; the port it could not bind if that is why it exited."""
        self.write_config()
        logfile = self.dir / "log" / "radius.log"
        offset = logfile.stat().st_size if logfile.exists() else 0
        log = open(self.dir / "log" / "stdout.log", "ab")
        self.proc = subprocess.Popen(
            [FREERADIUS, "-f", "-d", str(self.dir), "-n", "radiusd"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()

        def this_run() -> str:
            if not logfile.exists():
                return ""
            with open(logfile, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                failed = self.BIND_FAILED.search(this_run())
                if failed:
                    self.proc = None
                    return int(failed.group(1))
                raise RuntimeError(
                    f"freeradius exited with {self.proc.returncode}:\n{self.log_text()}"
                )
            # its own listeners are bound only once it says so: a ping
            # answered before that may come from whoever holds the port
            if "Ready to process requests" in this_run() and self.ping():
                return None
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
            s.sendto(pkt.RequestPacket(), ("127.0.0.1", self._port))
            try:
                data = s.recv(4096)
            except (TimeoutError, ConnectionRefusedError):
                return False
        return len(data) >= 20 and data[0] == 5

    def stop(self) -> None:
        terminate(self.proc)
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


#: a record's first line, FreeRADIUS's `header = "%t"`: "Sun Dec  6 20:44:01 2026"
_HEADER = re.compile(r"[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}")
#: an attribute line: a tab, a name, " = ", a value quoted whole (with \" and
#: \\ inside) or a bare word (numbers, enum names, addresses, 0x octets)
_ATTRIBUTE = re.compile(r'\t([A-Za-z0-9][-A-Za-z0-9_.:]*) = ("(?:[^"\\]|\\.)*"|[^\s"]+)')


def parse_detail(text: str) -> list[dict[str, list[str]]]:
    """
    The complete records of a detail file, strictly.  A record is the
    header line, its attribute lines, `Timestamp` last (FreeRADIUS adds
    it), then an empty line; what follows the last empty line is a record
    still being written and is left for the next read.  Anything else (a
    header inside a record, a line cut short or run on, a record without
    its Timestamp or Acct-Status-Type) raises DetailCorrupt naming the line:
    a half record is never handed on as if it were a whole one.
    """
    out: list[dict[str, list[str]]] = []
    complete, _, _ = text.rpartition("\n\n")
    if not complete:
        return out
    current: dict[str, list[str]] | None = None
    start, header, last = 0, "", None

    def corrupt(number: int, line: str, why: str) -> DetailCorrupt:
        return DetailCorrupt(f"detail file line {number}: {why}: {line[:200]!r}")

    for number, line in enumerate((complete + "\n").split("\n"), start=1):
        if line == "":
            if current is None:
                raise corrupt(number, line, "an empty line outside a record")
            if "Timestamp" not in current or last != "Timestamp":
                raise corrupt(start, header, "a record that does not end with its Timestamp")
            if "Acct-Status-Type" not in current:
                raise corrupt(start, header, "a record without Acct-Status-Type")
            out.append(current)
            current = None
            continue
        if current is None:
            if not _HEADER.fullmatch(line):
                raise corrupt(number, line, "not a record's header line")
            current, start, header, last = {}, number, line, None
            continue
        m = _ATTRIBUTE.fullmatch(line)
        if m is None:
            raise corrupt(number, line, "not an attribute line")
        name, value = m.groups()
        if name == "Timestamp" and name in current:
            raise corrupt(number, line, "a second Timestamp in one record")
        if value[0] == '"':
            value = re.sub(r'\\(["\\])', r"\1", value[1:-1])
        current.setdefault(name, []).append(value)
        last = name
    return out


def libpq_conninfo(url: str) -> str:
    """`postgresql://user@host:port/db` as libpq's key=value string, which
    rlm_sql_postgresql takes whole in `radius_db`."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    parts = {
        "host": u.hostname or "127.0.0.1",
        "port": u.port or 5432,
        "dbname": u.path.lstrip("/"),
        "user": u.username or "postgres",
    }
    if u.password:
        parts["password"] = u.password
    return " ".join(f"{k}={v}" for k, v in parts.items())


def kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
