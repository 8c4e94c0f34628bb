"""
cdrd's durable store (cdrd.interfaces.IStore): memory, SQLite (the embedded
default) and PostgreSQL (several cdrd nodes sharing one database), the
schema and its migrations, and the group-commit BatchWriter.
"""

from __future__ import annotations

import os


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
    raise ValueError(f"{url!r} is not memory:, sqlite:PATH or postgresql://...")
