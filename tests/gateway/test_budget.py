"""Connection budgets and the once-a-minute log counter, without a transport."""

from hypothesis import given
from hypothesis import strategies as st

from cdrd.gateway.budget import PER_ADDRESS, TOTAL, ConnectionBudgets, LogEvery


def test_the_oldest_of_an_address_gives_way_then_the_oldest_of_all():
    b = ConnectionBudgets(per_address=2, total=3, logged_in=10)
    for name, address in [("a1", "A"), ("a2", "A"), ("b1", "B")]:
        assert b.arriving(address) == []
        b.waiting(name, address)
    assert b.arriving("A") == [("a1", PER_ADDRESS)]  # then 2 wait: room in all
    b.waiting("a3", "A")
    assert b.arriving("C") == [("a2", TOTAL)]
    b.waiting("c1", "C")
    assert b.not_logged_in == 3


def test_admitted_connections_leave_the_budget_and_never_give_way():
    b = ConnectionBudgets(per_address=1, total=1, logged_in=1)
    b.waiting("gw", "A")
    assert b.admit("gw", known=False)
    assert b.arriving("A") == []  # the gateway is not waiting any more
    b.waiting("other", "A")
    assert not b.admit("other", known=False)  # max_connections
    assert b.admit("relogin", known=True)  # a gateway already here always finds room
    b.leave("gw")
    b.leave("relogin")
    assert b.admit("other", known=False) and b.admitted == 1


@given(st.lists(st.tuples(st.sampled_from("ABC"), st.booleans()), max_size=300),
       st.integers(1, 5), st.integers(1, 8))
def test_the_budgets_hold_whatever_arrives(arrivals, per_address, total):
    b = ConnectionBudgets(per_address=per_address, total=total, logged_in=1000)
    waiting: dict[int, str] = {}  # the model: oldest first
    for n, (address, logs_in) in enumerate(arrivals):
        for gone, _ in b.arriving(address):
            del waiting[gone]
        b.waiting(n, address)
        waiting[n] = address
        assert b.not_logged_in == len(waiting) <= total
        assert list(waiting.values()).count(address) <= per_address
        if logs_in:
            assert b.admit(n, known=False)
            del waiting[n]


def test_log_every_counts_what_it_held_back():
    log = LogEvery(60)
    assert [log.note(t) for t in (0, 1, 2, 59)] == [1, None, None, None]
    assert log.note(60) == 4
    assert log.note(200) == 1
