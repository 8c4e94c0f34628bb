"""
Gateways logging in through a flood of silent connections (issue 11,
connection budgets): a real ``twistd -n cdrd`` on SQLite; `--silent`
connections from 127.0.0.1 that never log in are opened and held, then
`--logins` gateways on 127.0.0.2 log in one after the other.  Prints how
many got OK and how long each LOGIN took (connect to OK), without and
with the flood, in the same run.

    .venv/bin/python bench/budgets.py --silent 2000 --logins 50
"""

from __future__ import annotations

import argparse
import resource
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import start_cdrd, stop  # noqa: E402

from cdrd.gateway.codec import format_gateway_time, format_message, parse_line  # noqa: E402


def read_line(sock: socket.socket, buf: bytearray) -> bytes:
    while b"\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return line


def login(port: int, n: int) -> tuple[str, float]:
    """One gateway's connect, HELLO, LOGIN, answer: (verb or error, seconds)."""
    began = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30, source_address=("127.0.0.2", 0)) as s:
            buf = bytearray()
            hello = parse_line(read_line(s, buf))
            if hello.verb != "HELLO":  # refused at connect
                return f"{hello.verb} {hello.fields.get('code', '')}".strip(), time.monotonic() - began
            s.sendall(format_message("LOGIN", {
                "proto": "1", "gw": f"b{n}", "mac": f"{n:012X}", "fxs": "2", "fxo": "0", "isdn": "0",
                "callref": "1", "time": format_gateway_time(int(time.time() * 1000))}))
            answer = parse_line(read_line(s, buf)).verb
            if answer == "OK":
                s.sendall(b"LOGOUT\n")
    except (OSError, ConnectionError) as e:
        answer = type(e).__name__
    return answer, time.monotonic() - began


def run(port: int, logins: int, label: str) -> None:
    results = [login(port, n) for n in range(logins)]
    ok = [t * 1000 for verb, t in results if verb == "OK"]
    others = sorted({verb for verb, _ in results if verb != "OK"})
    figures = (f"p50 {statistics.median(ok):7.1f} ms  max {max(ok):7.1f} ms" if ok else "p50       -       max       -")
    print(f"{label:28} {len(ok):4}/{logins} OK  {figures}  {', '.join(others)}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--silent", type=int, default=2000)
    p.add_argument("--logins", type=int, default=50)
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.silent + 1024)), hard))
    with tempfile.TemporaryDirectory(prefix="cdrd-bench-") as tmp:
        tmp = Path(tmp)
        # a login timeout beyond the run: only the budgets make room
        cdrd, port = start_cdrd(tmp, f"sqlite:{tmp / 'cdrd.sqlite'}", "login_timeout = 600\n")
        silent = []
        try:
            run(port, args.logins, "no flood")
            for _ in range(args.silent):  # bounded: one connect each
                try:
                    silent.append(socket.create_connection(("127.0.0.1", port), timeout=30))
                except OSError:
                    break
            run(port, args.logins, f"{len(silent)} silent held")
        finally:
            for s in silent:
                s.close()
            stop(cdrd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
