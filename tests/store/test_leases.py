"""
Gateway leases with fencing on the machine's real PostgreSQL (docs/store.md,
"Several nodes"): two PostgresStores on one database play two cdrd nodes.
"""

from __future__ import annotations

import psycopg
import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from zope.interface.verify import verifyObject

from cdrd.interfaces import ILeasedStore, ModelCursor, WriteBatch
from cdrd.store.leases import WORK, LeaseLost, Leases
from cdrd.store.postgresql import WRITE_LOCK, PostgresStore
from tests.store.values import DAY, KEY, KEY2, cdr, event, gateway_state, record

pytestmark = pytest.mark.integration


@pytest.fixture
def nodes(pg_database):
    """Two opened stores on one database, nodes "a" and "b", and the URL."""
    _, url = pg_database
    a = PostgresStore(url, reactor, leases=Leases("a", 10))
    b = PostgresStore(url, reactor, leases=Leases("b", 10))
    pytest_twisted.blockon(defer.gatherResults([a.open(), b.open()]))
    yield a, b, url
    pytest_twisted.blockon(defer.gatherResults([a.close(), b.close()]))


def sql(url, statement, params=()):
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else None


def expire_all(url):
    """As if lease_seconds had passed with nobody renewing."""
    sql(url, "UPDATE gateway_leases SET expires = 0")


async def writes_racing_a_takeover(a, b, write) -> list[int]:
    """
    Node a's writes ``write(n)``, n = 1..20, while node b takes KEY: the n
    whose writes committed (the others failed with LeaseLost).  One after
    another, as the BatchWriter writes (the store's threads give
    concurrent writes no order).
    """
    outcomes = []

    async def writes():
        for n in range(1, 21):
            try:
                await write(n)
            except LeaseLost:
                outcomes.append((n, False))
            else:
                outcomes.append((n, True))

    await defer.gatherResults([defer.ensureDeferred(writes()), b.take_lease(KEY)])
    return [n for n, ok in outcomes if ok]


def test_the_postgresql_store_is_a_leased_store(nodes):
    a, _, _ = nodes
    assert verifyObject(ILeasedStore, a)


@pytest_twisted.ensureDeferred
async def test_a_login_elsewhere_fences_the_old_owner(nodes):
    a, b, url = nodes
    taken = await a.take_lease(KEY)
    assert (taken.token, taken.moved) == (1, True)
    await a.write(WriteBatch(events=[event(1)], gateways=[gateway_state(last_seq=1)]))

    taken = await b.take_lease(KEY)  # the gateway logged in on b
    assert (taken.token, taken.moved) == (2, True)
    with pytest.raises(LeaseLost) as lost:
        await a.write(WriteBatch(events=[event(2)], gateways=[gateway_state(last_seq=2)]))
    assert lost.value.gateways == (KEY,)
    assert "owned by another cdrd node" in str(lost.value)
    result = await b.write(WriteBatch(events=[event(2)], gateways=[gateway_state(last_seq=2)]))
    assert [e.seq for e in result.events] == [2]
    assert sql(url, "SELECT seq FROM events ORDER BY id") == [(1,), (2,)]
    assert (await a.gateway(KEY)).last_seq == 2


@pytest_twisted.ensureDeferred
async def test_every_kind_of_write_of_a_lost_gateway_is_refused_whole(nodes):
    a, b, url = nodes
    await a.take_lease(KEY)
    await a.take_lease(KEY2)
    await b.take_lease(KEY)
    cursor = ModelCursor(gateway=KEY, applied=1, replay_from=2)
    for batch in (
        WriteBatch(cursors=[cursor]),
        WriteBatch(gateways=[gateway_state(online=False)]),
        # KEY2 is a's: a batch mixing it with a lost gateway applies nothing
        WriteBatch(events=[event(1, gateway=KEY2), event(1)]),
    ):
        with pytest.raises(LeaseLost):
            await a.write(batch)
    assert sql(url, "SELECT COUNT(*) FROM events") == [(0,)]
    assert sql(url, "SELECT COUNT(*) FROM cursors") == [(0,)]
    # the gateway log is a journal, and a gateway nobody leased is free
    await a.write(WriteBatch(events=[event(1, gateway="9999_000C2A020099")]))


@pytest_twisted.ensureDeferred
async def test_a_lost_lease_is_the_error_of_a_write_that_also_fails_itself(nodes):
    """
    The lease check is sent first and read before the commit (pipeline
    mode): a batch of a lost gateway that PostgreSQL also refuses (a NUL in
    a text) fails with LeaseLost, as when the check ran alone first; the
    gateway's session then closes instead of retrying the write.
    """
    a, b, url = nodes
    await a.take_lease(KEY)
    await b.take_lease(KEY)
    with pytest.raises(LeaseLost):
        await a.write(WriteBatch(events=[event(1)], gateways=[gateway_state(firmware="1.\x002")]))
    assert sql(url, "SELECT COUNT(*) FROM events") == [(0,)]
    await a.write(WriteBatch(events=[event(1, gateway=KEY2)]))  # the connection is fine


@pytest_twisted.ensureDeferred
async def test_a_relogin_on_the_same_node_keeps_the_token(nodes):
    a, _, _ = nodes
    assert (await a.take_lease(KEY)).token == 1
    again = await a.take_lease(KEY)
    assert (again.token, again.moved) == (1, False)
    await a.write(WriteBatch(events=[event(1)]))


@pytest_twisted.ensureDeferred
async def test_a_write_in_flight_either_commits_before_the_takeover_or_not_at_all(nodes):
    """The take and the writes serialise on the write lock: no interleaving."""
    a, b, url = nodes
    await a.take_lease(KEY)
    committed = await writes_racing_a_takeover(a, b, lambda seq: a.write(WriteBatch(events=[event(seq)])))
    # what a committed is stored, and nothing of a after the first refusal
    assert committed == list(range(1, len(committed) + 1))
    assert sql(url, "SELECT seq FROM events ORDER BY id") == [(s,) for s in committed]


# -- the derived lane (docs/store.md, "Two write lanes") ----------------------------


@pytest_twisted.ensureDeferred
async def test_the_derived_lane_refuses_what_a_lost_gateway_derived(nodes):
    a, b, url = nodes
    await a.take_lease(KEY)
    await a.take_lease(KEY2)
    rec = record(1, DAY)
    await a.write_derived(WriteBatch(records=[rec], cdrs=[cdr(rec.id, 1, DAY)],
                                     cursors=[ModelCursor(gateway=KEY, applied=1, replay_from=2)]))
    await b.take_lease(KEY)
    for batch in (
        WriteBatch(cursors=[ModelCursor(gateway=KEY, applied=2, replay_from=3)]),
        WriteBatch(records=[record(2, DAY)]),
        # KEY2 is a's: a batch mixing it with a lost gateway applies nothing
        WriteBatch(records=[record(3, DAY, gateway=KEY2), record(4, DAY)]),
    ):
        with pytest.raises(LeaseLost):
            await a.write_derived(batch)
    assert sql(url, "SELECT gateway, applied FROM cursors") == [(KEY, 1)]
    assert sql(url, "SELECT COUNT(*) FROM calls") == [(1,)]
    assert sql(url, "SELECT COUNT(*) FROM cdrs") == [(1,)]


@pytest_twisted.ensureDeferred
async def test_the_derived_lane_does_not_wait_for_the_write_lock(nodes):
    """Another session holds the events' lock the whole time: derived rows commit."""
    a, _, url = nodes
    await a.take_lease(KEY)
    with psycopg.connect(url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (WRITE_LOCK,))
        # were it to wait, it would wait for ever: the timeout only ends such a failure
        written = a.write_derived(WriteBatch(cursors=[ModelCursor(gateway=KEY, applied=3, replay_from=4)]))
        await written.addTimeout(60, reactor)
        assert sql(url, "SELECT applied FROM cursors") == [(3,)]
        holder.execute("SELECT pg_advisory_unlock(%s)", (WRITE_LOCK,))


@pytest_twisted.ensureDeferred
async def test_the_derived_lanes_check_holds_off_a_take_and_not_a_renewal(nodes):
    """
    The derived lane's lease check locks the lease rows FOR KEY SHARE until
    its commit: a take (FOR UPDATE) must wait; a renewal (an UPDATE of
    ``expires``) need not.  lock_timeout turns a wait into an error at
    once, whatever the machine's speed: only a real lock waits.
    """
    a, _, url = nodes
    await a.take_lease(KEY)
    take = "SELECT token FROM gateway_leases WHERE gateway = %s FOR UPDATE"
    with psycopg.connect(url) as writer, psycopg.connect(url) as other:
        other.execute("SET lock_timeout = '50ms'")
        judge = a.leases.check(writer.cursor(), [KEY], lock=True)
        judge()  # still a's
        other.execute("UPDATE gateway_leases SET expires = expires + 1 WHERE gateway = %s", (KEY,))
        other.commit()  # a renewal went through
        with pytest.raises(psycopg.errors.LockNotAvailable):
            other.execute(take, (KEY,))
        other.rollback()
        writer.commit()  # the derived transaction ends: a take goes on
        assert other.execute(take, (KEY,)).fetchone() == (1,)
        other.rollback()
        # under the write lock (no `lock`), the check holds no row
        a.leases.check(writer.cursor(), [KEY])()
        assert other.execute(take, (KEY,)).fetchone() == (1,)
        other.rollback()
        writer.rollback()


@pytest_twisted.ensureDeferred
async def test_a_derived_write_in_flight_either_commits_before_the_takeover_or_not_at_all(nodes):
    """A take waits for the derived lane's row locks: no interleaving."""
    a, b, url = nodes
    await a.take_lease(KEY)
    committed = await writes_racing_a_takeover(a, b, lambda n: a.write_derived(WriteBatch(
        records=[record(n, DAY)], cursors=[ModelCursor(gateway=KEY, applied=n, replay_from=n + 1)])))
    assert committed == list(range(1, len(committed) + 1))
    assert sql(url, "SELECT applied FROM cursors") == ([(committed[-1],)] if committed else [])
    assert sql(url, "SELECT COUNT(*) FROM calls") == [(len(committed),)]


@pytest_twisted.ensureDeferred
async def test_renewal_finds_the_leases_taken(nodes):
    a, b, url = nodes
    await a.take_lease(KEY)
    await a.take_lease(KEY2)
    before = sql(url, "SELECT expires FROM gateway_leases WHERE gateway = %s", (KEY2,))[0][0]
    await b.take_lease(KEY)
    assert await a.renew_leases() == [KEY]
    assert a.leases.held() == {KEY2: 1}
    after = sql(url, "SELECT expires FROM gateway_leases WHERE gateway = %s", (KEY2,))[0][0]
    assert after >= before
    assert await a.renew_leases() == []


@pytest_twisted.ensureDeferred
async def test_renewal_racing_a_take_of_its_own_loses_nothing(nodes):
    """A take notes its token before its commit; a renewal in between finds
    no row (or the old one) and must not call the gateway lost."""
    a, _, _ = nodes
    await a.take_lease(KEY2)
    a.leases._held[KEY] = 1  # as while the take's INSERT is not committed yet
    assert await a.renew_leases() == []
    assert a.leases.held() == {KEY: 1, KEY2: 1}


@pytest_twisted.ensureDeferred
async def test_work_is_taken_only_once_expired(nodes):
    a, b, url = nodes
    assert (await a.take_expired_lease(WORK)).token == 1
    assert await b.take_expired_lease(WORK) is None  # a holds it live
    assert (await a.take_expired_lease(WORK)).moved is False  # renewed
    expire_all(url)  # a died
    taken = await b.take_expired_lease(WORK)
    assert (taken.token, taken.moved) == (2, True)
    assert await a.renew_leases() == [WORK]


@pytest_twisted.ensureDeferred
async def test_a_clean_close_lets_the_leases_go_at_once(nodes, pg_database):
    _, url = pg_database
    c = PostgresStore(url, reactor, leases=Leases("c", 10))
    await c.open()
    await c.take_lease(KEY)
    await c.take_expired_lease(WORK)
    await c.close()
    _, b, _ = nodes
    assert (await b.take_expired_lease(WORK)).token == 2


@pytest_twisted.ensureDeferred
async def test_orphans_are_gateways_with_calls_to_end_and_no_live_lease(nodes):
    a, b, url = nodes
    third = "8202_000C2A020084"
    for key in (KEY, KEY2, third):
        await a.take_lease(key)
    await a.write(WriteBatch(
        gateways=[gateway_state(KEY), gateway_state(KEY2), gateway_state(third)],
        events=[event(1), event(1, gateway=KEY2), event(1, gateway=third)],
        cursors=[
            ModelCursor(gateway=KEY, applied=1, replay_from=1),  # an open call
            ModelCursor(gateway=KEY2, applied=2, replay_from=3),  # nothing open, all applied
            # third: no cursor, an event not applied
        ],
    ))
    assert await b.orphans() == []  # a holds them live
    expire_all(url)
    assert await b.orphans() == [KEY, third]


@pytest_twisted.ensureDeferred
async def test_a_gateway_is_online_only_while_its_lease_is_live(nodes):
    a, b, url = nodes
    await a.take_lease(KEY)
    await a.write(WriteBatch(gateways=[gateway_state(online=True)]))
    assert [g.online for g in await b.gateways()] == [True]
    expire_all(url)  # a was killed -9: its row still says online
    assert [g.online for g in await b.gateways()] == [False]
