"""
Throw-away PostgreSQL clusters made with Debian's tools (pg_createcluster,
pg_basebackup, pg_ctlcluster): a primary and a streaming replica on free
loopback ports, for the database failover test.  The tests run as root;
the servers run as postgres, as Debian's tools arrange.
"""

from __future__ import annotations

import subprocess
import time
import uuid

import psycopg

from tests.integration.daemon import free_port

VERSION = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=True).stdout.split()[0]


def _run(*cmd: str) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)}: {done.stderr or done.stdout}"
    return done.stdout


class PgCluster:
    def __init__(self, role: str):
        self.name = f"cdrd_{role}_{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.created = False

    @property
    def data(self) -> str:
        return f"/var/lib/postgresql/{VERSION}/{self.name}"

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def create(self) -> PgCluster:
        # trust on loopback: these clusters live for one test
        _run("pg_createcluster", VERSION, self.name, "-p", str(self.port), "--", "--auth=trust")
        self.created = True
        return self

    def start(self) -> PgCluster:
        _run("pg_ctlcluster", VERSION, self.name, "start")
        return self

    def replica_of(self, primary: PgCluster) -> PgCluster:
        """This cluster's data replaced by a base backup of `primary`, streaming from it."""
        _run("find", self.data, "-mindepth", "1", "-delete")
        _run("runuser", "-u", "postgres", "--", "pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port),
             "-U", "postgres", "-D", self.data, "-R", "-X", "stream", "--checkpoint=fast")
        return self

    def sql(self, statement: str, db: str = "postgres", params=()):
        with psycopg.connect(self.url(db), autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else None

    def wait_for(self, statement: str, want, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = self.sql(statement)
            except psycopg.Error:
                got = None
            if got == want:
                return
            assert time.monotonic() < deadline, (statement, got, want)
            time.sleep(0.1)

    def crash(self) -> None:
        _run("pg_ctlcluster", VERSION, self.name, "stop", "-m", "immediate")

    def promote(self) -> None:
        _run("pg_ctlcluster", VERSION, self.name, "promote")

    def drop(self) -> None:
        if self.created:
            subprocess.run(["pg_dropcluster", VERSION, self.name, "--stop"], capture_output=True)
            self.created = False
