"""Unit: the [syslog] section (cdrd/config.py SyslogConfig, _syslog)."""

from __future__ import annotations

import pytest

from cdrd.config import ConfigError, SyslogConfig, parse


def syslog(**section):
    return parse({"syslog": section}).syslog


def test_defaults():
    c = syslog()
    assert c == SyslogConfig()
    assert c.target is None and c.facility == "local0" and c.app_name == "cdrd"
    assert c.framing == "octet-counting" and c.buffer == 100_000 and c.hostname is None


@pytest.mark.parametrize(
    "target, fmt",
    [("unix:/dev/log", "rfc3164"), ("udp:127.0.0.1:514", "rfc5424"),
     ("tcp:loghost:6514", "rfc5424")],
)
def test_format_follows_the_target_unless_set(target, fmt):
    assert syslog(target=target).message_format == fmt
    assert syslog(target=target, format="rfc5424").message_format == "rfc5424"
    assert syslog(target=target, format="rfc3164").message_format == "rfc3164"


@pytest.mark.parametrize(
    "section, setting",
    [
        ({"target": "unix:"}, "syslog.target"),
        ({"target": "tcp:host:99999"}, "syslog.target"),
        ({"format": "json"}, "syslog.format"),
        ({"framing": "nul"}, "syslog.framing"),
        ({"facility": "local8"}, "syslog.facility"),
        ({"app_name": "x" * 49}, "syslog.app_name"),
        ({"buffer": 0}, "syslog.buffer"),
        ({"colour": "red"}, "syslog.colour"),
    ],
)
def test_errors_name_the_setting(section, setting):
    with pytest.raises(ConfigError) as e:
        syslog(**section)
    assert e.value.setting == setting
