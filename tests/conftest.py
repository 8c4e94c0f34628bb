"""Settings and fixtures for the whole suite."""

import pytest
from hypothesis import settings

from tests.postgres import new_database, pg_admin

# Hypothesis's per-example deadline (200 ms) measures the machine, not the
# code: on a busy CI machine it fails tests that are right.  Speed is measured
# in bench/, never asserted in a test.
settings.register_profile("cdrd", deadline=None)
settings.load_profile("cdrd")


@pytest.fixture
def pg_database():
    """A fresh database on the machine's PostgreSQL: (name, url); dropped afterwards."""
    name, url = new_database()
    yield name, url
    pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
