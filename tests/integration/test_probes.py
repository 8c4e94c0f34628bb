"""
Integration: /readyz and /healthz of real cdrd processes on a real
PostgreSQL.  A standby is not ready and says why on server.metrics_endpoint
(which listens from the start, without auth), then is ready once it took
over from the active node killed -9.  (The other reasons are unit tests.)
"""

from __future__ import annotations

import json

import pytest

from tests.integration.daemon import Daemon, free_port
from tests.integration.test_installed import http, wait_for

pytestmark = pytest.mark.integration


def test_a_standby_says_it_waits_then_is_ready_after_the_takeover(tmp_path, pg_database):
    _, url = pg_database
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    probes = free_port()
    active = Daemon(tmp_path / "a", database=url)
    standby = Daemon(tmp_path / "b", database=url,
                     server=f'metrics_endpoint = "tcp:{probes}:interface=127.0.0.1"\n')
    try:
        active.start()
        assert http(active.web_port, "/readyz")[0] == 200
        standby.spawn()
        code, body = wait_for(lambda: (r := http(probes, "/readyz"))[0] and b"standing by" in r[1] and r,
                              "the standby's /readyz", standby.proc, log=standby.logfile)
        assert code == 503
        assert json.loads(body)["ready"] is False
        assert http(probes, "/healthz")[0] == 200
        assert http(probes, "/metrics")[0] == 200
        assert http(standby.web_port, "/readyz")[0] == 0  # its web page does not listen yet
        active.kill9()
        wait_for(lambda: http(probes, "/readyz")[0] == 200, "the takeover", standby.proc, log=standby.logfile)
        assert http(standby.web_port, "/readyz") == (200, b'{"ready":true,"reason":"ready"}\n')
    finally:
        active.stop()
        standby.stop()
