// The Usage page's chart: cost (or tokens) per day, a line per team, model, endpoint or
// key. x is in Unix seconds, one point per day of the filter's range (zeros included),
// and the range is fixed to those days, never derived from the data: uPlot pads a
// single point's range by a day in milliseconds, which on a seconds scale is 1000 days.
// The days are the usage time zone's (the one budgets count in), so their labels are
// printed in that zone, not the browser's: a UTC day is not the evening before in New York.
(function () {
  "use strict";
  const chart = JSON.parse(document.getElementById("chart-data").textContent);
  const box = document.getElementById("chart");
  const COLOURS = ["#2457c5", "#2f7d4f", "#c0392b", "#c08a00", "#7b3fb5", "#0f8a8a", "#b5467b", "#5f6b7a", "#9aa1ab"];
  const day = (seconds) => new Date(seconds * 1000).toLocaleDateString([], {
    timeZone: chart.zone, year: "numeric", month: "short", day: "numeric",
  });
  const dayShort = (seconds) => new Date(seconds * 1000).toLocaleDateString([], {
    timeZone: chart.zone, month: "short", day: "numeric",
  });
  const dollars = chart.metric === "cost";
  const amount = (v) => (v == null ? "—" : dollars ? `$${v.toFixed(6)}` : Math.round(v).toLocaleString());
  const x = chart.x;
  const half = 43200;  // half a day each side, so the first and last days are not on the edge
  const range = x.length ? [x[0] - half, x[x.length - 1] + half] : [0, 1];
  box.dataset.series = JSON.stringify(chart.series.map((s) => s.label));
  if (!chart.series.length) {
    box.innerHTML = '<p class="muted">Nothing used in these days.</p>';
    return;
  }
  new uPlot({
    width: box.clientWidth || 1000,
    height: 240,
    scales: { x: { time: true, range: () => range } },
    // Ticks at the usage zone's midnights, whole days apart (never hours: a point is a day).
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), chart.zone),
    axes: [
      {
        incrs: [1, 2, 7, 14, 30, 91, 365].map((days) => days * 86400),
        space: 80,
        // The first tick carries the year. The full dates are kept on the box too
        // (data-x-labels): the canvas cannot be read back as text.
        values: (u, splits) => {
          box.dataset.xLabels = JSON.stringify(splits.map(day));
          box.dataset.xTicks = JSON.stringify(splits);
          return splits.map((s, i) => (i === 0 ? day(s) : dayShort(s)));
        },
      },
      { label: dollars ? "US $ per day" : "tokens per day", size: 70, values: (u, vals) => vals.map((v) => (dollars ? `$${v}` : v.toLocaleString())) },
    ],
    series: [
      { label: "Day", value: (u, v) => (v == null ? "—" : day(v)) },
      ...chart.series.map((s, i) => ({
        label: s.label,
        stroke: COLOURS[i % COLOURS.length],
        width: 2,
        points: { show: true, size: 6 },
        value: (u, v) => amount(v),
      })),
    ],
    hooks: { draw: [() => { box.dataset.drawn = "1"; }] },
  }, [x, ...chart.series.map((s) => s.values)], box);
})();
