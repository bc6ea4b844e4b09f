// The copy button next to a new key's secret (shown once).
(function () {
  "use strict";
  const button = document.getElementById("copy");
  if (!button) return;
  button.addEventListener("click", async () => {
    const input = document.getElementById(button.dataset.target);
    try {
      await navigator.clipboard.writeText(input.value);
    } catch (err) {
      // Clipboard API needs a secure context; plain-HTTP deployments fall back to a selection.
      input.select();
      document.execCommand("copy");
    }
    button.textContent = "Copied";
  });
})();

// The team's own rows of the live view, every few seconds: its keys' queues and 429s of
// the last minute, its jobs' places in the queue (GET /api/teams/<id>/now).
(function () {
  "use strict";
  const table = document.getElementById("team-now");
  if (!table) return;
  const state = document.getElementById("team-now-state");
  const jobs = document.getElementById("team-jobs");
  const EVERY_MS = 3000;

  function cell(row, text, numeric) {
    const td = row.insertCell();
    td.textContent = text;
    if (numeric) td.className = "num";
    return td;
  }

  function fill(body, rows, columns, empty) {
    body.replaceChildren();
    if (!rows.length) {
      const td = body.insertRow().insertCell();
      td.colSpan = columns;
      td.className = "muted";
      td.textContent = empty;
    }
    return body;
  }

  function render(now) {
    state.textContent = now.limiter_reachable ? "live" : "the limiter is not answering";
    state.dataset.state = now.limiter_reachable ? "live" : "down";
    const scopes = fill(table.tBodies[0], now.scopes, 7, "No request in the last minutes.");
    for (const s of now.scopes) {
      const row = scopes.insertRow();
      row.dataset.prefix = s.key_prefix;
      row.dataset.endpoint = s.endpoint;
      cell(row, s.key_prefix + "…" + (s.key_name ? " " + s.key_name : ""));
      cell(row, s.endpoint);
      cell(row, s.in_use.toFixed(1) + " / " + s.burst, true);
      cell(row, String(s.queued), true).className = "num queued";
      cell(row, s.longest_wait.toFixed(1), true);
      cell(row, s.leases + (s.max_concurrent ? " / " + s.max_concurrent : ""), true);
      const refused = (s.refused_last_minute.gateway || 0) + (s.refused_last_minute.upstream || 0);
      cell(row, String(refused), true).className = "num refused";
    }
    const body = fill(jobs.tBodies[0], now.jobs, 5, "No job queued or running.");
    for (const j of now.jobs) {
      const row = body.insertRow();
      row.dataset.job = j.job;
      cell(row, j.kind === "fine_tune" ? "fine-tune" : "batch");
      cell(row, j.job);
      cell(row, j.state);
      cell(row, j.position === null ? "—" : String(j.position), true).className = "num position";
      cell(row, j.since.replace("T", " ").slice(0, 19));
    }
  }

  async function poll() {
    try {
      const response = await fetch(table.dataset.url, { credentials: "same-origin" });
      if (response.ok) render(await response.json());
      else state.textContent = "unavailable (" + response.status + ")";
    } catch (err) {
      state.textContent = "unavailable";
    }
    setTimeout(poll, EVERY_MS);
  }
  poll();
})();
