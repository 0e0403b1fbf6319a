// pogo-vault audit console: the live view. Follows the vault's WatchAuditEvents through
// the console's /live/events (server-sent events) and adds each event at the top of the
// table. Every value is set as text (textContent), never as markup.
(function () {
  "use strict";
  var state = document.getElementById("live-state");
  var table = document.getElementById("live");
  if (!state || !table || !window.EventSource) { return; }
  var body = table.tBodies[0];
  var seen = {};
  Array.prototype.forEach.call(body.rows, function (r) { seen[r.getAttribute("data-seq")] = true; });
  var source = new EventSource("/live/events?from=" + encodeURIComponent(state.getAttribute("data-from")));
  function cell(tr, text, view) {
    var td = document.createElement("td");
    if (view && text) {
      var a = document.createElement("a");
      a.href = "/" + view + "?id=" + encodeURIComponent(text);
      a.textContent = text;
      td.appendChild(a);
    } else {
      td.textContent = text;
    }
    tr.appendChild(td);
    return td;
  }
  source.addEventListener("open", function () { state.textContent = "Following the log: new events appear at the top."; });
  source.addEventListener("error", function () {
    state.textContent = source.readyState === EventSource.CLOSED
      ? "Stopped: the console stopped or the session ended. Reload the page (or log in again)."
      : "Connection to the console lost; reconnecting…";
  });
  source.addEventListener("failed", function (m) { state.textContent = "The vault's stream ended (" + m.data + "); reconnecting…"; });
  source.addEventListener("ended", function (m) {
    source.close();
    state.textContent = "The vault refused to stream (" + m.data + "). Close other live views, then reload.";
  });
  source.addEventListener("audit", function (m) {
    var e = JSON.parse(m.data);
    var seq = String(e.sequence);
    if (seen[seq]) { return; }
    seen[seq] = true;
    var tr = document.createElement("tr");
    tr.setAttribute("data-seq", seq);
    tr.className = e.outcome;
    cell(tr, seq);
    cell(tr, String(e.time).replace("T", " ").replace(/\.\d+Z$/, "Z"));
    cell(tr, e.caller, "caller");
    cell(tr, e.action);
    cell(tr, e.tenant_id, "tenant");
    cell(tr, e.outcome);
    cell(tr, e.detail).className = "detail";
    cell(tr, e.peer);
    // In sequence order, newest at the top: a replayed older event goes below newer ones.
    var before = null;
    for (var i = 0; i < body.rows.length; i++) {
      if (Number(body.rows[i].getAttribute("data-seq")) < e.sequence) { before = body.rows[i]; break; }
    }
    body.insertBefore(tr, before);
    var empty = table.parentNode.querySelector("p.empty");
    if (empty) { empty.parentNode.removeChild(empty); }
    while (body.rows.length > 500) {
      delete seen[body.rows[body.rows.length - 1].getAttribute("data-seq")];
      body.deleteRow(-1);
    }
  });
})();
