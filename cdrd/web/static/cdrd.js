// cdrd pages: live updates over server-sent events; no framework, no CDN.
(function () {
  "use strict";
  var MAX_ROWS = 500;

  // the column names, as the server's rows carry them (the phone's cards show them)
  var LABELS = ["Time", "Call-Ref", "#", "Event", "Dialed", "Caller-ID", "Info", "P-Port"];

  function cell(text, label, cls) {
    var td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "" : String(text);
    td.dataset.label = label;
    if (cls) td.className = cls;
    return td;
  }

  function link(td, href) {
    var a = document.createElement("a");
    a.href = href;
    a.textContent = td.textContent;
    td.textContent = "";
    td.appendChild(a);
  }

  function eventRow(ev, withGateway) {
    var tr = document.createElement("tr");
    tr.dataset.id = ev.id;
    tr.className = "new";
    [ev.time, ev.ref, ev.port, ev.type, ev.digits, ev.cli, ev.info, ev.pport].forEach(function (v, i) {
      var td = cell(v, LABELS[i], i === 3 ? "ev-type " + String(v).toLowerCase() : "");
      // the call ref opens its call, a number its calls (as the server's rows)
      if (i === 1 && ev.call) link(td, "/call?id=" + encodeURIComponent(ev.call));
      if ((i === 4 || i === 5) && td.textContent) link(td, "/report?number=" + encodeURIComponent(td.textContent));
      tr.appendChild(td);
    });
    if (withGateway) {
      var td = cell("", "Gateway", "");
      var a = document.createElement("a");
      a.href = "/gateways/" + encodeURIComponent(ev.gateway) + "/events";
      a.textContent = ev.gateway;
      td.appendChild(a);
      tr.insertBefore(td, tr.children[1]);
    }
    return tr;
  }

  function setPill(pill, state) {
    if (!pill) return;
    pill.textContent = state;
    pill.className = "pill " + (state === "online" ? "on" : state === "flooding" ? "warn" : "off");
  }

  function live() {
    var holder = document.getElementById("stream");
    var body = document.getElementById("events");
    var state = document.getElementById("live");
    if (!holder || !body || !holder.dataset.url || !window.EventSource) return;
    var all = !holder.dataset.gateway;
    var url = holder.dataset.url + "?after=" + encodeURIComponent(holder.dataset.after || "0");
    var source = new EventSource(url);
    function show(text, cls) { if (state) { state.textContent = text; state.className = "live " + cls; } }
    source.onopen = function () { show("live", "on"); };
    source.onerror = function () {
      // a refused stream (400, 401, not an event stream) is final for EventSource
      if (source.readyState === EventSource.CLOSED) show("live updates stopped: reload the page", "off");
      else show("reconnecting…", "connecting");
    };
    source.addEventListener("event", function (msg) {
      var ev = JSON.parse(msg.data);
      // a gateway that sends is online, whatever the page said when it loaded
      var pill = document.querySelector("#gw-state-box .pill");
      if (pill && pill.textContent !== "flooding") setPill(pill, "online");
      if (body.querySelector('tr[data-id="' + CSS.escape(String(ev.id)) + '"]')) return;
      var empty = body.querySelector("tr.empty");
      if (empty) empty.remove();
      body.insertBefore(eventRow(ev, all), body.firstChild);
      while (body.rows.length > MAX_ROWS) body.deleteRow(body.rows.length - 1);
    });
  }

  // the dashboard: each gateway's state, bad packets, restarts and calls as they happen
  var ONLINE = { "Login": 1, "Re-Login": 1 };
  var OFFLINE = { "Logout": 1, "Gateway Disconnect": 1, "Idle Timeout": 1, "Relogin Kickout": 1 };

  function dashboard() {
    var holder = document.getElementById("dashboard-stream");
    var table = document.getElementById("gateways");
    if (!holder || !table || !holder.dataset.url || !window.EventSource) return;
    function rowsOf(gateway) {
      // events name a key (8200_000C2A020082), log entries a gw id (8200)
      return Array.prototype.filter.call(table.rows, function (tr) {
        var key = tr.dataset.id || "";
        return key === gateway || key.split("_")[0] === gateway;
      });
    }
    function bump(tr, cls, n) {
      var td = tr.querySelector("td." + cls);
      if (!td) return;
      var target = td.querySelector("a") || td;
      target.textContent = String((parseInt(target.textContent, 10) || 0) + (n || 1));
      td.classList.add("changed");
    }
    function recount() {
      var online = document.getElementById("online");
      if (online) online.textContent = String(table.querySelectorAll("td.state .pill.on, td.state .pill.warn").length + hiddenOnline);
    }
    var shownOnline = table.querySelectorAll("td.state .pill.on, td.state .pill.warn").length;
    var onlineBox = document.getElementById("online");
    var hiddenOnline = onlineBox ? (parseInt(onlineBox.textContent, 10) || 0) - shownOnline : 0;
    var source = new EventSource(holder.dataset.url);
    source.addEventListener("heard", function (msg) {
      var m = JSON.parse(msg.data);
      rowsOf(m.gateway).forEach(function (tr) {
        var pill = tr.querySelector("td.state .pill");
        if (pill && pill.textContent !== "flooding") setPill(pill, "online");
        var heard = tr.querySelector("td.heard");
        if (heard) heard.textContent = m.time;
      });
      recount();
    });
    source.addEventListener("log", function (msg) {
      var m = JSON.parse(msg.data);
      rowsOf(m.gateway).forEach(function (tr) {
        var pill = tr.querySelector("td.state .pill");
        if (ONLINE[m.event]) setPill(pill, "online");
        else if (OFFLINE[m.event]) setPill(pill, "offline");
        else if (m.event === "Bad Packet") bump(tr, "bad-packets", m.count);
        else if (m.event === "Gateway Restart") bump(tr, "restarts", m.count);
      });
      recount();
    });
    source.addEventListener("call", function (msg) {
      var m = JSON.parse(msg.data);
      rowsOf(m.gateway).forEach(function (tr) { bump(tr, "calls"); });
      var calls = document.querySelector("#card-calls b");
      if (calls) calls.textContent = String((parseInt(calls.textContent, 10) || 0) + 1);
    });
  }

  function switcher() {
    var form = document.getElementById("switch");
    var select = document.getElementById("key");
    if (!form || !select) return;
    select.addEventListener("change", function () {
      window.location.href = select.value ? "/gateways/" + encodeURIComponent(select.value) + "/events" : "/live";
    });
  }

  function searchOnChange() {
    // the report's gateway selector searches at once, as in the seed's screen
    var form = document.querySelector("form.search");
    var select = form && form.querySelector("select[name=gateway]");
    if (select) select.addEventListener("change", function () { form.submit(); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    live();
    dashboard();
    switcher();
    searchOnChange();
  });
})();
