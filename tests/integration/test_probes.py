"""
Integration: /readyz and /healthz of real cdrd processes on a real
PostgreSQL, as HAProxy checks them (etc/haproxy.cfg).  Every node is
active: both answer ready on server.metrics_endpoint (which listens from
the start, without auth) and on the web port, and a node killed -9 leaves
the other ready.  (The reasons for not being ready are unit tests.)
"""

from __future__ import annotations

import json

import pytest

from tests.integration.daemon import Daemon, free_port
from tests.integration.test_installed import http

pytestmark = pytest.mark.integration


def test_every_node_is_ready_and_stays_so_when_another_is_killed(tmp_path, pg_database):
    _, url = pg_database
    nodes = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        probes = free_port()
        node = Daemon(tmp_path / name, database=url,
                      server=f'metrics_endpoint = "tcp:{probes}:interface=127.0.0.1"\n')
        node.probes = probes
        nodes.append(node)
    a, b = nodes
    try:
        a.start()
        b.start()
        for node in nodes:
            code, body = http(node.probes, "/readyz")
            assert (code, json.loads(body)) == (200, {"ready": True, "reason": "ready"})
            assert http(node.web_port, "/readyz")[0] == 200
            assert http(node.probes, "/healthz")[0] == 200
            assert http(node.probes, "/metrics")[0] == 200
        a.kill9()
        assert http(a.probes, "/readyz")[0] == 0  # what HAProxy's check sees: nothing listens
        assert http(b.probes, "/readyz") == (200, b'{"ready":true,"reason":"ready"}\n')
    finally:
        a.stop()
        b.stop()
