"""
Gateway leases: which cdrd node owns each gateway on a shared PostgreSQL,
with a fencing token (docs/store.md, "Several nodes").

A lease is a row of ``gateway_leases``: (gateway, node, token, expires).
A LOGIN takes its gateway's lease, live or not: token + 1, this node.
Every write transaction that touches a gateway (its events, state,
records, CDRs, the call model's cursor) checks, under the store's write
lock (the derived lane: with the lease rows locked FOR KEY SHARE) and in
the same transaction, that this node still holds the token it took; a
node that lost the lease gets ``LeaseLost`` and writes nothing of that
batch.  So however late a node learns that it lost a gateway
(a long GC pause, a partition, a kill -9 of the other side's idea of it),
it can never commit for it again: the token, not the clock, decides.

Expiry (``expires``, in the database's clock, so that the nodes' clocks
never matter) only says which leases nobody renews any more: those of a
dead node, which the node doing the cluster's work adopts when the
gateway still has calls to end (cdrd.cluster).  Rows whose key starts
with ``#`` are cluster-wide work taken only once expired.

Everything here runs in a store thread on a psycopg cursor, inside a
transaction the caller commits.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterable

import attrs

#: the database's clock, ms since the epoch
NOW_MS = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::bigint"
#: the lease of the cluster-wide work: the outputs' delivery, retention,
#: adopting the gateways of dead nodes
WORK = "#work"


def default_node_name() -> str:
    return f"{socket.gethostname()}/{os.getpid()}"


#: gateways nobody holds live with work left (Leases.orphans); a gateway's
#: sequenced events are in the same order by seq as by id
#: (SqlStore._gateway_events), so its newest by seq is its newest by id
ORPHANS = (
    "SELECT g.key FROM gateways g"
    " LEFT JOIN cursors c ON c.gateway = g.key"
    " LEFT JOIN gateway_leases l ON l.gateway = g.key"
    f" WHERE (l.gateway IS NULL OR l.expires <= {NOW_MS})"
    " AND (c.replay_from <= c.applied"
    "      OR COALESCE((SELECT e.id FROM events e WHERE e.gateway = g.key AND e.seq IS NOT NULL"
    "                   ORDER BY e.seq DESC LIMIT 1), 0) > COALESCE(c.applied, 0)"
    "      OR EXISTS (SELECT 1 FROM events e WHERE e.gateway = g.key AND e.seq IS NULL"
    "                 AND e.id > COALESCE(c.applied, 0)))"
    " ORDER BY g.key LIMIT %s"
)


class LeaseLost(Exception):
    """This node no longer holds the lease of these gateways: another node took them."""

    def __init__(self, gateways: Iterable[str]):
        self.gateways = tuple(sorted(gateways))
        super().__init__(
            f"gateway {', '.join(self.gateways)} is owned by another cdrd node now (its lease was taken)"
        )


@attrs.frozen
class Lease:
    gateway: str
    node: str
    token: int
    expires: int  # ms, the database's clock
    live: bool  # expires is ahead of the database's clock


@attrs.frozen
class Taken:
    """What taking a lease found."""

    token: int
    moved: bool  # this node did not hold it before (load its state from the store)


def _nothing_lost() -> None:
    """No gateway to check."""


def batch_gateways(batch) -> set[str]:
    """The gateways a WriteBatch writes for (the log is a journal: not fenced)."""
    gateways = {e.gateway for e in batch.events}
    gateways.update(g.key for g in batch.gateways)
    gateways.update(r.gateway for r in batch.records)
    gateways.update(c.gateway for c in batch.cdrs)
    gateways.update(c.gateway for c in batch.cursors)
    return gateways


class Leases:
    """
    The leases this node holds (gateway -> token), shared by the store's
    threads.  `node` must be unique among running nodes: the tokens fence,
    the name says who in the log and on the pages.
    """

    def __init__(self, node: str, lease_seconds: float):
        self.node = node
        self.lease_ms = int(lease_seconds * 1000)
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def held(self) -> dict[str, int]:
        with self._lock:
            return dict(self._held)

    def holds(self, gateway: str) -> bool:
        with self._lock:
            return gateway in self._held

    def forget(self, gateways: Iterable[str]) -> None:
        with self._lock:
            for g in gateways:
                self._held.pop(g, None)

    # -- in a write transaction (under the store's write lock) ------------------

    def take(self, cur, gateway: str) -> Taken:
        """
        Take `gateway`'s lease whoever holds it (a LOGIN): token + 1 unless
        this node holds it already (then only renewed).  The held token is
        noted before the commit: a write queued behind this transaction
        must find it.
        """
        row = cur.execute(
            "SELECT node, token FROM gateway_leases WHERE gateway = %s FOR UPDATE", (gateway,)
        ).fetchone()
        with self._lock:
            mine = self._held.get(gateway)
        if row is not None and row[0] == self.node and row[1] == mine:
            cur.execute(
                f"UPDATE gateway_leases SET expires = {NOW_MS} + %s WHERE gateway = %s",
                (self.lease_ms, gateway),
            )
            return Taken(token=mine, moved=False)
        (token,) = cur.execute(
            "INSERT INTO gateway_leases (gateway, node, token, expires)"
            f" VALUES (%s, %s, 1, {NOW_MS} + %s)"
            " ON CONFLICT (gateway) DO UPDATE SET node = excluded.node,"
            " token = gateway_leases.token + 1, expires = excluded.expires"
            " RETURNING token",
            (gateway, self.node, self.lease_ms),
        ).fetchone()
        with self._lock:
            self._held[gateway] = token
        return Taken(token=token, moved=True)

    def take_expired(self, cur, key: str) -> Taken | None:
        """
        Take `key`'s lease if nobody holds it live (cluster work, a dead
        node's gateway); None if another node holds it.
        """
        row = cur.execute(
            f"SELECT node, token, expires > {NOW_MS} FROM gateway_leases WHERE gateway = %s FOR UPDATE",
            (key,),
        ).fetchone()
        with self._lock:
            mine = self._held.get(key)
        if row is not None and row[2] and not (row[0] == self.node and row[1] == mine):
            return None
        if row is not None and row[0] == self.node and row[1] == mine:
            cur.execute(
                f"UPDATE gateway_leases SET expires = {NOW_MS} + %s WHERE gateway = %s",
                (self.lease_ms, key),
            )
            return Taken(token=mine, moved=False)
        return self.take(cur, key)

    def check(self, cur, gateways: Iterable[str], lock: bool = False) -> Callable[[], None]:
        """
        Ask whether another node holds the lease of one of `gateways`, or
        took it from this node since; a function that raises LeaseLost if
        so (the answer is read when it is called: the write transaction
        sends its statements first and calls it before it commits).  A
        gateway nobody ever leased is free to write (a LOGIN takes the lease
        before any write of its own, so a node that lost a gateway always
        finds the row).

        Under the write lock no take runs beside the transaction.  Without
        it (`lock`: the derived lane) the rows are locked FOR KEY SHARE
        until the commit: a take (FOR UPDATE) waits for the transaction,
        and a transaction that comes after a take waits for its commit and
        then reads the new token.  A renewal or a clean stop (UPDATE of
        ``expires`` only) takes a lock KEY SHARE does not conflict with.
        """
        gateways = sorted(set(gateways))
        if not gateways:
            return _nothing_lost
        with self._lock:
            held = {g: self._held.get(g) for g in gateways}
        # a cursor of its own: the caller's runs the other statements meanwhile
        rows = cur.connection.cursor()
        rows.execute(
            "SELECT gateway, node, token FROM gateway_leases WHERE gateway = ANY(%s)"
            + (" ORDER BY gateway FOR KEY SHARE" if lock else ""),
            (gateways,),
        )

        def judge() -> None:
            lost = [gateway for gateway, node, token in rows.fetchall()
                    if node != self.node or token != held[gateway]]
            if lost:
                raise LeaseLost(lost)
        return judge

    # -- in any transaction --------------------------------------------------------

    def renew(self, cur) -> list[str]:
        """Extend every lease this node holds; the ones it found taken (forgotten here)."""
        with self._lock:
            held = dict(self._held)
        if not held:
            return []
        rows = cur.execute(
            f"UPDATE gateway_leases SET expires = {NOW_MS} + %s WHERE node = %s RETURNING gateway, token",
            (self.lease_ms, self.node),
        ).fetchall()
        renewed = dict(rows)
        missed = [g for g, token in held.items() if renewed.get(g) != token]
        if not missed:
            return []
        # a take of this node's own may be committing meanwhile (its row not
        # visible to the UPDATE yet): lost is only what the row now shows
        # held by another node or another token
        now = {
            gateway: (node, token)
            for gateway, node, token in cur.execute(
                "SELECT gateway, node, token FROM gateway_leases WHERE gateway = ANY(%s)", (missed,)
            )
        }
        lost = [g for g in missed if g in now and now[g] != (self.node, held[g])]
        with self._lock:
            for g in lost:
                if self._held.get(g) == held[g]:
                    del self._held[g]
        return sorted(lost)

    def release_all(self, cur) -> None:
        """Let every lease of this node expire now (a clean stop): adopted at once."""
        with self._lock:
            held, self._held = self._held, {}
        if held:
            cur.execute(
                f"UPDATE gateway_leases SET expires = {NOW_MS} - 1 WHERE node = %s AND gateway = ANY(%s)",
                (self.node, list(held)),
            )

    def orphans(self, cur, limit: int) -> list[str]:
        """
        Gateways nobody holds live (a dead node's, or never leased) that
        still have work: an open call (their cursor's replay_from is at or
        below applied) or events the call model has not applied.
        """
        rows = cur.execute(ORPHANS, (limit,)).fetchall()
        return [r[0] for r in rows]

    def leases(self, cur) -> list[Lease]:
        rows = cur.execute(
            f"SELECT gateway, node, token, expires, expires > {NOW_MS} FROM gateway_leases ORDER BY gateway"
        ).fetchall()
        return [Lease(*r) for r in rows]
