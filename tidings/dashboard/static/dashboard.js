// tidings dashboard: live updates over server-sent events, and copy buttons.
// No framework, no build step; loaded from the dashboard itself (CSP script-src 'self').
"use strict";

function setField(row, field, value) {
  const cell = row.querySelector('[data-field="' + field + '"]');
  if (!cell || value === undefined || value === null) return;
  const link = cell.querySelector("a");
  (link || cell).textContent = String(value);
}

function applyGroups(groups) {
  for (const g of groups) {
    const selector = 'tr[data-group="' + CSS.escape(g.group) + '"][data-topic="' + CSS.escape(g.topic) + '"]';
    for (const row of document.querySelectorAll(selector)) {
      setField(row, "lag", g.lag);
      setField(row, "lag_seconds", g.lag_seconds.toFixed(1));
      setField(row, "lost", g.lost);
      setField(row, "dlq", g.dlq);
      setField(row, "members", g.members.length);
      setField(row, "status", g.status);
      setField(row, "health", g.health === null ? "-" : g.health);
      row.dataset.updated = String(Date.now());
    }
  }
}

function applyDepth(depth) {
  for (const el of document.querySelectorAll('[data-field="depth"][data-group]')) {
    const n = depth[el.dataset.group];
    if (n !== undefined) el.textContent = String(n);
  }
}

function applyJob(job) {
  const box = document.getElementById("job");
  if (!box || box.dataset.jobId !== job.id) return;
  setField(box, "done", job.done);
  setField(box, "total", job.total);
  setField(box, "state", job.error ? "failed: " + job.error : job.finished ? "finished" : "running");
  box.dataset.finished = job.finished ? "yes" : "no";
  const bar = document.getElementById("job-progress");
  if (bar) { bar.max = Math.max(job.total, 1); bar.value = job.done; }
}

function connect(url) {
  const source = new EventSource(url);
  source.onmessage = (message) => {
    const doc = JSON.parse(message.data);
    if (doc.groups) applyGroups(doc.groups);
    if (doc.depth) applyDepth(doc.depth);
    if (doc.job) applyJob(doc.job);
    const waits = document.body.dataset.reading;  // a page not shown until that is read
    if (waits && doc.reading && !doc.reading.includes(waits)) { source.close(); location.reload(); return; }
    document.body.dataset.liveFrames = String(Number(document.body.dataset.liveFrames || 0) + 1);
  };
}

function copyButtons() {
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.hidden = false;
    button.addEventListener("click", () => {
      const source = document.getElementById(button.dataset.copy);
      if (!source) return;
      navigator.clipboard.writeText(source.value).then(
        () => { button.textContent = "Copied"; },
        () => { source.select(); button.textContent = "Select and copy (Ctrl-C)"; },
      );
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  copyButtons();
  const url = document.body.dataset.liveUrl;
  if (url && window.EventSource) connect(url);
});
