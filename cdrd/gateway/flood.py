"""
A flood of bad packets from one address, for the log: one line when it
begins, one when it is over, never one per packet (docs/monitoring.md).

Fixed windows of `window` s per address: a window with `threshold` bad
packets or more begins a flood (logged at once); the first window after it
with fewer ends it.  Bounded: at most `max_addresses` addresses are
tracked; when full, addresses not flooding whose window has ended are
dropped first, and a new address is not tracked while every slot floods
(it still counts in `total`).
"""

from __future__ import annotations

from attrs import define, field
from twisted.logger import Logger

WINDOW = 60.0
MAX_ADDRESSES = 4096


@define
class _Window:
    start: float
    count: int = 0
    flooding: bool = False
    in_flood: int = 0  # bad packets since the flood began


@define(eq=False)
class BadPacketFlood:
    clock: object  # IReactorTime
    threshold: int = 100
    window: float = WINDOW
    max_addresses: int = MAX_ADDRESSES
    total: int = 0  # bad packets from every address, ever (cdrd_bad_packets_total)
    _addresses: dict = field(factory=dict)

    log = Logger()

    @property
    def flooding(self) -> list[str]:
        return sorted(a for a, w in self._addresses.items() if w.flooding)

    def record(self, address: str) -> None:
        """A bad packet from `address` (a host, without the port)."""
        self.total += 1
        now = self.clock.seconds()
        w = self._addresses.get(address)
        if w is not None and now - w.start >= self.window:
            w = self._roll(address, w, now)
        if w is None:
            if len(self._addresses) >= self.max_addresses:
                self.sweep()
                if len(self._addresses) >= self.max_addresses:
                    return
            w = self._addresses[address] = _Window(start=now)
        w.count += 1
        if w.flooding:
            w.in_flood += 1
        elif w.count >= self.threshold:
            w.flooding = True
            w.in_flood = w.count
            self.log.warn(
                "bad packet flood from {address}: {count} bad packets within {window:g} s",
                address=address, count=w.count, window=self.window, alert="bad_packet_flood", state="begins",
            )

    def sweep(self) -> None:
        """End the windows that are over (called every few seconds)."""
        now = self.clock.seconds()
        for address, w in list(self._addresses.items()):
            if now - w.start >= self.window:
                self._roll(address, w, now)

    def _roll(self, address: str, w: _Window, now: float) -> _Window | None:
        if w.flooding and w.count >= self.threshold:
            w.start, w.count = now, 0  # still flooding: a new window
            return w
        del self._addresses[address]
        if w.flooding:
            self.log.info(
                "bad packet flood from {address} is over: {count} bad packets in all",
                address=address, count=w.in_flood, alert="bad_packet_flood", state="clears",
            )
        return None
