"""
Ingest benchmark: events acknowledged per second and ACK latency with many
gateways, for cdrd and, on the same traffic in the same run, for a bare
Twisted GWP/1 server (bench/bare_server.py: same codec, no session rules,
nothing stored).  Prints both and the ratio cdrd/bare.

    .venv/bin/python bench/ingest.py [--gateways 50] [--rate 400] [--duration 10]
                                     [--window 64] [--database sqlite|postgresql]
                                     [--only cdrd|bare] [--json]

Every process is a subprocess on loopback: the bare server, cdrd
(``twistd -n --pidfile= cdrd --config TMP.toml``, a temporary SQLite
database or a fresh PostgreSQL database at 127.0.0.1:5432, unknown
gateways allowed) and, for each server in turn, the load generator
(``cdrd-sim load ... --json``), with the same seed and parameters.
Everything is bounded: the load places calls for --duration s, waits at
most --drain s for the last ACKs, and each subprocess is stopped (SIGTERM,
then SIGKILL) at the end.  Exit status 0 when every run completed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.settimeout(2.0)
                if s.recv(512).startswith(b"HELLO "):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} not listening on {port} after {timeout} s")


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def environment() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def start_bare(tmp: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    log = open(tmp / "bare.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "bare_server.py"),
         "--endpoint", f"tcp:{port}:interface=127.0.0.1:backlog=1024", "--lifetime", "1800"],
        cwd=ROOT, env=environment(), stdout=log, stderr=subprocess.STDOUT,
    )
    wait_port(port, proc, 15, "bare server")
    return proc, port


def postgres_database() -> tuple[str, str]:
    """A fresh database on the local PostgreSQL (user postgres, trust)."""
    name = f"cdrd_bench_{uuid.uuid4().hex[:8]}"
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-q", "-c", f"CREATE DATABASE {name}"],
                   check=True, capture_output=True)
    return f"postgresql://postgres@127.0.0.1:5432/{name}", name


def drop_postgres(name: str) -> None:
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-q", "-c",
                    f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], capture_output=True)


def start_cdrd(tmp: Path, database: str, extra_config: str = "", logfile: Path | None = None,
               timeout: float = 30) -> tuple[subprocess.Popen, int]:
    """
    cdrd on `database` (a server.database URL); `extra_config` is appended
    to its config file (tables after [server]); its log goes to `logfile`
    (default tmp/cdrd.log), its output next to it (.out).
    """
    port, web = free_port(), free_port()
    logfile = logfile or tmp / "cdrd.log"
    output = logfile.with_suffix(".out")
    config = tmp / "cdrd.toml"
    config.write_text(
        "[server]\n"
        f'gateway_endpoint = "tcp:{port}:interface=127.0.0.1"\n'
        f'web_endpoint = "tcp:{web}:interface=127.0.0.1"\n'
        f'database = "{database}"\n'
        "allow_unknown_gateways = true\n" + extra_config
    )
    proc = subprocess.Popen(
        [str(BIN / "twistd"), "-n", "--pidfile=", f"--logfile={logfile}", "cdrd",
         "--config", str(config)],
        cwd=ROOT, env=environment(), stdout=open(output, "wb"), stderr=subprocess.STDOUT,
    )
    try:
        wait_port(port, proc, timeout, "cdrd")
    except RuntimeError:
        stop(proc)
        tail = output.read_text(errors="replace")[-1500:]
        if logfile.exists():
            tail += logfile.read_text(errors="replace")[-1500:]
        raise RuntimeError(f"cdrd did not start:\n{tail}") from None
    return proc, port


def load(port: int, args) -> dict:
    cmd = [str(BIN / "cdrd-sim"), "load", "--server", f"tcp:127.0.0.1:{port}",
           "--gateways", str(args.gateways), "--rate", str(args.rate),
           # the same calls for both servers: a count, the duration only a safety bound
           "--calls", str(round(args.rate * args.duration)),
           "--duration", str(2 * args.duration + 5), "--window", str(args.window),
           "--seed", str(args.seed), "--drain-timeout", str(args.drain), "--json"]
    limit = 2 * args.duration + args.drain + 60
    done = subprocess.run(cmd, cwd=ROOT, env=environment(), capture_output=True, timeout=limit)
    out = done.stdout.decode().strip().splitlines()
    if not out:
        raise RuntimeError(f"cdrd-sim load failed ({done.returncode}): {done.stderr.decode()[-1500:]}")
    return json.loads(out[-1])


def row(name: str, r: dict) -> str:
    return (f"{name:<6} {r['events_acked_per_s']:>10.0f} {r['ack_p50_ms']:>9.1f} {r['ack_p99_ms']:>9.1f} "
            f"{r['ack_max_ms']:>9.1f} {r['acked']:>9d}/{r['events']:<9d} "
            f"{'complete' if r['complete'] else 'INCOMPLETE'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="cdrd ingest benchmark (cdrd vs a bare GWP/1 server)")
    p.add_argument("--gateways", type=int, default=50)
    p.add_argument("--rate", type=float, default=400.0, help="calls per second over all gateways")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of placing calls")
    p.add_argument("--window", type=int, default=64, help="unacknowledged events per gateway")
    p.add_argument("--drain", type=float, default=60.0, help="max seconds to wait for the last ACKs")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    p.add_argument("--only", choices=["cdrd", "bare"])
    p.add_argument("--json", action="store_true", help="print the results as one JSON line")
    p.add_argument("--per-second", action="store_true", help="also print events acked per second")
    args = p.parse_args(argv)

    results: dict[str, dict] = {}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="cdrd-bench-") as tmpdir:
        tmp = Path(tmpdir)
        if args.only != "cdrd":
            bare = None
            try:
                bare, port = start_bare(tmp)
                results["bare"] = load(port, args)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                errors["bare"] = str(e)
            finally:
                stop(bare)
        if args.only != "bare":
            cdrd = None
            pg_name = None
            try:
                if args.database == "postgresql":
                    database, pg_name = postgres_database()
                else:
                    database = f"sqlite:{tmp / 'cdrd.sqlite'}"
                cdrd, port = start_cdrd(tmp, database)
                results["cdrd"] = load(port, args)
            except (RuntimeError, subprocess.TimeoutExpired, subprocess.CalledProcessError) as e:
                errors["cdrd"] = str(e)
            finally:
                stop(cdrd)
                if pg_name:
                    drop_postgres(pg_name)

    ratio = None
    if "bare" in results and "cdrd" in results and results["bare"]["events_acked_per_s"]:
        ratio = results["cdrd"]["events_acked_per_s"] / results["bare"]["events_acked_per_s"]
    if args.json:
        print(json.dumps({"params": vars(args), "results": results, "errors": errors,
                          "ratio_cdrd_bare": ratio}))
    else:
        print(f"{args.gateways} gateways, {args.rate:g} calls/s offered for {args.duration:g} s, "
              f"window {args.window}, database {args.database}")
        print(f"{'server':<6} {'events/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9} "
              f"{'acked/events':>19}")
        for name in ("bare", "cdrd"):
            if name in results:
                print(row(name, results[name]))
            elif name in errors:
                print(f"{name:<6} FAILED: {errors[name]}")
        if args.per_second:
            print("second " + " ".join(f"{n + ' acked':>11}" for n in results))
            seconds = sorted({s for r in results.values() for s, _, _ in r["per_second"]})
            for sec in seconds:
                counts = [dict((s, a) for s, _, a in r["per_second"]).get(sec, 0)
                          for r in results.values()]
                print(f"{sec:6d} " + " ".join(f"{c:>11d}" for c in counts))
        if ratio is not None:
            print(f"cdrd/bare: {ratio:.2f} of the events/s; p99 latency "
                  f"{results['cdrd']['ack_p99_ms']:.1f} ms vs {results['bare']['ack_p99_ms']:.1f} ms")
    ok = not errors and all(r["complete"] for r in results.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
