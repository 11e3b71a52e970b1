/* jobwire dashboard: live updates. One EventSource on /ui/events; each "change" event (the
   server polls for them once a second) becomes a "jobwire-change" event on <body>, which the page's htmx
   parts listen for (hx-trigger="jobwire-change from:body") to fetch themselves again. */
(function () {
  "use strict";
  if (!window.EventSource) { return; }
  var source = new EventSource("/ui/events");
  source.addEventListener("change", function () {
    document.body.dispatchEvent(new CustomEvent("jobwire-change"));
  });
  source.addEventListener("open", function () { document.body.classList.add("live-on"); });
  source.addEventListener("error", function () { document.body.classList.remove("live-on"); });
}());
