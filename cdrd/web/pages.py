"""
The operator pages as HTML fragments (the layout is templates/layout.html).

Everything that comes from a gateway, the store or the request passes
through `esc`; no inline scripts or styles (the pages send a strict
Content-Security-Policy).
"""

from __future__ import annotations

import calendar
from collections import defaultdict
from datetime import date, timedelta
from urllib.parse import urlencode

from cdrd.values import hhmmss
from cdrd.web.render import esc

NAV = (
    ("dashboard", "/", "Dashboard"),
    ("report", "/report", "CDR Report"),
    ("events", "/gateways", "Live events"),
    ("log", "/log", "Gateway log"),
    ("cdrs", "/cdrs", "Billing CDRs"),
)

#: notations counted as call attempts for ASR (Hook On/Off and Other are not)


def nav(current: str) -> str:
    items = []
    for page, href, label in NAV:
        cls = ' class="on" aria-current="page"' if page == current else ""
        items.append(f'<a href="{href}"{cls}>{label}</a>')
    return "".join(items)


def link(path: str, **params) -> str:
    clean = {
        k: v for k, v in params.items() if v not in (None, "", 0) or k == "offset" and v
    }
    return esc(path + ("?" + urlencode(clean) if clean else ""))


def error_box(message: str) -> str:
    return f'<section class="card error"><h1>Bad request</h1><p>{esc(message)}</p></section>'


def _gateway_select(keys, current, name="gateway", all_label="All gateways") -> str:
    opts = [f'<option value="">{esc(all_label)}</option>']
    for k in keys:
        sel = " selected" if k == current else ""
        opts.append(f'<option value="{esc(k)}"{sel}>{esc(k)}</option>')
    if current and current not in keys:
        opts.append(f'<option value="{esc(current)}" selected>{esc(current)}</option>')
    return f'<select name="{name}" id="{name}">{"".join(opts)}</select>'


def _table(head, rows_html: str, cls="grid", tbody_id="") -> str:
    """A table that scrolls in its box on a wide screen; with class `stack`
    each row becomes a card of labelled values on a phone (cdrd.css)."""
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    tid = f' id="{tbody_id}"' if tbody_id else ""
    return (
        f'<div class="scroll"><table class="{cls}"><thead><tr>{th}</tr></thead>'
        f"<tbody{tid}>{rows_html}</tbody></table></div>"
    )


def _td(label: str, html: str, cls: str = "") -> str:
    """A cell that names its column (`data-label`: the phone's card layout)."""
    c = f' class="{cls}"' if cls else ""
    return f'<td data-label="{esc(label)}"{c}>{html}</td>'


def _pager(path, params, offset, limit, shown, total) -> str:
    if total is not None and total <= limit and offset == 0:
        return ""
    prev = (
        f'<a class="btn" href="{link(path, **params, offset=max(0, offset - limit) or None)}">&larr; Previous</a>'
        if offset > 0
        else '<span class="btn off">&larr; Previous</span>'
    )
    more = offset + shown < total if total is not None else shown >= limit
    nxt = (
        f'<a class="btn" href="{link(path, **params, offset=offset + limit)}">Next &rarr;</a>'
        if more
        else '<span class="btn off">Next &rarr;</span>'
    )
    where = f"{offset + 1 if shown else offset}–{offset + shown}"
    if total is not None:
        where += f" of {total}"
    return f'<nav class="pager">{prev}<span class="where">{where}</span>{nxt}</nav>'


# -- the CDR Report -------------------------------------------------------------


def _calendar(month: date, days: set[date], search, today: date) -> str:
    prev_m = (month - timedelta(days=1)).replace(day=1)
    next_m = (month + timedelta(days=32)).replace(day=1)
    base = {
        "gateway": search.gateway,
        "filter": None if search.filter == "all" else search.filter,
    }
    keep = {
        **base,
        "from": search.day_from and search.day_from.isoformat(),
        "to": search.day_to and search.day_to.isoformat(),
    }
    head = (
        f'<div class="cal-head"><a href="{link("/report", **keep, month=f"{prev_m:%Y-%m}")}" aria-label="previous month">&lsaquo;</a>'
        f"<b>{month:%B %Y}</b>"
        f'<a href="{link("/report", **keep, month=f"{next_m:%Y-%m}")}" aria-label="next month">&rsaquo;</a></div>'
    )
    cells = [
        "<tr>"
        + "".join(f"<th>{d}</th>" for d in ("Mo", "Tu", "We", "Th", "Fr", "Sa", "Su"))
        + "</tr>"
    ]
    for week in calendar.Calendar(0).monthdatescalendar(month.year, month.month):
        row = []
        for d in week:
            cls = []
            if d.month != month.month:
                cls.append("out")
            if d in days:
                cls.append("has")
            if (
                search.day_from
                and search.day_to
                and search.day_from <= d <= search.day_to
            ):
                cls.append("sel")
            if d == today:
                cls.append("today")
            title = ' title="records"' if d in days else ""
            href = link(
                "/report", **base, **{"from": d.isoformat(), "to": d.isoformat()}
            )
            row.append(
                f'<td class="{" ".join(cls)}"><a href="{href}"{title}>{d.day}</a></td>'
            )
        cells.append("<tr>" + "".join(row) + "</tr>")
    return (
        f'<aside class="card calendar" aria-label="days with records">{head}'
        f"<table>{''.join(cells)}</table>"
        '<p class="legend"><span class="dot"></span> days with records</p></aside>'
    )


def report(
    *, search, keys, result, rows, columns, filters, month, days, today, gateways=()
) -> str:
    s = search
    params = {
        "gateway": s.gateway,
        "from": s.day_from.isoformat(),
        "to": s.day_to.isoformat(),
        "filter": None if s.filter == "all" else s.filter,
        "limit": None if s.limit == 100 else s.limit,
    }
    form = f"""
<form class="card search" method="get" action="/report">
  <label>Gateway {_gateway_select(keys, s.gateway)}</label>
  <label>From <input type="date" name="from" id="from" value="{s.day_from.isoformat()}" required></label>
  <label>To <input type="date" name="to" id="to" value="{s.day_to.isoformat()}" required></label>
  <input type="hidden" name="filter" value="{esc(s.filter)}">
  <button type="submit" id="search">Search</button>
</form>"""
    tabs = []
    for key, label in filters.items():
        cls = ' class="on" aria-current="true"' if key == s.filter else ""
        href = link(
            "/report",
            **{**params, "filter": None if key == "all" else key, "offset": None},
        )
        tabs.append(f'<a{cls} href="{href}" data-filter="{key}">{esc(label)}</a>')
    counts = (
        f'<div class="counts"><span>Total Record Count <b id="total">{result.total}</b></span>'
        f'<span>Filter Record Count <b id="filtered">{result.filtered}</b></span></div>'
    )
    actions = (
        f'<div class="actions"><a class="btn" id="refresh" href="{link("/report", **params, offset=s.offset or None)}">Refresh</a>'
        f'<a class="btn" id="csv" href="{link("/report.csv", **params)}">Export CSV</a>'
        f'<a class="btn ghost" href="{link("/api/calls", **params, offset=s.offset or None)}">JSON</a></div>'
    )
    cell_class = {
        "Cause": "cause",
        "Dialed": "num",
        "Caller ID": "num",
        "PSTN Caller ID": "num",
        "PSTN Dial": "num",
    }
    every_gateway = s.gateway is None and rows
    head = columns + ("Gateway",) if every_gateway else columns
    body = []
    for cells, g in zip(rows, gateways or [None] * len(rows), strict=True):
        tds = []
        for col, value in zip(columns, cells, strict=True):
            if col == "Notation":
                kind = value.lower().replace(" ", "-").replace("/", "-")
                tds.append(_td(col, f'<span class="tag {esc(kind)}">{esc(value)}</span>'))
            else:
                tds.append(_td(col, esc(value), cell_class.get(col, "")))
        if every_gateway:
            # every gateway at once: say whose call each row is
            href = link("/report", **{**params, "gateway": g})
            tds.append(_td("Gateway", f'<a href="{href}">{esc(g)}</a>'))
        body.append("<tr>" + "".join(tds) + "</tr>")
    if not body:
        body.append(
            f'<tr class="empty"><td colspan="{len(columns)}">No records for this search.</td></tr>'
        )
    table = _table(head, "".join(body), cls="grid stack report", tbody_id="records")
    pager = _pager("/report", params, s.offset, s.limit, len(rows), result.filtered)
    title = f"{s.gateway or 'All gateways'} · {s.day_from}" + (
        f" – {s.day_to}" if s.day_to != s.day_from else ""
    )
    return f"""
<h1>CDR Report <small>{esc(title)}</small></h1>
<div class="report-top">
  <div class="report-main">{form}
    <div class="toolbar"><nav class="filters" aria-label="filter">{"".join(tabs)}</nav>{actions}</div>
    {counts}
  </div>
  {_calendar(month, days, s, today)}
</div>
{table}
{pager}"""


# -- live events ---------------------------------------------------------------------

EVENT_COLUMNS = (
    "Time",
    "Call-Ref",
    "#",
    "Event",
    "Dialed",
    "Caller-ID",
    "Info",
    "P-Port",
)


def event_tr(row: dict) -> str:
    cells = (
        row["time"],
        row["ref"],
        row["port"],
        row["type"],
        row["digits"],
        row["cli"],
        row["info"],
        row["pport"],
    )
    tds = "".join(
        _td(label, esc(v), f"ev-type {esc(str(v)).lower()}" if label == "Event" else "")
        for label, v in zip(EVENT_COLUMNS, cells, strict=True)
    )
    return f'<tr data-id="{esc(row["id"])}">{tds}</tr>'


def live_events(*, key, state, rows, after, live, keys) -> str:
    if state is None:
        info = '<span class="pill off">unknown gateway</span>'
    else:
        pill = (
            '<span class="pill on">online</span>'
            if state.online
            else '<span class="pill off">offline</span>'
        )
        info = f'{pill} <span class="muted">peer {esc(state.peer) or "–"} · FXS {state.fxs} · FXO {state.fxo} · ISDN {state.isdn} · callref {state.callref}</span>'
    opts = "".join(
        f'<option value="{esc(k)}"{" selected" if k == key else ""}>{esc(k)}</option>'
        for k in keys
    )
    switch = (
        f'<form class="inline" method="get" action="/gateways" id="switch"><label>Gateway '
        f'<select name="key" id="key">{opts}</select></label> <button type="submit">Show</button></form>'
    )
    body = "".join(event_tr(r) for r in rows) or (
        f'<tr class="empty"><td colspan="{len(EVENT_COLUMNS)}">No events stored yet: '
        "new ones appear here as the gateway sends them.</td></tr>"
    )
    stream = f"/gateways/{esc(key)}/events/stream" if live else ""
    status = (
        '<span id="live" class="live connecting" aria-live="polite">connecting…</span>'
        if live
        else '<span class="live off">live updates unavailable</span>'
    )
    return f"""
<h1>Live events <small>{esc(key)}</small> {status}</h1>
<div class="card bar">{info}{switch}
  <a class="btn ghost" href="{link("/report", gateway=key)}">Report</a>
  <a class="btn ghost" href="{link("/log", gateway=key)}">Log</a></div>
<div id="stream" data-url="{stream}" data-after="{int(after)}"></div>
{_table(EVENT_COLUMNS, body, cls="grid stack events", tbody_id="events")}
<p class="muted">Newest first: the latest stored events, then each new one as it is stored.</p>"""


def gateways_index(keys) -> str:
    items = "".join(
        f'<li><a href="/gateways/{esc(k)}/events">{esc(k)}</a></li>' for k in keys
    )
    return f'<h1>Live events</h1><ul class="card keys">{items or "<li>No gateways yet.</li>"}</ul>'


# -- the gateway log -------------------------------------------------------------------


def gateway_log(*, search, entries, more, clocks, keys) -> str:
    s = search
    params = {
        "gateway": s.gateway,
        "from": s.day_from.isoformat(),
        "to": s.day_to.isoformat(),
        "limit": None if s.limit == 100 else s.limit,
    }
    datalist = "".join(f'<option value="{esc(k)}">' for k in keys)
    form = f"""
<form class="card search" method="get" action="/log">
  <label>Gateway <input name="gateway" id="gateway" list="gwkeys" value="{esc(s.gateway)}" placeholder="8200 or 8200_000C2A020082"></label>
  <datalist id="gwkeys">{datalist}</datalist>
  <label>From <input type="date" name="from" value="{s.day_from.isoformat()}"></label>
  <label>To <input type="date" name="to" value="{s.day_to.isoformat()}"></label>
  <button type="submit">Search</button>
</form>"""
    rows = []
    for e in entries:
        kind = esc(e.event.lower().replace(" ", "-"))
        rows.append(
            "<tr>"
            + _td("Time", esc(clocks.datetime(e.time)))
            + _td("Gateway", esc(e.gateway))
            + _td("MAC", esc(e.mac))
            + _td("Peer", esc(e.peer))
            + _td("Event", f'<span class="tag log {kind}">{esc(e.event)}</span>')
            + _td("Detail", esc(e.detail), "detail")
            + "</tr>"
        )
    if not rows:
        rows.append(
            '<tr class="empty"><td colspan="6">No log entries for this search.</td></tr>'
        )
    table = _table(
        ("Time", "Gateway", "MAC", "Peer", "Event", "Detail"),
        "".join(rows),
        cls="grid stack log",
        tbody_id="log",
    )
    pager = _pager(
        "/log",
        params,
        s.offset,
        s.limit,
        len(entries),
        None if more else s.offset + len(entries),
    )
    return f"<h1>Gateway log</h1>{form}{table}{pager}"


# -- billing CDRs ----------------------------------------------------------------------


def cdrs(*, search, total, cdrs, clocks, keys) -> str:
    s = search
    params = {
        "gateway": s.gateway,
        "from": s.day_from.isoformat(),
        "to": s.day_to.isoformat(),
        "cui": s.cui,
        "limit": None if s.limit == 100 else s.limit,
    }
    form = f"""
<form class="card search" method="get" action="/cdrs">
  <label>Gateway {_gateway_select(keys, s.gateway)}</label>
  <label>From <input type="date" name="from" value="{s.day_from.isoformat()}"></label>
  <label>To <input type="date" name="to" value="{s.day_to.isoformat()}"></label>
  <label>CUI <input name="cui" id="cui" value="{esc(s.cui)}" placeholder="any"></label>
  <button type="submit">Search</button>
</form>"""
    rows = []
    for i, c in enumerate(cdrs):
        duration = hhmmss(c.duration) if c.duration is not None else ""
        rows.append(
            "<tr>"
            + _td("#", str(s.offset + i + 1))
            + _td("Start", esc(clocks.datetime(c.start)))
            + _td("FireBrick line", f"<code>{esc(c.line)}</code>", "line")
            + _td("Status", esc(c.status) if c.status else "answered",
                  "cause" if c.status else "")
            + _td("Duration", esc(duration))
            + _td("Gateway", esc(c.gateway))
            + "</tr>"
        )
    if not rows:
        rows.append(
            '<tr class="empty"><td colspan="6">No CDRs for this search.</td></tr>'
        )
    # the line is what billing reads: it comes first and is never cut off
    # (its fields, ringing, duration, CUI, dialled and CLI, are in it)
    table = _table(
        ("#", "Start", "FireBrick line", "Status", "Duration", "Gateway"),
        "".join(rows),
        cls="grid stack cdrs",
        tbody_id="cdrs",
    )
    actions = (
        f'<div class="counts"><span>CDRs <b id="total">{total}</b></span>'
        f'<a class="btn" id="csv" href="{link("/cdrs.csv", **params)}">Export CSV</a>'
        f'<a class="btn ghost" href="{link("/api/cdrs", **params)}">JSON</a></div>'
    )
    return f"<h1>Billing CDRs</h1>{form}{actions}{table}{_pager('/cdrs', params, s.offset, s.limit, len(cdrs), total)}"


# -- the dashboard -------------------------------------------------------------------


def _asr_acd(stats) -> tuple[int, int, str, str]:
    """ASR and ACD over CallStats: answered attempts / attempts, mean talk."""
    attempts = sum(s.attempts for s in stats)
    answered = sum(s.attempts_answered for s in stats)
    asr = f"{100 * answered / attempts:.0f}%" if attempts else "–"
    acd = hhmmss(sum(s.talk for s in stats) // answered) if answered else "–"
    return attempts, answered, asr, acd


def _chart(stats, since: int, hours: int, clocks) -> str:
    """Calls per hour: a wide chart, and a narrow one for phones (the wide
    one's labels would shrink to 5 px there); CSS shows one of them."""
    answered = [0] * hours
    other = [0] * hours
    for st in stats:
        h = (st.start - since) // 3_600_000
        if 0 <= h < hours:
            answered[h] += st.answered
            other[h] += st.calls - st.answered
    top = max([a + o for a, o in zip(answered, other, strict=True)] + [2])
    top += top % 2  # even, so the middle grid line is a whole number of calls
    wide = _chart_svg(answered, other, top, since, clocks, "wide", 720, 180, 3, 11)
    narrow = _chart_svg(answered, other, top, since, clocks, "narrow", 360, 170, 6, 13)
    legend = '<p class="legend"><span class="key ans"></span> answered <span class="key other"></span> not answered</p>'
    return wide + narrow + legend


def _chart_svg(answered, other, top, since, clocks, cls, W, H, every, font) -> str:
    hours = len(answered)
    pad, bottom = 2.6 * font, 2 * font
    bw = (W - pad) / hours
    parts = [
        f'<svg class="chart {cls}" viewBox="0 0 {W} {H + bottom:.0f}" role="img" '
        f'aria-label="calls per hour, last {hours} hours">'
    ]
    for frac in (0, 0.5, 1):
        y = H - frac * (H - 10)
        parts.append(
            f'<line x1="{pad:.0f}" x2="{W}" y1="{y:.1f}" y2="{y:.1f}" class="grid-line"/>'
        )
        parts.append(
            f'<text x="{pad - 4:.0f}" y="{y + font / 3:.1f}" class="axis" font-size="{font}" '
            f'text-anchor="end">{int(top * frac)}</text>'
        )
    gap = min(4, bw / 4)
    for h in range(hours):
        x = pad + h * bw + gap / 2
        a_h = answered[h] / top * (H - 10)
        o_h = other[h] / top * (H - 10)
        label = clocks.time(since + h * 3_600_000)[:5]
        tip = f"{label}: {answered[h] + other[h]} calls, {answered[h]} answered"
        parts.append(f"<g><title>{esc(tip)}</title>")
        parts.append(
            f'<rect class="bar-other" x="{x:.1f}" y="{H - o_h - a_h:.1f}" width="{bw - gap:.1f}" height="{o_h:.1f}"/>'
        )
        parts.append(
            f'<rect class="bar-ans" x="{x:.1f}" y="{H - a_h:.1f}" width="{bw - gap:.1f}" height="{a_h:.1f}"/>'
        )
        parts.append("</g>")
        if h % every == 0:
            parts.append(
                f'<text x="{x + (bw - gap) / 2:.1f}" y="{H + 1.4 * font:.0f}" class="axis" '
                f'font-size="{font}" text-anchor="middle">{label}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


# -- outputs ------------------------------------------------------------------
#: an unsent RADIUS request older than this is a warning, then a problem
RADIUS_BEHIND_S = 60
RADIUS_LATE_S = 600


def _status_value(value) -> str:
    if isinstance(value, float):
        return esc(round(value, 3))
    if isinstance(value, bool) or value is None:
        return esc({True: "yes", False: "no", None: "–"}[value])
    if isinstance(value, dict):
        return "<br>".join(f"{esc(k)}: {_status_value(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return "<hr>".join(_status_value(v) for v in value) or "–"
    return esc(value)


def _status_table(name: str, status: dict) -> str:
    """An output cdrd has no page for: its status as it is."""
    rows = "".join(
        f"<tr><th>{esc(k)}</th><td>{_status_value(v)}</td></tr>"
        for k, v in sorted(status.items())
    )
    return f'<div class="card output"><h3>{esc(name)}</h3><table class="kv">{rows}</table></div>'


_STATE = {"ok": "on", "warn": "warn", "bad": "off"}


def _figure(label: str, value, level: str = "", note: str = "", fid: str = "") -> str:
    cls = f"figure {level}".strip()
    ident = f' id="{fid}"' if fid else ""
    small = f"<small>{esc(note)}</small>" if note else ""
    return f'<div class="{cls}"{ident}><span>{esc(label)}</span><b>{esc(value)}</b>{small}</div>'


def _output_card(key, title, subtitle, level, state, figures, extra="") -> str:
    problems = "" if level == "ok" else f" {level}"
    return (
        f'<section class="card output{problems}" id="output-{esc(key)}">'
        f'<h3>{esc(title)} <span class="pill {_STATE[level]}">{esc(state)}</span></h3>'
        f'<p class="muted target">{esc(subtitle)}</p>'
        f'<div class="figures">{"".join(figures)}</div>{extra}</section>'
    )


def _broken(key, title, status) -> str:
    return _output_card(
        key, title, "its status could not be read", "bad", "unknown",
        [_figure("Error", status.get("error", "?"), "bad")],
    )


def _radius_card(st: dict) -> str:
    """RADIUS accounting as an operator reads it: is it delivering, how far
    behind is it, and which server answers how fast."""
    if "error" in st:
        return _broken("radius", "RADIUS accounting", st)
    servers = st.get("servers") or []
    depth = st.get("spool_depth", 0) or 0
    age = st.get("oldest_age", 0.0) or 0.0
    down = [s for s in servers if s.get("state") == "down"]
    active = next((s for s in servers if s.get("active")), None)
    if servers and len(down) == len(servers):
        level, state = "bad", "no server answers"
    elif depth and age >= RADIUS_LATE_S:
        level, state = "bad", "behind"
    elif active is not None and active.get("state") == "down":
        level, state = "warn", "failing over"
    elif down or (depth and age >= RADIUS_BEHIND_S):
        level, state = "warn", "behind" if depth and age >= RADIUS_BEHIND_S else "a server is down"
    else:
        level, state = "ok", "delivering"
    age_level = ("bad" if age >= RADIUS_LATE_S else "warn" if age >= RADIUS_BEHIND_S else "") if depth else ""
    figures = [
        _figure("Spool depth", depth, "warn" if depth and age_level else "",
                "requests waiting", "radius-depth"),
        _figure("Oldest unsent", hhmmss(int(age * 1000)) if depth else "–", age_level,
                "age", "radius-age"),
        _figure("Retransmissions", st.get("retransmissions", 0), "", "in all"),
        _figure("In flight", st.get("in_flight", 0), "", f"{st.get('open_legs', 0)} open legs"),
        _figure("Answered", st.get("answered", 0), "", f"of {st.get('sent', 0)} sent"),
    ]
    rows = []
    for srv in servers:
        state_s = srv.get("state", "unknown")
        pill = {"up": "on", "down": "off"}.get(state_s, "warn")
        rtt = srv.get("rtt_ms")
        errors = srv.get("send_errors", 0)
        rows.append(
            "<tr>"
            + _td("Server", esc(srv.get("address", "")) + (" <b>(active)</b>" if srv.get("active") else ""))
            + _td("State", f'<span class="pill {pill}">{esc(state_s)}</span>')
            + _td("Round trip", "–" if rtt is None else f"{rtt:.1f} ms")
            + _td("Answered", f"{srv.get('answered', 0)} / {srv.get('sent', 0)}")
            + _td("Retrans.", esc(srv.get("retransmissions", 0)))
            + _td("Send errors", esc(errors), "cause" if errors else "")
            + "</tr>"
        )
    table = (
        _table(("Server", "State", "Round trip", "Answered", "Retrans.", "Send errors"),
               "".join(rows), cls="grid stack servers", tbody_id="radius-servers")
        if rows else '<p class="muted">No server configured.</p>'
    )
    subtitle = f"interim every {st.get('interim_interval', '?')} s"
    return _output_card("radius", "RADIUS accounting", subtitle, level, state, figures, table)


def _syslog_card(st: dict) -> str:
    """Syslog: connected or not, stalled, how much waits, what was lost."""
    if "error" in st:
        return _broken("syslog", "Syslog", st)
    queued = st.get("queued", 0) or 0
    dropped = st.get("dropped", 0) or 0
    stalled = st.get("stalled") or ""
    error = st.get("last_error") or ""
    connected = bool(st.get("connected"))
    if not connected:
        level, state = "bad", "not connected"
    elif stalled:
        level, state = "bad", "stalled"
    elif dropped or error:
        level, state = "warn", "lost lines" if dropped else "errors"
    else:
        level, state = "ok", "delivering"
    buffer = st.get("buffer") or 0
    figures = [
        _figure("Connected", "yes" if connected else "no", "" if connected else "bad",
                "", "syslog-connected"),
        _figure("Queued", queued, "warn" if buffer and queued > buffer // 10 else "",
                f"of {buffer} kept" if buffer else "", "syslog-queued"),
        _figure("Dropped", dropped, "bad" if dropped else "", "never sent", "syslog-dropped"),
        _figure("Sent", st.get("sent", 0), "", f"{st.get('resent', 0)} resent"),
    ]
    extra = ""
    if stalled or error:
        text = stalled or error
        extra = f'<p class="problem" id="syslog-problem">{esc(text)}</p>'
    fmt = st.get("format", "")
    framing = f", {st['framing']}" if st.get("framing") else ""
    subtitle = f"{st.get('target', '')} · {fmt}{framing} · {st.get('facility', '')}"
    return _output_card("syslog", "Syslog", subtitle, level, state, figures, extra)


def _outputs(outputs: dict) -> str:
    cards = []
    for name, st in outputs.items():
        if name == "radius":
            cards.append(_radius_card(st))
        elif name == "syslog":
            cards.append(_syslog_card(st))
        else:
            cards.append(_status_table(name, st))
    return "".join(cards)


def dashboard(
    *,
    clocks,
    now,
    gateways,
    configured,
    open_calls,
    stats,
    since,
    hours,
    outputs,
) -> str:
    """`stats`: CallStats per gateway and hour of the last `hours` hours."""
    by_gw = defaultdict(list)
    for st in stats:
        by_gw[st.gateway].append(st)
    open_by_gw = defaultdict(int)
    for c in open_calls or ():
        open_by_gw[c.gateway] += 1
    states = {g.key: g for g in gateways}
    keys = sorted(set(states) | set(configured))
    online = sum(1 for g in gateways if g.online)
    attempts, answered, asr, acd = _asr_acd(stats)

    cards = f"""
<div class="cards">
  <div class="card stat"><span>Gateways online</span><b id="online">{online}</b><small>of {len(keys)}</small></div>
  <div class="card stat"><span>Open calls</span><b id="open">{"–" if open_calls is None else len(open_calls)}</b><small>now</small></div>
  <div class="card stat"><span>Calls</span><b>{sum(st.calls for st in stats)}</b><small>last {hours} h</small></div>
  <div class="card stat"><span>ASR</span><b>{asr}</b><small>{answered} of {attempts} attempts</small></div>
  <div class="card stat"><span>ACD</span><b>{acd}</b><small>per answered call</small></div>
</div>"""
    rows = []
    for k in keys:
        g = states.get(k)
        a, n, g_asr, g_acd = _asr_acd(by_gw.get(k, ()))
        if g is None:
            status, peer, login, heard, ports, skew = (
                '<span class="pill off">never seen</span>',
                "",
                "",
                "",
                "",
                "",
            )
        else:
            status = (
                '<span class="pill on">online</span>'
                if g.online
                else '<span class="pill off">offline</span>'
            )
            peer, login, heard = (
                esc(g.peer),
                esc(clocks.datetime(g.login)),
                esc(clocks.datetime(g.last_heard)),
            )
            ports = f"{g.fxs}/{g.fxo}/{g.isdn}"
            skew = f"{g.skew_ms / 1000:+.1f} s" if g.skew_ms else "0"
        rows.append(
            "<tr>"
            + _td("Gateway", f'<a href="/gateways/{esc(k)}/events">{esc(k)}</a>')
            + _td("Status", status)
            + _td("Peer", peer)
            + _td("Last login", login)
            + _td("Last heard", heard)
            + _td("FXS/FXO/ISDN", ports)
            + _td("Clock skew", skew)
            + _td("Open", str(open_by_gw.get(k, 0)))
            + _td(f"Calls {hours} h", str(sum(st.calls for st in by_gw.get(k, ()))))
            + _td("ASR", g_asr)
            + _td("ACD", g_acd)
            + _td("", f'<a href="{link("/report", gateway=k)}">report</a> · <a href="{link("/log", gateway=k)}">log</a>', "links")
            + "</tr>"
        )
    if not rows:
        rows.append(
            '<tr class="empty"><td colspan="12">No gateways configured or seen yet.</td></tr>'
        )
    gw_table = _table(
        (
            "Gateway",
            "Status",
            "Peer",
            "Last login",
            "Last heard",
            "FXS/FXO/ISDN",
            "Clock skew",
            "Open",
            f"Calls {hours} h",
            "ASR",
            "ACD",
            "",
        ),
        "".join(rows),
        cls="grid stack gateways",
        tbody_id="gateways",
    )
    if open_calls:
        oc = "".join(
            "<tr>"
            + _td("Gateway", esc(c.gateway))
            + _td("Call-Ref", esc(c.ref))
            + _td("Port", esc("" if c.port is None else c.port))
            + _td("Begin", esc(clocks.datetime(c.begin)))
            + _td("Age", hhmmss(now - c.begin))
            + "</tr>"
            for c in open_calls[:50]
        )
        open_html = _table(
            ("Gateway", "Call-Ref", "Port", "Begin", "Age"), oc,
            cls="grid stack", tbody_id="open-calls",
        )
        if len(open_calls) > 50:
            open_html += f'<p class="muted">and {len(open_calls) - 50} more</p>'
    elif open_calls is None:
        open_html = '<p class="muted">Open calls are not available.</p>'
    else:
        open_html = '<p class="muted">No call in progress.</p>'
    outs = _outputs(outputs)
    outs_html = f'<h2>Outputs</h2><div class="outputs">{outs}</div>' if outs else ""
    return f"""
<h1>Dashboard <small>{esc(clocks.datetime(now))}</small></h1>
{cards}
<h2>Gateways</h2>
{gw_table}
<div class="two">
  <section class="card"><h2>Calls per hour</h2>{_chart(stats, since, hours, clocks)}</section>
  <section class="card"><h2>Open calls</h2>{open_html}</section>
</div>
{outs_html}"""
