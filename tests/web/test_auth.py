"""HTTP Basic authentication over every route, and cdrd-passwd."""

import base64
import io

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st

from cdrd import config as C
from cdrd.web import auth
from tests.web import fixtures as F

# a cheap work factor keeps the tests fast; the format is the same
FAST = {"n": 2**4, "r": 1, "p": 1}
HASH = auth.hash_password("s3cret pass", **FAST)


def basic(user, password):
    return {
        "Authorization": "Basic "
        + base64.b64encode(f"{user}:{password}".encode()).decode()
    }


def test_hash_format_and_verify():
    h = auth.hash_password("pw")
    scheme, n, r, p, salt, key = h.split("$")
    assert (
        (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
        and len(salt) == 32
        and len(key) == 64
    )
    assert auth.verify_password("pw", h) and not auth.verify_password("pW", h)
    assert auth.hash_password("pw") != h  # a random salt each time


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "plain",
        "scrypt$16$1$1$zz$00",
        "scrypt$15$1$1$00$00",
        "bcrypt$16$1$1$00$00",
        "scrypt$16$1$1$$00",
    ],
)
def test_malformed_hashes_never_verify(bad):
    assert not auth.verify_password("", bad)


@settings(max_examples=20, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_any_password_round_trips(password):
    h = auth.hash_password(password, **FAST)
    assert auth.verify_password(password, h)
    assert not auth.verify_password(password + "x", h)


def test_checker_caches_only_successes():
    checker = auth.BasicAuthChecker({"ops": HASH})
    good = basic("ops", "s3cret pass")["Authorization"].encode()
    assert checker.check(good) == "ops" and checker.check(good) == "ops"
    assert len(checker._ok) == 1
    for header in (
        b"",
        None,
        b"Bearer x",
        b"Basic !!!",
        basic("ops", "nope")["Authorization"].encode(),
        basic("root", "s3cret pass")["Authorization"].encode(),
        b"Basic " + base64.b64encode(b"nocolon"),
    ):
        assert checker.check(header) is None
    assert len(checker._ok) == 1


ROUTES = [
    "/",
    "/report",
    "/report.csv",
    "/log",
    "/cdrs",
    "/cdrs.csv",
    "/gateways",
    f"/gateways/{F.GW}/events",
    "/api/gateways",
    "/api/calls",
    "/api/log",
    "/api/events",
    "/api/cdrs",
    "/api/status",
    "/api/calendar",
    "/api/accounting",
    "/static/cdrd.css",
]
STREAMS = [  # they stay open: only the refusal is checked
    "/api/events/stream",
    f"/gateways/{F.GW}/events/stream",
]


@pytest_twisted.ensureDeferred
async def test_every_route_needs_a_user_when_users_are_configured(make_site):
    site = await make_site(
        users={"ops": HASH}, status={"radius": lambda: {"spool_depth": 0}}
    )
    for path in ROUTES + STREAMS + ["/nothing"]:
        r, body = await site.get(path)
        assert r.code == 401, path
        assert r.headers.getRawHeaders("www-authenticate") == [
            'Basic realm="cdrd", charset="UTF-8"'
        ]
        r, _ = await site.get(path, headers=basic("ops", "wrong"))
        assert r.code == 401, path
        site.clock.advance(6)  # within the failure budget
    for path in ROUTES:
        r, _ = await site.get(path, headers=basic("ops", "s3cret pass"))
        assert r.code == 200, path
    r, _ = await site.get("/nothing", headers=basic("ops", "s3cret pass"))
    assert r.code == 404
    from tests.web.test_feed import Connection

    header = b"Authorization: " + basic("ops", "s3cret pass")["Authorization"].encode()
    for path in STREAMS:
        c = Connection(site, path, header + b"\r\n")
        head = c.transport.value()
        assert b"200 OK" in head and b"text/event-stream" in head, path
        c.close()


@pytest_twisted.ensureDeferred
async def test_open_without_users(make_site):
    site = await make_site()
    r, _ = await site.get("/api/gateways")
    assert r.code == 200


def test_cdrd_passwd_prints_a_config_line(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse\n"))
    assert auth.main(["--stdin", "ops"]) == 0
    line = capsys.readouterr().out
    assert line.startswith('"ops" = "scrypt$16384$8$1$')
    import tomllib

    config = C.parse({"web": {"users": tomllib.loads(line)}})
    assert auth.verify_password("correct horse", config.web.users["ops"])
    assert "scrypt" not in repr(config.web)  # hashes stay out of logs


def test_cdrd_passwd_refuses_an_empty_password(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert auth.main(["--stdin"]) == 1
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    "users, setting",
    [
        ({"ops": "hunter2"}, "web.users.ops"),
        ({"ops": "scrypt$16384$8$1$zz$00"}, "web.users.ops"),
        ({"a:b": HASH}, "web.users.a:b"),
        ({"ops": 5}, "web.users.ops"),
    ],
)
def test_config_refuses_what_is_not_a_hash(users, setting):
    with pytest.raises(C.ConfigError) as e:
        C.parse({"web": {"users": users}})
    assert e.value.setting == setting
    assert "hunter2" not in str(e.value)


def test_config_takes_cdrd_passwd_hashes():
    config = C.parse({"web": {"users": {"ops": HASH}, "realm": "carrier ops"}})
    assert config.web.users == {"ops": HASH} and config.web.realm == "carrier ops"
    with pytest.raises(C.ConfigError):
        C.parse({"web": {"realm": 'a"b'}})


# -- scrypt off the reactor, failures throttled ------------------------------------


REAL_HASH = auth.hash_password("s3cret pass")  # the real work factor (~45 ms)


@pytest_twisted.ensureDeferred
async def test_failed_logins_never_stall_the_reactor(make_site, monkeypatch):
    """Ten bad passwords at once: scrypt never runs on the reactor's thread,
    and the reactor keeps turning while one is in progress, as gateway
    ingest needs (a synchronous check stalled it 450-950 ms here).

    A property, not a stopwatch: the first scrypt is held in its thread
    until the reactor has turned a few times;
    a check on the reactor's thread would fail at once (it is never held,
    so nothing can hang)."""
    import threading

    from treq.testing import StubTreq
    from twisted.internet import reactor, task

    from cdrd.web.app import WebApp

    reactor_thread = threading.get_ident()  # pytest-twisted runs the reactor here
    scrypt_threads = []
    release = threading.Event()
    real = auth._scrypt

    def spy(*args, **kw):
        scrypt_threads.append(threading.get_ident())
        if threading.get_ident() != reactor_thread:
            release.wait(60)  # bounded: a broken test must not hang the suite
        return real(*args, **kw)

    monkeypatch.setattr(auth, "_scrypt", spy)
    site = await make_site()
    web = WebApp(F.config(users={"ops": REAL_HASH}), site.store, reactor)
    http = StubTreq(web.resource())
    scrypt_threads.clear()  # the dummy hash made at start

    async def turns(until, limit=2000):
        for _ in range(limit):
            http.flush()
            if until():
                return True
            await task.deferLater(reactor, 0.005, lambda: None)
        return False

    codes = []
    try:
        for i in range(10):
            d = http.get("http://127.0.0.1/api/gateways", headers=basic("ops", f"guess{i}"))
            d.addCallback(lambda r: codes.append(r.code))
        assert await turns(lambda: scrypt_threads), "no check started"
        assert reactor_thread not in scrypt_threads, "scrypt ran on the reactor's thread"
        # the first check is in progress and held: the reactor still turns ...
        ticks = []
        ticker = task.LoopingCall(lambda: ticks.append(None))
        ticker.start(0.001)
        assert await turns(lambda: len(ticks) >= 5)
        ticker.stop()
        assert codes == [] and len(scrypt_threads) == 1  # the rest wait their turn
    finally:
        release.set()
    assert await turns(lambda: len(codes) == 10)
    assert codes == [401] * 10
    assert len(scrypt_threads) == 10
    assert reactor_thread not in scrypt_threads


def test_scrypt_runs_in_threads_at_most_one_at_once():
    import threading

    from twisted.internet import defer

    running, most, threads, held = [0], [0], set(), []

    def run_in_thread(f, *args):
        d = defer.Deferred()

        def go():
            running[0] += 1
            most[0] = max(most[0], running[0])
            threads.add(threading.get_ident())
            result = f(*args)
            running[0] -= 1
            d.callback(result)

        held.append(go)
        return d

    checker = auth.BasicAuthChecker({"ops": HASH}, run_in_thread=run_in_thread, queue=3)
    header = basic("ops", "nope")["Authorization"].encode()
    results = [checker.check_later(header, f"192.0.2.{i}") for i in range(5)]
    assert len(held) == 1  # one at once (one core); the others wait for it
    refused = []
    results[4].addErrback(lambda f: refused.append(f.value))
    assert isinstance(refused[0], auth.TooMany)  # 1 running + 3 waiting: full
    while held:
        held.pop(0)()
    assert most[0] == 1 and checker.checked == 4


def test_failures_are_throttled_per_client_address():
    from twisted.internet import task

    clock = task.Clock()
    checker = auth.BasicAuthChecker({"ops": HASH}, clock=clock, burst=3, refill=6)
    bad = basic("ops", "nope")["Authorization"].encode()
    good = basic("ops", "s3cret pass")["Authorization"].encode()

    def outcome(header, peer):
        result = []
        checker.check_later(header, peer).addBoth(result.append)
        return result[0]

    assert outcome(good, "198.51.100.1") == "ops"  # remembered from now on
    for _ in range(3):
        assert outcome(bad, "192.0.2.1") is None
    too_many = outcome(bad, "192.0.2.1")
    assert too_many.check(auth.TooMany) and too_many.value.retry_after == 6
    assert checker.checked == 4 and checker.refused == 1  # no scrypt spent
    assert outcome(bad, "192.0.2.2") is None  # others are not held back
    assert outcome(good, "192.0.2.1") == "ops"  # a remembered user still gets in
    clock.advance(6)
    assert outcome(bad, "192.0.2.1") is None  # one more try per 6 s


@pytest_twisted.ensureDeferred
async def test_a_throttled_client_gets_429_with_retry_after(make_site):
    site = await make_site(users={"ops": HASH})
    for _ in range(10):
        r, _ = await site.get("/api/gateways", headers=basic("ops", "wrong"))
        assert r.code == 401
    r, body = await site.get("/api/gateways", headers=basic("ops", "wrong"))
    assert r.code == 429 and r.headers.getRawHeaders("retry-after") == ["6"]
    site.clock.advance(6)
    r, _ = await site.get("/api/gateways", headers=basic("ops", "s3cret pass"))
    assert r.code == 200


@pytest.mark.parametrize(
    "n, r, p",
    [(2**20, 8, 1), (2**15, 32, 1), (2**14, 8, 16)],
)
def test_a_hash_beyond_the_cost_bound_fails_closed_and_logs(n, r, p):
    from twisted.logger import globalLogPublisher

    good = HASH.split("$")
    big = "$".join(["scrypt", str(n), str(r), str(p), good[4], good[5]])
    with pytest.raises(ValueError, match="cost too high"):
        auth.parse_hash(big)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        assert auth.verify_password("s3cret pass", big, "ops") is False
    finally:
        globalLogPublisher.removeObserver(events.append)
    (e,) = [e for e in events if "cannot be checked" in e.get("log_format", "")]
    assert e["user"] == "ops" and "s3cret" not in str(e)


@pytest_twisted.ensureDeferred
async def test_a_huge_hash_in_the_config_is_a_401_not_a_500(make_site):
    good = HASH.split("$")
    big = "$".join(["scrypt", str(2**20), "8", "1", good[4], good[5]])
    site = await make_site(users={"ops": big})  # config.py refuses it; defence in depth
    r, _ = await site.get("/api/gateways", headers=basic("ops", "s3cret pass"))
    assert r.code == 401
