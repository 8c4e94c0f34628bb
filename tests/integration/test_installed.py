"""
Integration: the installed package is the product.  Build the wheel from a
copy of the checkout, install it into a fresh virtualenv outside the
checkout, and run THAT install's ``twistd -n cdrd`` and ``cdrd-sim`` from a
directory outside the checkout (no PYTHONPATH): a worked example goes
through to a real FreeRADIUS's detail file; /metrics, /healthz and /readyz
answer; systemd's READY=1 and STOPPING=1 reach a real notify socket; a
start that fails exits 1 in daemon mode too; a damaged database page is
one line naming server.database.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.accounting.freeradius import FreeRadius
from tests.integration.daemon import ROOT, free_port

pytestmark = pytest.mark.integration

SECRET = "installed-secret"
E1_CDR = "2026-11-22T10:00:07.250Z,4.250,120.000,442079460201,2252,442079460201"
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "var", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis",
    "test-artifacts", "dropin.cache",
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin/ of a fresh virtualenv holding the wheel built from this checkout."""
    base = tmp_path_factory.mktemp("installed")
    source = base / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=COPY_IGNORE)
    wheels = base / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels),
         str(source)], cwd=base)
    (wheel,) = wheels.glob("cdrd-*.whl")
    venv = base / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=base)
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)], cwd=base)
    return venv / "bin"


def run(argv, cwd, timeout=600, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=clean_env(), **kw)
    assert r.returncode == 0, f"{argv}: {r.stdout}\n{r.stderr}"
    return r


def clean_env(**extra) -> dict:
    """This process's environment without anything that points into the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "NOTIFY_SOCKET")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if str(ROOT) not in p)
    env.update(extra)
    return env


def http(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def wait_for(predicate, what: str, proc=None, timeout: float = 60.0, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.1)
    text = log.read_text(errors="replace")[-4000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{text}")


class Installed:
    """``twistd cdrd`` of the install, in a work directory outside the checkout."""

    def __init__(self, bin: Path, work: Path, extra: str = "", database: str | None = None):
        self.bin = bin
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.gateway_port, self.web_port = free_port(), free_port()
        self.config = work / "cdrd.toml"
        self.config.write_text(
            "[server]\n"
            f'gateway_endpoint = "tcp:{self.gateway_port}:interface=127.0.0.1"\n'
            f'web_endpoint = "tcp:{self.web_port}:interface=127.0.0.1"\n'
            f'database = "{database or "sqlite:var/cdrd.sqlite"}"\n'
            "allow_unknown_gateways = true\n" + extra
        )
        (work / "var").mkdir(exist_ok=True)
        self.log = work / "twistd.log"
        self.proc: subprocess.Popen | None = None

    def argv(self, foreground=True) -> list[str]:
        return [str(self.bin / "twistd"), *(["-n"] if foreground else []), f"--pidfile={self.work / 'twistd.pid'}",
                f"--logfile={self.log}", "cdrd", "--config", str(self.config)]

    def spawn(self, **env) -> Installed:
        self.proc = subprocess.Popen(self.argv(), cwd=self.work, env=clean_env(**env),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        return self

    def ready(self) -> bool:
        return http(self.web_port, "/readyz")[0] == 200

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.terminate()
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


def test_the_wheel_carries_everything_read_at_run_time(installed):
    code = (
        "import cdrd, importlib.resources as r, sys\n"
        "print(cdrd.__file__)\n"
        "for pkg, name in (('cdrd.accounting', 'dictionaries/dictionary.cdrd'),"
        " ('cdrd.accounting', 'dictionaries/dictionary'), ('cdrd.sim', 'examples/e1.gwp'),"
        " ('cdrd.web', 'templates/layout.html'), ('cdrd.web', 'static/cdrd.css')):\n"
        "    assert (r.files(pkg) / name).is_file(), (pkg, name)\n"
        "from cdrd.accounting.packets import load_dictionary\n"
        "print(load_dictionary(32473).attributes['cdrd-CDR'].code)\n"
    )
    r = run([str(installed / "python"), "-c", code], cwd=installed)
    where, attribute = r.stdout.split()
    assert "site-packages" in where and str(ROOT) not in where
    assert attribute == "1"
    # one source: the checkout's top-level copy is the package's
    assert (ROOT / "dictionaries").resolve() == (ROOT / "cdrd" / "accounting" / "dictionaries").resolve()


def test_installed_cdrd_takes_a_worked_example_through_to_freeradius(installed, tmp_path):
    radius = FreeRadius(tmp_path / "radius", secret=SECRET)
    radius.start()
    notify_path = str(tmp_path / "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(60)
    cdrd = Installed(installed, tmp_path / "work", extra=(
        "\n[radius]\ninterim_interval = 0\ninitial_timeout = 0.5\n"
        f'[[radius.servers]]\naddress = "{radius.address}"\nsecret = "{SECRET}"\n'
        '\n[gateways."8200_000C2A020082"]\nports = { 1 = { exten = "201", ddi = "442079460201" } }\n'
    ))
    try:
        cdrd.spawn(NOTIFY_SOCKET=notify_path)
        while True:  # STATUS= lines first, then READY=1 once recovered and listening
            message = notify.recv(4096)
            if not message.startswith(b"STATUS="):
                break
        assert message.split(b"\n")[0] == b"READY=1"
        assert cdrd.ready()
        assert http(cdrd.web_port, "/healthz")[0] == 200
        example = run([str(installed / "python"), "-c",
                       "import importlib.resources as r; print(r.files('cdrd.sim') / 'examples' / 'e1.gwp')"],
                      cwd=tmp_path).stdout.strip()
        assert str(ROOT) not in example
        run([str(installed / "cdrd-sim"), "replay", "--server", f"tcp:127.0.0.1:{cdrd.gateway_port}",
             "--gw", "8200", "--mac", "000C2A020082", "--date", "2026-11-22", example], cwd=tmp_path, timeout=120)
        records = radius.wait_records(
            lambda recs: any(r.get("cdrd-CDR") for r in recs), timeout=60)
        stops = [r for r in records if r.get("Acct-Status-Type") == ["Stop"] and r.get("cdrd-CDR")]
        assert stops and stops[0]["cdrd-CDR"] == [E1_CDR], radius.log_text()
        code, body = http(cdrd.web_port, "/api/cdrs")
        assert [c["line"] for c in json.loads(body)["cdrs"]] == [E1_CDR]

        def answered():
            page = http(cdrd.web_port, "/metrics")[1].decode()
            return page if f'cdrd_radius_server_up{{server="{radius.address}"}} 1.0' in page else None

        page = wait_for(answered, "RADIUS answers in /metrics", cdrd.proc, log=cdrd.log)
        for line in ("cdrd_events_received_total 6.0", "cdrd_events_stored_total 6.0",
                     'cdrd_calls_total{notation="Call out"} 1.0', "cdrd_cdrs_total 1.0"):
            assert line in page
        assert "process_resident_memory_bytes" in page
        # the daemon froze what start-up made (cdrd.gcpauses): a full
        # collection no longer walks it
        values = {s.name: s.value for f in text_string_to_metric_families(page) for s in f.samples}
        assert values["cdrd_gc_frozen_objects"] > 10_000
        assert cdrd.stop() == -signal.SIGTERM  # twistd re-raises it: systemd counts it as clean
        assert notify.recv(4096) == b"STOPPING=1"
    finally:
        cdrd.stop()
        radius.stop()
        notify.close()
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["cdrd.toml", "twistd.log", "var"]


def test_a_failed_start_exits_1_in_daemon_mode_too(installed, tmp_path):
    cdrd = Installed(installed, tmp_path / "work")
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", cdrd.gateway_port))
        taken.listen()
        for foreground in (False, True):
            r = subprocess.run(cdrd.argv(foreground), cwd=cdrd.work, env=clean_env(),
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 1, (foreground, r.stdout, r.stderr, cdrd.log.read_text())
    assert "server.gateway_endpoint" in r.stderr + cdrd.log.read_text()
    critical = [line for line in cdrd.log.read_text().splitlines() if "cdrd could not start" in line]
    assert len(critical) == 2 and all("server.gateway_endpoint tcp:" in line for line in critical)
    assert not (cdrd.work / "twistd.pid").exists()


def test_a_daemon_that_starts_exits_0_once_ready(installed, tmp_path):
    cdrd = Installed(installed, tmp_path / "work")
    r = subprocess.run(cdrd.argv(foreground=False), cwd=cdrd.work, env=clean_env(),
                       capture_output=True, text=True, timeout=120)
    pid = int((cdrd.work / "twistd.pid").read_text())
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        assert cdrd.ready()  # the parent returned once it was ready, not before
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not (cdrd.work / "twistd.pid").exists(), "the daemon to stop", log=cdrd.log)


def test_a_config_error_exits_2_in_both_modes(installed, tmp_path):
    cdrd = Installed(installed, tmp_path / "work", database=f"sqlite:{tmp_path}/missing/cdrd.sqlite")
    for foreground in (True, False):
        r = subprocess.run(cdrd.argv(foreground), cwd=cdrd.work, env=clean_env(),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2
        assert r.stderr.splitlines() == [
            f"cdrd: config error: server.database: directory {tmp_path}/missing does not exist (create it first)"]
    assert not (tmp_path / "missing").exists()


def test_a_damaged_database_page_is_one_line_naming_server_database(installed, tmp_path):
    cdrd = Installed(installed, tmp_path / "work")
    cdrd.spawn()
    wait_for(cdrd.ready, "cdrd to start", cdrd.proc, log=cdrd.log)
    assert cdrd.stop() == -signal.SIGTERM
    database = cdrd.work / "var" / "cdrd.sqlite"
    data = bytearray(database.read_bytes())
    page = 4096
    assert len(data) > 2 * page
    for offset in range(page, len(data), page):  # every page after the header's: garbage
        data[offset:offset + 64] = b"\xa5" * 64
    database.write_bytes(bytes(data))
    cdrd.log.unlink()
    r = subprocess.run(cdrd.argv(), cwd=cdrd.work, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    text = cdrd.log.read_text()
    lines = [line for line in text.splitlines() if "cdrd could not start" in line]
    assert len(lines) == 1 and "server.database sqlite:var/cdrd.sqlite" in lines[0], text
    assert "Traceback" not in text
