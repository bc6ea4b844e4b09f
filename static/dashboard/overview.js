// The live overview: limiter snapshots arrive over a websocket (ws/live/) and redraw
// the tables and charts. The page starts from the limits in the database, so it is
// never empty, and reconnects by itself with backoff after a server restart.
(function () {
  "use strict";

  const STALE_MS = 3000; // no snapshot for this long: the limiter is unreachable
  // The limiter pushes only while something changes; when idle the page asks it, which
  // is also how a silent limiter is told apart from a quiet one.
  const REFRESH_MS = 1500;
  const BACKOFF_MS = [500, 1000, 2000, 4000, 8000, 10000];
  const CLOSE_FORBIDDEN = 4403;

  let limits = JSON.parse(document.getElementById("db-limits").textContent);
  let snapshot = null;
  let jobs = null;  // fine-tune and batch slots, from the job poller
  let lastSnapshotAt = 0;
  let connectedAt = 0;
  let socket = null;
  let attempt = 0;
  const charts = new Map();

  const $ = (id) => document.getElementById(id);
  const esc = (value) => String(value ?? "").replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  })[c]);
  const num = (value, digits = 0) => (value == null ? "—" : Number(value).toFixed(digits));

  function setConnection(state, label) {
    const pill = $("conn");
    pill.dataset.state = state;
    pill.textContent = label;
    pill.className = "pill " + ({ live: "pill-ok", connecting: "pill-wait", reconnecting: "pill-wait" }[state] || "pill-bad");
  }

  function meter(inUse, burst) {
    const ratio = burst > 0 ? Math.min(1, inUse / burst) : 0;
    const cls = ratio >= 1 ? "full" : ratio >= 0.8 ? "warn" : "";
    return `<span class="meter ${cls}"><span style="width:${(ratio * 100).toFixed(0)}%"></span></span>`;
  }

  function scopeCells(scope) {
    const refused = scope.refused_last_minute || {};
    const paused = scope.paused_for > 0 ? ` <span class="paused">paused ${num(scope.paused_for, 1)} s</span>` : "";
    // A shadow limit records what it would refuse; a scope near its limit (the
    // SLUICE_NEAR_LIMIT_FRACTION of it over the last minute) is marked.
    const shadow = scope.shadow ? ` <span class="badge badge-shadow" data-shadow>shadow</span>` : "";
    const near = scope.near_limit ? ` <span class="badge badge-bad" data-near-limit>near limit</span>` : "";
    const shadowed = scope.shadow_refused_last_minute ? ` · <span class="shadowed">${scope.shadow_refused_last_minute} shadow</span>` : "";
    return `
      <td>${esc(scope.endpoint)}${paused}${shadow}${near}</td>
      <td class="num">${meter(scope.in_use, scope.burst)}${num(scope.in_use, 1)} / ${scope.burst} req</td>
      <td class="num">${scope.admitted_last_minute} / ${num(scope.limit_per_minute)} req/min <span class="muted small use">${num((scope.use_fraction || 0) * 100)}%</span></td>
      <td class="num">${scope.queued} req${scope.queued ? ` · oldest ${num(scope.longest_wait, 1)} s` : ""}</td>
      <td class="num">${scope.leases} / ${scope.max_concurrent ?? "∞"}</td>
      <td class="num">${refused.gateway || 0} gateway · ${refused.upstream || 0} upstream${shadowed}</td>`;
  }

  function limitCells(row) {
    return `
      <td>${esc(row.endpoint)}</td>
      <td class="num">${meter(0, row.burst)}0 / ${row.burst} req</td>
      <td class="num">0 / ${row.limit_per_minute} req/min</td>
      <td class="num">0 req</td>
      <td class="num">0 / ${row.max_concurrent ?? "∞"}</td>
      <td class="num">0 gateway · 0 upstream</td>`;
  }

  function renderAccounts(scopes) {
    const rows = [];
    for (const account of limits.accounts) {
      // Together limits each model on its own: one row per model in use, else the endpoint's limit.
      let first = true;
      for (const limit of account.limits.filter((l) => !l.model)) {
        const inUse = scopes.filter((s) => s.kind === "account" && s.id === account.id && s.endpoint === limit.endpoint);
        for (const scope of inUse.length ? inUse : [null]) {
          const name = first ? `<strong>${esc(account.name)}</strong><br><span class="muted small">profile ${esc(account.profile)}</span>` : "";
          const model = scope && scope.model ? `<br><code class="small">${esc(scope.model)}</code>` : "";
          rows.push(`<tr class="${first ? "group-start" : ""} ${scope ? "" : "idle"}"><td>${name}${model}</td>${scope ? scopeCells(scope) : limitCells(limit)}</tr>`);
          first = false;
        }
      }
    }
    $("accounts").tBodies[0].innerHTML = rows.join("") || `<tr><td colspan="7" class="muted">No upstream account.</td></tr>`;
  }

  function renderTeams(scopes) {
    const keyScopes = scopes.filter((s) => s.kind === "key");
    const teams = new Map(limits.teams.map((t) => [String(t.id), { ...t, scopes: [] }]));
    for (const scope of keyScopes) {
      const id = String(scope.team_id || scope.team);
      if (!teams.has(id)) teams.set(id, { id, name: scope.team, profile: "", paused: false, limits: [], scopes: [] });
      teams.get(id).scopes.push(scope);
    }
    const rows = [];
    for (const team of teams.values()) {
      const head = `<strong>${esc(team.name)}</strong>${team.paused ? ' <span class="paused">paused</span>' : ""}`;
      if (!team.scopes.length) {
        const chat = team.limits.find((l) => l.endpoint === "chat" && !l.model);
        const hint = chat ? `chat ${chat.limit_per_minute} req/min, burst ${chat.burst}` : "";
        rows.push(`<tr class="group-start idle"><td>${head}<br><span class="muted small">profile ${esc(team.profile)}</span></td>
          <td colspan="6" class="muted">idle · ${esc(hint)}</td></tr>`);
        continue;
      }
      team.scopes.sort((a, b) => (a.key_prefix + a.endpoint).localeCompare(b.key_prefix + b.endpoint));
      team.scopes.forEach((scope, i) => {
        rows.push(`<tr class="${i === 0 ? "group-start" : ""}"><td>${i === 0 ? head + "<br>" : ""}<code class="small">${esc(scope.key_prefix)}…</code></td>${scopeCells(scope)}</tr>`);
      });
    }
    $("teams").tBodies[0].innerHTML = rows.join("") || `<tr><td colspan="7" class="muted">No team yet.</td></tr>`;
  }

  // Fine-tune, batch and video slots per upstream account: who holds each, what waits behind.
  function renderJobs(accounts) {
    const body = $("jobs").tBodies[0];
    const rows = [];
    for (const account of Object.values(accounts || {})) {
      for (const [kind, label] of [["fine_tunes", "fine-tunes"], ["batches", "batches"], ["videos", "videos"]]) {
        const slots = account[kind];
        if (!slots) continue;
        const holders = slots.holders.map((h) => `${esc(h.team)} <code class="small">${esc(h.job)}</code> <span class="muted small">since ${esc(h.since.slice(11, 19))}</span>`).join("<br>");
        const waiting = slots.waiting.length
          ? `${slots.waiting.length} waiting, next: ${esc(slots.waiting[0].team)} <code class="small">${esc(slots.waiting[0].job)}</code>`
          : "none waiting";
        rows.push(`<tr><th>${esc(account.name)}<br><span class="muted small">${label}</span></th>` +
          `<td class="num">${slots.used} / ${slots.total ?? "∞"} slots</td><td class="small">${holders || "—"}<br><span class="muted">${waiting}</span></td></tr>`);
      }
    }
    body.innerHTML = rows.join("") || `<tr><td class="muted">— (the job queue has not reported)</td></tr>`;
  }

  // Together's headers as they came, and when: `at` is the limiter's Unix time in
  // seconds, shown in the browser's time zone.
  function renderHeaders(headers) {
    const rows = [];
    for (const [account, endpoints] of Object.entries(headers || {})) {
      for (const [endpoint, values] of Object.entries(endpoints)) {
        const { at, ...rest } = values;
        const list = Object.entries(rest).map(([k, v]) => `<code>${esc(k)}: ${esc(v)}</code>`).join("<br>");
        const when = at ? `<br><span class="muted small received" data-at="${esc(at)}">received ${esc(clock(Number(at)))}</span>` : "";
        rows.push(`<tr><th>${esc(account)}<br><span class="muted small">${esc(endpoint)}</span>${when}</th><td class="small">${list}</td></tr>`);
      }
    }
    $("headers").tBodies[0].innerHTML = rows.join("") || `<tr><td class="muted">— (none received yet)</td></tr>`;
  }

  // Together's limit per account and model: learned ceiling, where the pace came from,
  // the pace in use, 429s and 503s in the last minute, and a reset for those who may
  // (the page renders the reset form only for them).
  const SOURCES = { headers: "Together's headers", "429": "a Together 429", profile: "the profile" };

  function renderModels(models) {
    const canReset = $("ceiling-reset") !== null;
    const rows = (models || []).map((m) => {
      const learned = m.learned_per_minute == null ? "— (no headers yet)" : `${num(m.learned_per_minute, 1)} req/min`;
      const tokens = m.token_pace_per_minute == null ? "" : `<br><span class="muted small">${num(m.token_pace_per_minute)} tok/min</span>`;
      const headers = Object.entries(m.last_headers || {}).filter(([k]) => k !== "at")
        .map(([k, v]) => `<code>${esc(k)}: ${esc(v)}</code>`).join("<br>");
      return `<tr data-model="${esc(m.model)}" data-account="${esc(m.account)}">
        <td><strong>${esc(m.account_name)}</strong><br><code class="small">${esc(m.model)}</code></td>
        <td>${esc(m.endpoint)}</td>
        <td class="num">${learned}</td>
        <td class="source">${esc(SOURCES[m.source] || m.source)}</td>
        <td class="num pace">${num(m.pace_per_minute, 1)} req/min${tokens}</td>
        <td class="num">${num(m.cap_per_minute)} req/min</td>
        <td class="num">${m.upstream_429_last_minute} × 429 · ${m.upstream_503_last_minute} × 503</td>
        <td class="small">${headers || "—"}</td>
        <td>${canReset ? `<button type="button" class="reset" data-account="${esc(m.account)}" data-endpoint="${esc(m.endpoint)}" data-model="${esc(m.model)}">Reset</button>` : ""}</td>
      </tr>`;
    });
    $("models").tBodies[0].innerHTML = rows.join("") || `<tr><td colspan="9" class="muted">— (no model called yet)</td></tr>`;
  }

  // A reset posts the page's form (with its CSRF token); the limiter forgets what it
  // learned of that model and paces it at the profile's row again.
  $("models").addEventListener("click", (event) => {
    const button = event.target.closest("button.reset");
    if (!button) return;
    const form = $("ceiling-reset");
    for (const name of ["account", "endpoint", "model"]) form.elements[name].value = button.dataset[name];
    form.submit();
  });

  // Unix seconds as the browser's local date and time ("29/11/2026, 10:05:03" or the locale's own).
  const clock = (seconds) => new Date(seconds * 1000).toLocaleString([], {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
  const tick = (seconds) => new Date(seconds * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const day = (seconds) => new Date(seconds * 1000).toLocaleDateString([], { year: "numeric", month: "short", day: "numeric" });

  // The charts' x range: the hour up to the limiter's latest snapshot (its clock, not the
  // browser's, so a skewed laptop clock cannot push the points out of view). Fixed, never
  // derived from the data: uPlot pads a single point's range by 86,400,000 units (a day in
  // milliseconds), which on a seconds scale is 1000 days, and the first point fell out of view.
  let xRange = [0, 1];

  // One row per bucket of the hour, zeros where the limiter saw nothing (it keeps only
  // buckets with traffic), so the line falls to zero between bursts instead of bridging them.
  function series(rows, bucket, start, end) {
    const byStart = new Map(rows.map((r) => [r[0], r]));
    const data = [[], [], [], []];
    for (let t = Math.floor(start / bucket) * bucket; t <= end; t += bucket) {
      const row = byStart.get(t) || [t, 0, 0, 0];
      for (let i = 0; i < 4; i += 1) data[i].push(row[i]);
    }
    return data;
  }

  // Merged embeddings requests of the last minute: inputs per upstream request, and how
  // long callers waited to be merged (limiter/gateway/coalesce.py).
  function renderCoalescing(rows) {
    const html = (rows || []).map((r) =>
      `<tr><th>${esc(r.account)}<br><span class="muted small">${esc(r.model)}</span></th>` +
      `<td>${r.inputs_per_request}</td><td>${r.requests}</td><td>${r.callers}</td>` +
      `<td>${r.mean_wait_ms} ms</td><td>${r.longest_wait_ms} ms</td></tr>`).join("");
    $("coalescing").tBodies[0].innerHTML = html || `<tr><td class="muted" colspan="6">— (no merged request in the last minute)</td></tr>`;
  }

  // Each team's part of an account's model ceiling (limiter/authority/sharing.py): its
  // guaranteed share, its use lately, and whether it lends or borrows now.
  const PRIORITY = ["background", "standard", "critical"];
  function renderSharing(rows) {
    const pct = (f) => `${Math.round(f * 100)}%`;
    const html = (rows || []).map((r) =>
      `<tr data-holder="${esc(r.holder)}" data-state="${esc(r.state)}">` +
      `<th>${esc(r.account_name)}<br><span class="muted small">${esc(r.endpoint)} ${esc(r.model)}</span></th>` +
      `<td>${esc(r.team)}${r.key_prefix ? ` <code>${esc(r.key_prefix)}…</code>` : ""}</td>` +
      `<td>${PRIORITY[r.priority] || r.priority}</td><td>${r.weight}</td>` +
      `<td>${r.share ? pct(r.share) : "—"}</td><td>${pct(r.use)}</td><td>${r.waiting}</td>` +
      `<td><span class="badge ${r.state === "borrowing" ? "badge" : "badge-ok"}">${esc(r.state)}</span></td></tr>`).join("");
    $("sharing").tBodies[0].innerHTML = html || `<tr><td class="muted" colspan="8">— (no team served lately)</td></tr>`;
  }

  function renderCharts(history, at, bucket) {
    const box = $("charts");
    const endpoints = Object.keys(history || {}).sort();
    if (!endpoints.length) return;
    if (!charts.size) box.innerHTML = "";
    xRange = [at - 3600, at];
    for (const endpoint of endpoints) {
      const data = series(history[endpoint], bucket, xRange[0], xRange[1]);
      if (charts.has(endpoint)) {
        charts.get(endpoint).setData(data);
        continue;
      }
      const card = document.createElement("div");
      card.className = "chart-card";
      card.dataset.endpoint = endpoint;
      card.innerHTML = `<h3>${esc(endpoint)}</h3>`;
      box.appendChild(card);
      const plot = new uPlot({
        width: Math.max(340, card.clientWidth - 20),
        height: 170,
        scales: { x: { time: true, range: () => xRange } },
        axes: [
          {
            // Local times; the first tick carries the date. The labels are kept on the
            // card too (data-x-labels): the canvas cannot be read back as text.
            values: (u, splits) => {
              const labels = splits.map((s, i) => (i === 0 ? `${tick(s)}\n${day(s)}` : tick(s)));
              card.dataset.xLabels = JSON.stringify(labels);
              return labels;
            },
          },
          { label: `requests per ${bucket} s`, size: 50 },
        ],
        series: [
          { value: (u, v) => (v == null ? "—" : clock(v)) },
          { label: "admitted", stroke: "#2f7d4f", width: 2 },
          { label: "queued", stroke: "#c08a00", width: 2 },
          { label: "refused", stroke: "#c0392b", width: 2 },
        ],
      }, data, card);
      charts.set(endpoint, plot);
    }
  }

  function render() {
    const scopes = snapshot ? snapshot.scopes : [];
    renderAccounts(scopes);
    renderTeams(scopes);
    renderJobs(jobs);
    if (snapshot) {
      renderHeaders(snapshot.upstream_headers);
      renderModels(snapshot.models);
      renderCoalescing(snapshot.coalescing);
      renderSharing(snapshot.sharing);
      renderCharts(snapshot.history, snapshot.at, (snapshot.limiter || {}).history_bucket_seconds || 10);
      const l = snapshot.limiter || {};
      $("limiter-stats").textContent = l.decisions != null ? `· ${l.decisions} decisions · ${l.leases ?? 0} leases` : "";
    }
  }

  function checkStale() {
    const now = Date.now();
    const since = lastSnapshotAt || connectedAt;
    const stale = socket && socket.readyState === WebSocket.OPEN && since && now - since > STALE_MS;
    $("limiter-banner").hidden = !stale;
    if (lastSnapshotAt) $("updated").textContent = `${((now - lastSnapshotAt) / 1000).toFixed(1)} s ago`;
  }

  function refresh() {
    if (socket && socket.readyState === WebSocket.OPEN && Date.now() - lastSnapshotAt >= REFRESH_MS) {
      socket.send(JSON.stringify({ type: "refresh" }));
    }
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}/ws/live/`);
    setConnection(attempt ? "reconnecting" : "connecting", attempt ? "reconnecting…" : "connecting…");
    socket.onopen = () => {
      attempt = 0;
      connectedAt = Date.now();
      lastSnapshotAt = 0;
      setConnection("live", "live");
    };
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type === "limits") {
        limits = message.limits;
      } else if (message.type === "jobs") {
        jobs = message.accounts;
      } else if (message.type === "snapshot") {
        snapshot = message;
        lastSnapshotAt = Date.now();
      }
      render();
      checkStale();
    };
    socket.onclose = (event) => {
      if (event.code === CLOSE_FORBIDDEN) {
        setConnection("forbidden", "not allowed: log in again");
        return;
      }
      const delay = BACKOFF_MS[Math.min(attempt, BACKOFF_MS.length - 1)];
      attempt += 1;
      setConnection("offline", `offline · retrying in ${(delay / 1000).toFixed(1)} s`);
      setTimeout(connect, delay);
    };
  }

  render();
  connect();
  setInterval(checkStale, 500);
  setInterval(refresh, REFRESH_MS);
})();
