"""
cdrd's durable store (cdrd.interfaces.IStore): memory, SQLite (the embedded
default) and PostgreSQL (several cdrd nodes sharing one database), the
schema and its migrations, and the group-commit BatchWriter.
"""

from __future__ import annotations

import os

from cdrd.values import CONNINFO_PASSWORD, QUERY_PASSWORD, safe_url  # noqa: F401 - safe_url is the store's too


class StoreClosed(Exception):
    """The store is not open (any IStore: memory, SQLite, PostgreSQL)."""


def redact(text: str, url: str) -> str:
    """`text` (an error message about `url`) with the URL's passwords written ``***``."""
    from urllib.parse import unquote

    found = []
    scheme, sep, rest = url.partition("://")
    if not sep:
        found += [m.group(2).strip("'") for m in CONNINFO_PASSWORD.finditer(url)]
    else:
        at = rest.rfind("@")
        if at != -1:
            user, colon, password = rest[:at].partition(":")
            if colon and not any(c in user for c in "/?#"):
                found.append(password)
        found += [m.group(0).split("=", 1)[1] for m in QUERY_PASSWORD.finditer(rest)]
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
