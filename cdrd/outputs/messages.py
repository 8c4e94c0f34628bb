"""
Syslog messages of CDRs: pure values and functions, no I/O, no clock.

A CDR becomes one `CdrEntry` (what the "syslog" outbox stores), and an entry
becomes one syslog message whose MSG is exactly the CDR line of
call-records.md, so a log line is a CDR:

RFC 5424 (default)::

    <134>1 2026-11-22T10:02:07.250Z pbx1 cdrd - 5f0c...e1 - 2026-11-22T10:00:07.250Z,4.250,...

RFC 3164 (old collectors; the CDR id rides in the tag's brackets)::

    <134>Nov 22 10:02:07 pbx1 cdrd[5f0c...e1]: 2026-11-22T10:00:07.250Z,4.250,...

The timestamp is the End of the call that wrote the CDR (its event time),
not the time of sending: a line resent after an outage or a restart is
byte for byte the line sent first, and collectors can deduplicate on it.
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from attrs import frozen

from cdrd.values import CallEnd, rfc3339

#: RFC 5424 severity "informational".
SEVERITY_INFO = 6
#: Month abbreviations of RFC 3164, independent of the locale.
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
PAYLOAD_VERSION = 1


@frozen
class CdrEntry:
    """
    One CDR as the syslog outbox keeps it: enough to build the message
    again after a restart, whatever the format settings are then.
    """

    id: str  # the CDR id: 32 hex digits, the RFC 5424 MSGID
    time: int  # ms UTC: the End of the call that wrote it
    line: str  # the CDR line, exactly as call-records.md writes it
    gateway: str = ""
    call: str = ""  # the call that created the CDR
    billed_call: str = ""  # the call whose end wrote it ("" from older entries)

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "v": PAYLOAD_VERSION,
                "id": self.id,
                "time": self.time,
                "line": self.line,
                "gateway": self.gateway,
                "call": self.call,
                "billed_call": self.billed_call,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> CdrEntry:
        """Raises ValueError for anything spool() did not write."""
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise ValueError(f"not a syslog outbox payload: {e}") from None
        if not isinstance(obj, dict) or obj.get("v") != PAYLOAD_VERSION:
            raise ValueError("not a syslog outbox payload of version 1")
        try:
            entry = cls(
                id=obj["id"],
                time=obj["time"],
                line=obj["line"],
                gateway=obj.get("gateway", ""),
                call=obj.get("call", ""),
                billed_call=obj.get("billed_call", ""),
            )
        except KeyError as e:
            raise ValueError(f"syslog outbox payload without {e}") from None
        if not isinstance(entry.id, str) or not isinstance(entry.line, str):
            raise ValueError("syslog outbox payload with a bad id or line")
        if not isinstance(entry.time, int) or isinstance(entry.time, bool):
            raise ValueError("syslog outbox payload with a bad time")
        return entry


def spool(outputs) -> list[CdrEntry]:
    """
    One entry per CDR of every CallEnd in `outputs`, in the order produced
    and, within a call, in written (stack) order.
    """
    return [
        CdrEntry(id=cdr.id, time=o.record.end, line=cdr.line, gateway=cdr.gateway, call=cdr.call,
                 billed_call=cdr.billed_call)
        for o in outputs
        if isinstance(o, CallEnd)
        for cdr in o.cdrs
    ]


def priority(facility: int, severity: int = SEVERITY_INFO) -> int:
    return facility * 8 + severity


def _printusascii(text: str, limit: int) -> str:
    """RFC 5424 header fields: 1..limit of %d33-126, else NILVALUE."""
    if text.isascii() and text.isprintable() and " " not in text:
        return text[:limit] or "-"
    text = "".join(c if 33 <= ord(c) <= 126 else "_" for c in text)[:limit]
    return text or "-"


#: The SD-ID of the calls of a CDR (RFC 5424 section 7.2.2: name@<enterprise
#: number>; 32473 is RFC 5612's documentation number, as the RADIUS vendor's
#: default).
SD_ID = "cdr@32473"


def _sd_value(text: str) -> str:
    """RFC 5424 PARAM-VALUE: `"`, `\\` and `]` escaped with a backslash."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def structured_data(entry: CdrEntry) -> str:
    """`[cdr@32473 call="..." billed_call="..."]`: the call that created the
    CDR and the call that billed it (its RADIUS Acct-Multi-Session-Id);
    the NILVALUE for an entry that knows neither."""
    params = "".join(
        f' {name}="{_sd_value(value)}"'
        for name, value in (("call", entry.call), ("billed_call", entry.billed_call))
        if value
    )
    return f"[{SD_ID}{params}]" if params else "-"


def rfc5424(entry: CdrEntry, facility: int, hostname: str, app_name: str) -> bytes:
    """
    `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG`: PROCID is the
    NILVALUE, MSGID is the CDR id, STRUCTURED-DATA the CDR's calls
    (`structured_data`), MSG the line (MSG-ANY: no BOM, so the message is
    exactly the line's bytes).
    """
    host = _printusascii(hostname, 255)
    app = _printusascii(app_name, 48)
    msgid = _printusascii(entry.id, 32)
    sd = structured_data(entry)
    header = f"<{priority(facility)}>1 {rfc3339(entry.time)} {host} {app} - {msgid} {sd} "
    return header.encode() + entry.line.encode()


def rfc3164(entry: CdrEntry, facility: int, hostname: str | None, app_name: str) -> bytes:
    """
    `<PRI>Mmm dd hh:mm:ss HOSTNAME TAG[CDR id]: MSG` with the time in UTC
    (RFC 3164 has no zone; cdrd's times are UTC everywhere).  `hostname`
    None leaves it out, as syslog(3) does on the local socket.
    """
    dt = datetime.fromtimestamp(entry.time // 1000, UTC)
    stamp = f"{MONTHS[dt.month - 1]} {dt.day:2d} {dt:%H:%M:%S}"
    tag = "".join(c for c in app_name if c.isascii() and (c.isalnum() or c in "-_.")) or "cdrd"
    host = "" if hostname is None else _printusascii(hostname, 255) + " "
    header = f"<{priority(facility)}>{stamp} {host}{tag}[{_printusascii(entry.id, 32)}]: "
    return header.encode("ascii") + entry.line.encode()


def octet_counted(message: bytes) -> bytes:
    """RFC 6587 3.4.1: `MSG-LEN SP SYSLOG-MSG`."""
    return b"%d " % len(message) + message


def lf_framed(message: bytes) -> bytes:
    """
    RFC 6587 3.4.2: the message and a LF.  A line break inside the message
    would end the frame early, so CR and LF become spaces (a CDR line holds
    one only inside a quoted field; octet-counting carries it unchanged).
    """
    return message.replace(b"\r", b" ").replace(b"\n", b" ") + b"\n"
