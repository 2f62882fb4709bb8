// aiotask dashboard: confirm dialogs for actions, and live updates over server-sent events.
// A change re-renders the page's live fragment on the server (escaped there), never here.
(function () {
  "use strict";
  document.addEventListener("submit", function (e) {
    var message = e.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) { e.preventDefault(); }
  });
  var live = document.getElementById("live");
  var status = document.getElementById("live-status");
  if (!live || !window.EventSource) { return; }
  var base = document.body.getAttribute("data-base") || "";
  var partial = live.getAttribute("data-partial");
  var watch = live.getAttribute("data-watch") || "";
  var timer = null;
  var busy = false;
  // A form in the live fragment (the task search) that the user is filling in is not replaced
  // under them: the refresh waits until the field loses focus and is back to what was rendered.
  function editing() {
    var fields = live.querySelectorAll("input, select, textarea");
    for (var i = 0; i < fields.length; i++) {
      var f = fields[i];
      if (f === document.activeElement) { return true; }
      if (f.type === "checkbox" || f.type === "radio") {
        if (f.checked !== f.defaultChecked) { return true; }
      } else if (f.tagName === "SELECT") {
        var shown = 0;  // without a `selected` attribute the first option is the rendered one
        for (var j = 0; j < f.options.length; j++) {
          if (f.options[j].defaultSelected) { shown = j; }
        }
        if (f.selectedIndex !== shown) { return true; }
      } else if (f.value !== f.defaultValue) { return true; }
    }
    return false;
  }
  function refresh() {
    timer = null;
    if (busy || editing()) { schedule(); return; }
    busy = true;
    fetch(partial, { headers: { "Accept": "text/html" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) { if (html !== null) { live.innerHTML = html; } })
      .catch(function () {})
      .then(function () { busy = false; });
  }
  function schedule() { if (timer === null) { timer = setTimeout(refresh, 300); } }
  var source = new EventSource(base + "/api/events");
  source.onopen = function () {
    if (status) { status.className = "live on"; }
    // changes between the page's render and this (re)connection were not streamed: catch up
    if (partial) { schedule(); }
  };
  source.onerror = function () { if (status) { status.className = "live off"; } };
  source.onmessage = function (event) {
    if (!partial) { return; }
    var change;
    try { change = JSON.parse(event.data); } catch (err) { return; }
    if (watch && watch !== "*" && change.id !== watch && change.root_id !== watch &&
        change.group_id !== watch) { return; }
    schedule();
  };
})();
