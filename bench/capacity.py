"""
Capacity benchmark (issue 15): the highest offered call rate whose ACK p99
stays within 100 ms, with the outboxes bounded and every CDR delivered.

    .venv/bin/python bench/capacity.py --mode full --rates 500,1000,2000
    .venv/bin/python bench/capacity.py --mode sqlite --rates 1000,2000,3000 \\
        --tree /work/h15-base --tree .          # baseline and change, alternating
    .venv/bin/python bench/capacity.py --mode sqlite --closed --window 256 --floor

Modes (the server under test):

- ``bare``: bench/bare_server.py (parse and ACK, nothing stored): the floor;
- ``sqlite``: cdrd on SQLite, no outputs;
- ``full``: cdrd on SQLite, RADIUS accounting to a real FreeRADIUS and
  syslog over TCP to a real rsyslog (the test helpers start both, fresh for
  each run); every CDR id stored must appear in FreeRADIUS's detail file and
  in rsyslog's file;
- ``postgresql``: cdrd on a fresh database of its own at 127.0.0.1:5432.

``--store URL`` (sqlite and postgresql): cdrd writes into that store
instead, e.g. the ten million records bench/report.py filled: the same
load against indexes that no longer fit in memory, as after months.

The client (this script with ``client``, a process of its own, so that its
CPU is its own) is **open loop** by default: call i of the run is scheduled
at start + i / rate, round-robin over the gateways, and sent (its events in
one write) when its time comes, whatever is unacknowledged; a call's
latency runs from its *scheduled* time to the ACK covering its last event,
so a client or server that falls behind shows as latency, never as a lower
rate.  With ``--closed`` the client keeps at most ``--window`` events
unacknowledged per gateway, whole calls in one write, for ``--duration``
s, and reports the events acknowledged per second up to the last ACK:
saturation (keep the window small enough that the first ACKs come well
within the duration).

Printed per run: offered and acknowledged calls/s and events/s, ACK p50 /
p99 / max (ms), how late the client sent (p99 of its send lag: large means
client-limited, not server-limited), client and server CPU (% of one core,
from getrusage and /proc), the server's CPU ms per call (the outboxes'
delivery included: the figure a busy, shared machine disturbs least), the
peers' CPU (FreeRADIUS, rsyslog; PostgreSQL's processes in ``postgresql``
mode), the outboxes' largest depth (sampled every 0.25 s from the store)
and the seconds they took to drain after the last ACK, the CPU pressure
at the end of the run (PSI "some" avg10: the share of time something
waited for a CPU; high means the figures are the machine's, not cdrd's),
what cdrd's own /metrics say of the run (its store writer's busy share,
the commit seconds per second: near 100 % the ACKs queue behind the
writer; its transactions a second; and its full garbage collections,
count and mean pause: every thread waits during one), cdrd's CPU split
by thread (``threads 36+42%``: its main thread, the reactor's, and the
others, on SQLite the store's writer; the writer's CPU well under its busy
share means its transactions waited, for the GIL or for a CPU), with ``--disk-probe``
the disk's fdatasync p50/p99 during the run (an 8 KiB flush beside the
store every 50 ms: the machine's disk is shared too), and for ``full`` the
CDRs stored and delivered to each peer.  A rate counts for the capacity only
with ACK p99 <= 100 ms, every event acknowledged, the outboxes drained and
every CDR delivered.

Event lines come from a pool of pre-rendered calls (cdrd.sim.load's shapes)
with only seq and ref filled in when sent; their t= times end at the run's
start.  Only loopback; every subprocess is stopped (SIGTERM, then SIGKILL);
every wait is bounded.  Exit status 0 when every run completed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import deque
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import ingest  # noqa: E402
from bench.ingest import drop_postgres, free_port, postgres_database, stop  # noqa: E402

#: Gateways logging in at once (each next one dials when one is in).
LOGINS_AT_ONCE = 16
#: The objective: ACK p99 at most this (ms) for a rate to count.
P99_LIMIT_MS = 100.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the client (a process of its own) ------------------------------------------


#: --event-times: what t= the events carry
EVENT_TIMES = ("template", "sent")


def call_templates(count: int, seed: int, base_ms: int, times: str = "template") -> list[tuple[bytes, int]]:
    """
    `count` calls as (lines with %d for each line's seq and ref, events).
    `times` "sent": each line's t= is a %s too, for the time it is sent.
    """
    from attrs import evolve

    from cdrd.gateway.codec import format_gateway_time
    from cdrd.sim.client import encode_event
    from cdrd.sim.load import make_call

    rng = random.Random(seed)
    out = []
    for _ in range(count):
        events = make_call(rng, 0, base_ms)
        lines = []
        for ev in events:
            line = encode_event(999999999, evolve(ev, ref=888888888)).replace(b"%", b"%%")
            line = line.replace(b"seq=999999999", b"seq=%d", 1).replace(b"ref=888888888", b"ref=%d", 1)
            if times == "sent":
                line = line.replace(b" t=" + format_gateway_time(ev.t).encode(), b" t=%s", 1)
            lines.append(line)
        out.append((b"".join(lines), len(lines)))
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def run_client(args) -> dict:
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol

    from cdrd.gateway.codec import format_gateway_time, format_message

    base_ms = int(time.time() * 1000)
    templates = call_templates(args.pool, args.seed, base_ms, args.event_times)
    sent_times = args.event_times == "sent"
    total_calls = round(args.rate * args.duration) if not args.closed else 0
    state = {"connected": 0, "t0": None, "sent_calls": 0, "done_sending": False,
             "errors": 0, "lags": [], "latencies": [], "acked_events": 0, "sent_events": 0,
             "last_ack": None, "finished": False}
    gateways: list[Gateway] = []

    class Gateway(Protocol):
        def __init__(self, index: int):
            self.index = index
            self.buf = b""
            self.ready = False
            self.seq = 0  # last seq used
            self.ref = 0
            self.acked = 0
            self.start = 0  # the store's last seq at login (--store: not 0)
            self.track: deque = deque()  # (last seq of a call, scheduled or sent monotonic time)

        def connectionMade(self):
            self.transport.setTcpNoDelay(True)

        def login(self):
            fields = [("proto", "1"), ("gw", str(9000 + self.index)), ("mac", f"0200{self.index:08X}"),
                      ("fxs", "2"), ("fxo", "2"), ("isdn", "0"), ("callref", "0"),
                      ("time", format_gateway_time(int(time.time() * 1000))), ("fw", "capacity")]
            self.transport.write(format_message("LOGIN", fields))

        def dataReceived(self, data):
            self.buf += data
            if b"\n" not in data:
                return
            *lines, self.buf = self.buf.split(b"\n")
            top = 0
            for line in lines:
                if line.startswith(b"ACK seq="):
                    n = int(line[8:].split(b" ", 1)[0])
                    if n > top:
                        top = n
                elif line.startswith(b"HELLO"):
                    self.login()
                elif line.startswith(b"OK"):
                    self.ready = True
                    fields = dict(f.split(b"=", 1) for f in line.split()[1:] if b"=" in f)
                    self.seq = self.acked = self.start = int(fields.get(b"last", b"0"))
                    state["connected"] += 1
                    if state["connected"] == args.gateways:
                        start()
                    else:
                        connect()
                elif line.startswith(b"ERR"):
                    state["errors"] += 1
                    if not self.ready:
                        print(f"login refused: {line!r}", file=sys.stderr)
            if top > self.acked:
                self.acked_to(top)

        def acked_to(self, top: int):
            now = time.monotonic()
            state["acked_events"] += top - self.acked
            state["last_ack"] = now
            self.acked = top
            track, lat = self.track, state["latencies"]
            while track and track[0][0] <= top:
                lat.append(now - track.popleft()[1])
            if args.closed and not state["done_sending"]:
                self.fill(now)
            if state["done_sending"]:
                finish_if_done()

        def call_bytes(self) -> tuple[bytes, int]:
            self.ref += 1
            tmpl, n = templates[(self.index * 7919 + self.ref) % len(templates)]
            first = self.seq + 1
            vals = []
            if sent_times:  # every event of the call "now", as a gateway sends an event when it happens
                now = format_gateway_time(int(time.time() * 1000)).encode()
                for k in range(n):
                    vals += (first + k, self.ref, now)
            else:
                for k in range(n):
                    vals.append(first + k)
                    vals.append(self.ref)
            self.seq += n
            return tmpl % tuple(vals), n

        def fill(self, now: float):
            """Closed loop: whole calls while the window has room."""
            out = []
            while self.seq - self.acked + 8 <= args.window:
                data, n = self.call_bytes()
                out.append(data)
                state["sent_events"] += n
                self.track.append((self.seq, now))
            if out:
                self.transport.write(b"".join(out))

        def connectionLost(self, reason):
            if not state["finished"]:
                state["errors"] += 1

    def start():
        state["t0"] = time.monotonic() + 0.2
        state["ru0"] = resource.getrusage(resource.RUSAGE_SELF)
        if args.closed:
            reactor.callLater(0.2, lambda: [g.fill(time.monotonic()) for g in gateways])
            reactor.callLater(0.2 + args.duration, stop_sending)
        else:
            reactor.callLater(0.2, tick)

    def tick():
        t0 = state["t0"]
        now = time.monotonic()
        due = min(total_calls, int((now - t0) * args.rate) + 1)
        i = state["sent_calls"]
        if i < due:
            state["lags"].append(now - (t0 + i / args.rate))
        touched: dict[Gateway, list[bytes]] = {}
        while i < due:
            g = gateways[i % len(gateways)]
            data, n = g.call_bytes()
            touched.setdefault(g, []).append(data)
            g.track.append((g.seq, t0 + i / args.rate))
            state["sent_events"] += n
            i += 1
        state["sent_calls"] = i
        for g, chunks in touched.items():
            g.transport.write(b"".join(chunks))
        if i < total_calls:
            reactor.callLater(max(0.0, t0 + i / args.rate - time.monotonic()), tick)
        else:
            stop_sending()

    def stop_sending():
        state["done_sending"] = True
        state["sent_at"] = time.monotonic()
        reactor.callLater(args.drain, finish)
        finish_if_done()

    def finish_if_done():
        if all(g.acked >= g.seq for g in gateways):
            finish()

    def finish():
        if state["finished"]:
            return
        state["finished"] = True
        state["end"] = time.monotonic()
        state["ru1"] = resource.getrusage(resource.RUSAGE_SELF)
        for g in gateways:
            g.transport.loseConnection()
        reactor.callLater(0.1, reactor.stop)

    class Connector(Factory):
        def buildProtocol(self, addr):
            g = Gateway(len(gateways))
            gateways.append(g)
            return g

    from twisted.internet.endpoints import TCP4ClientEndpoint

    def connect():
        if state["dialled"] >= args.gateways:
            return
        state["dialled"] += 1
        TCP4ClientEndpoint(reactor, "127.0.0.1", args.port, timeout=10).connect(Connector()) \
            .addErrback(lambda f: (print(f"connect: {f.getErrorMessage()}", file=sys.stderr), finish()))

    # a few connections at a time: cdrd bounds the connections of one
    # address that have not logged in yet (unauthenticated_per_address)
    state["dialled"] = 0
    for _ in range(min(LOGINS_AT_ONCE, args.gateways)):
        connect()
    reactor.callLater(args.duration + args.drain + 30, finish)  # a bound, whatever happens
    reactor.run()

    if state["t0"] is None or "ru1" not in state:
        return {"error": "never started (login?)", "errors": state["errors"]}
    ru0, ru1 = state["ru0"], state["ru1"]
    wall = state["end"] - state["t0"]
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    lat = [x * 1000 for x in state["latencies"]]
    if args.closed:
        span = (state["last_ack"] or state["t0"]) - state["t0"]
    else:
        span = state["sent_at"] - state["t0"]
    sent = state["sent_events"]
    acked = sum(g.acked - g.start for g in gateways)
    calls_done = len(lat)
    offered_calls = total_calls if not args.closed else state["sent_calls"]
    return {
        "closed": args.closed,
        "offered_calls_per_s": args.rate if not args.closed else None,
        "calls": calls_done,
        "events_sent": sent,
        "events_acked": acked,
        "complete": acked >= sent and state["errors"] == 0,
        "errors": state["errors"],
        # closed loop: what was acknowledged up to the last ACK (the server
        # stays saturated while it works off the window after the sending
        # stops); open loop: per second of offered load
        "events_per_s": acked / max(1e-9, span),
        "calls_per_s": calls_done / max(1e-9, span),
        "p50_ms": percentile(lat, 0.50),
        "p99_ms": percentile(lat, 0.99),
        "max_ms": max(lat, default=0.0),
        "send_lag_p99_ms": percentile(state["lags"], 0.99) * 1000,
        "client_cpu_pct": 100 * cpu / wall,
        "wall_s": wall,
        "offered_calls": offered_calls,
    }


# -- the driver ------------------------------------------------------------------


def wait_port(port: int, proc: subprocess.Popen, timeout: float, what: str, logs=()) -> None:
    """bench/ingest.py's wait, stopping the process and showing its logs on failure."""
    try:
        ingest.wait_port(port, proc, timeout, what)
    except RuntimeError as e:
        stop(proc)
        tail = "".join(Path(p).read_text(errors="replace")[-1500:] for p in logs if Path(p).exists())
        raise RuntimeError(f"{e}:\n{tail}") from None


def stat_cpu_seconds(stat: Path) -> float:
    """utime + stime from a /proc stat file (a process's or a thread's); 0 if it is gone."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads (/proc/PID/stat)."""
    return stat_cpu_seconds(Path(f"/proc/{pid}/stat"))


def thread_cpu_seconds(pid: int) -> tuple[float, float]:
    """(the main thread's utime + stime, its other threads'): cdrd's reactor
    and, beside it, the store's threads (on SQLite the writer; the readers
    idle under this load).  A thread's CPU against the writer's busy share
    (its transactions' wall time) tells how long it waited: for the GIL, or
    for a CPU on a busy machine."""
    main = others = 0.0
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        if stat.parent.name == str(pid):
            main += stat_cpu_seconds(stat)
        else:
            others += stat_cpu_seconds(stat)
    return main, others


def postgres_pids() -> list[int]:
    """PostgreSQL's processes on this machine (the postmaster and its children)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().split(" (", 1)[1].startswith("postgres)"):
                out.append(int(stat.parent.name))
        except (OSError, IndexError):
            continue
    return out


def child_pids(pid: int) -> list[int]:
    """The processes a process started (cdrd's outputs process), recursively (/proc/*/stat)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        children = [c for c, p in parents.items() if p == parent]
        found += children
        todo += children
    return found


def cpu_pressure() -> float | None:
    """PSI: % of the last 10 s some runnable task waited for a CPU."""
    try:
        text = Path("/proc/pressure/cpu").read_text()
    except OSError:
        return None
    return float(text.split("avg10=", 1)[1].split()[0])


def environment(tree: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


class DiskProbe:
    """
    `--disk-probe`: the shared disk's fdatasync latency while a run goes:
    a thread writes 8 KiB into a file of its own beside the store and
    fdatasyncs it every `interval` s (an SQLite commit waits for one such
    flush).  Runs over the line with the same CPU a call but fewer, longer
    transactions show here when the disk, not cdrd, was slow.
    """

    def __init__(self, directory: Path, interval: float = 0.05):
        self.path = directory / "disk-probe"
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            block = b"x" * 8192
            while not self._stop.wait(self.interval):
                os.pwrite(fd, block, 0)
                t = time.perf_counter()
                os.fdatasync(fd)
                self.samples.append(time.perf_counter() - t)
        finally:
            os.close(fd)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join(10)
        ts = sorted(self.samples)
        if not ts:
            return {}
        return {"disk_sync_p50_ms": 1000 * ts[len(ts) // 2],
                "disk_sync_p99_ms": 1000 * ts[min(len(ts) - 1, int(len(ts) * 0.99))]}


class Outboxes:
    """Samples the outbox depth from the store every `interval` s (a thread)."""

    def __init__(self, database: str, interval: float = 0.25):
        self.database = database
        self.interval = interval
        self.max_depth = 0
        self.last = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def depth(self) -> int:
        if self.database.startswith("sqlite:"):
            path = self.database[len("sqlite:"):]
            if not Path(path).exists():
                return 0
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
            try:
                return conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
            except sqlite3.OperationalError:
                return 0
            finally:
                conn.close()
        import psycopg

        try:
            with psycopg.connect(self.database, connect_timeout=5) as conn:
                return conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
        except psycopg.Error:
            return 0

    def _run(self):
        while not self._stop.wait(self.interval):
            self.last = self.depth()
            self.max_depth = max(self.max_depth, self.last)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join(10)

    def drain(self, timeout: float) -> float | None:
        """Seconds until the outbox is empty, or None after `timeout`."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.depth() == 0:
                return time.monotonic() - t0
            time.sleep(0.1)
        return None


def stored_cdrs(database: str) -> set[str]:
    if database.startswith("sqlite:"):
        conn = sqlite3.connect(f"file:{database[len('sqlite:'):]}?mode=ro", uri=True, timeout=10)
        try:
            return {r[0] for r in conn.execute("SELECT id FROM cdrs")}
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(database, connect_timeout=5) as conn:
        return {r[0] for r in conn.execute("SELECT id FROM cdrs")}


def one_run(mode: str, tree: Path, rate: float, args, tmp: Path) -> dict:
    """Start the server (and its peers), run the client, check delivery."""
    from tests.accounting.freeradius import FreeRadius, parse_detail
    from tests.outputs.rsyslog import Rsyslog

    tmp.mkdir(parents=True)
    env = environment(tree)
    peers: list = []
    server = None
    probe = None
    pg_name = None
    database = None
    result: dict = {"mode": mode, "tree": str(tree), "rate": rate}
    try:
        port = free_port()
        if mode == "bare":
            server = subprocess.Popen(
                [sys.executable, str(tree / "bench" / "bare_server.py"),
                 "--endpoint", f"tcp:{port}:interface=127.0.0.1:backlog=1024", "--lifetime", "1800"],
                cwd=tree, env=env, stdout=open(tmp / "bare.log", "wb"), stderr=subprocess.STDOUT)
            wait_port(port, server, 15, "bare server", [tmp / "bare.log"])
        else:
            web_port = free_port()
            if args.store:
                database = args.store  # a store that holds months already: kept
            elif mode == "postgresql":
                database, pg_name = postgres_database()
            else:
                database = f"sqlite:{tmp / 'cdrd.sqlite'}"
            config = (
                "[server]\n"
                f'gateway_endpoint = "tcp:{port}:interface=127.0.0.1:backlog=1024"\n'
                f'web_endpoint = "tcp:{web_port}:interface=127.0.0.1"\n'
                f'database = "{database}"\n'
                "allow_unknown_gateways = true\n"
            )
            if mode == "full" and args.outputs_process and "class OutputsConfig" in (
                    tree / "cdrd" / "config.py").read_text():
                config += '[outputs]\ndelivery = "process"\n'
                result["delivery"] = "process"
            if mode == "full":
                radius = FreeRadius(tmp / "radius")
                radius.start()
                peers.append(radius)
                rsyslog = Rsyslog(tmp / "rsyslog")
                rsyslog.start()
                peers.append(rsyslog)
                config += (
                    "[radius]\n"
                    "[[radius.servers]]\n"
                    f'address = "{radius.address}"\n'
                    f'secret = "{radius.secret}"\n'
                    "[syslog]\n"
                    f'target = "tcp:127.0.0.1:{rsyslog.tcp}"\n'
                )
            (tmp / "cdrd.toml").write_text(config)
            twistd = tree / ".venv" / "bin" / "twistd"
            server = subprocess.Popen(
                [str(twistd), "-n", "--pidfile=", f"--logfile={tmp / 'cdrd.log'}", "cdrd",
                 "--config", str(tmp / "cdrd.toml")],
                cwd=tree, env=env, stdout=open(tmp / "cdrd.out", "wb"), stderr=subprocess.STDOUT)
            wait_port(port, server, 60, "cdrd", [tmp / "cdrd.out", tmp / "cdrd.log"])
        outboxes = Outboxes(database) if database else None
        if outboxes:
            outboxes.start()
        peer_pids = [p.proc.pid for p in peers if getattr(p, "proc", None)] + \
                    [p.process.pid for p in peers if getattr(p, "process", None)]
        cpu0 = cpu_seconds(server.pid)
        threads0 = thread_cpu_seconds(server.pid) if mode != "bare" else None
        children0 = {c: cpu_seconds(c) for c in child_pids(server.pid)}
        seen0 = cdrd_metrics(web_port) if mode != "bare" else {}
        peer0 = {p: cpu_seconds(p) for p in peer_pids}
        if mode == "postgresql":
            # the server's processes (its backends come and go: one born
            # during the run counts whole)
            peer0.update((p, cpu_seconds(p)) for p in postgres_pids())
        probe = DiskProbe(tmp) if args.disk_probe else None
        if probe:
            probe.start()
        w0 = time.monotonic()
        cmd = [sys.executable, str(Path(__file__).resolve()), "client", "--port", str(port),
               "--gateways", str(args.gateways), "--rate", str(rate), "--duration", str(args.duration),
               "--window", str(args.window), "--seed", str(args.seed), "--drain", str(args.drain),
               "--event-times", args.event_times]
        if args.closed:
            cmd.append("--closed")
        spies = []
        if args.py_spy and mode != "bare":
            # py-spy (pip install py-spy) samples cdrd while the load runs,
            # and its outputs process in a file of its own (-child)
            for pid, suffix in ((server.pid, ""), *((c, "-child") for c in children0)):
                spies.append(subprocess.Popen(
                    [str(Path(sys.executable).parent / "py-spy"), "record", "--gil", "--nonblocking",
                     "--format", "raw", "-o", str(args.py_spy / f"{mode}-{tree.name}-{rate:g}{suffix}.txt"),
                     "-d", str(int(args.duration) + 1), "-p", str(pid)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        done = subprocess.run(cmd, cwd=ROOT, env=environment(ROOT), capture_output=True,
                              timeout=args.duration + args.drain + 120)
        wall = time.monotonic() - w0
        result["cpu_pressure"] = cpu_pressure()
        if probe:
            result.update(probe.stop())
            probe = None
        for spy in spies:
            spy.wait(30)
        result.update(own_view(seen0, cdrd_metrics(web_port) if mode != "bare" else {}, wall))
        # cdrd's own process; its outputs process apart (what it took meanwhile)
        children = sum(cpu_seconds(c) - children0.get(c, 0.0) for c in child_pids(server.pid))
        result["server_cpu_pct"] = 100 * (cpu_seconds(server.pid) - cpu0) / wall
        if threads0 is not None:
            threads1 = thread_cpu_seconds(server.pid)
            result["main_thread_cpu_pct"] = 100 * (threads1[0] - threads0[0]) / wall
            result["other_threads_cpu_pct"] = 100 * (threads1[1] - threads0[1]) / wall
        result["child_cpu_pct"] = 100 * children / wall
        peers_now = set(peer_pids) | (set(postgres_pids()) if mode == "postgresql" else set())
        result["peers_cpu_pct"] = 100 * sum(cpu_seconds(p) - peer0.get(p, 0.0) for p in peers_now) / wall
        out = done.stdout.decode().strip().splitlines()
        if not out:
            raise RuntimeError(f"client failed ({done.returncode}): {done.stderr.decode()[-1500:]}")
        result.update(json.loads(out[-1]))
        if "error" in result:
            raise RuntimeError(f"client: {result['error']}: {done.stderr.decode()[-1500:]}")
        if outboxes:
            result["drain_s"] = outboxes.drain(args.drain)
            outboxes.stop()
            result["outbox_max"] = outboxes.max_depth
        # CPU per call, the outboxes' delivery included: what a busy shared
        # machine changes least
        result["server_cpu_s"] = cpu_seconds(server.pid) - cpu0 + sum(
            cpu_seconds(c) - children0.get(c, 0.0) for c in child_pids(server.pid))
        result["server_cpu_ms_per_call"] = 1000 * result["server_cpu_s"] / max(1, result["calls"])
        if mode == "full":
            cdrs = stored_cdrs(database)
            # FreeRADIUS and rsyslog write asynchronously: a bounded wait
            deadline = time.monotonic() + 20
            while True:
                radius_ids = {i for r in parse_detail(radius.detail_path.read_text(errors="replace"))
                              for i in r.get("cdrd-CDR-Id", [])} if radius.detail_path.exists() else set()
                syslog_ids = {r[5] for r in rsyslog.cdr_records()}
                if (cdrs <= radius_ids and cdrs <= syslog_ids) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            result["cdrs"] = len(cdrs)
            result["cdrs_radius"] = len(cdrs & radius_ids)
            result["cdrs_syslog"] = len(cdrs & syslog_ids)
        result["delivered"] = mode != "full" or (
            result["cdrs_radius"] == result["cdrs"] == result["cdrs_syslog"])
        if database:
            result["drained"] = result.get("drain_s") is not None
    except (RuntimeError, subprocess.TimeoutExpired, subprocess.CalledProcessError, OSError) as e:
        result["error"] = str(e)[-2000:]
    finally:
        if probe:
            probe.stop()
        stop(server)
        for p in peers:
            p.stop()
        if pg_name:
            drop_postgres(pg_name)
    return result


def cdrd_metrics(web_port: int) -> dict:
    """cdrd's /metrics as {(name, generation label or ""): value}; {} if it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/metrics", timeout=10) as page:
            text = page.read().decode()
    except OSError:
        return {}
    return {(s.name, s.labels.get("generation", "")): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def own_view(before: dict, after: dict, wall: float) -> dict:
    """
    What cdrd's own metrics say of the run: the store writer's busy fraction
    (one transaction in flight at a time: the commit seconds per second), its
    transactions a second, and the garbage collections of each generation
    (count, mean pause); absent where the tree's cdrd has no such metric.
    """
    def delta(name, generation=""):
        key = (name, generation)
        return after[key] - before.get(key, 0.0) if key in after else None
    view = {}
    busy = delta("cdrd_store_commit_seconds_sum")
    if busy is not None:
        view["writer_busy"] = busy / wall
        # transactions a second: each one ACKs every gateway with events in it (a send each)
        view["commits_per_s"] = delta("cdrd_store_commit_seconds_count") / wall
    # per generation (0, 1, 2: a full one): collections, and their mean pause
    view["gc"] = [
        (int(n), 1000 * delta("cdrd_gc_pause_seconds_sum", g) / n if n else 0.0)
        for g in "012" for n in [delta("cdrd_gc_pause_seconds_count", g)] if n is not None
    ]
    return view


def passed(r: dict) -> bool:
    return ("error" not in r and r.get("complete") and r.get("delivered", True)
            and r.get("drained", True) and r["p99_ms"] <= P99_LIMIT_MS)


def show(r: dict, trees: list[Path]) -> str:
    name = r["mode"] if len(trees) == 1 else f"{r['mode']}@{Path(r['tree']).name}"
    if r.get("delivery"):
        name += f"/{r['delivery']}"
    if "error" in r:
        return f"{name:<22} {r['rate']:>7g} FAILED: {r['error'].splitlines()[-1] if r['error'] else ''}"
    extra = ""
    if "outbox_max" in r:
        drain = "-" if r.get("drain_s") is None else f"{r['drain_s']:.1f}"
        extra += f" {r['outbox_max']:>7d} {drain:>6}"
    if r.get("child_cpu_pct"):
        extra += f"  outputs process {r['child_cpu_pct']:.0f}%"
    if r.get("cpu_pressure") is not None:
        extra += f"  psi {r['cpu_pressure']:.0f}%"
    if r.get("disk_sync_p50_ms") is not None:
        extra += f"  disk sync {r['disk_sync_p50_ms']:.1f}/{r['disk_sync_p99_ms']:.1f}ms"
    if r.get("writer_busy") is not None:
        extra += f"  writer {100 * r['writer_busy']:.0f}%"
    if r.get("commits_per_s"):
        extra += f" {r['commits_per_s']:.0f} txn/s"
    if r.get("main_thread_cpu_pct") is not None:
        extra += f"  threads {r['main_thread_cpu_pct']:.0f}+{r['other_threads_cpu_pct']:.0f}%"
    if r.get("gc"):
        extra += "  gc " + " ".join(f"{n}x{ms:.1f}" for n, ms in r["gc"]) + "ms"
    if "cdrs" in r:
        extra += f"  cdrs {r['cdrs']} radius {r['cdrs_radius']} syslog {r['cdrs_syslog']}"
    offered = "closed" if r["closed"] else f"{r['rate']:g}"
    verdict = "" if r["closed"] else ("  ok" if passed(r) else "  over")
    return (f"{name:<22} {offered:>7} {r['calls_per_s']:>8.0f} {r['events_per_s']:>9.0f} "
            f"{r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['max_ms']:>8.1f} {r['send_lag_p99_ms']:>7.1f} "
            f"{r['client_cpu_pct']:>5.0f} {r['server_cpu_pct']:>5.0f} {r['server_cpu_ms_per_call']:>6.2f} "
            f"{r['peers_cpu_pct']:>5.0f}"
            f"{extra}{'' if r['complete'] else '  INCOMPLETE'}{verdict}")


HEADER = (f"{'server':<22} {'offered':>7} {'calls/s':>8} {'events/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8} {'lag ms':>7} {'cli%':>5} {'srv%':>5} {'ms/call':>6} {'peer%':>5} {'outbox':>7} "
          f"{'drain':>6}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    client = bool(argv) and argv[0] == "client"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=["bare", "sqlite", "full", "postgresql"], default="sqlite")
    p.add_argument("--rates", default="500,1000,2000", help="offered calls/s, comma-separated, ascending")
    p.add_argument("--tree", action="append", type=Path,
                   help="a checkout with its own .venv to run cdrd from (repeat: alternating rounds)")
    p.add_argument("--rounds", type=int, default=1, help="each rate this many times per tree")
    p.add_argument("--gateways", type=int, default=100)
    p.add_argument("--duration", type=float, default=10.0, help="seconds of offered load")
    p.add_argument("--drain", type=float, default=30.0, help="max seconds to wait for ACKs / outboxes")
    p.add_argument("--window", type=int, default=256, help="closed loop: unacknowledged events per gateway")
    p.add_argument("--closed", action="store_true", help="closed loop (saturation) instead of paced")
    p.add_argument("--pool", type=int, default=2000, help="distinct pre-rendered calls")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--event-times", choices=EVENT_TIMES, default="template",
                   help="the events' t=: the pool's own (each call ends at the run's start, so the"
                        " times indexes take scattered inserts), or the time each call is sent (a gateway"
                        " sends each event when it happens: times near now)")
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--stop-above", action="store_true",
                   help="stop a tree's rates after its first rate over the objective")
    p.add_argument("--floor", action="store_true",
                   help="also run the bare server in every round (the floor, same run)")
    p.add_argument("--py-spy", type=Path, help="a directory: a py-spy --gil profile of cdrd per run")
    p.add_argument("--store", help="sqlite or postgresql: write into this store (a URL as in [server] database,"
                                    " e.g. one bench/report.py filled with ten million records) instead of"
                                    " a fresh one; it is kept, and the gateways go on from its last seq")
    p.add_argument("--outputs-process", action="store_true",
                   help='full: [outputs] delivery = "process" in the trees that have the setting')
    p.add_argument("--disk-probe", action="store_true",
                   help="an 8 KiB write and fdatasync beside the store every 50 ms during each run:"
                        " the disk's flush p50/p99 (is the machine's disk the slow part?)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv[1:] if client else argv)
    if client:
        print(json.dumps(run_client(args)), flush=True)
        return 0

    trees = [t.resolve() for t in (args.tree or [ROOT])]
    for t in trees:
        if args.mode != "bare" and not (t / ".venv" / "bin" / "twistd").exists():
            print(f"--tree {t}: no .venv/bin/twistd there (make venv)", file=sys.stderr)
            return 2
    rates = [0.0] if args.closed else [float(r) for r in args.rates.split(",") if r.strip()]
    loop = f"closed loop, window {args.window}" if args.closed else "open loop"
    print(f"mode {args.mode}, {args.gateways} gateways, {loop}, event times {args.event_times}, "
          f"{args.duration:g} s a run, loadavg before {os.getloadavg()[0]:.2f} (the machine is shared)", flush=True)
    print(HEADER, flush=True)
    results = []
    over: set[Path] = set()
    with tempfile.TemporaryDirectory(prefix="cdrd-capacity-") as tmpdir:
        n = 0
        for rate in rates:
            for rnd in range(args.rounds):
                order = trees if (rnd + len(results)) % 2 == 0 else list(reversed(trees))
                runs = [(args.mode, tree) for tree in order]
                if args.floor and args.mode != "bare":
                    runs.insert(rnd % 2 * len(runs), ("bare", ROOT))  # first, then last: alternating
                floor = None
                for mode, tree in runs:
                    if tree in over and mode == args.mode:
                        continue
                    n += 1
                    r = one_run(mode, tree, rate, args, Path(tmpdir) / f"run{n}")
                    results.append(r)
                    print(show(r, trees), flush=True)
                    if mode == "bare":
                        floor = r
                    elif args.stop_above and not args.closed and not passed(r):
                        over.add(tree)
                if floor is not None and "error" not in floor and args.closed:
                    for r in results[-len(runs):]:
                        if r["mode"] != "bare" and "error" not in r:
                            print(f"  {Path(r['tree']).name}/bare: {r['events_per_s'] / floor['events_per_s']:.2f}"
                                  f" of the floor's events/s (the floor's server at {floor['server_cpu_pct']:.0f} %"
                                  f" of a core, its client at {floor['client_cpu_pct']:.0f} %)"
                                  + ("" if floor["server_cpu_pct"] >= 90 else
                                     ": the floor was NOT saturated, the ratio is an upper bound"), flush=True)
    if not args.closed:
        for tree in trees:
            # a rate counts only when every run of it passed: on a shared
            # machine one lucky run of several is not a capacity
            runs_at: dict[float, list[bool]] = {}
            for r in results:
                if r["tree"] == str(tree) and r["mode"] == args.mode:
                    runs_at.setdefault(r["rate"], []).append(passed(r))
            ok = [rate for rate, verdicts in runs_at.items() if all(verdicts)]
            name = args.mode if len(trees) == 1 else f"{args.mode}@{tree.name}"
            mixed = sorted(rate for rate, verdicts in runs_at.items() if any(verdicts) and not all(verdicts))
            print(f"capacity {name}: {max(ok) if ok else 0:g} calls/s at ACK p99 <= {P99_LIMIT_MS:g} ms"
                  " in every run (of the rates tried)"
                  + ("".join(f"; {rate:g} calls/s passed {sum(runs_at[rate])} of {len(runs_at[rate])} runs"
                             for rate in mixed)))
    if args.json:
        print(json.dumps({"params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                                     if k != "tree"}, "results": results}))
    return 0 if all("error" not in r and r.get("complete") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
