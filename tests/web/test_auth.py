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
    f"/gateways/{F.GW}/events",
    "/api/gateways",
    "/api/calls",
    "/api/log",
    "/api/events",
    "/api/cdrs",
    "/api/status",
    "/static/cdrd.css",
    "/api/events/stream",
    "/nothing",
]


@pytest_twisted.ensureDeferred
async def test_every_route_needs_a_user_when_users_are_configured(make_site):
    site = await make_site(users={"ops": HASH})
    for path in ROUTES:
        r, body = await site.get(path)
        assert r.code == 401, path
        assert r.headers.getRawHeaders("www-authenticate") == [
            'Basic realm="cdrd", charset="UTF-8"'
        ]
        r, _ = await site.get(path, headers=basic("ops", "wrong"))
        assert r.code == 401, path
    for path in ROUTES[:-2]:  # the stream stays open; /nothing is 404
        r, _ = await site.get(path, headers=basic("ops", "s3cret pass"))
        assert r.code == 200, path
    r, _ = await site.get("/nothing", headers=basic("ops", "s3cret pass"))
    assert r.code == 404


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
