"""Fixtures of the integration tests."""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest

#: the machine's PostgreSQL (trust auth on loopback); CDRD_TEST_POSTGRES names another
PG_SERVER = os.environ.get("CDRD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


def pg_admin(sql: str) -> None:
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)


@pytest.fixture
def pg_database():
    """A fresh PostgreSQL database: (name, url); dropped afterwards."""
    name = f"cdrd_test_{uuid.uuid4().hex[:12]}"
    pg_admin(f"CREATE DATABASE {name}")
    yield name, f"{PG_SERVER}/{name}"
    pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
