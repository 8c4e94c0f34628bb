"""The TOML config: defaults, the example file, errors that name the setting."""

from pathlib import Path

import pytest

from cdrd import config as C
from cdrd.tap import Options, build_config

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_work_out_of_the_box():
    c = C.Config()
    assert c.server.gateway_endpoint == "tcp:6510"
    assert c.server.web_endpoint == "tcp:8080:interface=127.0.0.1"
    assert c.server.database == "sqlite:var/cdrd.sqlite"
    assert (c.server.idle_timeout, c.server.clock_tolerance, c.server.stale_after) == (90, 5, 86400)
    assert c.server.max_divert_depth == 8 and not c.radius.enabled and c.syslog.target is None
    assert c.server.max_connections == 1000


def test_example_file_loads():
    c = C.load(str(ROOT / "etc" / "cdrd.toml"))
    gw = c.gateway("8200_000C2A020082")
    assert gw.ports[2] == C.PortConfig(exten="202", ddi="442079460202", cui="ACCT-202")
    assert gw.lines[1].cui == "CARRIER-ACME"


def test_example_file_lists_every_setting_with_its_default():
    import re

    text = (ROOT / "etc" / "cdrd.toml").read_text()
    loaded = C.load(str(ROOT / "etc" / "cdrd.toml"))
    sections = {
        "server": C.ServerConfig, 'gateways."8200_000C2A020082"': C.GatewayConfig,
        "radius": C.RadiusConfig, "syslog": C.SyslogConfig, "web": C.WebConfig,
        "csv": C.CsvConfig, "retention": C.RetentionConfig, "cluster": C.ClusterConfig,
    }
    not_default = {("server", "allow_unknown_gateways"), ("gateways", "ports"), ("gateways", "lines")}
    for section, cls in sections.items():
        body = re.split(r"\n\[(?!\[)", text.split(f"\n[{section}]", 1)[1], maxsplit=1)[0]
        for a in cls.__attrs_attrs__:
            if a.name == "key":
                continue
            found = re.search(rf"^(# )?(\[\[radius\.)?{a.name}\b", body, re.MULTILINE)
            assert found, f"{section}.{a.name} is not in etc/cdrd.toml"
            name = section.split(".")[0]
            if found.group(1) is None and (name, a.name) not in not_default:
                if name == "gateways":
                    value, default = getattr(loaded.gateway("8200_000C2A020082"), a.name), a.default
                else:
                    value, default = getattr(getattr(loaded, name), a.name), getattr(cls(), a.name)
                assert value == default, f"{section}.{a.name} is not its default"


@pytest.mark.parametrize(
    "data, setting",
    [
        ({"server": {"idle_timeout": "ninety"}}, "server.idle_timeout"),
        ({"server": {"timezone": "Mars/Olympus"}}, "server.timezone"),
        ({"server": {"database": "mysql://x"}}, "server.database"),
        ({"server": {"colour": "red"}}, "server.colour"),
        ({"server": {"max_connections": 0}}, "server.max_connections"),
        ({"server": {"commit_interval": -0.01}}, "server.commit_interval"),
        ({"server": {"commit_interval": 0.06}}, "server.commit_interval"),
        ({"radius": {"interim_interval": 59}}, "radius.interim_interval"),
        ({"radius": {"servers": [{"address": "127.0.0.1:1813"}]}}, "radius.servers[0].secret"),
        ({"radius": {"servers": [{"address": "nowhere:x", "secret": "s"}]}}, "radius.servers[0].address"),
        ({"radius": {"authorize": True}}, "radius.authorize"),
        ({"radius": {"auth_servers": [{"address": "127.0.0.1"}]}}, "radius.auth_servers[0].secret"),
        ({"gateways": {"8200_000C2A020082": {"lines": {"1": {"authorize": "no"}}}}},
         "gateways.8200_000C2A020082.lines.1.authorize"),
        ({"syslog": {"target": "carrier-pigeon:1"}}, "syslog.target"),
        ({"syslog": {"facility": "local9"}}, "syslog.facility"),
        ({"gateways": {"8200": {}}}, 'gateways."8200"'),
        ({"csv": {"directory": 7}}, "csv.directory"),
        ({"csv": {"dir": "x"}}, "csv.dir"),
        ({"retention": {"events_days": -1}}, "retention.events_days"),
        ({"retention": {"log_days": 1.5}}, "retention.log_days"),
        ({"retention": {"records_days": "30"}}, "retention.records_days"),
        ({"retention": {"records_days": True}}, "retention.records_days"),
        ({"retention": {"interval": 7200}}, "retention.interval"),
        ({"retention": {"interval": 10}}, "retention.interval"),
        ({"retention": {"batch": 0}}, "retention.batch"),
        ({"retention": {"batch": 100_000}}, "retention.batch"),
        ({"retention": {"days": 3}}, "retention.days"),
        ({"cluster": {"lease_seconds": 1}}, "cluster.lease_seconds"),
        ({"cluster": {"lease_seconds": 301}}, "cluster.lease_seconds"),
        ({"cluster": {"node": "n" * 201}}, "cluster.node"),
        ({"cluster": {"leases": 3}}, "cluster.leases"),
        # a hash a request could not afford to check (n = 2**20, 128 MiB)
        ({"web": {"users": {"admin": "scrypt$1048576$8$1$" + "ab" * 16 + "$" + "cd" * 32}}},
         "web.users.admin"),
        ({"gateways": {"8200_000C2A020082": {"ports": {"1": {"cui": "x" * 65}}}}},
         "gateways.8200_000C2A020082.ports.1.cui"),
    ],
)
def test_errors_name_the_setting(data, setting):
    with pytest.raises(C.ConfigError) as e:
        C.parse(data)
    assert e.value.setting == setting
    assert str(e.value).startswith(setting + ": ")


def test_retention_keeps_everything_unless_told():
    d = C.parse({}).retention
    assert (d.events_days, d.log_days, d.records_days) == (0, 0, 0)
    r = C.parse({"retention": {"events_days": 7, "log_days": 30, "records_days": 400, "interval": 600}}).retention
    assert [r.days(k) for k in ("events", "log", "records")] == [7, 30, 400]
    assert (r.interval, r.batch) == (600, 200)


def test_a_bound_says_why():
    with pytest.raises(C.ConfigError) as e:
        C.parse({"cluster": {"lease_seconds": 600}})
    assert str(e.value) == "cluster.lease_seconds: 600 is above 300 (a dead node's gateways would wait)"
    with pytest.raises(C.ConfigError) as e:
        C.parse({"retention": {"batch": 20_000}})
    assert str(e.value) == "retention.batch: 20000 is above 10000 (one delete must stay short)"
    with pytest.raises(C.ConfigError) as e:
        C.parse({"server": {"commit_interval": 0.5}})
    assert str(e.value) == ("server.commit_interval: 0.5 is above 0.05"
                            " (gateway-protocol.md lets an ACK wait 100 ms; the commit needs the rest)")
    assert C.parse({"server": {"commit_interval": 0.05}}).server.commit_interval == 0.05
    assert C.parse({"server": {"commit_interval": 0}}).server.commit_interval == 0
    assert C.parse({"cluster": {"lease_seconds": 4, "node": "db-east-1"}}).cluster == C.ClusterConfig(4.0, "db-east-1")


def test_interim_zero_turns_it_off():
    assert C.parse({"radius": {"interim_interval": 0}}).radius.interim_interval == 0


def test_secrets_never_in_repr():
    c = C.parse({
        "gateways": {"8200_000C2A020082": {"secret": "gw-secret"}},
        "radius": {"servers": [{"address": "127.0.0.1:1813", "secret": "rad-secret"}]},
    })
    assert "gw-secret" not in repr(c) and "rad-secret" not in repr(c)


def test_mac_in_key_is_normalised():
    c = C.parse({"gateways": {"8200_000c2a020082": {}}})
    assert list(c.gateways) == ["8200_000C2A020082"]


def test_command_line_overrides_config(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[server]\ndatabase = "sqlite:a.sqlite"\ntimezone = "Asia/Taipei"\n')
    opts = Options()
    opts.parseOptions(["--config", str(f), "--database", "sqlite:b.sqlite",
                       "--gateway-endpoint", "tcp:7000"])
    c = opts["cdrd-config"]
    assert (c.server.database, c.server.gateway_endpoint, c.server.timezone) == (
        "sqlite:b.sqlite", "tcp:7000", "Asia/Taipei")


def test_bad_endpoint_names_the_setting():
    with pytest.raises(C.ConfigError) as e:
        build_config({"config": None, "web-endpoint": "tcp:notaport"})
    assert e.value.setting == "server.web_endpoint"


@pytest.mark.parametrize(
    "url, shown",
    [
        ("postgresql://cdrd:hunter2@db/cdrd", "postgresql://cdrd:***@db/cdrd"),
        ("postgresql://cdrd@db:5432/cdrd", "postgresql://cdrd@db:5432/cdrd"),
        ("postgresql://db/cdrd?user=cdrd&password=hunter2", "postgresql://db/cdrd?user=cdrd&password=***"),
        ("postgres://u:hunter2@db/x?sslmode=require&sslpassword=k", "postgres://u:***@db/x?sslmode=require&sslpassword=***"),
        ("postgresql://u:hun?ter2@db/x", "postgresql://u:***@db/x"),  # unencoded: hide more, never less
        ("host=db password=hunter2 dbname=cdrd", "host=db password=*** dbname=cdrd"),
        ("host=db password='hun ter2' dbname=cdrd", "host=db password=*** dbname=cdrd"),
        ("sqlite:var/cdrd.sqlite", "sqlite:var/cdrd.sqlite"),
    ],
)
def test_database_urls_are_shown_without_passwords(url, shown):
    from cdrd.store import redact, safe_url

    assert safe_url(url) == shown
    message = redact(f"cannot connect with {url}", url)
    for secret in ("hunter2", "hun ter2", "hun?ter2"):
        assert secret not in message


def test_a_wrong_database_url_is_not_echoed_with_its_password():
    with pytest.raises(C.ConfigError) as e:
        C.parse({"server": {"database": "mysql://root:hunter2@db/cdrd?password=hunter3"}})
    assert e.value.setting == "server.database"
    assert "hunter2" not in str(e.value) and "hunter3" not in str(e.value)
    assert "mysql://root:***@db/cdrd?password=***" in str(e.value)


def test_csv_files_are_off_unless_a_directory_is_set():
    assert C.parse({}).csv.directory is None
    assert C.parse({"csv": {"directory": ""}}).csv.directory is None
    assert C.parse({"csv": {"directory": "var/cdrs"}}).csv.directory == "var/cdrs"


def test_cui_from_radius_settings():
    cfg = C.parse({
        "radius": {"authorize": True, "auth_servers": [{"address": "127.0.0.1", "secret": "s"}]},
        "gateways": {"8200_000C2A020082": {"lines": {"1": {"cui": "X", "authorize": False}}}},
    })
    assert cfg.radius.authorize and cfg.radius.auth_servers[0].port == 1812
    assert cfg.gateways["8200_000C2A020082"].lines[1] == C.LineConfig(cui="X", authorize=False)
    assert cfg.gateways["8200_000C2A020082"].authorize


@pytest.mark.parametrize(
    ("build", "setting"),
    [
        (lambda: C.SyslogConfig(format="bogus"), "syslog.format"),
        (lambda: C.SyslogConfig(facility="local9"), "syslog.facility"),
        (lambda: C.SyslogConfig(target="smtp:mail"), "syslog.target"),
        (lambda: C.RadiusConfig(window=100000), "radius.window"),
        (lambda: C.RadiusConfig(interim_interval=-1), "radius.interim_interval"),
        (lambda: C.RadiusConfig(authorize=True), "radius.authorize"),
        (lambda: C.ServerConfig(stale_after=1.0), "server.stale_after"),
        (lambda: C.ServerConfig(timezone="Mars/Olympus"), "server.timezone"),
        (lambda: C.WebConfig(realm='a"b'), "web.realm"),
        (lambda: C.CsvConfig(directory="d" * 5000), "csv.directory"),
        (lambda: C.RetentionConfig(events_days=-1), "retention.events_days"),
        (lambda: C.RetentionConfig(interval=7200), "retention.interval"),
        (lambda: C.RetentionConfig(batch=0), "retention.batch"),
        (lambda: C.ServerConfig(unauthenticated_per_address=0), "server.unauthenticated_per_address"),
        (lambda: C.ServerConfig(login_timeout=0.5), "server.login_timeout"),
    ],
)
def test_config_classes_refuse_bad_values_where_they_are_built(build, setting):
    with pytest.raises(C.ConfigError) as e:
        build()
    assert e.value.setting == setting and str(e.value).startswith(f"{setting}: ")


def test_config_mappings_are_frozen():
    config = C.parse({"gateways": {"8200_000c2a020082": {"ports": {"1": {"exten": "201"}}}}})
    gateway = config.gateways["8200_000C2A020082"]
    for mapping in (config.gateways, gateway.ports, gateway.lines, config.web.users):
        with pytest.raises(TypeError):
            mapping["x"] = None
