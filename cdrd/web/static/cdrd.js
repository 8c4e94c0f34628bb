// cdrd pages: live events over server-sent events; no framework, no CDN.
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

  function eventRow(ev) {
    var tr = document.createElement("tr");
    tr.dataset.id = ev.id;
    tr.className = "new";
    [ev.time, ev.ref, ev.port, ev.type, ev.digits, ev.cli, ev.info, ev.pport].forEach(function (v, i) {
      tr.appendChild(cell(v, LABELS[i], i === 3 ? "ev-type " + String(v).toLowerCase() : ""));
    });
    return tr;
  }

  function live() {
    var holder = document.getElementById("stream");
    var body = document.getElementById("events");
    var state = document.getElementById("live");
    if (!holder || !body || !holder.dataset.url || !window.EventSource) return;
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
      if (body.querySelector('tr[data-id="' + CSS.escape(String(ev.id)) + '"]')) return;
      var empty = body.querySelector("tr.empty");
      if (empty) empty.remove();
      body.insertBefore(eventRow(ev), body.firstChild);
      while (body.rows.length > MAX_ROWS) body.deleteRow(body.rows.length - 1);
    });
  }

  function switcher() {
    var form = document.getElementById("switch");
    var select = document.getElementById("key");
    if (!form || !select) return;
    select.addEventListener("change", function () {
      window.location.href = "/gateways/" + encodeURIComponent(select.value) + "/events";
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
    switcher();
    searchOnChange();
  });
})();
