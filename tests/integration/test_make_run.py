"""
Integration: ``make run GATEWAY=... WEB=...`` listens where it is told and
leaves nothing in the checkout outside var/ (its pid file goes there).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.integration.daemon import ROOT, free_port
from tests.integration.test_installed import http, wait_for

pytestmark = pytest.mark.integration


def untracked() -> set[str]:
    """Files git does not track (ignored ones included), outside var/."""
    r = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    paths = {line[3:] for line in r.stdout.splitlines() if line[:2] in ("??", "!!")}
    return {p for p in paths if not p.startswith("var/")}


def test_make_run_takes_port_overrides_and_writes_only_under_var():
    before = untracked()
    gateway, web = free_port(), free_port()
    venv = sys.prefix
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "-o", f"{venv}/.installed", "run", f"VENV={venv}",
         f"GATEWAY=tcp:{gateway}:interface=127.0.0.1", f"WEB=tcp:{web}:interface=127.0.0.1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_for(lambda: http(web, "/readyz")[0] == 200, "make run to be ready", proc)
        assert (ROOT / "var" / "twistd.pid").exists()
        with socket.create_connection(("127.0.0.1", gateway), timeout=10) as s:
            assert s.recv(512).startswith(b"HELLO ")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # make and the twistd it started
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    deadline = time.monotonic() + 30
    while (ROOT / "var" / "twistd.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not (ROOT / "var" / "twistd.pid").exists()
    assert not (ROOT / "twistd.pid").exists()
    assert untracked() == before
