"""
The gateways this node serves: which connection speaks for each, and how
far its events are stored.  Open calls belong to the gateway (calls.service),
not to a connection; this registry only decides who talks for a gateway.

A gateway's link lives while a connection speaks for it, while a login of
it is in progress, and until its last submission has settled; then it is
dropped (`release`), so memory follows the connections, not every gateway
ever seen.  What the link knew is in the store by then (last seq stored in
order, last heard, boot), and the next login reads it from there.
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
    pending: Deferred | None = None  # fires when the last submission has settled
    heard: int | None = field(default=None)  # last event (its time) or PING received, ms

    def hear(self, when: int) -> None:
        """Heard from the gateway at `when` (never moves back)."""
        if self.heard is None or when > self.heard:
            self.heard = when


class GatewayRegistry:
    def __init__(self):
        self._links: dict[str, GatewayLink] = {}
        self._logins: dict[str, int] = {}  # key -> logins in progress

    def __len__(self) -> int:
        return len(self._links)

    def get(self, key: str) -> GatewayLink | None:
        return self._links.get(key)

    def connection(self, key: str):
        link = self._links.get(key)
        return link.connection if link else None

    def begin_login(self, key: str) -> None:
        """A LOGIN of `key` is being looked up: keep its link until it ends."""
        self._logins[key] = self._logins.get(key, 0) + 1

    def end_login(self, key: str) -> None:
        left = self._logins.get(key, 0) - 1
        if left > 0:
            self._logins[key] = left
        else:
            self._logins.pop(key, None)
        self.release(key)

    def attach(self, state: GatewayState, connection) -> GatewayLink:
        """
        `connection` now speaks for the gateway; `state.last_seq` is the
        highest seq stored in order (the caller waited for the link's
        pending submissions).  Returns its link; `last` for the OK is
        ``link.committed``.
        """
        link = self._links.get(state.key)
        if link is None:
            link = GatewayLink(state=state, submitted=state.last_seq, committed=state.last_seq)
            self._links[state.key] = link
        else:
            if link.failed:
                link.failed = False  # resend from the last seq stored in order
            else:
                link.committed = max(link.committed, state.last_seq)
            link.submitted = link.committed
            link.state = state
        link.connection = connection
        link.heard = state.last_heard
        link.state = evolve(link.state, last_seq=link.committed)
        return link

    def hear(self, link: GatewayLink, when: int) -> None:
        """Heard from the gateway at `when` (an event's time, a PING's arrival)."""
        link.hear(when)

    def submitting(self, link: GatewayLink, top: int, heard: int | None) -> GatewayState:
        """Events up to `top` go to the writer: the gateway's state to store with them."""
        if heard is not None:
            link.hear(heard)
        link.submitted = max(link.submitted, top)
        link.state = link.state.progressed(link.submitted, link.heard)
        return link.state

    def stored(self, link: GatewayLink, top: int) -> bool:
        """
        A submission of the gateway committed (events up to `top`, 0: none);
        False when an earlier one failed (then nothing is acknowledged until
        the next login).
        """
        if link.failed:
            return False
        if top:
            link.committed = max(link.committed, top)
        return True

    def fail(self, link: GatewayLink) -> None:
        """
        A write of the gateway's events failed: `committed` stops here until
        the next login (the writer fails its later submissions already
        queued, too).
        """
        link.failed = True

    def track(self, link: GatewayLink, d: Deferred) -> Deferred:
        """
        Make `link.pending` fire once `d` has settled (its own callbacks,
        which call `stored`/`fail`, run first); then drop the link if
        nothing needs it any more.
        """
        settled = Deferred()
        link.pending = settled

        def done(result):
            if link.pending is settled:
                link.pending = None
            settled.callback(None)
            self.release(link.state.key)
            return result

        return d.addBoth(done)

    def settled(self, link: GatewayLink | None) -> Deferred:
        """Fires once the gateway's submissions in flight have settled (at once if none)."""
        d = Deferred()
        if link is None or link.pending is None:
            d.callback(None)
        else:
            link.pending.addBoth(lambda _: d.callback(None))
        return d

    def detach(self, link: GatewayLink, connection) -> bool:
        """The connection is gone; True if it spoke for the gateway (which is now offline)."""
        if link.connection is not connection or self._links.get(link.state.key) is not link:
            return False
        link.connection = None
        link.state = evolve(link.state, online=False)
        return True

    def offline_state(self, link: GatewayLink) -> GatewayState:
        """What to store of a gateway gone offline, once its submissions have settled."""
        return evolve(link.state, online=False, last_heard=link.heard, last_seq=link.committed)

    def release(self, key: str) -> None:
        """Drop the link of `key` if nothing needs it any more."""
        link = self._links.get(key)
        if link is not None and link.connection is None and link.pending is None \
                and key not in self._logins:
            del self._links[key]

    def online(self) -> list[GatewayState]:
        return [link.state for link in self._links.values() if link.connection is not None]
