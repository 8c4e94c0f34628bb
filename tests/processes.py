"""Stopping the real peers the tests start (FreeRADIUS, rsyslog, HAProxy)."""

from __future__ import annotations

import signal
import subprocess


def terminate(proc: subprocess.Popen | None, grace: float = 10.0) -> None:
    """SIGTERM, and SIGKILL if it is still there after `grace` s; an ended process or None: nothing."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
