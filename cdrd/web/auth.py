"""
HTTP Basic authentication for the web endpoint, and ``cdrd-passwd``.

Users live in the config (``[web.users]``, name -> hash).  A hash is
``scrypt$<n>$<r>$<p>$<salt hex>$<key hex>``: hashlib.scrypt with a random
16-byte salt.  When users are configured every route (pages, API, static
files, the live feeds) needs a valid user; without users the endpoint is
open, which is why it binds to loopback by default.

scrypt is slow on purpose (~45 ms), so it never runs on the reactor: a
check runs in a thread (one at a time, so a guesser costs at most one
core; 32 waiting at most, beyond that 429), a good header is remembered, and each client address may fail
`burst` times, then once per `refill` seconds (429 with Retry-After, no
scrypt spent).  Gateways' ingest never waits for a password guesser.
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
from collections.abc import Callable, Mapping

from twisted.internet import defer
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.resource import IResource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from cdrd.values import MAX_MEMORY, MAX_WORK, SCHEME, parse_hash  # noqa: F401 - the checker's bounds

N, R, P = 2**14, 8, 1
KEY_BYTES = 32
_MAXMEM = 2 * MAX_MEMORY  # hashlib's limit, above what a valid hash needs

log = Logger()


def hash_password(
    password: str, *, n: int = N, r: int = R, p: int = P, salt: bytes | None = None
) -> str:
    salt = os.urandom(16) if salt is None else salt
    key = _scrypt(password, salt, n, r, p)
    return f"{SCHEME}${n}${r}${p}${salt.hex()}${key.hex()}"


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int = KEY_BYTES):
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=dklen
    )


def verify_password(password: str, stored: str, user: str = "") -> bool:
    """True if `password` matches; False (fail closed, logged) if `stored`
    cannot be checked at all."""
    try:
        n, r, p, salt, key = parse_hash(stored)
        candidate = _scrypt(password, salt, n, r, p, dklen=len(key))
    except (ValueError, MemoryError, OverflowError) as e:
        log.error(
            "web: the password hash of user {user!r} cannot be checked ({why}); "
            "every login as {user!r} fails until it is replaced with cdrd-passwd's",
            user=user, why=str(e),
        )
        return False
    return hmac.compare_digest(candidate, key)


class _FailureBudget:
    """Failed logins a client address may still make: `burst`, then one per
    `refill` seconds (a token bucket per address, the least recent forgotten)."""

    def __init__(self, clock, burst: int, refill: float, size: int = 4096):
        self.clock = clock
        self.burst = burst
        self.refill = refill
        self.size = size
        self._peers: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _tokens(self, peer: str) -> float:
        tokens, at = self._peers.get(peer, (self.burst, self.clock.seconds()))
        return min(self.burst, tokens + (self.clock.seconds() - at) / self.refill)

    def retry_after(self, peer: str) -> int:
        """0 if `peer` may try, else seconds until it may."""
        tokens = self._tokens(peer)
        return 0 if tokens >= 1 else max(1, round((1 - tokens) * self.refill + 0.5))

    def failed(self, peer: str) -> None:
        self._peers[peer] = (max(0.0, self._tokens(peer) - 1), self.clock.seconds())
        self._peers.move_to_end(peer)
        while len(self._peers) > self.size:
            self._peers.popitem(last=False)


class TooMany(Exception):
    """The check was not made: try again in `retry_after` seconds (429)."""

    def __init__(self, retry_after: int, why: str):
        super().__init__(why)
        self.retry_after = retry_after


class BasicAuthChecker:
    """
    Checks ``Authorization: Basic`` headers against the configured users.

    scrypt is deliberately slow (tens of ms), and a browser sends the header
    with every request, so a successful check is remembered (by a SHA-256 of
    the header, never the password itself) in a small bounded cache.  An
    unknown header is checked in a thread (`run_in_thread`; at most
    `threads` at once and `queue` waiting), and each client address has a
    budget of failures (`burst`, then one per `refill` seconds).
    """

    log = Logger()

    def __init__(
        self,
        users: Mapping[str, str],
        cache_size: int = 256,
        *,
        clock=None,
        run_in_thread: Callable[..., defer.Deferred] | None = None,
        threads: int = 1,
        queue: int = 32,
        burst: int = 10,
        refill: float = 6.0,
    ):
        self._users = dict(users)
        self._ok: OrderedDict[bytes, str] = OrderedDict()
        self._cache_size = cache_size
        # an unknown user costs the same as a known one
        self._dummy = hash_password("x", salt=b"\0" * 16)
        if run_in_thread is None:
            if clock is not None and IReactorThreads.providedBy(clock):
                def run_in_thread(f, *args, _reactor=clock):
                    return deferToThreadPool(_reactor, _reactor.getThreadPool(), f, *args)
            else:  # a test clock: check at once
                run_in_thread = defer.maybeDeferred
        self._run = run_in_thread
        self._slots = defer.DeferredSemaphore(threads)
        self._queue = queue
        if clock is None:
            from twisted.internet.task import Clock

            clock = Clock()
        self._budget = _FailureBudget(clock, burst, refill)
        self.checked = 0  # scrypt checks made
        self.refused = 0  # requests answered 429 without a check

    @property
    def enabled(self) -> bool:
        return bool(self._users)

    def _parse(self, header: bytes | None) -> tuple[bytes, str, str] | None:
        """(digest, user, password) of a well-formed Basic header, else None."""
        if not header:
            return None
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"basic":
            return None
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
        return hashlib.sha256(token.strip()).digest(), name, password

    def _remembered(self, header: bytes | None) -> str | None:
        if not header:
            return None
        _, _, token = header.partition(b" ")
        digest = hashlib.sha256(token.strip()).digest()
        user = self._ok.get(digest)
        if user is not None:
            self._ok.move_to_end(digest)
        return user

    def _verify(self, name: str, password: str) -> bool:
        stored = self._users.get(name)
        ok = verify_password(password, stored if stored is not None else self._dummy, name)
        return ok and stored is not None

    def _remember(self, digest: bytes, name: str) -> None:
        self._ok[digest] = name
        while len(self._ok) > self._cache_size:
            self._ok.popitem(last=False)

    def check(self, header: bytes | None) -> str | None:
        """The user name for a valid header, else None (synchronous: scrypt
        runs here; the web resource uses `check_later`)."""
        user = self._remembered(header)
        if user is not None:
            return user
        parsed = self._parse(header)
        if parsed is None:
            return None
        digest, name, password = parsed
        if not self._verify(name, password):
            self.log.info("web login failed for user {user!r}", user=name)
            return None
        self._remember(digest, name)
        return name

    def check_later(self, header: bytes | None, peer: str) -> defer.Deferred:
        """
        Deferred[user name | None]; fails with TooMany when `peer` used up its
        failures or too many checks are waiting.  A remembered header or a
        malformed one is answered at once, without a thread.
        """
        user = self._remembered(header)
        if user is not None:
            return defer.succeed(user)
        parsed = self._parse(header)
        if parsed is None:
            return defer.succeed(None)
        wait = self._budget.retry_after(peer)
        if wait:
            self.refused += 1
            return defer.fail(TooMany(wait, f"{peer} failed too many logins"))
        if len(self._slots.waiting) >= self._queue:
            self.refused += 1
            return defer.fail(TooMany(1, "too many logins being checked"))
        digest, name, password = parsed

        def checked(ok):
            self.checked += 1
            if not ok:
                self._budget.failed(peer)
                self.log.info("web login failed for user {user!r} from {peer}",
                              user=name, peer=peer)
                return None
            self._remember(digest, name)
            return name

        d = self._slots.run(self._run, self._verify, name, password)
        return d.addCallback(checked)


@implementer(IResource)
class BasicAuthResource:
    """Wraps a leaf resource (Klein's): every request must authenticate."""

    isLeaf = True
    log = Logger()

    def __init__(self, wrapped, checker: BasicAuthChecker, realm: str = "cdrd"):
        self._wrapped = wrapped
        self._checker = checker
        self._realm = realm.replace('"', "")

    def getChildWithDefault(self, name, request):
        return self

    def putChild(self, path, child):
        raise NotImplementedError()

    def render(self, request):
        peer = getattr(request.getClientAddress(), "host", None) or "?"
        d = self._checker.check_later(request.getHeader(b"authorization"), peer)
        outcome = []
        d.addBoth(outcome.append)
        if outcome:  # remembered, malformed or refused: no thread, no wait
            return self._answer(request, outcome[0])
        gone = []
        request.notifyFinish().addErrback(gone.append)

        def answer(_):
            if gone:
                return  # the client left while its password was checked
            body = self._answer(request, outcome[0])
            if body is not NOT_DONE_YET:
                request.write(body)
                request.finish()

        d.addCallback(answer)
        d.addErrback(lambda f: self.log.failure("web: answering a login failed", f))
        return NOT_DONE_YET

    def _answer(self, request, outcome):
        if isinstance(outcome, str):
            return self._wrapped.render(request)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        if outcome is None:
            request.setResponseCode(401)
            request.setHeader(
                b"www-authenticate",
                f'Basic realm="{self._realm}", charset="UTF-8"'.encode(),
            )
            return b"authentication required\n"
        if outcome.check(TooMany):
            request.setResponseCode(429)
            request.setHeader(b"retry-after", str(outcome.value.retry_after).encode())
            return b"too many failed logins: try again later\n"
        self.log.failure("web: checking a login failed", outcome)
        request.setResponseCode(500)
        return b"internal error\n"


def guard(resource, users: Mapping[str, str], realm: str = "cdrd", clock=None):
    """`resource` behind Basic auth when there are users, else unchanged.
    `clock` (the reactor) gives the thread pool and the failure budget's time."""
    if not users:
        return resource
    return BasicAuthResource(resource, BasicAuthChecker(users, clock=clock), realm)


def _terminal() -> bool:
    """getpass asks on /dev/tty, else on standard input if that is a terminal."""
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
        return True
    except OSError:
        return sys.stdin is not None and sys.stdin.isatty()


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
        if not _terminal():
            sys.stderr.write("cdrd-passwd: no terminal to ask for the password on; use --stdin"
                             " (printf '%s\\n' \"$PASSWORD\" | cdrd-passwd --stdin USER)\n")
            return 2
        try:
            password = getpass.getpass("password: ")
            again = getpass.getpass("again: ")
        except (EOFError, KeyboardInterrupt):
            sys.stderr.write("\ncdrd-passwd: no password given\n")
            return 1
        if again != password:
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
