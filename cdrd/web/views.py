"""
HTML from templates (cdrd/web/templates/, Jinja2 with autoescape on): what
a page shows is a dict of plain values, and every value from a gateway, the
store or the request is escaped by the template engine, never by hand.

    body = views.render(request, "report.html", page="report", title="CDR Report", ...)

Each page gets the strict Content-Security-Policy: no inline script or
style anywhere (the templates carry none; cdrd.js and cdrd.css do it all).
"""

from __future__ import annotations

from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, select_autoescape

from cdrd.values import hhmmss

NAV = (
    ("dashboard", "/", "Dashboard"),
    ("report", "/report", "CDR Report"),
    ("summary", "/summary", "Summary"),
    ("cdrs", "/cdrs", "Billing CDRs"),
    ("live", "/live", "Live"),
    ("gateways", "/gateways", "Gateways"),
    ("log", "/log", "Gateway log"),
)

CSP = (
    b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    b"frame-ancestors 'none'"
)


def url(path: str, params: dict | None = None, **more) -> str:
    """`path` with the non-empty parameters as its query (the template escapes it)."""
    merged = {**(params or {}), **more}
    clean = {k: v for k, v in merged.items() if v not in (None, "", 0, False)}
    return path + ("?" + urlencode(clean) if clean else "")


def _duration(ms) -> str:
    return "" if ms is None else hhmmss(ms)


def _percent(fraction) -> str:
    return "–" if fraction is None else f"{100 * fraction:.0f}%"


def _acd(seconds) -> str:
    return "–" if seconds is None else hhmmss(int(seconds * 1000))


def _minutes(value) -> str:
    return f"{value:,.1f}"


def _css_class(text) -> str:
    """A value as a CSS class word: "Call out failed" -> call-out-failed."""
    return "".join(c if c.isalnum() else "-" for c in str(text).lower())


ENV = Environment(
    loader=PackageLoader("cdrd.web", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
ENV.globals.update(url=url, NAV=NAV)
ENV.filters.update(
    duration=_duration, percent=_percent, acd=_acd, minutes=_minutes, css=_css_class
)


def html(template: str, **context) -> str:
    return ENV.get_template(template).render(**context)


def render(request, template: str, *, code: int = 200, **context) -> bytes:
    """A whole page: its status, the security headers and the HTML."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"content-security-policy", CSP)
    return html(template, **context).encode("utf-8")
