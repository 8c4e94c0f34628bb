"""
systemd's notify protocol (sd_notify(3)), the few lines of it cdrd needs:
``READY=1`` once recovered and listening, ``STOPPING=1`` at shut-down,
``STATUS=...`` while a standby waits.  One datagram to ``$NOTIFY_SOCKET``
(a path, or ``@name`` for the abstract namespace); nothing without it.
"""

from __future__ import annotations

import os
import socket

from twisted.logger import Logger

log = Logger()


def notify(*states: str, environ=None) -> bool:
    """Send `states` (``"READY=1"``, ...); False when not under systemd or the send failed."""
    address = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(states).encode())
    except OSError as e:
        log.warn("systemd notify {states} to {socket} failed: {error}",
                 states=", ".join(states), socket=address.replace("\0", "@"), error=str(e))
        return False
    return True
