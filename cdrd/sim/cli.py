"""
``cdrd-sim``: replay an event script as a gateway, or put load on a server.

    cdrd-sim replay --server tcp:127.0.0.1:6510 --gw 8200 --mac 000C2A020082 \\
        [--secret S] [--date 2026-11-22] FILE
    cdrd-sim load --server tcp:127.0.0.1:6510 --gateways 50 --rate 200 --duration 10

The only module of cdrd.sim that uses the global reactor.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from importlib.resources import files

from twisted.internet import defer
from twisted.internet.endpoints import clientFromString
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from cdrd.sim.client import GatewayIdentity, LoginRejected

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cdrd-sim", description="GWP/1 gateway simulator and load generator")
    p.add_argument("-v", "--verbose", action="store_true", help="log every connection step to stderr")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("replay", help="send an event script as one gateway, exit when all is acked")
    r.add_argument("--server", required=True, help="Twisted client endpoint, e.g. tcp:127.0.0.1:6510")
    r.add_argument("--gw", required=True, help="gateway id")
    r.add_argument("--mac", required=True, help="12 hex digits")
    r.add_argument("--secret", help="sign the LOGIN with this secret (or $CDRD_SIM_SECRET)")
    r.add_argument("--date", help="date (YYYY-MM-DD) of the script's times of day")
    r.add_argument("--fxs", type=int, default=2)
    r.add_argument("--fxo", type=int, default=2)
    r.add_argument("--isdn", type=int, default=0)
    r.add_argument("--callref", type=int, help="LOGIN callref (default: lowest ref of the script - 1)")
    r.add_argument("--boot", help="LOGIN boot token (default: none)")
    r.add_argument("--fw", help="LOGIN fw text")
    r.add_argument("--seq", type=int, help="first seq (default: the server's last + 1)")
    r.add_argument("--clock-offset", type=float, default=0.0,
                   help="seconds the gateway's LOGIN clock is wrong by (default 0)")
    r.add_argument("--window", type=int, default=64, help="unacknowledged events in flight (default 64)")
    r.add_argument("--speed", type=float,
                   help="pace events by their times: 1 = real time, 60 = a minute per second "
                        "(default: all at once)")
    r.add_argument("--timeout", type=float, help="give up after this many seconds "
                   "(default 60, or the paced script's length + 60)")
    r.add_argument("file", help="script file, '-' for stdin, or 'example:e1' ... 'example:e5', 'example:all'")

    g = sub.add_parser("load", help="N gateways making calls at a given rate")
    g.add_argument("--server", required=True, help="Twisted client endpoint, e.g. tcp:127.0.0.1:6510")
    g.add_argument("--gateways", type=int, default=10)
    g.add_argument("--rate", type=float, default=10.0, help="calls per second, over all gateways")
    g.add_argument("--duration", type=float, help="seconds to place calls for")
    g.add_argument("--calls", type=int, help="stop after this many calls")
    g.add_argument("--window", type=int, default=64, help="unacknowledged events in flight per gateway")
    g.add_argument("--gw-base", type=int, default=9000, help="first gateway id (default 9000)")
    g.add_argument("--mac-prefix", default="0200", help="MAC prefix, the rest is the gateway's number")
    g.add_argument("--secret", help="sign every LOGIN with this secret (or $CDRD_SIM_SECRET)")
    g.add_argument("--boot", help="LOGIN boot token (default: random per run)")
    g.add_argument("--seed", type=int, default=1, help="random seed of the call mix")
    g.add_argument("--drain-timeout", type=float, default=30.0,
                   help="seconds to wait for the last ACKs after the last call")
    g.add_argument("--connect-timeout", type=float, default=30.0,
                   help="seconds to wait for every gateway's first login (they retry meanwhile)")
    g.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    return p


def _read_script(name: str) -> str:
    if name == "-":
        return sys.stdin.read()
    if name.startswith("example:"):
        return (files("cdrd.sim") / "examples" / f"{name[len('example:'):]}.gwp").read_text()
    with open(name, encoding="utf-8") as f:
        return f.read()


def _script_seconds(events) -> float:
    times = [e.t for e in events if e.t is not None]
    return (max(times) - times[0]) / 1000 if times else 0.0


def _run(reactor, work) -> int:
    """Run `work(reactor)` (a Deferred returning an exit code) to the end."""
    outcome = {"code": EXIT_FAILED}

    def done(code):
        outcome["code"] = code

    def failed(failure):
        if failure.check(defer.FirstError):
            failure = failure.value.subFailure
        if failure.check(defer.CancelledError, defer.TimeoutError):
            print("cdrd-sim: timed out (is the server up?)", file=sys.stderr)
            return
        print(f"cdrd-sim: {failure.getErrorMessage() or failure.type.__name__}", file=sys.stderr)

    def start():
        d = work(reactor)
        d.addCallbacks(done, failed)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run()
    return outcome["code"]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from twisted.internet import reactor

    level = LogLevel.info if args.verbose else LogLevel.warn
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr),
                              [LogLevelFilterPredicate(defaultLogLevel=level)])],
        redirectStandardIO=False,
    )
    secret = args.secret or os.environ.get("CDRD_SIM_SECRET") or None
    try:
        endpoint = clientFromString(reactor, args.server)
    except (ValueError, TypeError, KeyError) as e:
        print(f"cdrd-sim: bad --server {args.server!r}: {e}", file=sys.stderr)
        return EXIT_USAGE

    if args.command == "replay":
        from cdrd.sim.replay import replay
        from cdrd.sim.script import ScriptError, parse_script

        if args.speed is not None and args.speed <= 0:
            print("cdrd-sim replay: --speed must be positive", file=sys.stderr)
            return EXIT_USAGE
        try:
            events = parse_script(_read_script(args.file), args.date)
        except (OSError, ScriptError) as e:
            print(f"cdrd-sim: {args.file}: {e}", file=sys.stderr)
            return EXIT_USAGE
        identity = GatewayIdentity(
            gw=args.gw, mac=args.mac, fxs=args.fxs, fxo=args.fxo, isdn=args.isdn, secret=secret,
            fw=args.fw, boot=args.boot, clock_offset_ms=int(args.clock_offset * 1000),
        )

        def work(reactor):
            timeout = args.timeout
            if timeout is None:
                timeout = 60.0 + (_script_seconds(events) / args.speed if args.speed else 0.0)
            d = replay(reactor, endpoint, identity, events, window=args.window, callref=args.callref,
                       seq=args.seq, timeout=timeout, speed=args.speed)

            def report(summary):
                print(summary.text())
                return EXIT_OK

            def rejected(failure):
                failure.trap(LoginRejected)
                print(f"cdrd-sim: {failure.value}", file=sys.stderr)
                return EXIT_FAILED

            return d.addCallbacks(report, rejected)

        return _run(reactor, work)

    from cdrd.sim.load import LoadRun, fleet

    if args.duration is None and args.calls is None:
        print("cdrd-sim load: give --duration and/or --calls", file=sys.stderr)
        return EXIT_USAGE
    if args.gateways < 1 or args.rate <= 0 or args.window < 1 or args.connect_timeout <= 0 \
            or args.drain_timeout <= 0:
        print("cdrd-sim load: --gateways, --rate, --window, --connect-timeout and --drain-timeout"
              " must be positive", file=sys.stderr)
        return EXIT_USAGE
    boot = args.boot or secrets.token_hex(4)
    identities = fleet(args.gateways, args.gw_base, secret, boot, args.mac_prefix)

    def work(reactor):
        run = LoadRun(reactor, endpoint, identities, rate=args.rate, duration=args.duration,
                      calls=args.calls, window=args.window, seed=args.seed,
                      drain_timeout=args.drain_timeout, connect_timeout=args.connect_timeout)

        def report(summary):
            print(summary.json() if args.json else summary.text())
            return EXIT_OK if summary.complete else EXIT_FAILED

        return run.run().addCallback(report)

    return _run(reactor, work)


if __name__ == "__main__":
    sys.exit(main())
