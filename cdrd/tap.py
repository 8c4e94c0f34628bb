"""
``twistd cdrd``: the options and `makeService`, nothing else; the service
tree is `cdrd.service`.

    twistd -n cdrd --config etc/cdrd.toml

A start that fails (the database unreachable, a port taken) is one log
line naming the setting, and twistd exits with status 1, so that a
supervisor (systemd's Restart=on-failure) sees it.
"""

from __future__ import annotations

import atexit
import os
import sys

from attrs import evolve
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from cdrd import config as C
from cdrd.service import CdrdService, DaemonStatus, StartupError, build_service


class Options(usage.Options):
    synopsis = "[--config FILE] [options]"
    longdesc = (
        "cdrd records what VoIP gateways push over GWP/1: call records, "
        "FireBrick CDRs, RADIUS accounting, syslog and a web report. "
        "Each option overrides the same setting of the config file."
    )
    optParameters = [
        ["config", "c", None, "TOML config file (see etc/cdrd.toml); defaults apply without one"],
        ["gateway-endpoint", None, None,
         "gateway listener, a Twisted endpoint (server.gateway_endpoint; default tcp:6510)"],
        ["web-endpoint", None, None,
         "web listener, a Twisted endpoint (server.web_endpoint; default tcp:8080:interface=127.0.0.1)"],
        ["database", None, None, "sqlite:PATH or postgresql://... (server.database; default sqlite:var/cdrd.sqlite)"],
        ["timezone", None, None, "zone of the report pages (server.timezone; default UTC)"],
    ]

    def postOptions(self):
        try:
            self["cdrd-config"] = build_config(self)
        except C.ConfigError as e:
            # one line that names the setting (twistd would print the whole usage)
            sys.stderr.write(f"cdrd: config error: {e}\n")
            raise SystemExit(2) from None


def build_config(options) -> C.Config:
    config = C.load(options["config"]) if options.get("config") else C.Config()
    overrides = {
        "gateway_endpoint": options.get("gateway-endpoint"),
        "web_endpoint": options.get("web-endpoint"),
        "database": options.get("database"),
        "timezone": options.get("timezone"),
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides:
        server = {a.name: getattr(config.server, a.name) for a in C.ServerConfig.__attrs_attrs__}
        server.update(overrides)
        config = evolve(config, server=C.parse({"server": server}).server)
    for setting in ("gateway_endpoint", "web_endpoint", "metrics_endpoint"):
        if getattr(config.server, setting):
            check_endpoint(getattr(config.server, setting), f"server.{setting}")
    check_paths(config)
    return config


def check_paths(config: C.Config) -> None:
    """
    The directories cdrd writes to exist and are writable: a typo in a path
    is a config error naming the setting, not a new empty database in a
    directory nobody looks at, nor a traceback at the first CDR.
    """
    url = config.server.database
    if url.startswith("sqlite:") and url != "sqlite::memory:":
        directory = os.path.dirname(os.path.abspath(url[len("sqlite:"):]))
        if not os.path.isdir(directory):
            raise C.ConfigError("server.database", f"directory {directory} does not exist (create it first)")
    directory = config.csv.directory
    if directory:
        # created at start if missing (CsvFileSink): then its parent must take it
        existing = os.path.abspath(directory)
        while not os.path.lexists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise C.ConfigError("csv.directory", f"{directory}: {existing} is not a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise C.ConfigError("csv.directory", f"{directory}: {existing} is not writable by this user")


def check_endpoint(description: str, setting: str) -> None:
    """
    Build the endpoint as the listener will: that parses the string and,
    for ``ssl:``, reads the key and certificate files, so a missing or bad
    file is a config error naming the setting, not a traceback at start.
    """
    try:
        serverFromString(None, description)
    except Exception as e:  # any endpoint plugin's error: one line, never swallowed
        reason = str(e) or type(e).__name__
        raise C.ConfigError(setting, f"{description!r} is not a usable server endpoint: {reason}") from None


def _exit_with(status: int) -> None:
    # twistd has no exit status of its own: at interpreter exit, after it
    # removed its pidfile and the threads are joined
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def makeService(options) -> CdrdService:
    from twisted.internet import reactor

    # The store's thread hands the GIL back and forth with the reactor for
    # every row it binds; at the default 5 ms switch interval a busy reactor
    # makes each hand-back wait, and commits (so ACKs) crawl.
    sys.setswitchinterval(0.0005)
    from cdrd.gcpauses import freeze_when_running
    from cdrd.signals import hand_to_the_loop
    from cdrd.systemd import notify

    service = build_service(options["cdrd-config"], reactor)
    # what start-up made stays out of the collector's full collections
    # (cdrd.gcpauses): they paused every thread ~60 ms under load
    freeze_when_running(reactor)
    # SIGTERM's log line from the loop, never from inside a log write (cdrd.signals)
    reactor.callWhenRunning(hand_to_the_loop, reactor)
    status_pipe = DaemonStatus(getattr(options, "parent", None))

    def ready(_):
        status_pipe.started()
        notify("READY=1", "STATUS=recovered and listening")

    def failed(f):
        if f is not None:
            status_pipe.failed(f.getErrorMessage() if f.check(StartupError) else "see the log")
        atexit.register(_exit_with, 1)
        reactor.callWhenRunning(reactor.stop)

    service.ready.addCallbacks(ready, failed)
    service.lost.addCallback(failed)
    service.daemon_status = status_pipe
    return service


