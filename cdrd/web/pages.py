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
ATTEMPTS = {"Call out", "Call out failed", "Call in", "Call in reject"}


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
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    tid = f' id="{tbody_id}"' if tbody_id else ""
    return (
        f'<div class="scroll"><table class="{cls}"><thead><tr>{th}</tr></thead>'
        f"<tbody{tid}>{rows_html}</tbody></table></div>"
    )


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
    body = []
    for cells in rows:
        tds = []
        for col, value in zip(columns, cells, strict=True):
            cls = {
                "Notation": "notation",
                "Cause": "cause",
                "Dialed": "num",
                "Caller ID": "num",
                "PSTN Caller ID": "num",
                "PSTN Dial": "num",
            }.get(col, "")
            if col == "Notation":
                kind = value.lower().replace(" ", "-").replace("/", "-")
                tds.append(
                    f'<td><span class="tag {esc(kind)}">{esc(value)}</span></td>'
                )
            else:
                tds.append(
                    f'<td class="{cls}">{esc(value)}</td>'
                    if cls
                    else f"<td>{esc(value)}</td>"
                )
        body.append("<tr>" + "".join(tds) + "</tr>")
    if not body:
        body.append(
            f'<tr class="empty"><td colspan="{len(columns)}">No records for this search.</td></tr>'
        )
    head = columns
    if s.gateway is None and rows:
        # every gateway at once: say whose call each row is
        head = columns + ("Gateway",)
        body = [
            b.replace(
                "</tr>",
                f'<td><a href="{link("/report", **{**params, "gateway": g})}">{esc(g)}</a></td></tr>',
            )
            for b, g in zip(body, gateways, strict=True)
        ]
    table = _table(head, "".join(body), tbody_id="records")
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
        f'<td class="ev-type {esc(str(v)).lower()}">{esc(v)}</td>'
        if i == 3
        else f"<td>{esc(v)}</td>"
        for i, v in enumerate(cells)
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
{_table(EVENT_COLUMNS, body, cls="grid events", tbody_id="events")}
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
            f"<tr><td>{esc(clocks.datetime(e.time))}</td><td>{esc(e.gateway)}</td><td>{esc(e.mac)}</td>"
            f'<td>{esc(e.peer)}</td><td><span class="tag log {kind}">{esc(e.event)}</span></td>'
            f'<td class="detail">{esc(e.detail)}</td></tr>'
        )
    if not rows:
        rows.append(
            '<tr class="empty"><td colspan="6">No log entries for this search.</td></tr>'
        )
    table = _table(
        ("Time", "Gateway", "MAC", "Peer", "Event", "Detail"),
        "".join(rows),
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
        status = esc(c.status) if c.status else "answered"
        rows.append(
            f"<tr><td>{s.offset + i + 1}</td><td>{esc(clocks.datetime(c.start))}</td>"
            f"<td>{c.ringing / 1000:.3f}</td><td>{esc(duration)}</td><td>{status}</td>"
            f'<td class="num">{esc(c.cui)}</td><td class="num">{esc(c.dialled)}</td><td class="num">{esc(c.cli)}</td>'
            f'<td>{esc(c.gateway)}</td><td class="line"><code>{esc(c.line)}</code></td></tr>'
        )
    if not rows:
        rows.append(
            '<tr class="empty"><td colspan="10">No CDRs for this search.</td></tr>'
        )
    table = _table(
        (
            "#",
            "Start",
            "Ringing s",
            "Duration",
            "Status",
            "CUI",
            "Dialled",
            "CLI",
            "Gateway",
            "FireBrick line",
        ),
        "".join(rows),
        tbody_id="cdrs",
    )
    actions = (
        f'<div class="counts"><span>CDRs <b id="total">{total}</b></span>'
        f'<a class="btn" id="csv" href="{link("/cdrs.csv", **params)}">Export CSV</a>'
        f'<a class="btn ghost" href="{link("/api/cdrs", **params)}">JSON</a></div>'
    )
    return f"<h1>Billing CDRs</h1>{form}{actions}{table}{_pager('/cdrs', params, s.offset, s.limit, len(cdrs), total)}"


# -- the dashboard -------------------------------------------------------------------


def _asr_acd(records) -> tuple[int, int, str, str]:
    attempts = [r for r in records if r.notation in ATTEMPTS]
    answered = [r for r in attempts if r.connect is not None]
    asr = f"{100 * len(answered) / len(attempts):.0f}%" if attempts else "–"
    talk = [r.talk or 0 for r in answered]
    acd = hhmmss(sum(talk) // len(talk)) if talk else "–"
    return len(attempts), len(answered), asr, acd


def _chart(records, since: int, hours: int, clocks) -> str:
    answered = [0] * hours
    other = [0] * hours
    for r in records:
        h = (r.begin - since) // 3_600_000
        if 0 <= h < hours:
            if r.connect is not None:
                answered[h] += 1
            else:
                other[h] += 1
    top = max([a + o for a, o in zip(answered, other, strict=True)] + [2])
    top += top % 2  # even, so the middle grid line is a whole number of calls
    W, H, pad, bottom = 720, 180, 28, 22
    bw = (W - pad) / hours
    parts = [
        f'<svg class="chart" viewBox="0 0 {W} {H + bottom}" role="img" aria-label="calls per hour, last {hours} hours">'
    ]
    for frac in (0, 0.5, 1):
        y = H - frac * (H - 10)
        parts.append(
            f'<line x1="{pad}" x2="{W}" y1="{y:.1f}" y2="{y:.1f}" class="grid-line"/>'
        )
        parts.append(
            f'<text x="{pad - 4}" y="{y + 4:.1f}" class="axis" text-anchor="end">{int(top * frac)}</text>'
        )
    for h in range(hours):
        x = pad + h * bw + 2
        a_h = answered[h] / top * (H - 10)
        o_h = other[h] / top * (H - 10)
        label = clocks.time(since + h * 3_600_000)[:5]
        tip = f"{label}: {answered[h] + other[h]} calls, {answered[h]} answered"
        parts.append(f"<g><title>{esc(tip)}</title>")
        parts.append(
            f'<rect class="bar-other" x="{x:.1f}" y="{H - o_h - a_h:.1f}" width="{bw - 4:.1f}" height="{o_h:.1f}"/>'
        )
        parts.append(
            f'<rect class="bar-ans" x="{x:.1f}" y="{H - a_h:.1f}" width="{bw - 4:.1f}" height="{a_h:.1f}"/>'
        )
        parts.append("</g>")
        if h % 3 == 0:
            parts.append(
                f'<text x="{x + (bw - 4) / 2:.1f}" y="{H + 16}" class="axis" text-anchor="middle">{label}</text>'
            )
    parts.append("</svg>")
    legend = '<p class="legend"><span class="key ans"></span> answered <span class="key other"></span> not answered</p>'
    return "".join(parts) + legend


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
    rows = "".join(
        f"<tr><th>{esc(k)}</th><td>{_status_value(v)}</td></tr>"
        for k, v in sorted(status.items())
    )
    return f'<div class="card output"><h3>{esc(name)}</h3><table class="kv">{rows}</table></div>'


def dashboard(
    *,
    clocks,
    now,
    gateways,
    configured,
    open_calls,
    records,
    complete,
    since,
    hours,
    outputs,
) -> str:
    by_gw = defaultdict(list)
    for r in records:
        by_gw[r.gateway].append(r)
    open_by_gw = defaultdict(int)
    for c in open_calls or ():
        open_by_gw[c.gateway] += 1
    states = {g.key: g for g in gateways}
    keys = sorted(set(states) | set(configured))
    online = sum(1 for g in gateways if g.online)
    attempts, answered, asr, acd = _asr_acd(records)

    cards = f"""
<div class="cards">
  <div class="card stat"><span>Gateways online</span><b id="online">{online}</b><small>of {len(keys)}</small></div>
  <div class="card stat"><span>Open calls</span><b id="open">{"–" if open_calls is None else len(open_calls)}</b><small>now</small></div>
  <div class="card stat"><span>Calls</span><b>{len(records)}{"" if complete else "+"}</b><small>last {hours} h</small></div>
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
            f'<tr><td><a href="/gateways/{esc(k)}/events">{esc(k)}</a></td><td>{status}</td><td>{peer}</td>'
            f"<td>{login}</td><td>{heard}</td><td>{ports}</td><td>{skew}</td>"
            f"<td>{open_by_gw.get(k, 0)}</td><td>{len(by_gw.get(k, ()))}</td><td>{g_asr}</td><td>{g_acd}</td>"
            f'<td><a href="{link("/report", gateway=k)}">report</a> · <a href="{link("/log", gateway=k)}">log</a></td></tr>'
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
        tbody_id="gateways",
    )
    if open_calls:
        oc = "".join(
            f"<tr><td>{esc(c.gateway)}</td><td>{esc(c.ref)}</td><td>{esc('' if c.port is None else c.port)}</td>"
            f"<td>{esc(clocks.datetime(c.begin))}</td><td>{hhmmss(now - c.begin)}</td></tr>"
            for c in open_calls[:50]
        )
        open_html = _table(
            ("Gateway", "Call-Ref", "Port", "Begin", "Age"), oc, tbody_id="open-calls"
        )
        if len(open_calls) > 50:
            open_html += f'<p class="muted">and {len(open_calls) - 50} more</p>'
    elif open_calls is None:
        open_html = '<p class="muted">Open calls are not available.</p>'
    else:
        open_html = '<p class="muted">No call in progress.</p>'
    outs = "".join(_status_table(n, s) for n, s in outputs.items())
    outs_html = f'<h2>Outputs</h2><div class="outputs">{outs}</div>' if outs else ""
    note = (
        ""
        if complete
        else '<p class="muted">Busy day: figures are from the first records only.</p>'
    )
    return f"""
<h1>Dashboard <small>{esc(clocks.datetime(now))}</small></h1>
{cards}
<h2>Gateways</h2>
{gw_table}
<div class="two">
  <section class="card"><h2>Calls per hour</h2>{_chart(records, since, hours, clocks)}{note}</section>
  <section class="card"><h2>Open calls</h2>{open_html}</section>
</div>
{outs_html}"""
