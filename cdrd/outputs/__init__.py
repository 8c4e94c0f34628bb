"""
The durable sinks (RADIUS accounting, syslog, CSV files) by name: cdrd
builds them in its own process, or the outputs process builds them from
what cdrd sends it (cdrd.outputs.process, cdrd.outputs.child).
"""

from __future__ import annotations


def sink_settings(config) -> dict:
    """What the durable sinks read of the config (picklable: sent to the outputs process)."""
    return {
        "radius": config.radius,
        "syslog": config.syslog,
        "csv": config.csv.directory,
        "timezone": config.server.timezone,
    }


def durable_sink(name: str, settings: dict, store, writer, reactor):
    """The durable sink `name` ("radius", "syslog" or "csv") over `store` and `writer`."""
    if name == "radius":
        from cdrd.accounting.service import AccountingService

        return AccountingService(settings["radius"], store, writer, reactor, reactor)
    if name == "syslog":
        from cdrd.outputs.syslog import SyslogSink

        return SyslogSink(settings["syslog"], store, writer, reactor, reactor)
    if name == "csv":
        from cdrd.outputs.csvfile import CsvFileSink

        return CsvFileSink(settings["csv"], store, writer, reactor, reactor, settings["timezone"])
    raise ValueError(f"no durable sink is named {name!r}")
