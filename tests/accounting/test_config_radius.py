"""Unit: the [radius] section (cdrd/config.py RadiusConfig / _radius)."""

from __future__ import annotations

import pytest

from cdrd import config as C


def radius(**kw):
    return C.parse({"radius": kw}).radius


def server(address, secret="s3cret"):
    return {"servers": [{"address": address, "secret": secret}]}


def test_defaults_off_and_rfc5080():
    r = radius()
    assert not r.enabled and r.interim_interval == 600 and r.vendor == 32473
    assert (r.initial_timeout, r.max_timeout, r.failover_after, r.window) == (
        2.0,
        64.0,
        3,
        128,
    )


def test_servers_in_order_ipv4_and_ipv6():
    r = radius(
        servers=[
            {"address": "192.0.2.1:1813", "secret": "Sekrit-A"},
            {"address": "[2001:db8::1]:1646", "secret": "Sekrit-B"},
            {"address": "192.0.2.3", "secret": "Sekrit-C"},
        ]
    )
    assert [(s.host, s.port) for s in r.servers] == [
        ("192.0.2.1", 1813),
        ("2001:db8::1", 1646),
        ("192.0.2.3", 1813),
    ]
    assert [s.secret for s in r.servers] == ["Sekrit-A", "Sekrit-B", "Sekrit-C"]
    assert "Sekrit" not in repr(r)


@pytest.mark.parametrize(
    "data, setting",
    [
        (server("radius.example.net:1813"), "radius.servers[0].address"),
        ({"nas_ip": "cdrd.example.net"}, "radius.nas_ip"),
        ({"interim_interval": 59}, "radius.interim_interval"),
        ({"interim_interval": 1}, "radius.interim_interval"),
        ({"vendor": 0}, "radius.vendor"),
        ({"vendor": 2**24}, "radius.vendor"),
        ({"initial_timeout": 0.01}, "radius.initial_timeout"),
        ({"failover_after": 0}, "radius.failover_after"),
        ({"servers": [{"address": "192.0.2.1"}]}, "radius.servers[0].secret"),
        ({"secret": "x"}, "radius.secret"),
    ],
)
def test_errors_name_the_setting(data, setting):
    with pytest.raises(C.ConfigError) as e:
        C.parse({"radius": data})
    assert setting in str(e.value)


def test_interim_zero_window_clipped_and_ipv6_nas():
    r = radius(interim_interval=0, window=1000, nas_ip="2001:db8::10", vendor=99999)
    assert r.interim_interval == 0 and r.window == 255
    assert r.nas_ip == "2001:db8::10" and r.vendor == 99999
