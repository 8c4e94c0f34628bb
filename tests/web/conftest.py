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

    def __init__(
        self, timezone="UTC", users=None, status=None, calls=None, database="memory:",
        config=None, presence=None,
    ):
        self.store = make_store(database)
        self.clock = task.Clock()
        self.clock.advance(F.t("13:00:00") / 1000)
        self.feed = LiveFeed()
        self.web = WebApp(
            config or F.config(timezone, users),
            self.store,
            self.clock,
            calls=calls,
            feed=self.feed,
            status=status,
            presence=presence,
        )
        self.http = StubTreq(self.web.resource())

    async def fill(self):
        await self.store.open()
        await self.store.write(F.batch())
        return self

    async def pump(self, d):
        """StubTreq moves bytes only when flushed: a threaded store answers later."""
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        done = []
        d.addBoth(lambda result: done.append(result) or result)
        for _ in range(1000):  # 10 s at most
            self.http.flush()
            if done:
                return await d
            await deferLater(reactor, 0.01, lambda: None)
        raise AssertionError("no response within 10 s")

    async def get(self, path, **kw):
        r = await self.pump(self.http.get("http://127.0.0.1" + path, **kw))
        return r, await self.pump(r.content())

    async def json(self, path, code=200):
        import json

        r, body = await self.get(path)
        assert r.code == code, body
        assert r.headers.getRawHeaders("content-type") == [
            "application/json; charset=utf-8"
        ]
        return json.loads(body)


@pytest.fixture(params=["memory:"])
def database(request, tmp_path):
    """Override with params=[..., "sqlite"] to run a module on SQLite too."""
    if request.param == "sqlite":
        return f"sqlite:{tmp_path}/cdrd.sqlite"
    return request.param


@pytest.fixture
def make_site(database):
    sites = []

    async def make(**kw):
        site = await Site(database=database, **kw).fill()
        sites.append(site)
        return site

    yield make
    for site in sites:
        pytest_twisted.blockon(site.store.close())
