"""The IStore contract against MemoryStore."""

import pytest
from pytest_twisted import blockon

from cdrd.interfaces import WriteBatch
from cdrd.store import open_store
from cdrd.store.memory import MemoryStore
from tests.store.contract import StoreContract, deferred_test
from tests.store.values import event


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def store(self):
        store = open_store("memory:", None)
        assert isinstance(store, MemoryStore)
        blockon(store.open())
        return store


def test_memory_deferreds_have_fired():
    """Other rooms' unit tests rely on it: no reactor turn needed."""
    store = MemoryStore()
    results = []
    store.open().addCallback(results.append)
    store.gateways().addCallback(results.append)
    assert results == [None, []]


@deferred_test
async def test_no_write_after_close():
    """Other rooms' unit tests can catch a write after close, as on a real store."""
    store = MemoryStore()
    await store.write(WriteBatch(events=[event(1)]))  # open() is optional here
    await store.close()
    with pytest.raises(Exception, match="closed"):
        await store.write(WriteBatch(events=[event(2)]))
