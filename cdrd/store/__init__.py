"""
cdrd's durable store (cdrd.interfaces.IStore): memory, SQLite (the embedded
default) and PostgreSQL (several cdrd nodes sharing one database), the
schema and its migrations, and the group-commit BatchWriter.
"""

from __future__ import annotations

import os
import re


class StoreClosed(Exception):
    """The store is not open (any IStore: memory, SQLite, PostgreSQL)."""


_CONNINFO_PASSWORD = re.compile(r"(\b\w*password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"([?&]\w*password=)[^&#]*", re.IGNORECASE)


def safe_url(url: str) -> str:
    """
    A database URL, or a libpq conninfo string, fit for a log line or an
    error message: every password (``user:PASSWORD@host``, a
    ``?password=``/``sslpassword=`` query parameter, ``password=`` of a
    conninfo) written ``***``.  Where the URL is ambiguous (characters a
    URL must percent-encode), more is hidden, never less.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _CONNINFO_PASSWORD.sub(r"\1***", url)
    at = rest.rfind("@")
    if at != -1:
        user, colon, _ = rest[:at].partition(":")
        if colon and not any(c in user for c in "/?#"):
            rest = f"{user}:***{rest[at:]}"
    return f"{scheme}://" + _QUERY_PASSWORD.sub(r"\1***", rest)


def redact(text: str, url: str) -> str:
    """`text` (an error message about `url`) with the URL's passwords written ``***``."""
    from urllib.parse import unquote

    found = []
    scheme, sep, rest = url.partition("://")
    if not sep:
        found += [m.group(2).strip("'") for m in _CONNINFO_PASSWORD.finditer(url)]
    else:
        at = rest.rfind("@")
        if at != -1:
            user, colon, password = rest[:at].partition(":")
            if colon and not any(c in user for c in "/?#"):
                found.append(password)
        found += [m.group(0).split("=", 1)[1] for m in _QUERY_PASSWORD.finditer(rest)]
    for secret in {f for p in found for f in (p, unquote(p)) if f}:
        text = text.replace(secret, "***")
    return text


def open_store(url: str, reactor):
    """
    An IStore for a database URL, not opened yet (the caller calls
    ``.open()``): ``memory:``, ``sqlite:PATH`` (parent directories are
    created), ``postgresql://...`` / ``postgres://...`` (a libpq URL).
    """
    if url.startswith("memory:"):
        from cdrd.store.memory import MemoryStore

        return MemoryStore()
    if url.startswith("sqlite:"):
        from cdrd.store.sqlite import SQLiteStore

        path = url[len("sqlite:"):]
        if not path:
            raise ValueError("sqlite: needs a path, e.g. sqlite:var/cdrd.sqlite")
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return SQLiteStore(path, reactor)
    if url.startswith(("postgresql://", "postgres://")):
        from cdrd.store.postgresql import PostgresStore

        return PostgresStore(url, reactor)
    raise ValueError(f"{safe_url(url)!r} is not memory:, sqlite:PATH or postgresql://...")
