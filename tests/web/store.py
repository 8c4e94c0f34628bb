"""The stores the web tests run against: the store room's real ones."""

from __future__ import annotations

from cdrd.store import open_store


def make_store(url: str = "memory:", reactor=None):
    if reactor is None and not url.startswith("memory:"):
        from twisted.internet import (
            reactor,
        )  # tests only: cdrd itself takes it as a parameter
    return open_store(url, reactor)
