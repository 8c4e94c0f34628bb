"""
Benchmark: N CDRs through the SyslogSink to a real rsyslog (TCP octet-counting,
UDP, the local socket), from commit until rsyslog's file holds every line;
and the worst reactor lag meanwhile (a 10 ms LoopingCall), which shows the
syslog path does not stall the reactor.

    .venv/bin/python -m tests.outputs.bench_syslog [N]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from twisted.internet import reactor, task

from cdrd.config import SyslogConfig
from cdrd.outputs.syslog import SyslogSink
from tests.outbox import OutboxStore, Writer
from tests.outputs.cdrs import numbered
from tests.outputs.rsyslog import Rsyslog


class LineCounter:
    """Counts the CDR lines rsyslog wrote, reading only what is new."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self.count = 0
        self.rest = b""

    def __call__(self) -> int:
        if self.path.exists():
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = self.rest + f.read()
            self.offset += len(data) - len(self.rest)
            *lines, self.rest = data.split(b"\n")
            self.count += sum(1 for line in lines if b" probe " not in line)
        return self.count


async def one(rsyslog, target, n, **kw):
    store = OutboxStore()
    sink = SyslogSink(SyslogConfig(target=target, hostname="bench", **kw), store,
                      Writer(store), reactor, reactor)
    counted = LineCounter(rsyslog.out)
    sink.startService()
    await task.deferLater(reactor, 0.3, lambda: None)
    outputs = numbered(0, n, per_call=5)
    payloads = sink.spool(outputs, 0)
    t0 = time.monotonic()
    store.spooled("syslog", payloads)
    sink.committed(outputs)
    lag = [0.0]
    last = [time.monotonic()]

    def tick():
        now = time.monotonic()
        lag[0] = max(lag[0], now - last[0] - 0.01)
        last[0] = now

    ticker = task.LoopingCall(tick)
    ticker.start(0.01)
    progress, stalled = -1, 0
    for _ in range(6000):
        got = counted()
        if got >= n and not store.items:
            break
        progress, stalled = got, (stalled + 1 if got == progress else 0)
        if stalled > 100:  # 5 s without a new line: what is missing is lost (UDP)
            break
        await task.deferLater(reactor, 0.05, lambda: None)
    elapsed = time.monotonic() - t0
    ticker.stop()
    await sink.stopService()
    got = counted()
    print(f"{target.split(':')[0]:5} {kw or ''}: {got}/{n} lines in {elapsed:.2f}s "
          f"= {got / elapsed:,.0f}/s, worst reactor lag {lag[0] * 1000:.1f} ms, "
          f"status {sink.status()}")


async def main(n):
    with tempfile.TemporaryDirectory() as d:
        rsyslog = Rsyslog(Path(d))
        rsyslog.start()
        try:
            await one(rsyslog, f"tcp:127.0.0.1:{rsyslog.tcp}", n)
            await one(rsyslog, f"udp:127.0.0.1:{rsyslog.udp}", n)
            await one(rsyslog, f"unix:{rsyslog.socket}", n)
        finally:
            rsyslog.stop()


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    task.react(lambda _: __import__("twisted.internet.defer", fromlist=["x"])
               .ensureDeferred(main(count)))
