"""
Unit: what an operator and a supervisor see of a cdrd service: /metrics,
/healthz and /readyz (over build_service and a MemoryReactorClock), the
daemon's status pipe, systemd's notify socket (a real unix datagram
socket), config errors for paths, cdrd-passwd without a terminal.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from cdrd import config as C
from cdrd.gateway.codec import parse_line
from cdrd.service import DaemonStatus, build_service
from cdrd.systemd import notify
from cdrd.tap import build_config
from cdrd.web.auth import hash_password
from tests.test_tap import LOGIN, JournalStore

FAMILIES = {
    "cdrd_events_received", "cdrd_events_stored", "cdrd_events_duplicate", "cdrd_bad_packets",
    "cdrd_gateway_log_entries", "cdrd_gateway_log_windows",
    "cdrd_ack_latency_seconds", "cdrd_store_commit_seconds", "cdrd_store_batch_events",
    "cdrd_gateways_online", "cdrd_gateway_connections", "cdrd_calls_open", "cdrd_calls", "cdrd_cdrs",
    "cdrd_gateway_connections_not_logged_in", "cdrd_gateway_connections_given_way",
    "cdrd_outbox_items", "cdrd_outbox_oldest_age_seconds",
    "process_cpu_seconds", "process_open_fds", "python_info",
    "cdrd_gc_pause_seconds", "cdrd_gc_frozen_objects",
}


def service(store=None, web=None, **server):
    data = {"server": {"database": "memory:", "allow_unknown_gateways": True, **server}}
    if web:
        data["web"] = web
    config = C.parse(data)
    reactor = MemoryReactorClock()
    svc = build_service(config, reactor, store=store if store is not None else JournalStore())
    return svc, reactor


def started(**kw):
    store = JournalStore()
    store.opening.callback(None)
    store.recovering.callback(None)
    svc, reactor = service(store, **kw)
    svc.startService()
    reactor.advance(0)
    assert svc.ready.called
    return svc, reactor


def web(svc):
    (listener,) = [x for x in svc.listeners if x.setting == "server.web_endpoint"]
    return StubTreq(listener.factory.resource)


def get(treq, path, **kw):
    response = treq.get(f"http://cdrd{path}", **kw).result
    body = treq.content(response).result
    return response.code, body


def scrape(svc) -> dict:
    body, _ = svc.metrics.page()
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def gateway(svc, reactor, data: bytes) -> StringTransport:
    proto = svc.gateways.buildProtocol(IPv4Address("TCP", "192.0.2.7", 2348))
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(data)
    for _ in range(5):  # each transaction of events begins a commit interval after the last
        reactor.advance(C.ServerConfig().commit_interval + 0.001)
    return transport


# -- /metrics --------------------------------------------------------------------


def test_metrics_count_what_the_gateway_sent_and_the_store_kept():
    svc, reactor = started()
    events = (b"EV seq=1 ref=75 type=HOOK_OFF port=1\nEV seq=2 ref=75 type=DIAL digits=202\n"
              b"EV seq=1 ref=75 type=HOOK_OFF port=1\n")
    transport = gateway(svc, reactor, LOGIN + events + b"BOGUS\n")
    verbs = [parse_line(x).verb for x in transport.value().splitlines()]
    assert verbs.count("ACK") >= 1 and "ERR" in verbs
    m = scrape(svc)
    assert m[("cdrd_events_received_total", ())] == 3
    assert m[("cdrd_events_stored_total", ())] == 2
    assert m[("cdrd_events_duplicate_total", ())] == 1
    assert m[("cdrd_bad_packets_total", ())] == 1
    assert m[("cdrd_gateway_log_entries_total", (("event", "Bad Packet"),))] == 1
    assert m[("cdrd_gateway_log_entries_total", (("event", "Login"),))] == 1
    assert m[("cdrd_gateway_log_windows", ())] == 1
    assert m[("cdrd_gateways_online", ())] == 1
    assert m[("cdrd_gateway_connections", ())] == 1
    assert m[("cdrd_gateway_connections_not_logged_in", ())] == 0
    assert m[("cdrd_gateway_connections_given_way_total", ())] == 0
    assert m[("cdrd_calls_open", ())] == 1
    assert m[("cdrd_ack_latency_seconds_count", ())] >= 1
    assert m[("cdrd_store_batch_events_sum", ())] == 2
    assert m[("cdrd_store_commit_seconds_count", ())] >= 1


def test_metrics_count_connections_not_logged_in_and_those_that_gave_way():
    svc, reactor = started(unauthenticated_per_address=2)
    for _ in range(5):
        gateway(svc, reactor, b"")
    m = scrape(svc)
    assert m[("cdrd_gateway_connections_not_logged_in", ())] == 2
    assert m[("cdrd_gateway_connections_given_way_total", ())] == 3


def test_metrics_page_has_every_family_and_follows_the_text_format():
    svc, _ = started()
    body, content_type = svc.metrics.page()
    assert content_type.startswith("text/plain; version=0.0.4")
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert FAMILIES <= names


def test_two_services_in_one_process_do_not_share_their_metrics():
    one, reactor = started()
    two, _ = started()
    gateway(one, reactor, LOGIN + b"EV seq=1 ref=75 type=HOOK_OFF port=1\n")
    assert scrape(one)[("cdrd_events_received_total", ())] == 1
    assert scrape(two)[("cdrd_events_received_total", ())] == 0


def test_metrics_sit_behind_the_web_password_and_the_probes_do_not():
    users = {"ops": hash_password("s3cret", n=2**4)}
    svc, _ = started(web={"users": users})
    treq = web(svc)
    assert get(treq, "/metrics")[0] == 401
    assert get(treq, "/")[0] == 401
    token = base64.b64encode(b"ops:s3cret").decode()
    code, body = get(treq, "/metrics", headers={"authorization": f"Basic {token}"})
    assert code == 200 and b"cdrd_events_received_total" in body
    assert get(treq, "/healthz")[0] == 200
    assert get(treq, "/readyz") == (200, b'{"ready":true,"reason":"ready"}\n')


def test_the_metrics_endpoint_is_off_by_default_and_serves_without_auth_when_set():
    svc, reactor = started()
    assert [x.setting for x in svc.listeners] == ["server.gateway_endpoint", "server.web_endpoint"]
    users = {"ops": hash_password("s3cret", n=2**4)}
    svc, reactor = started(web={"users": users}, metrics_endpoint="tcp:9510:interface=127.0.0.1")
    assert [port for port, *_ in reactor.tcpServers] == [9510, 6510, 8080]  # the probes' first
    (listener,) = [x for x in svc.listeners if x.setting == "server.metrics_endpoint"]
    treq = StubTreq(listener.factory.resource)
    code, body = get(treq, "/metrics")
    assert code == 200 and b"cdrd_events_received_total" in body
    assert get(treq, "/readyz")[0] == 200
    assert get(treq, "/report")[0] == 404  # only metrics and probes there


def test_a_bad_metrics_endpoint_is_a_config_error_naming_it(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[server]\nmetrics_endpoint = "tcp:notaport"\n')
    with pytest.raises(C.ConfigError, match="^server.metrics_endpoint: "):
        build_config({"config": str(path)})


# -- /readyz ---------------------------------------------------------------------


def test_readyz_says_why_until_the_store_is_open_and_the_calls_recovered():
    store = JournalStore()
    svc, reactor = service(store)
    treq = web(svc)
    svc.startService()
    assert svc.readiness() == (False, "opening the store")
    store.opening.callback(None)
    assert svc.readiness() == (False, "recovering the open calls")
    store.recovering.callback(None)
    reactor.advance(0)
    assert svc.readiness() == (True, "ready")
    assert get(treq, "/readyz")[0] == 200
    svc.writer.refusing = "OperationalError: disk I/O error"
    code, body = get(treq, "/readyz")
    assert (code, body) == (503, b'{"ready":false,"reason":"the store refuses writes: '
                                 b'OperationalError: disk I/O error"}\n')
    svc.writer.refusing = None
    svc.listeners[0].port = None
    assert svc.readiness() == (False, "the gateway listener is not up")
    assert get(treq, "/healthz")[0] == 200


def test_a_standby_is_not_ready_and_says_so():
    class Standby(JournalStore):
        def activate(self, on_lost=None):
            from twisted.internet import defer

            return defer.Deferred()  # another node holds the lock

    store = Standby()
    store.opening.callback(None)
    svc, _ = service(store)
    svc.startService()
    ok, reason = svc.readiness()
    assert not ok and reason.startswith("standing by")


def test_a_standby_answers_its_probes_on_the_metrics_endpoint_before_anything_else_listens():
    class Standby(JournalStore):
        def activate(self, on_lost=None):
            from twisted.internet import defer

            self.active = defer.Deferred()
            return self.active

    store = Standby()
    store.opening.callback(None)
    store.recovering.callback(None)
    svc, reactor = service(store, metrics_endpoint="tcp:9510:interface=127.0.0.1")
    svc.startService()
    assert [port for port, *_ in reactor.tcpServers] == [9510]  # no gateway, no web page yet
    (listener,) = [x for x in svc.listeners if x.setting == "server.metrics_endpoint"]
    treq = StubTreq(listener.factory.resource)
    code, body = get(treq, "/readyz")
    assert code == 503 and b"standing by" in body
    assert get(treq, "/healthz")[0] == 200
    store.active.callback(None)  # the active node is gone
    reactor.advance(0)
    assert [port for port, *_ in reactor.tcpServers] == [9510, 6510, 8080]
    assert get(treq, "/readyz")[0] == 200


def test_readyz_is_503_once_the_start_failed():
    store = JournalStore()
    svc, _ = service(store)
    svc.startService()
    svc.ready.addErrback(lambda f: None)
    store.opening.errback(OSError(111, "Connection refused"))
    assert svc.readiness() == (False, "the start failed")


# -- supervisor ------------------------------------------------------------------


def test_the_daemon_status_pipe_is_written_when_the_start_is_over():
    for outcome, expected in (("ok", b"0"), ("failed", b"1 server.gateway_endpoint tcp:6510: taken")):
        r, w = os.pipe()
        twistd_options = {"statusPipe": w}
        status = DaemonStatus(twistd_options)
        status.take()
        assert "statusPipe" not in twistd_options  # twistd writes no early "0"
        if outcome == "ok":
            status.started()
        else:
            status.failed("server.gateway_endpoint tcp:6510: taken")
        assert os.read(r, 200) == expected
        assert os.read(r, 200) == b""  # closed: the parent exits
        os.close(r)


def test_the_daemon_status_message_fits_twistds_pipe_read():
    r, w = os.pipe()
    status = DaemonStatus({"statusPipe": w})
    status.take()
    status.failed("x" * 500)
    assert len(os.read(r, 1000)) == 100
    os.close(r)


def test_systemd_notify_sends_one_datagram_to_the_socket(tmp_path):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        assert notify("READY=1", "STATUS=ready", environ={"NOTIFY_SOCKET": path})
        assert sock.recv(4096) == b"READY=1\nSTATUS=ready"
    assert not notify("READY=1", environ={})


def test_systemd_notify_to_an_abstract_socket():
    name = f"cdrd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        assert notify("STOPPING=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"STOPPING=1"


def test_systemd_notify_to_a_missing_socket_is_false_not_an_error(tmp_path):
    assert not notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "gone")})


# -- clear errors ------------------------------------------------------------------


def test_a_sqlite_path_in_a_missing_directory_is_a_config_error(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(f'[server]\ndatabase = "sqlite:{tmp_path}/nowhere/cdrd.sqlite"\n')
    with pytest.raises(C.ConfigError) as e:
        build_config({"config": str(path)})
    assert str(e.value) == f"server.database: directory {tmp_path}/nowhere does not exist (create it first)"
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("what", ["file", "under a file", "readonly"])
def test_an_unusable_csv_directory_is_a_config_error(tmp_path, what):
    directory = tmp_path / "csv"
    if what == "file":
        directory.write_text("")
    elif what == "under a file":
        (tmp_path / "csv").write_text("")
        directory = tmp_path / "csv" / "daily"
    elif what == "readonly":
        if os.geteuid() == 0:
            directory = "/proc/self"  # root may write anywhere on a real disk
        else:
            directory.mkdir(mode=0o500)
    path = tmp_path / "c.toml"
    path.write_text(f'[server]\ndatabase = "memory:"\n[csv]\ndirectory = "{directory}"\n')
    with pytest.raises(C.ConfigError, match=r"^csv\.directory: ") as e:
        build_config({"config": str(path)})
    assert str(directory) in str(e.value)


def test_a_missing_csv_directory_whose_parent_takes_it_is_fine(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(f'[server]\ndatabase = "memory:"\n[csv]\ndirectory = "{tmp_path}/cdrs/daily"\n')
    assert build_config({"config": str(path)}).csv.directory == f"{tmp_path}/cdrs/daily"


def test_cdrd_passwd_without_a_terminal_says_to_use_stdin():
    r = subprocess.run(
        [sys.executable, "-m", "cdrd.web.auth", "ops"], stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=60, start_new_session=True,  # no controlling terminal
    )
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "--stdin" in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_the_systemd_unit_waits_for_ready_and_owns_its_directories():
    from pathlib import Path

    unit = (Path(__file__).resolve().parents[1] / "etc" / "cdrd.service").read_text()
    settings = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    assert settings["Type"] == "notify"
    assert settings["StateDirectory"] == "cdrd" and settings["LogsDirectory"] == "cdrd"
    assert " -n " in settings["ExecStart"] and "--pidfile= " in settings["ExecStart"]
    assert settings["RestartPreventExitStatus"] == "2"
