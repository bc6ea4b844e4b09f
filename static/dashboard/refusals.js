// The per-minute refusals chart of the 429 history. Minutes without refusals are not
// in the query's answer; they are filled with 0 here so the line drops to the axis.
(function () {
  "use strict";
  const read = (id) => JSON.parse(document.getElementById(id).textContent);
  const points = new Map(read("chart-data").map(([t, n]) => [t, n]));
  const start = Math.floor(read("chart-start") / 60) * 60;
  const end = read("chart-end");
  const xs = [];
  const ys = [];
  for (let t = start; t <= end; t += 60) {
    xs.push(t);
    ys.push(points.get(t) || 0);
  }
  const box = document.getElementById("chart");
  new uPlot({
    width: box.clientWidth || 1000,
    height: 180,
    scales: { x: { time: true } },
    axes: [{}, { label: "429s/min", size: 50 }],
    series: [{}, { label: "refusals", stroke: "#c0392b", fill: "rgba(192,57,43,0.12)", width: 1.5 }],
  }, [xs, ys], box);
})();
