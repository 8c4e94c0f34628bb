"""
The test FreeRADIUS (tests/accounting/freeradius.py) picks its port before
it binds it: a port something else took meanwhile must not fail a test at
random.
"""

from __future__ import annotations

import socket

import pytest

from tests.accounting.freeradius import FreeRadius, free_udp_port

pytestmark = pytest.mark.integration


def test_ports_are_picked_below_the_kernels_ephemeral_range():
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    assert all(10000 <= free_udp_port() < low for _ in range(50))


def test_an_automatic_port_taken_before_freeradius_binds_it_is_picked_again(tmp_path):
    radius = FreeRadius(tmp_path / "radius", secret="s")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as thief:
        thief.bind(("127.0.0.1", radius._port))  # nobody was told the port yet
        taken = radius._port
        radius.start()
        try:
            assert radius.port != taken and radius.ping()
            assert "Address already in use" in radius.log_text()  # it did meet the thief
        finally:
            radius.stop()


def test_a_port_already_given_out_is_not_changed_and_the_error_names_it(tmp_path):
    radius = FreeRadius(tmp_path / "radius", secret="s")
    port = radius.port  # a test has put it in a config: it must stay
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", port))
        with pytest.raises(RuntimeError, match=f"could not bind port {port} in 2 attempts"):
            radius.start(attempts=2)
    assert radius.port == port and radius.proc is None
