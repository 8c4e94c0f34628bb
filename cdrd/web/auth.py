"""
HTTP Basic authentication for the web endpoint, and ``cdrd-passwd``.

Users live in the config (``[web.users]``, name -> hash).  A hash is
``scrypt$<n>$<r>$<p>$<salt hex>$<key hex>``: hashlib.scrypt with a random
16-byte salt.  When users are configured every route (pages, API, static
files, the live feeds) needs a valid user; without users the endpoint is
open, which is why it binds to loopback by default.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import hmac
import os
import sys
from collections import OrderedDict
from collections.abc import Mapping

from twisted.logger import Logger
from twisted.web.resource import IResource
from zope.interface import implementer

SCHEME = "scrypt"
N, R, P = 2**14, 8, 1
KEY_BYTES = 32
_MAX_N = 2**20  # refuse absurd work factors from a config file


def hash_password(
    password: str, *, n: int = N, r: int = R, p: int = P, salt: bytes | None = None
) -> str:
    salt = os.urandom(16) if salt is None else salt
    key = _scrypt(password, salt, n, r, p)
    return f"{SCHEME}${n}${r}${p}${salt.hex()}${key.hex()}"


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=256 * 1024 * 1024,
        dklen=KEY_BYTES,
    )


def parse_hash(text: str) -> tuple[int, int, int, bytes, bytes]:
    """The parts of a stored hash; ValueError if it is not one."""
    parts = text.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        raise ValueError("not scrypt$n$r$p$salt$hash")
    n, r, p = (int(x) for x in parts[1:4])
    if n < 2 or n & (n - 1) or n > _MAX_N or not 0 < r <= 64 or not 0 < p <= 16:
        raise ValueError("scrypt parameters out of range")
    salt, key = bytes.fromhex(parts[4]), bytes.fromhex(parts[5])
    if not salt or not key:
        raise ValueError("empty salt or hash")
    return n, r, p, salt, key


def verify_password(password: str, stored: str) -> bool:
    try:
        n, r, p, salt, key = parse_hash(stored)
    except ValueError:
        return False
    candidate = hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=256 * 1024 * 1024,
        dklen=len(key),
    )
    return hmac.compare_digest(candidate, key)


class BasicAuthChecker:
    """
    Checks ``Authorization: Basic`` headers against the configured users.

    scrypt is deliberately slow (tens of ms), and a browser sends the header
    with every request, so a successful check is remembered (by a SHA-256 of
    the header, never the password itself) in a small bounded cache.
    """

    log = Logger()

    def __init__(self, users: Mapping[str, str], cache_size: int = 256):
        self._users = dict(users)
        self._ok: OrderedDict[bytes, str] = OrderedDict()
        self._cache_size = cache_size
        # an unknown user costs the same as a known one
        self._dummy = hash_password("x", salt=b"\0" * 16)

    @property
    def enabled(self) -> bool:
        return bool(self._users)

    def check(self, header: bytes | None) -> str | None:
        """The user name for a valid header, else None."""
        if not header:
            return None
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"basic":
            return None
        digest = hashlib.sha256(token.strip()).digest()
        user = self._ok.get(digest)
        if user is not None:
            self._ok.move_to_end(digest)
            return user
        try:
            name, sep, password = (
                base64.b64decode(token.strip(), validate=True)
                .decode("utf-8")
                .partition(":")
            )
        except (ValueError, UnicodeDecodeError):
            return None
        if not sep:
            return None
        stored = self._users.get(name)
        ok = verify_password(password, stored if stored is not None else self._dummy)
        if not ok or stored is None:
            self.log.info("web login failed for user {user!r}", user=name)
            return None
        self._ok[digest] = name
        while len(self._ok) > self._cache_size:
            self._ok.popitem(last=False)
        return name


@implementer(IResource)
class BasicAuthResource:
    """Wraps a leaf resource (Klein's): every request must authenticate."""

    isLeaf = True

    def __init__(self, wrapped, checker: BasicAuthChecker, realm: str = "cdrd"):
        self._wrapped = wrapped
        self._checker = checker
        self._realm = realm.replace('"', "")

    def getChildWithDefault(self, name, request):
        return self

    def putChild(self, path, child):
        raise NotImplementedError()

    def render(self, request):
        if self._checker.check(request.getHeader(b"authorization")) is None:
            request.setResponseCode(401)
            request.setHeader(
                b"www-authenticate",
                f'Basic realm="{self._realm}", charset="UTF-8"'.encode(),
            )
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"authentication required\n"
        return self._wrapped.render(request)


def guard(resource, users: Mapping[str, str], realm: str = "cdrd"):
    """`resource` behind Basic auth when there are users, else unchanged."""
    if not users:
        return resource
    return BasicAuthResource(resource, BasicAuthChecker(users), realm)


def main(argv: list[str] | None = None) -> int:
    """``cdrd-passwd [USER]``: print a [web.users] line with a new hash."""
    parser = argparse.ArgumentParser(
        prog="cdrd-passwd",
        description="Hash a password for cdrd's web users ([web.users] in the config).",
    )
    parser.add_argument(
        "user", nargs="?", help="user name; the output is a TOML line for [web.users]"
    )
    parser.add_argument(
        "--stdin",
        action="store_true",
        help="read the password from standard input (one line)",
    )
    args = parser.parse_args(argv)
    if args.stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            sys.stderr.write("cdrd-passwd: passwords differ\n")
            return 1
    if not password:
        sys.stderr.write("cdrd-passwd: empty password\n")
        return 1
    hashed = hash_password(password)
    if args.user:
        name = args.user.replace("\\", "\\\\").replace('"', '\\"')
        sys.stdout.write(f'"{name}" = "{hashed}"\n')
    else:
        sys.stdout.write(hashed + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
