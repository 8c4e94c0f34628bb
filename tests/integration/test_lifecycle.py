"""
A real ``twistd -n cdrd`` starting, stopping and failing: what listens
when, what SIGTERM writes, exit statuses, the TLS listener, and that no
secret of the config reaches its log.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import signal
import socket
import ssl
import subprocess
import time

import pytest

from cdrd.gateway.codec import format_message, parse_line
from tests.integration.daemon import ROOT, TWISTD, Daemon, GatewayClient
from tests.integration.test_daemon import read_until_ack

pytestmark = pytest.mark.integration

def connect_as_soon_as_listening(port: int, timeout: float = 30.0) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)


def test_a_gateway_logging_in_the_moment_cdrd_is_back_finds_its_open_calls(tmp_path):
    daemon = Daemon(tmp_path)
    try:
        daemon.start()
        client = GatewayClient(daemon.gateway_port)
        assert client.login(callref=74).verb == "OK"
        for seq, (etype, extra) in enumerate(
            [("HOOK_OFF", {"port": "1"}), ("DIAL", {"digits": "2252"}), ("TALK", {})], start=1
        ):
            client.send("EV", seq=str(seq), ref="75", type=etype, **extra)
        read_until_ack(client, 3)
        daemon.kill9()
        client.close()

        # the gateway rebooted too (callref 2 < its open call 75) and logs in
        # the very moment the port is open again
        daemon.spawn()
        sock = connect_as_soon_as_listening(daemon.gateway_port)
        reader = sock.makefile("rb")
        assert parse_line(reader.readline().rstrip(b"\n")).verb == "HELLO"
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        sock.sendall(format_message("LOGIN", {
            "proto": "1", "gw": "8200", "mac": "000C2A020082", "fxs": "2", "fxo": "2",
            "isdn": "0", "callref": "2", "time": now}))
        ok = parse_line(reader.readline().rstrip(b"\n"))
        assert (ok.verb, ok.fields["last"]) == ("OK", "3")
        sock.close()
        events = [e["event"] for e in daemon.api("/api/log?gateway=8200_000C2A020082")["entries"]]
        assert "Gateway Restart" in events
        record = daemon.wait_for(
            lambda: daemon.api("/api/calls?gateway=8200_000C2A020082")["records"], what="the record")
        assert [(r["ref"], r["cause"]) for r in record] == [(75, "gateway-restart")]
    finally:
        daemon.stop()


def test_sigterm_logs_the_gateways_off_before_the_store_closes(tmp_path):
    daemon = Daemon(tmp_path)
    daemon.start()
    clients = []
    for n in range(3):
        client = GatewayClient(daemon.gateway_port)
        assert client.login(gw=f"82{n:02d}", mac=f"000C2A0200{n:02d}").verb == "OK"
        client.send("EV", seq="1", ref="75", type="HOOK_OFF", port="1")
        read_until_ack(client, 1)
        clients.append(client)
    # twistd re-raises the signal it stopped on: systemd counts SIGTERM as clean
    assert daemon.stop() == -signal.SIGTERM
    log = daemon.log_text()
    assert "Traceback" not in log and "StoreClosed" not in log, log
    # the signal's handler only queues it; the loop ran Twisted's handler (cdrd.signals)
    assert log.count("Received SIGTERM, shutting down.") == 1, log
    for client in clients:
        with pytest.raises(ConnectionError):
            client.read()  # closed by the server
    daemon.start()
    gateways = daemon.api("/api/gateways")["gateways"]
    assert [g["online"] for g in gateways] == [False, False, False]
    entries = daemon.api("/api/log")["entries"]
    assert sorted(e["gateway"] for e in entries
                  if (e["event"], e["detail"]) == ("Gateway Disconnect", "cdrd is shutting down")) \
        == ["8200", "8201", "8202"]
    daemon.stop()


def test_a_start_that_fails_exits_non_zero_with_one_line(tmp_path):
    # nothing listens on port 1: the database cannot be reached
    daemon = Daemon(tmp_path, database="postgresql://postgres:hunter2@127.0.0.1:1/cdrd?password=hunter3")
    daemon.spawn()
    assert daemon.proc.wait(60) == 1
    log = daemon.log_text() + daemon.proc.stdout.read().decode()
    failed = [line for line in log.splitlines() if "could not start" in line]
    assert len(failed) == 1, log
    assert "server.database postgresql://postgres:***@127.0.0.1:1/cdrd?password=***" in failed[0]
    assert "hunter2" not in log and "hunter3" not in log
    assert "Traceback" not in log


def test_a_port_in_use_fails_the_start_naming_the_setting(tmp_path):
    daemon = Daemon(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", daemon.gateway_port))
        taken.listen()
        daemon.spawn()
        assert daemon.proc.wait(60) == 1
    log = daemon.log_text()
    (failed,) = [line for line in log.splitlines() if "could not start" in line]
    assert "server.gateway_endpoint" in failed and "Address already in use" in failed


def test_an_ssl_endpoint_without_its_key_is_a_one_line_config_error(tmp_path):
    r = subprocess.run(
        [str(TWISTD), "-n", "--pidfile=", "cdrd", "--gateway-endpoint",
         f"ssl:6511:privateKey={tmp_path}/key.pem:certKey={tmp_path}/cert.pem"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cdrd: config error: server.gateway_endpoint: ")
    assert "No such file or directory" in lines[0]


def throwaway_certificate(directory) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(key_path), str(cert_path)


def test_gateways_over_the_tls_listener(tmp_path):
    key, cert = throwaway_certificate(tmp_path)
    daemon = Daemon(tmp_path, gateway_endpoint=(
        "ssl:{port}:interface=127.0.0.1:privateKey=" + key + ":certKey=" + cert))
    daemon.start()
    try:
        context = ssl.create_default_context(cafile=cert)
        context.check_hostname = False
        raw = socket.create_connection(("127.0.0.1", daemon.gateway_port), timeout=10)
        with context.wrap_socket(raw) as tls:
            reader = tls.makefile("rb")
            hello = parse_line(reader.readline().rstrip(b"\n"))
            assert hello.verb == "HELLO"
            now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
            tls.sendall(format_message("LOGIN", {
                "proto": "1", "gw": "8200", "mac": "000C2A020082", "fxs": "2", "fxo": "2",
                "isdn": "0", "callref": "74", "time": now}))
            assert parse_line(reader.readline().rstrip(b"\n")).verb == "OK"
            tls.sendall(b"EV seq=1 ref=75 type=HOOK_OFF port=1\nPING\n")
            replies = {parse_line(reader.readline().rstrip(b"\n")).verb for _ in range(2)}
            assert replies == {"ACK", "PONG"}
        # plain TCP on the TLS port is not GWP/1
        with socket.create_connection(("127.0.0.1", daemon.gateway_port), timeout=10) as plain:
            plain.sendall(b"LOGIN proto=1\n")
            assert b"HELLO" not in plain.recv(4096)
    finally:
        daemon.stop()


def test_no_secret_of_the_config_reaches_the_log(tmp_path, pg_database):
    _, url = pg_database
    from cdrd.web.auth import hash_password

    secrets = {
        "database password": "Db-Pass-4711",
        "database query password": "Db-Query-4712",
        "gateway secret": "Gw-Secret-4713",
        "radius secret": "Radius-Secret-4714",
        "web password": "Web-Pass-4715",
    }
    web_hash = hash_password(secrets["web password"])
    secrets["web password hash"] = web_hash
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1) if "@" in rest else ("postgres", rest)
    database = (f"{scheme}://{user.split(':')[0]}:{secrets['database password']}@{host}"
                f"?password={secrets['database query password']}")
    daemon = Daemon(tmp_path, database=database, extra_config=(
        '[gateways."8200_000C2A020082"]\n'
        f'secret = "{secrets["gateway secret"]}"\n'
        "[radius]\n"
        "[[radius.servers]]\n"
        'address = "127.0.0.1:9"\n'
        f'secret = "{secrets["radius secret"]}"\n'
        "[web.users]\n"
        f'admin = "{web_hash}"\n'
    ))
    daemon.start()
    try:
        client = GatewayClient(daemon.gateway_port)
        line = ("LOGIN proto=1 gw=8200 mac=000C2A020082 fxs=2 fxo=2 isdn=0 callref=74 time="
                + datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S"))
        auth = hmac.new(secrets["gateway secret"].encode(),
                        f"{client.hello.fields['nonce']} {line}".encode(), hashlib.sha256).hexdigest()
        client.send_raw(f"{line} auth={auth}\n".encode())
        assert client.read().verb == "OK"
        for seq, (etype, extra) in enumerate([("HOOK_OFF", " port=1"), ("DIAL", " digits=2252"),
                                              ("TALK", ""), ("HOOK_ON", " port=1")], start=1):
            client.send_raw(f"EV seq={seq} ref=75 type={etype}{extra}\n".encode())
        read_until_ack(client, 4)
        bad = GatewayClient(daemon.gateway_port)
        bad.send_raw(f"{line} auth={'0' * 64}\n".encode())
        assert bad.read().fields["code"] == "auth"
        time.sleep(1)  # RADIUS tries its unreachable server
    finally:
        daemon.proc.send_signal(signal.SIGTERM)
        daemon.proc.wait(30)
    text = daemon.log_text() + daemon.proc.stdout.read().decode(errors="replace")
    assert "cdrd started" in text and "logged in" in text
    for what, secret in secrets.items():
        assert secret not in text, f"the {what} is in the log"
