// Refreshes the state on a job's page until it is final (the page works without it: reload).
(function () {
  "use strict";
  var box = document.getElementById("job");
  if (!box || box.dataset.final === "yes") { return; }
  var url = box.dataset.statusUrl;
  var shown = document.getElementById("job-state").textContent;
  function look() {
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (s) {
        if (!s) { return; }
        if (s.state !== shown) { window.location.reload(); return; }
        if (!s.final) { window.setTimeout(look, 2000); }
      })
      .catch(function () { window.setTimeout(look, 5000); });
  }
  window.setTimeout(look, 2000);
}());
