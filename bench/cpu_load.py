"""
A competing process for benchmarks run under CPU pressure: it spins for
`--busy` seconds, sleeps for `--idle`, and stops by itself after
`--seconds`.  `--busy 0.06 --idle 0.04` takes about 60 % of a core, which
pushed cdrd's store writer to its knee at 2 000 calls/s in the full
pipeline on the seventeenth session's 2-core VM (docs/benchmarks.md, "A
staging table for new events, measured and not kept").

    .venv/bin/python bench/cpu_load.py --busy 0.06 --idle 0.04 --seconds 900 &
    .venv/bin/python bench/capacity.py --mode full --outputs-process --rates 2000 ...
    kill %1
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--busy", type=float, default=0.03, help="seconds of spinning per cycle")
    p.add_argument("--idle", type=float, default=0.07, help="seconds of sleep per cycle")
    p.add_argument("--seconds", type=float, default=600.0, help="stop after this long")
    args = p.parse_args()
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        spin_until = time.monotonic() + args.busy
        while time.monotonic() < spin_until:
            pass
        time.sleep(args.idle)


if __name__ == "__main__":
    main()
