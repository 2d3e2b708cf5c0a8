// The live page: polls the admin endpoint's JSON and draws it.  Every value that a
// client sent (names, tags, lines, event text) is written with textContent, never as HTML.
"use strict";

const POLL_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";

function $(id) { return document.getElementById(id); }

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "–" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function fill(tableId, items, addCells) {
  const body = $(tableId).tBodies[0];
  const rows = document.createDocumentFragment();
  for (const item of items) {
    const tr = document.createElement("tr");
    addCells(tr, item);
    rows.appendChild(tr);
  }
  body.replaceChildren(rows);
}

function number(value, digits) {
  if (value === null || value === undefined) return "–";
  return Number(value).toLocaleString(undefined, { maximumFractionDigits: digits === undefined ? 1 : digits });
}

function sparkline(values) {
  const width = 120, height = 24;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  if (values.length > 1) {
    const low = Math.min(...values), high = Math.max(...values), span = high - low || 1;
    const points = values.map((v, i) => {
      const x = (i / (values.length - 1)) * (width - 2) + 1;
      const y = height - 2 - ((v - low) / span) * (height - 4);
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points.join(" "));
    svg.appendChild(line);
  }
  return svg;
}

async function getJSON(path, options) {
  const response = await fetch(path, Object.assign({ cache: "no-store" }, options || {}));
  if (!response.ok && response.status !== 503) throw new Error(path + ": HTTP " + response.status);
  return response.json();
}

function showStatus(status) {
  $("version").textContent = status.version;
  const state = $("state");
  state.textContent = status.state;
  state.className = "badge " + status.state;
  $("packets-rate").textContent = number(status.rates.packets_per_second);
  $("metrics-rate").textContent = number(status.rates.metrics_per_second);
  $("contexts").textContent = number(status.contexts, 0);
  $("last-flush").textContent = status.last_flush_seconds === null ? "–" : number(status.last_flush_seconds * 1000, 1) + " ms";
  $("uptime").textContent = status.uptime_seconds === null ? "–" : number(status.uptime_seconds, 0) + " s";
}

function showDrops(drops) {
  fill("drops", Object.entries(drops.dropped), (tr, [reason, count]) => {
    cell(tr, reason);
    cell(tr, number(count, 0), "num");
  });
  fill("bad-lines", drops.recent.slice(0, 15), (tr, item) => {
    cell(tr, item.reason);
    cell(tr, item.line, "line");
  });
}

function showTop(top) {
  $("stats-off").hidden = top.enabled;
  fill("top", top.metrics, (tr, m) => {
    cell(tr, m.name);
    cell(tr, m.type);
    cell(tr, number(m.samples, 0), "num");
    cell(tr, number(m.contexts, 0), "num");
    cell(tr, number(m.estimated_series, 0), "num");
  });
}

function showRecent(recent) {
  $("metrics-note").textContent =
    recent.tracked + " series tracked" + (recent.untracked ? ", " + recent.untracked + " not tracked" : "") +
    "; rows appear after the next flush.";
  fill("metrics", recent.series, (tr, s) => {
    cell(tr, s.name);
    cell(tr, s.type);
    cell(tr, s.tags.join(", "));
    cell(tr, s.host);
    cell(tr, number(s.last, 3), "num");
    cell(tr, "").appendChild(sparkline(s.history));
  });
  fill("events", recent.events, (tr, e) => {
    cell(tr, e.title);
    cell(tr, e.text);
    cell(tr, e.tags.join(", "));
  });
  fill("checks", recent.service_checks, (tr, c) => {
    cell(tr, c.name);
    cell(tr, ["OK", "WARNING", "CRITICAL", "UNKNOWN"][c.status] || c.status);
    cell(tr, c.message);
    cell(tr, c.tags.join(", "));
  });
}

async function poll() {
  const search = encodeURIComponent($("search").value);
  const by = encodeURIComponent($("top-by").value);
  try {
    const [status, drops, top, recent] = await Promise.all([
      getJSON("/status"), getJSON("/drops"), getJSON("/stats/top?n=20&by=" + by), getJSON("/recent?n=200&q=" + search),
    ]);
    showStatus(status);
    showDrops(drops);
    showTop(top);
    showRecent(recent);
    $("error").hidden = true;
    document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
  } catch (error) {
    $("error").textContent = "Cannot reach the server: " + error.message;
    $("error").hidden = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("search").addEventListener("input", poll);
  $("top-by").addEventListener("change", poll);
  $("stats-enable").addEventListener("click", async () => {
    await fetch("/stats/enable", { method: "POST" });
    poll();
  });
  poll();
  setInterval(poll, POLL_MS);
});
