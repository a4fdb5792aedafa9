// The console's shell: sign-in, the API, live events and routing. Every
// piece of data reaches the page through textContent or attributes set by
// el(), never as HTML.
"use strict";

const kiln = {
  views: {},
  live: null,
  listeners: new Set(),
  access: null,
};

function el(tag, attrs, ...children) {
  const svg = ["svg", "polyline", "line", "text", "rect", "g", "title"].includes(tag);
  const node = svg
    ? document.createElementNS("http://www.w3.org/2000/svg", tag)
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

// Replaces a node's children, skipping the null and false that optional
// parts leave (replaceChildren would show them as text).
function fill(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false)
    .map((c) => (c instanceof Node ? c : document.createTextNode(String(c)))));
}

function notice(message) {
  const n = document.getElementById("notice");
  n.textContent = message || "";
  n.hidden = !message;
}

async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const text = await r.text();
  let value = text;
  try { value = JSON.parse(text); } catch (_) { /* plain text */ }
  if (r.status === 401) {
    showSignIn();
    throw new Error("signed out");
  }
  if (!r.ok) {
    const message = (value && value.error) || text || r.statusText;
    throw new Error(`${method} ${path}: ${message} (HTTP ${r.status})`);
  }
  return value;
}

function showSignIn() {
  stopLive();
  const view = document.getElementById("view");
  fill(view,
    el("h1", {}, "Sign in"),
    el("p", {}, "Run ", el("code", {}, "kiln console"),
      " on this machine and open the URL it prints: its one-time code signs this browser in."));
}

async function signInFromFragment() {
  const m = location.hash.match(/^#login=([0-9a-f]+)$/);
  if (!m) return;
  // The code leaves the address bar and history before anything else.
  history.replaceState(null, "", "/#/pipelines");
  try {
    const r = await fetch("/console/session", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ code: m[1] }),
    });
    const v = await r.json();
    if (!r.ok) notice(v.error || "sign-in failed");
    else kiln.access = v.access;
  } catch (e) {
    notice(String(e));
  }
}

// One EventSource for the whole page; it reconnects by itself when the
// daemon ends a stream, and each (re)connection starts with the whole state.
function startLive() {
  if (kiln.live) return;
  const source = new EventSource("/v1/events");
  kiln.live = source;
  const badge = document.getElementById("live");
  source.addEventListener("open", () => { badge.textContent = "live"; badge.classList.add("on"); });
  source.addEventListener("error", () => { badge.textContent = "reconnecting"; badge.classList.remove("on"); });
  for (const kind of ["execution", "group", "removed", "ready"]) {
    source.addEventListener(kind, (ev) => {
      let data = {};
      try { data = JSON.parse(ev.data); } catch (_) { return; }
      for (const f of kiln.listeners) f(kind, data);
    });
  }
}

function stopLive() {
  if (kiln.live) kiln.live.close();
  kiln.live = null;
}

function onLive(f) {
  kiln.listeners.add(f);
}

function fmtDuration(start, end) {
  if (!start) return "";
  const a = Date.parse(start);
  const b = end ? Date.parse(end) : Date.now();
  if (Number.isNaN(a) || Number.isNaN(b)) return "";
  const s = Math.max(0, (b - a) / 1000);
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${Math.round(s - m * 60)} s`;
}

function fmtBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function fmtTime(t) {
  if (!t) return "";
  const d = new Date(t);
  return Number.isNaN(d.getTime()) ? t : d.toLocaleString();
}

function status(s) {
  return el("span", { class: `status ${s}`, "data-status": s }, s);
}

async function route() {
  kiln.listeners.clear();
  const hash = location.hash.replace(/^#\/?/, "") || "pipelines";
  const parts = hash.split("/").map(decodeURIComponent);
  for (const a of document.querySelectorAll("header nav a")) {
    a.classList.toggle("active", a.dataset.nav === parts[0]);
  }
  const view = document.getElementById("view");
  const render = kiln.views[parts[0]] || kiln.views.pipelines;
  try {
    await render(view, parts.slice(1));
    notice("");
    startLive();
  } catch (e) {
    if (String(e.message) !== "signed out") notice(String(e.message || e));
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  document.getElementById("logout").addEventListener("click", async () => {
    await fetch("/console/logout", { method: "POST", credentials: "same-origin" });
    showSignIn();
  });
  await signInFromFragment();
  window.addEventListener("hashchange", route);
  route();
});

Object.assign(kiln, { el, fill, api, notice, onLive, fmtDuration, fmtBytes, fmtTime, status });
