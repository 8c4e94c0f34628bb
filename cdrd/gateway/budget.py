"""
Connection budgets, sans I/O (docs/gateway.md, "Connections and memory").

Anyone who can reach the port can open connections, without a secret; so
connections that have not logged in have budgets of their own, per source
address and in all, and when one is full its *oldest* connection gives way
to the new one.  Gateways that logged in (or whose LOGIN passed its checks
and is being looked up) count against `max_connections` only, and never
give way.  The connections are opaque keys here (the protocol instances).
"""

from __future__ import annotations

from collections.abc import Hashable

from attrs import define, field

PER_ADDRESS = "server.unauthenticated_per_address"
TOTAL = "server.unauthenticated_total"


@define(eq=False)
class ConnectionBudgets:
    per_address: int  # server.unauthenticated_per_address
    total: int  # server.unauthenticated_total
    logged_in: int  # server.max_connections
    # not logged in: connection -> its address, oldest first (dicts keep order)
    _waiting: dict[Hashable, str] = field(factory=dict)
    _by_address: dict[str, dict[Hashable, None]] = field(factory=dict)
    _admitted: set[Hashable] = field(factory=set)

    @property
    def not_logged_in(self) -> int:
        return len(self._waiting)

    @property
    def admitted(self) -> int:
        return len(self._admitted)

    def arriving(self, address: str) -> list[tuple[Hashable, str]]:
        """
        A connection from `address` is accepted: the connections not logged
        in that give way to it (each with the setting whose budget is full),
        already out of the budgets.
        """
        gone = []
        of_address = self._by_address.get(address, {})
        if len(of_address) >= self.per_address:
            oldest = next(iter(of_address))
            self.leave(oldest)
            gone.append((oldest, PER_ADDRESS))
        if len(self._waiting) >= self.total:
            oldest = next(iter(self._waiting))
            self.leave(oldest)
            gone.append((oldest, TOTAL))
        return gone

    def waiting(self, connection: Hashable, address: str) -> None:
        """`connection` (from `address`) is open and has not logged in."""
        self._waiting[connection] = address
        self._by_address.setdefault(address, {})[connection] = None

    def admit(self, connection: Hashable, known: bool) -> bool:
        """
        `connection`'s LOGIN passed its checks: it leaves the budget of
        connections not logged in.  False: `max_connections` gateways are
        logged in (or logging in) already; a gateway `known` here (a
        relogin, its writes in flight) always finds room.
        """
        self._forget_waiting(connection)
        if len(self._admitted) >= self.logged_in and not known:
            return False
        self._admitted.add(connection)
        return True

    def leave(self, connection: Hashable) -> None:
        """`connection` is closing: it counts in no budget from now on."""
        self._forget_waiting(connection)
        self._admitted.discard(connection)

    def _forget_waiting(self, connection: Hashable) -> None:
        address = self._waiting.pop(connection, None)
        if address is not None:
            of_address = self._by_address[address]
            del of_address[connection]
            if not of_address:
                del self._by_address[address]


@define
class LogEvery:
    """
    At most one log line every `interval` seconds about something that may
    come in floods; `note(now)` returns the count to log (those held back
    since the last line, and this one), or None to stay silent.
    """

    interval: float = 60.0
    _count: int = 0
    _logged: float | None = None

    def note(self, now: float) -> int | None:
        self._count += 1
        if self._logged is not None and now - self._logged < self.interval:
            return None
        count, self._count, self._logged = self._count, 0, now
        return count
