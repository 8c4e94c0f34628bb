"""
The gateways this node serves: which connection speaks for each, and how
far its events are stored.  Open calls belong to the gateway (calls.service),
not to a connection; this registry only decides who talks for a gateway.
"""

from __future__ import annotations

from attrs import define, evolve, field
from twisted.internet.defer import Deferred

from cdrd.values import GatewayState


@define(eq=False)
class GatewayLink:
    """
    A gateway's live state on this node.

    `submitted` is the highest seq handed to the writer, `committed` the
    highest seq whose transaction committed with every one before it (a
    failed transaction stops it until the next login, so `OK last=` never
    skips events that were not stored).
    """

    state: GatewayState
    connection: object | None = None
    submitted: int = 0
    committed: int = 0
    failed: bool = False
    pending: Deferred | None = None  # fires when the last submission commits
    pending_seq: int = 0
    heard: int | None = field(default=None)  # last event or PING received, ms


class GatewayRegistry:
    def __init__(self):
        self._links: dict[str, GatewayLink] = {}

    def get(self, key: str) -> GatewayLink | None:
        return self._links.get(key)

    def connection(self, key: str):
        link = self._links.get(key)
        return link.connection if link else None

    def attach(self, state: GatewayState, connection, last_stored: int) -> GatewayLink:
        """
        `connection` now speaks for the gateway.  Returns its link; `last`
        for the OK is ``link.committed``.
        """
        link = self._links.get(state.key)
        if link is None:
            link = GatewayLink(state=state, submitted=last_stored, committed=last_stored)
            self._links[state.key] = link
        else:
            # the caller waited for link.pending: every submission has settled
            if link.failed:
                link.failed = False  # resend from the last seq stored in order
            else:
                link.committed = max(link.committed, last_stored)
            link.submitted = link.committed
            link.state = state
        link.connection = connection
        link.heard = state.last_heard
        return link

    def detach(self, key: str, connection, now: int) -> GatewayState | None:
        """The connection is gone; returns the gateway's state to store, if it spoke for it."""
        link = self._links.get(key)
        if link is None or link.connection is not connection:
            return None
        link.connection = None
        link.state = evolve(link.state, online=False, last_heard=link.heard)
        return link.state

    def online(self) -> list[GatewayState]:
        return [link.state for link in self._links.values() if link.connection is not None]
