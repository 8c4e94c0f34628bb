"""The machine's PostgreSQL for the tests (the pg_database fixture is in tests/conftest.py)."""

from __future__ import annotations

import os
import uuid

import psycopg

#: the machine's PostgreSQL (trust auth on loopback); CDRD_TEST_POSTGRES names another.
#: No skip anywhere: a PostgreSQL that does not answer fails the tests that need it.
PG_SERVER = os.environ.get("CDRD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


def pg_admin(sql: str) -> None:
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)


def new_database() -> tuple[str, str]:
    """A fresh database: (name, url)."""
    name = f"cdrd_test_{uuid.uuid4().hex[:12]}"
    pg_admin(f"CREATE DATABASE {name}")
    return name, f"{PG_SERVER}/{name}"
