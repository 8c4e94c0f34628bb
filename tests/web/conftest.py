import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet import task

from cdrd.web.app import WebApp
from cdrd.web.feed import LiveFeed
from tests.web import fixtures as F
from tests.web.store import make_store


class Site:
    """A WebApp over the fixture day, at 13:00 UTC on it, with a StubTreq."""

    def __init__(self, timezone="UTC", users=None, status=None, calls=None):
        self.store = make_store()
        self.clock = task.Clock()
        self.clock.advance(F.t("13:00:00") / 1000)
        self.feed = LiveFeed()
        self.web = WebApp(F.config(timezone, users), self.store, self.clock, calls=calls,
                          feed=self.feed, status=status)
        self.http = StubTreq(self.web.resource())

    async def fill(self):
        await self.store.open()
        await self.store.write(F.batch())
        return self

    async def get(self, path, **kw):
        r = await self.http.get("http://127.0.0.1" + path, **kw)
        return r, await r.content()

    async def json(self, path, code=200):
        import json

        r, body = await self.get(path)
        assert r.code == code, body
        assert r.headers.getRawHeaders("content-type") == ["application/json; charset=utf-8"]
        return json.loads(body)


@pytest.fixture
def make_site():
    async def make(**kw):
        return await Site(**kw).fill()

    return make
