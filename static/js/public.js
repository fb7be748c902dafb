// Public pages: draws the server-built Plotly figures, and keeps htmx filter URLs clean.
(function () {
  "use strict";

  function modelUrl(point) {
    var data = point && point.customdata;
    if (Array.isArray(data)) {
      return data[0] === "model" ? "/models/" + data[1] + "/" : null;
    }
    return typeof data === "string" && data.indexOf("/") > 0 ? "/models/" + data + "/" : null;
  }

  function render(root) {
    if (!window.Plotly) return;
    root.querySelectorAll("[data-figure]").forEach(function (el) {
      var source = document.getElementById(el.dataset.figure);
      if (!source || el.dataset.rendered) return;
      var figure = JSON.parse(source.textContent);
      var meta = (figure.layout && figure.layout.meta) || {};
      // A lineage graph: wide enough for its labels, panned by dragging, zoomed by scrolling.
      if (meta.min_width) el.style.minWidth = meta.min_width + "px";
      window.Plotly.newPlot(el, figure.data || [], figure.layout || {}, {
        responsive: true,
        displaylogo: false,
        scrollZoom: Boolean(meta.min_width),
      }).then(function () {
        el.dataset.rendered = "1";
        el.on("plotly_click", function (event) {
          var url = modelUrl(event.points && event.points[0]);
          if (url) window.location.href = url;
        });
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    render(document);
    document.querySelectorAll("form.autosubmit").forEach(function (form) {
      form.addEventListener("change", function () { form.submit(); });
    });
  });

  document.addEventListener("htmx:afterSettle", function (event) {
    render(event.detail.elt || document);
  });

  // Empty inputs (a cleared size bound, an empty search) would clutter the permalink; a new
  // suite makes the old version meaningless, so it is dropped and the server picks the latest.
  document.addEventListener("htmx:configRequest", function (event) {
    var data = event.detail.formData;
    if (!data) return;
    Array.from(new Set(data.keys())).forEach(function (key) {
      if (data.getAll(key).every(function (value) { return value === ""; })) data.delete(key);
    });
    var trigger = event.detail.triggeringEvent && event.detail.triggeringEvent.target;
    if (trigger && trigger.id === "f-suite") data.delete("version");
  });
})();
