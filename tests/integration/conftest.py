"""Fixtures of the integration tests: pg_database is in tests/conftest.py."""
