"""
The TOML config file (interfaces.md) as frozen values.

Every error is a ConfigError naming the setting, e.g.
``radius.interim_interval: 30 is below 60``; twistd prints it as one line.
Secrets are ``repr=False`` so they never reach a log.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from attrs import field, frozen

from cdrd.values import (  # noqa: F401 - GATEWAY_ID, MAC: the gateway session's too
    GATEWAY_ID,
    MAC,
    gateway_key,
    parse_hash,
    safe_url,
    split_gateway_key,
)

MAX_CONFIG_VALUE = 64  # bytes: call-records.md, "Every configured value is at most 64 bytes"


class ConfigError(ValueError):
    def __init__(self, setting: str, message: str):
        super().__init__(f"{setting}: {message}")
        self.setting = setting


# -- validators: each config class checks its own values, naming the setting
# (`SECTION` of the class, then the field) as the TOML parser would


def _setting(inst, attribute) -> str:
    return f"{type(inst).SECTION}.{attribute.name}"


def _frozen_map(mapping) -> Mapping:
    return MappingProxyType(dict(mapping))


def _at_least(minimum):
    def check(inst, attribute, value):
        if value < minimum:
            shown = f"{value:g} is below {minimum:g}" if isinstance(value, float) else f"{value} is below {minimum}"
            raise ConfigError(_setting(inst, attribute), shown)

    return check


def _at_most(maximum, why: str):
    def check(inst, attribute, value):
        if value > maximum:
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            raise ConfigError(_setting(inst, attribute), f"{shown} is above {maximum} ({why})")

    return check


def _one_of(*choices, message: str):
    def check(inst, attribute, value):
        if value not in choices:
            raise ConfigError(_setting(inst, attribute), message.format(value=value))

    return check


def _bytes_at_most(limit: int):
    def check(inst, attribute, value):
        if value is not None and len(value.encode()) > limit:
            raise ConfigError(_setting(inst, attribute), f"longer than {limit} bytes")

    return check


def _known_zone(inst, attribute, value):
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(_setting(inst, attribute), f"unknown time zone {value!r}") from None


def _database_url(inst, attribute, value):
    check_database_url(value, _setting(inst, attribute))


def _interim(inst, attribute, value):
    # the 60 s floor is the operator's (the parser's); the service and its
    # tests take any positive interval
    if value < 0:
        raise ConfigError(_setting(inst, attribute), f"{value} is below 0")


def _vendor(inst, attribute, value):
    _at_least(1)(inst, attribute, value)
    if value > 0xFFFFFF:
        raise ConfigError(_setting(inst, attribute), "an IANA enterprise number is at most 16777215")


def _window(inst, attribute, value):
    _at_least(1)(inst, attribute, value)
    if value > 255:
        # one RADIUS Identifier byte per request in flight on a socket
        raise ConfigError(_setting(inst, attribute), f"{value} is above 255")


def _ip_or_none(inst, attribute, value):
    if value is not None and not _is_ip(value):
        raise ConfigError(_setting(inst, attribute), f"{value!r} is not an IPv4 or IPv6 address")


def _syslog_target(inst, attribute, value):
    if value is None:
        return
    setting = _setting(inst, attribute)
    scheme, _, rest = value.partition(":")
    if scheme == "unix":
        if not rest:
            raise ConfigError(setting, "unix: needs a socket path")
    elif scheme in ("udp", "tcp"):
        _host_port(rest, setting, default_port=514)
    else:
        raise ConfigError(setting, f"{value!r} is not unix:PATH, udp:HOST:PORT or tcp:HOST:PORT")


def _facility(inst, attribute, value):
    if value not in SYSLOG_FACILITIES:
        raise ConfigError(_setting(inst, attribute), f"unknown facility {value!r}")


def _realm(inst, attribute, value):
    _bytes_at_most(64)(inst, attribute, value)
    if '"' in value or not value.isprintable():
        raise ConfigError(_setting(inst, attribute), "printable text without '\"'")


@frozen
class PortConfig:
    """An FXS port (a phone)."""

    exten: str | None = None
    ddi: str | None = None
    name: str | None = None
    cui: str | None = None


@frozen
class LineConfig:
    """An FXO port (a PSTN line): `cui` is a carrier setting."""

    name: str | None = None
    cui: str | None = None
    authorize: bool = True  # ask RADIUS for its callers' CUI ([radius] authorize)


@frozen
class GatewayConfig:
    key: str
    secret: str | None = field(default=None, repr=False)
    trust_cui: bool = False
    authorize: bool = True  # ask RADIUS for the CUI of its incoming calls
    ports: Mapping[int, PortConfig] = field(factory=dict, converter=_frozen_map)
    lines: Mapping[int, LineConfig] = field(factory=dict, converter=_frozen_map)


@frozen
class ServerConfig:
    SECTION = "server"

    gateway_endpoint: str = "tcp:6510"
    web_endpoint: str = "tcp:8080:interface=127.0.0.1"
    database: str = field(default="sqlite:var/cdrd.sqlite", validator=_database_url)
    timezone: str = field(default="UTC", validator=_known_zone)
    allow_unknown_gateways: bool = False
    idle_timeout: float = field(default=90.0, validator=_at_least(1))
    clock_tolerance: float = field(default=5.0, validator=_at_least(0))
    stale_after: float = field(default=86400.0, validator=_at_least(60))
    max_divert_depth: int = field(default=8, validator=_at_least(1))
    # gateways logged in at once; one more LOGIN is answered unavailable.
    # Connections not logged in have budgets of their own (below).  Keep
    # max_connections + unauthenticated_total below the process's
    # open-files limit (systemd LimitNOFILE)
    max_connections: int = field(default=1000, validator=_at_least(1))
    # connections not logged in, per source address and in all: when a
    # budget is full, its oldest connection gives way to the new one
    unauthenticated_per_address: int = field(default=64, validator=_at_least(1))
    unauthenticated_total: int = field(default=1024, validator=_at_least(1))
    # seconds a connection may take to log in
    login_timeout: float = field(default=10.0, validator=_at_least(1))
    # /metrics (and the probes) without auth on a listener of its own,
    # e.g. "tcp:9510:interface=10.0.0.5"; "" = off (see docs/monitoring.md)
    metrics_endpoint: str = ""
    # seconds the oldest item of an output's outbox may wait before the log
    # says so (one line when it begins, one when it clears)
    outbox_alert_age: float = field(default=300.0, validator=_at_least(1))
    # bad packets from one address within 60 s that are logged as a flood
    bad_packet_flood: int = field(default=100, validator=_at_least(1))
    # seconds: the store begins a transaction of events at most this often;
    # what arrives meanwhile joins the next one (docs/store.md, "The commit
    # interval").  An ACK may wait this much longer; CPU a call falls.
    # At most 0.05: gateway-protocol.md section 6 lets an ACK wait 100 ms
    # under load, and the transaction itself needs the other half.
    commit_interval: float = field(default=0.01, validator=[
        _at_least(0), _at_most(0.05, "gateway-protocol.md lets an ACK wait 100 ms; the commit needs the rest")])

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@frozen
class RadiusServer:
    host: str
    port: int
    secret: str = field(repr=False)


@frozen
class RadiusConfig:
    SECTION = "radius"

    servers: tuple[RadiusServer, ...] = field(default=(), converter=tuple)
    interim_interval: int = field(default=600, validator=_interim)
    nas_ip: str | None = field(default=None, validator=_ip_or_none)
    vendor: int = field(default=32473, validator=_vendor)
    initial_timeout: float = field(default=2.0, validator=_at_least(0.1))  # RFC 5080 IRT
    max_timeout: float = field(default=64.0, validator=_at_least(1))  # cap of the doubling (MRT)
    # consecutive timeouts before the next server
    failover_after: int = field(default=3, validator=_at_least(1))
    window: int = field(default=128, validator=_window)  # requests in flight per server socket
    # the CUI from RADIUS (RFC 4372): an Access-Request per incoming call
    authorize: bool = False
    auth_servers: tuple[RadiusServer, ...] = field(default=(), converter=tuple)
    auth_timeout: float = field(default=2.0, validator=_at_least(0.1))  # seconds per try
    # resends per server before the next one
    auth_retries: int = field(default=1, validator=_at_least(0))

    def __attrs_post_init__(self):
        if self.authorize and not self.auth_servers:
            raise ConfigError("radius.authorize", "true needs [[radius.auth_servers]] to ask")

    @property
    def enabled(self) -> bool:
        return bool(self.servers)


@frozen
class SyslogConfig:
    SECTION = "syslog"

    # None: off; "unix:/dev/log", "udp:H:P", "tcp:H:P"
    target: str | None = field(default=None, validator=_syslog_target)
    # "rfc5424" or "rfc3164"; None: rfc3164 on the local socket (what syslog(3)
    # sends: Debian's rsyslog imuxsock does not parse RFC 5424), rfc5424 else
    format: str | None = field(
        default=None, validator=_one_of(None, "rfc5424", "rfc3164", message="rfc5424 or rfc3164")
    )
    # TCP only; or "lf"
    framing: str = field(
        default="octet-counting", validator=_one_of("octet-counting", "lf", message="octet-counting or lf")
    )
    facility: str = field(default="local0", validator=_facility)
    app_name: str = field(default="cdrd", validator=_bytes_at_most(48))
    hostname: str | None = field(default=None, validator=_bytes_at_most(255))  # None: this machine's name
    buffer: int = field(default=100_000, validator=_at_least(1))  # CDRs kept while the target is down

    @property
    def message_format(self) -> str:
        if self.format is not None:
            return self.format
        local = self.target is not None and self.target.startswith("unix:")
        return "rfc3164" if local else "rfc5424"


@frozen
class WebConfig:
    SECTION = "web"

    # name -> hash
    users: Mapping[str, str] = field(factory=dict, repr=False, converter=_frozen_map)
    realm: str = field(default="cdrd", validator=_realm)


@frozen
class CsvConfig:
    SECTION = "csv"

    # None: off; else cdrs-YYYY-MM-DD.csv files there
    directory: str | None = field(default=None, validator=_bytes_at_most(4096))


@frozen
class OutputsConfig:
    """Where the durable sinks deliver from (docs/architecture.md, "Process model")."""

    SECTION = "outputs"

    # "inline": RADIUS, syslog and CSV are sent from cdrd's own process;
    # "process": from a child process that reads the outboxes (SQLite only)
    delivery: str = field(default="inline", validator=_one_of(
        "inline", "process", message='{value!r} is not "inline" or "process"'))
    # the child's niceness (delivery = "process"): when the CPU is short,
    # cdrd's ingest and ACKs go first; delivery catches up from the outboxes
    nice: int = field(default=10, validator=[_at_least(0), _at_most(19, "19 is the lowest priority")])


@frozen
class RetentionConfig:
    """How long the store keeps each kind of row (docs/store.md, "Retention")."""

    SECTION = "retention"

    events_days: int = field(default=0, validator=_at_least(0))  # raw gateway events; 0 = keep forever
    log_days: int = field(default=0, validator=_at_least(0))  # the gateway log
    records_days: int = field(default=0, validator=_at_least(0))  # call records with their CDRs
    # seconds between sweeps (one also runs at start-up): at least hourly
    interval: float = field(default=3600.0, validator=[
        _at_least(60), _at_most(3600, "a sweep runs at least hourly")])
    # rows deleted per transaction: one delete stays a few milliseconds
    batch: int = field(default=200, validator=[_at_least(1), _at_most(10_000, "one delete must stay short")])

    def days(self, kind: str) -> int:
        """The days `kind` ("events", "log", "records") is kept; 0 = forever."""
        return getattr(self, f"{kind}_days")


@frozen
class ClusterConfig:
    """Several active nodes on one PostgreSQL (docs/store.md, "Several nodes")."""

    SECTION = "cluster"

    # seconds a node's gateway leases outlive its last renewal (a dead
    # node's gateways and outboxes move on after this)
    lease_seconds: float = field(default=10.0, validator=[
        _at_least(2), _at_most(300, "a dead node's gateways would wait")])
    # this node's name in the leases and the log; "" = host name and pid
    node: str = field(default="", validator=_bytes_at_most(200))


@frozen
class Config:
    server: ServerConfig = field(factory=ServerConfig)
    gateways: Mapping[str, GatewayConfig] = field(factory=dict, converter=_frozen_map)
    radius: RadiusConfig = field(factory=RadiusConfig)
    syslog: SyslogConfig = field(factory=SyslogConfig)
    web: WebConfig = field(factory=WebConfig)
    csv: CsvConfig = field(factory=CsvConfig)
    retention: RetentionConfig = field(factory=RetentionConfig)
    cluster: ClusterConfig = field(factory=ClusterConfig)
    outputs: OutputsConfig = field(factory=OutputsConfig)

    def __attrs_post_init__(self):
        database = self.server.database
        if self.outputs.delivery == "process" and (
            not database.startswith("sqlite:") or database == "sqlite::memory:"
        ):
            # the child reads the outboxes over a connection of its own: a
            # file's WAL; PostgreSQL's outboxes follow this node's leases
            raise ConfigError(
                "outputs.delivery", f'"process" needs a SQLite file server.database, not {safe_url(database)}')

    def gateway(self, key: str) -> GatewayConfig | None:
        return self.gateways.get(key)


# -- parsing -------------------------------------------------------------------


def load(path: str) -> Config:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError("--config", f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("--config", f"{path} is not valid TOML: {e}") from None
    return parse(data)


class _Section:
    """Reads typed values from one TOML table, naming the setting on error."""

    def __init__(self, name: str, data: Any):
        if not isinstance(data, dict):
            raise ConfigError(name, "must be a table")
        self.name = name
        self.data = data

    def setting(self, key: str) -> str:
        return f"{self.name}.{key}" if self.name else key

    def unknown(self, known: set[str]) -> None:
        for key in self.data:
            if key not in known:
                raise ConfigError(self.setting(key), "unknown setting")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        if key not in self.data:
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and kind is not bool:
            raise ConfigError(self.setting(key), f"must be {_kind_name(kind)}")
        if not isinstance(value, kind):
            raise ConfigError(self.setting(key), f"must be {_kind_name(kind)}")
        return value

    def text(self, key: str, default: str | None = None, limit: int | None = None):
        value = self.get(key, str, default)
        if value is not None and limit is not None and len(value.encode()) > limit:
            raise ConfigError(self.setting(key), f"longer than {limit} bytes")
        return value

    def number(self, key: str, default: float, minimum: float | None = None) -> float:
        value = self.get(key, float, default)
        if minimum is not None and value < minimum:
            raise ConfigError(self.setting(key), f"{value:g} is below {minimum:g}")
        return value

    def integer(self, key: str, default: int, minimum: int | None = None) -> int:
        value = self.get(key, int, default)
        if minimum is not None and value < minimum:
            raise ConfigError(self.setting(key), f"{value} is below {minimum}")
        return value

    def table(self, key: str) -> _Section:
        return _Section(self.setting(key), self.data.get(key, {}))


def _kind_name(kind) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    return names.get(kind, getattr(kind, "__name__", str(kind)))


def parse(data: Mapping[str, Any]) -> Config:
    root = _Section("", dict(data))
    root.unknown({"server", "gateways", "radius", "syslog", "web", "csv", "retention", "cluster", "outputs"})
    return Config(
        server=_server(root.table("server")),
        gateways=_gateways(root.table("gateways")),
        radius=_radius(root.table("radius")),
        syslog=_syslog(root.table("syslog")),
        web=_web(root.table("web")),
        csv=_csv(root.table("csv")),
        retention=_retention(root.table("retention")),
        cluster=_cluster(root.table("cluster")),
        outputs=_outputs(root.table("outputs")),
    )


def _server(s: _Section) -> ServerConfig:
    d = ServerConfig()
    s.unknown({a.name for a in ServerConfig.__attrs_attrs__})
    return ServerConfig(
        gateway_endpoint=s.text("gateway_endpoint", d.gateway_endpoint),
        web_endpoint=s.text("web_endpoint", d.web_endpoint),
        database=s.text("database", d.database),
        timezone=s.text("timezone", d.timezone),
        allow_unknown_gateways=s.get("allow_unknown_gateways", bool, False),
        idle_timeout=s.number("idle_timeout", d.idle_timeout),
        clock_tolerance=s.number("clock_tolerance", d.clock_tolerance),
        stale_after=s.number("stale_after", d.stale_after),
        max_divert_depth=s.integer("max_divert_depth", d.max_divert_depth),
        max_connections=s.integer("max_connections", d.max_connections),
        unauthenticated_per_address=s.integer("unauthenticated_per_address", d.unauthenticated_per_address),
        unauthenticated_total=s.integer("unauthenticated_total", d.unauthenticated_total),
        login_timeout=s.number("login_timeout", d.login_timeout),
        metrics_endpoint=s.text("metrics_endpoint", d.metrics_endpoint),
        outbox_alert_age=s.number("outbox_alert_age", d.outbox_alert_age),
        bad_packet_flood=s.integer("bad_packet_flood", d.bad_packet_flood),
        commit_interval=s.number("commit_interval", d.commit_interval),
    )


def check_database_url(url: str, setting: str = "server.database") -> None:
    if url.startswith("sqlite:"):
        if not url[len("sqlite:"):]:
            raise ConfigError(setting, "sqlite: needs a path, e.g. sqlite:var/cdrd.sqlite")
        return
    if url.startswith(("postgresql://", "postgres://")) or url.startswith("memory:"):
        return
    raise ConfigError(setting, f"{safe_url(url)!r} is not sqlite:PATH or postgresql://...")


def _gateways(s: _Section) -> dict[str, GatewayConfig]:
    out = {}
    for key in s.data:
        if split_gateway_key(key) is None:
            raise ConfigError(s.setting(f'"{key}"'), "key must be <gw>_<12 hex MAC>")
        g = s.table(key)
        g.unknown({"secret", "trust_cui", "authorize", "ports", "lines"})
        gw, mac = split_gateway_key(key)
        norm = gateway_key(gw, mac)
        out[norm] = GatewayConfig(
            key=norm,
            secret=g.text("secret"),
            trust_cui=g.get("trust_cui", bool, False),
            authorize=g.get("authorize", bool, True),
            ports=_numbered(g.table("ports"), PortConfig, ("exten", "ddi", "name", "cui")),
            lines=_numbered(g.table("lines"), LineConfig, ("name", "cui"), ("authorize",)),
        )
    return out


def _numbered(
    s: _Section, cls, keys: tuple[str, ...], flags: tuple[str, ...] = ()
) -> dict[int, Any]:
    out = {}
    for number in s.data:
        if not (str(number).isascii() and str(number).isdigit()) or int(number) < 1:
            raise ConfigError(s.setting(str(number)), "port numbers count from 1")
        p = s.table(number)
        p.unknown(set(keys) | set(flags))
        values = {k: p.get(k, bool, True) for k in flags}
        for k in keys:
            v = p.get(k, (str, int), None)
            if v is not None:
                v = str(v)
                if not v or len(v.encode()) > MAX_CONFIG_VALUE or not v.isprintable():
                    raise ConfigError(
                        p.setting(k), f"1 to {MAX_CONFIG_VALUE} bytes of printable text"
                    )
            values[k] = v
        out[int(number)] = cls(**values)
    return out


def _radius(s: _Section) -> RadiusConfig:
    d = RadiusConfig()
    s.unknown({a.name for a in RadiusConfig.__attrs_attrs__})
    window = s.integer("window", d.window)
    interim = s.integer("interim_interval", d.interim_interval)
    if 0 < interim < 60:
        raise ConfigError(s.setting("interim_interval"), f"{interim} is below 60 (0 turns it off)")
    return RadiusConfig(
        servers=_radius_servers(s, "servers", 1813),
        interim_interval=interim,
        nas_ip=s.text("nas_ip", d.nas_ip),
        vendor=s.integer("vendor", d.vendor),
        initial_timeout=s.number("initial_timeout", d.initial_timeout),
        max_timeout=s.number("max_timeout", d.max_timeout),
        failover_after=s.integer("failover_after", d.failover_after),
        window=min(255, window),  # more in flight than a socket's 256 Identifiers: the most
        authorize=s.get("authorize", bool, d.authorize),
        auth_servers=_radius_servers(s, "auth_servers", 1812),
        auth_timeout=s.number("auth_timeout", d.auth_timeout),
        auth_retries=s.integer("auth_retries", d.auth_retries),
    )


def _radius_servers(s: _Section, name: str, default_port: int) -> tuple[RadiusServer, ...]:
    servers = []
    raw = s.data.get(name, [])
    if not isinstance(raw, list):
        raise ConfigError(s.setting(name), f"must be an array of tables [[radius.{name}]]")
    for i, item in enumerate(raw):
        srv = _Section(f"radius.{name}[{i}]", item)
        srv.unknown({"address", "secret"})
        address = srv.text("address")
        secret = srv.text("secret")
        if not address:
            raise ConfigError(srv.setting("address"), "missing (HOST:PORT)")
        if not secret:
            raise ConfigError(srv.setting("secret"), "missing")
        host, port = _host_port(address, srv.setting("address"), default_port=default_port)
        if not _is_ip(host):
            # UDP to a name would need a resolver in the send path; RADIUS
            # servers know their clients by address anyway
            raise ConfigError(srv.setting("address"), f"{host!r} is not an IP address")
        servers.append(RadiusServer(host=host, port=port, secret=secret))
    return tuple(servers)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _host_port(text: str, setting: str, default_port: int) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(default_port)
    host = host.strip("[]")
    if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ConfigError(setting, f"{text!r} is not HOST:PORT")
    return host, int(port)


SYSLOG_FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5,
    "lpr": 6, "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
    "local0": 16, "local1": 17, "local2": 18, "local3": 19,
    "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}


def _syslog(s: _Section) -> SyslogConfig:
    d = SyslogConfig()
    s.unknown({a.name for a in SyslogConfig.__attrs_attrs__})
    return SyslogConfig(
        target=s.text("target", d.target) or None,  # "": off
        format=s.text("format", d.format),
        framing=s.text("framing", d.framing),
        facility=s.text("facility", d.facility),
        app_name=s.text("app_name", d.app_name),
        hostname=s.text("hostname", d.hostname),
        buffer=s.integer("buffer", d.buffer),
    )


#: what ``cdrd-passwd`` prints (cdrd.web.auth): scrypt$n$r$p$salt$key, hex
WEB_PASSWORD_HASH = re.compile(r"scrypt\$[0-9]{1,8}\$[0-9]{1,3}\$[0-9]{1,3}\$[0-9a-f]{2,128}\$[0-9a-f]{2,256}\Z")


def _retention(s: _Section) -> RetentionConfig:
    d = RetentionConfig()
    s.unknown({a.name for a in RetentionConfig.__attrs_attrs__})
    return RetentionConfig(
        events_days=s.integer("events_days", d.events_days),
        log_days=s.integer("log_days", d.log_days),
        records_days=s.integer("records_days", d.records_days),
        interval=s.number("interval", d.interval),
        batch=s.integer("batch", d.batch),
    )


def _cluster(s: _Section) -> ClusterConfig:
    d = ClusterConfig()
    s.unknown({a.name for a in ClusterConfig.__attrs_attrs__})
    return ClusterConfig(
        lease_seconds=s.number("lease_seconds", d.lease_seconds),
        node=s.text("node", d.node),
    )


def _outputs(s: _Section) -> OutputsConfig:
    d = OutputsConfig()
    s.unknown({a.name for a in OutputsConfig.__attrs_attrs__})
    return OutputsConfig(delivery=s.text("delivery", d.delivery), nice=s.integer("nice", d.nice))


def _csv(s: _Section) -> CsvConfig:
    s.unknown({a.name for a in CsvConfig.__attrs_attrs__})
    return CsvConfig(directory=s.text("directory", None) or None)


def _web(s: _Section) -> WebConfig:
    s.unknown({a.name for a in WebConfig.__attrs_attrs__})
    users = s.table("users")
    out = {}
    # checked here, not by WebConfig: the web room refuses (401) a hash over
    # its bounds that reaches it some other way, and its tests build one
    for name in users.data:
        if not name or ":" in name or not name.isprintable():
            raise ConfigError(users.setting(name), "a user name is printable text without ':'")
        value = users.text(name)
        if not WEB_PASSWORD_HASH.match(value):
            # never echo the value: it may be a password pasted by mistake
            raise ConfigError(users.setting(name), "not a password hash; make one with cdrd-passwd")
        try:
            parse_hash(value)  # the bounds the checker applies
        except ValueError as e:  # its message never echoes the value
            raise ConfigError(users.setting(name), str(e)) from None
        out[name] = value
    return WebConfig(users=out, realm=s.text("realm", "cdrd"))
