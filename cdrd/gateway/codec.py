"""
GWP/1 framing and message grammar (gateway-protocol.md, "Transport and
framing"), pure: bytes in, values out, and back.

A line is ``VERB`` followed by zero or more `` key=value`` fields separated by
single spaces.  A value is one or more bytes; a space, ``%``, ``=`` and any
byte below 0x20 or equal to 0x7F inside it is written ``%XX``.  Anything else
is a bad packet, raised as `BadPacket` with a short human reason and, where
it could be read, the ``seq=`` of the line (the server echoes it in its
``ERR``).

The parser is on the ingest hot path: it works with ``str.split`` /
``str.partition`` and small caches of verbs and keys already seen, and only
falls back to slower checks once a line is known to be unusual.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from attrs import frozen

from cdrd.values import unchecked

MAX_LINE = 1024  # bytes, without the LF (and without a CR before it)

_VERB = re.compile(r"[A-Z][A-Z_]*\Z")
_KEY = re.compile(r"[a-z][a-z0-9_]*\Z")
_SEQ_HINT = re.compile(rb"(?:^| )seq=([0-9]{1,18})(?: |$)")

# Verbs and keys are a small vocabulary: remember the good ones, so that the
# regular expressions run once per name rather than once per line.  Bounded,
# so a client inventing names cannot grow them.
_CACHE_LIMIT = 256
_good_verbs: set[str] = set()
_good_keys: set[str] = set()

_HEX_BYTE: dict[str, int] = {}
for _hi in "0123456789abcdefABCDEF":
    for _lo in "0123456789abcdefABCDEF":
        _HEX_BYTE[_hi + _lo] = int(_hi + _lo, 16)
del _hi, _lo

# What escape() rewrites: space, %, =, C0 controls and DEL.
_ESCAPES = {c: f"%{c:02X}" for c in [*range(0x20), 0x20, 0x25, 0x3D, 0x7F]}


class BadPacket(ValueError):
    """
    A line that breaks the grammar.  `reason` is short and human, fit for an
    ``ERR reason=`` and the gateway log; `seq` is the line's ``seq=`` where
    it could be read, else None.
    """

    def __init__(self, reason: str, seq: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.seq = seq

    def __repr__(self) -> str:
        return f"BadPacket({self.reason!r}, seq={self.seq!r})"


@frozen
class Message:
    """One parsed line: `fields` unescaped, in received order (a dict of
    the message's own: the one `parse_parts` filled, not a copy)."""

    verb: str
    fields: Mapping[str, str]
    raw: str  # the decoded line, without LF/CR, still escaped


_message = unchecked(Message)


def _seq_hint(line: bytes) -> int | None:
    found = _SEQ_HINT.search(line)
    return int(found.group(1)) if found else None


def seq_hint(line: bytes, limit: int = MAX_LINE) -> int | None:
    """
    The ``seq=`` of a raw line that may be broken or too long, for the
    ``ERR`` that answers it: only its first `limit` bytes are read (a field
    the cut splits is not), and a seq of 0 is none.
    """
    if len(line) > limit:
        cut = line[:limit]
        line = cut[: cut.rfind(b" ") + 1]
    seq = _seq_hint(line)
    return seq or None


def _bad(reason: str, line: bytes) -> BadPacket:
    return BadPacket(reason, _seq_hint(line))


def _check_verb(verb: str, line: bytes) -> None:
    if verb in _good_verbs:
        return
    if not verb:
        raise _bad("empty verb" if line[:1] == b" " else "no verb", line)
    if not (verb.isascii() and _VERB.match(verb)):
        raise _bad(f"bad verb {_shown(verb)}", line)
    if len(_good_verbs) < _CACHE_LIMIT:
        _good_verbs.add(verb)


def _check_key(key: str, line: bytes) -> None:
    if key in _good_keys:
        return
    if not (key.isascii() and _KEY.match(key)):
        raise _bad(f"bad key {_shown(key)}", line)
    if len(_good_keys) < _CACHE_LIMIT:
        _good_keys.add(key)


def _shown(text: str) -> str:
    """A name for an error message: quoted, printable, short."""
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    text = "".join(c if " " <= c < "\x7f" else "?" for c in text)
    if len(text) > 32:
        text = text[:32] + "..."
    return f"'{text}'"


def _has_control(text: str) -> bool:
    return any(c < " " or c == "\x7f" for c in text)


def unescape(text: str) -> str:
    """
    Undo ``%XX`` escapes; the bytes they make must be UTF-8.  Raises
    BadPacket (a ValueError) on a ``%`` not followed by two hex digits or a
    result that is not UTF-8.
    """
    if "%" not in text:
        return text
    first, *rest = text.split("%")
    out = bytearray(first.encode("utf-8"))
    for piece in rest:
        byte = _HEX_BYTE.get(piece[:2])
        if byte is None:
            raise BadPacket("bad escape")
        out.append(byte)
        out += piece[2:].encode("utf-8")
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise BadPacket("escaped bytes are not UTF-8") from None


def escape(value: str) -> str:
    """Write space, ``%``, ``=``, control bytes and DEL as ``%XX``."""
    if value.isalnum():  # the common case: digits, names, hex
        return value
    return value.translate(_ESCAPES)


def parse_line(line: bytes) -> Message | None:
    """
    One line, without its LF (a trailing CR is dropped), as a Message; None
    for an empty line.  Raises BadPacket for anything else the grammar does
    not allow.
    """
    parts = parse_parts(line)
    return None if parts is None else _message(*parts)


def parse_parts(line: bytes) -> tuple[str, dict[str, str], str] | None:
    """
    `parse_line`, its Message's parts as they are: (verb, fields, raw).
    The session reads an event's fields from them without building a
    Message, once per event (issue 15).
    """
    if line[-1:] == b"\r":
        line = line[:-1]
    if not line:
        return None
    if len(line) > MAX_LINE:
        raise _bad(f"line longer than {MAX_LINE} bytes", line)
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("not UTF-8", line) from None
    verb, *parts = text.split(" ")
    if verb not in _good_verbs:
        _check_verb(verb, line)
    fields: dict[str, str] = {}
    clean = text.isprintable()  # no control byte anywhere on the line
    good_keys = _good_keys
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq:
            if not part:
                raise _bad("empty field (double or trailing space)", line)
            raise _bad(f"field {_shown(part)} without '='", line)
        if key not in good_keys:
            _check_key(key, line)
        if key in fields:
            raise _bad(f"duplicate key '{key}'", line)
        if not value:
            raise _bad(f"empty value for '{key}'", line)
        if "=" in value:
            raise _bad(f"unescaped '=' in '{key}'", line)
        if not clean and _has_control(value):
            raise _bad(f"unescaped control byte in '{key}'", line)
        if "%" in value:
            try:
                value = unescape(value)
            except BadPacket as e:
                raise _bad(f"{e.reason} in '{key}'", line) from None
        fields[key] = value
    return verb, fields, text


def format_message(verb: str, fields: Iterable[tuple[str, str]] | Mapping[str, str] = ()) -> bytes:
    """
    One line, ending in LF, with every value escaped.  A field whose value
    is empty (or None) is left out: the grammar has no empty value, and an
    absent field is what a reader would make of one.
    """
    items = fields.items() if isinstance(fields, Mapping) else fields
    out = [verb]
    for key, value in items:
        if value is None:
            continue
        value = str(value)
        if value:
            out.append(f"{key}={escape(value)}")
    return (" ".join(out) + "\n").encode("utf-8")


_DATE = re.compile(r"\d{4}-\d\d-\d\d\Z")


@functools.lru_cache(maxsize=1024)
def _day_ms(date: str) -> int:
    """``YYYY-MM-DD`` as ms since the epoch at its midnight UTC (cached: a
    gateway's events share a handful of dates)."""
    if not (date.isascii() and _DATE.match(date)):
        raise ValueError(f"not a date: {date!r}")
    dt = datetime(int(date[:4]), int(date[5:7]), int(date[8:10]), tzinfo=UTC)
    return int(dt.timestamp()) * 1000


@functools.lru_cache(maxsize=4096)
def _minute_ms(prefix: str) -> int | None:
    """``YYYY-MM-DDTHH:MM`` as ms since the epoch, None for a bad hour or
    minute; ValueError for a bad date.  Cached: a gateway's events share
    their minute, so a time costs its seconds only (issue 15)."""
    if prefix[10] != "T" or prefix[13] != ":":
        return None
    clock = prefix[11:13] + prefix[14:16]
    if not (clock.isascii() and clock.isdigit()):
        return None
    hour, minute = int(clock[:2]), int(clock[2:])
    if hour >= 24 or minute >= 60:
        return None
    return _day_ms(prefix[:10]) + (hour * 60 + minute) * 60_000


def parse_gateway_time(text: str) -> int:
    """
    A gateway's ``YYYY-MM-DDTHH:MM:SS[.mmm]`` (no zone, read as UTC) as ms
    since the epoch; ValueError for anything else.
    """
    n = len(text)
    if (n == 19 or (n == 23 and text[19] == ".")) and text[16] == ":":
        # SS or SSmmm read as one number: the ms into the minute, with one
        # int() rather than three (once per event; issue 15)
        seconds = text[17:19] + text[20:]
        if seconds.isascii() and seconds.isdigit():
            ms = int(seconds) if n == 23 else int(seconds) * 1000
            if ms < 60_000:
                minute = _minute_ms(text[:16])
                if minute is not None:
                    return minute + ms
    raise ValueError(f"not a gateway time: {text!r}")


def format_gateway_time(ms: int) -> str:
    """ms since the epoch as ``YYYY-MM-DDTHH:MM:SS.mmm`` (UTC, no zone)."""
    seconds, millis = divmod(ms, 1000)
    dt = datetime.fromtimestamp(seconds, UTC)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{millis:03d}"


_AUTH = " auth="


def login_auth(secret: str, nonce: str, line_before_auth: str) -> str:
    """
    The ``auth`` of a LOGIN: lowercase hex HMAC-SHA256, keyed with the
    secret as UTF-8, over ``nonce + " " + line_before_auth``.
    """
    msg = f"{nonce} {line_before_auth}".encode()
    return hmac.new(secret.encode("utf-8"), msg, hashlib.sha256).hexdigest()


def split_auth(raw: str) -> tuple[str, str | None]:
    """
    A LOGIN line as (the line before `` auth=``, the auth value), where auth
    is the last field; (raw, None) where the last field is not ``auth``.
    """
    before, sep, auth = raw.rpartition(_AUTH)
    if not sep or " " in auth:
        return raw, None
    return before, auth
