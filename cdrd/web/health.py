"""
Probes and metrics in front of the web site, outside its routes:

- ``/healthz``: 200 while the reactor runs (it answers);
- ``/readyz``: 200 when the store is open and takes writes, recovery is
  done and the gateway listener is up; else 503 with the reason in JSON
  (e.g. a PostgreSQL standby waiting for the active node);
- ``/metrics``: the Prometheus page, behind the web page's Basic auth when
  ``web.users`` is set (scrapers send the password).

The probes never need auth: load balancers, systemd and Kubernetes probe
them.  Everything else goes to the site as it is.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from twisted.web.resource import Resource


class ProbeResource(Resource):
    """`site` with the probes (and `metrics`, already guarded) in front of it."""

    isLeaf = True

    def __init__(self, site, ready: Callable[[], tuple[bool, str]], metrics=None):
        super().__init__()
        self.site = site
        self.ready = ready
        self.metrics = metrics

    def render(self, request):
        path = request.path
        if path == b"/healthz":
            return _json(request, 200, {"status": "ok"})
        if path == b"/readyz":
            ok, reason = self.ready()
            return _json(request, 200 if ok else 503, {"ready": ok, "reason": reason})
        if path == b"/metrics" and self.metrics is not None:
            return self.metrics.render(request)
        return self.site.render(request)


def _json(request, code: int, body: dict) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    if request.method == b"HEAD":
        return b""
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"
