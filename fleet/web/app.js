/* nanoclaw fleet dashboard, embedded into nanoclaw-fleet (include_str!): plain ES2020, no
 * framework or build step. CSP-safe: no inline script/style, no eval. Server data (untrusted)
 * reaches the page only via textContent/setAttribute, never innerHTML. The view polls every 2 s
 * (one request at a time, paused while hidden); only changed rows are replaced, so forms keep
 * focus and input. */
"use strict";

const POLL_MS = 2000, PAGE = 100, WINDOW_MS = 864e5, TOKEN_KEY = "nanoclaw-fleet-token";
const $ = (sel) => document.querySelector(sel);
const enc = encodeURIComponent;
let token = sessionStorage.getItem(TOKEN_KEY) || "";
let skew = 0; // server clock minus ours (overview's now_ms)
const now = () => Date.now() + skew;

/* ---- DOM: h() HTML, s() SVG; strings become text nodes ---- */
function build(node, attrs, kids) {
  for (const [k, v] of Object.entries(attrs || {})) if (v != null && v !== false) node.setAttribute(k, v);
  node.append(...kids.flat(3).filter((k) => k != null && k !== false));
  return node;
}
const h = (tag, attrs, ...kids) => build(document.createElement(tag), attrs, kids);
const s = (tag, attrs, ...kids) => build(document.createElementNS("http://www.w3.org/2000/svg", tag), attrs, kids);
const setText = (n, t) => { if (n.textContent !== t) n.textContent = t; };

/* parent's children := one node per item, by key; rebuilt only when the item's JSON changed */
function sync(parent, items, key, render) {
  const old = new Map([...parent.children].map((n) => [n.nanoKey, n]));
  let prev = null;
  for (const item of items) {
    const k = key(item), sig = JSON.stringify(item);
    let n = old.get(k);
    old.delete(k);
    if (!n || n.nanoSig !== sig) {
      const fresh = Object.assign(render(item), { nanoKey: k, nanoSig: sig });
      if (n) n.replaceWith(fresh);
      n = fresh;
    }
    const at = prev ? prev.nextSibling : parent.firstChild;
    if (n !== at) parent.insertBefore(n, at);
    prev = n;
  }
  for (const n of old.values()) n.remove();
}
/* node's children := render(), when data changed */
function once(node, data, render) {
  const sig = JSON.stringify(data);
  if (node.nanoSig !== sig) node.replaceChildren(...[render()].flat(3).filter((k) => k != null && k !== false));
  node.nanoSig = sig;
}

/* ---- formatting ---- */
const dash = (v) => (v == null || v === "" ? "—" : String(v));
const ver = (v) => (v == null ? "—" : "v" + v);
const pct = (part, whole) => (whole > 0 ? Math.floor((part * 100) / whole) + " %" : "—");
const clock = (ms) => new Date(ms).toTimeString().slice(0, 8);
const mwh = (n) => (n == null ? "—" : n >= 1e4 ? (n / 1000).toFixed(1) + " Wh" : Math.round(n) + " mWh");
function bytes(n) {
  if (n == null) return "—";
  let i = 0;
  for (; n >= 1024 && i < 4; i++) n /= 1024;
  return (i && n < 10 ? n.toFixed(1) : Math.round(n)) + " " + ["B", "KiB", "MiB", "GiB", "TiB"][i];
}
function ago(ms) {
  const t = Math.max(0, Math.round((now() - ms) / 1000));
  return t < 90 ? t + " s ago" : t < 5400 ? Math.round(t / 60) + " min ago"
    : t < 172800 ? Math.round(t / 3600) + " h ago" : Math.round(t / 86400) + " d ago";
}
/* relative text, absolute title; refreshTimes() updates the text */
function when(ms) {
  if (!ms) return h("span", { class: "muted" }, "never");
  const d = new Date(ms);
  return h("time", { datetime: d.toISOString(), title: d.toLocaleString(), "data-ms": ms }, ago(ms));
}
const refreshTimes = () => document.querySelectorAll("time[data-ms]").forEach((t) => setText(t, ago(+t.dataset.ms)));

const badge = (cls, text) => h("span", { class: "badge " + cls }, text);
const online = (d) => (d.online ? badge("on", "online") : d.last_seen_ms ? badge("off", "offline") : badge("never", "never seen"));
function battery(x) {
  const ext = x.external_power;
  if (x.battery_pct == null) return ext ? "external power" : "—";
  return x.battery_pct + " %" + (ext ? " (external)" : ext === false ? " (battery)" : "");
}
/* "used / limit" and a meter, or "used" and `none` without a limit */
const usage = (used, limit, fmt, none) => (limit
  ? h("span", null, `${fmt(used)} / ${fmt(limit)}`,
    h("meter", { min: 0, max: limit, value: Math.min(used, limit), low: limit * 0.7, high: limit * 0.9, optimum: 0, "aria-hidden": "true" }))
  : [fmt(used), " ", h("span", { class: "muted" }, none)]);

/* ---- tables: a column list gives the header, cells and phone cards' labels ---- */
const head = (table, cols) => table.tHead.replaceChildren(h("tr", null, cols.map(([t]) => h("th", { scope: "col" }, t))));
const row = (cols, item, attrs) => h("tr", attrs, cols.map(([t, cell], i) =>
  i ? h("td", { "data-label": t }, h("span", null, cell(item))) : h("th", { scope: "row" }, cell(item))));
const devLink = (id) => h("a", { href: "#/devices/" + enc(id) }, id);
const DEVICE_COLS = [
  ["Device", (d) => devLink(d.id)],
  ["Group", (d) => d.group],
  ["State", (d) => [online(d), d.degraded && [" ", badge("warn", "degraded")]]],
  ["Last seen", (d) => when(d.last_seen_ms)],
  ["Firmware", (d) => dash(d.firmware)],
  ["Policy", (d) => ver(d.policy_version)],
  ["Battery", battery],
  ["Agents", ({ agents: a }) => (a ? [`${a.running}/${a.total} running`, a.failed > 0 && [" ", badge("bad", a.failed + " failed")]] : "—")],
];
const AGENT_COLS = [
  ["Agent", (a) => a.name],
  ["State", (a) => badge(a.state === "running" ? "on" : /fail|crash|kill|quarantin/.test(a.state) ? "bad" : "off", a.state)],
  ["Restarts", (a) => dash(a.restarts)],
  ["Memory", (a) => usage(a.memory_bytes, a.memory_limit_bytes, bytes, "no limit")],
  ["Energy", (a) => usage(a.energy_mwh, a.energy_budget_mwh, mwh, "no budget")],
  ["Trust", (a) => dash(a.trust)],
  ["Denials", (a) => dash(a.denials)],
];
const AUDIT_COLS = [
  ["Time", (r) => when(r.time_ms)],
  ["Device", (r) => devLink(r.device)],
  ["Seq", (r) => dash(r.seq)],
  ["Agent", (r) => dash(r.agent)],
  ["Kind", (r) => h("span", { class: "mono" }, dash(r.kind))],
  ["Reason", (r) => h("span", { class: "reason" }, dash(r.reason))],
];

/* ---- the API: bearer token on every call, {"error"} as the Error's message, 401 logs out ---- */
class AuthError extends Error {}
async function api(path, { method = "GET", body, type, signal } = {}) {
  const headers = { Authorization: "Bearer " + token };
  if (type) headers["Content-Type"] = type;
  const r = await fetch(path, { method, headers, body, signal, cache: "no-store" }).catch((e) => {
    throw e.name === "AbortError" ? e : new Error("Cannot reach the server (" + e.message + ")");
  });
  let data = null;
  try { data = JSON.parse(await r.text()); } catch (e) { if (e.name === "AbortError") throw e; }
  const msg = (data && data.error) || `${r.status} ${r.statusText}`.trim();
  if (r.status === 401) { logout(msg); throw new AuthError(msg); }
  if (!r.ok) throw new Error(msg);
  if (data == null) throw new Error("The server's answer is not JSON");
  return data;
}

/* the aria-live banner: errors stay until a success, notes fade */
let noteTimer = 0;
function notify(text, kind = "note") {
  const b = $("#status");
  clearTimeout(noteTimer);
  b.className = "banner " + kind;
  setText(b, text);
  if (kind !== "error") noteTimer = setTimeout(() => { b.textContent = ""; }, 5000);
}

/* ---- overview ---- */
async function loadOverview(signal) {
  const d = await api("/v1/overview", { signal }), b = d.battery;
  if (d.now_ms) skew = d.now_ms - Date.now();
  for (const k of ["total", "online", "offline", "never"]) setText($("#stat-" + k), String(d.devices[k]));
  setText($("#stat-degraded"), String(d.posture_degraded));
  setText($("#online-window"), `Online: seen in the last ${d.online_window_s} s.`);
  sync($("#firmware"), d.firmware, (f) => f.version, (f) => h("li", null, h("span", { class: "mono" }, dash(f.version)), ` — ${f.devices} devices`));
  once($("#battery"), b, () => [["Low battery", b.low], ["On battery", b.on_battery], ["External power", b.external], ["Unknown", b.unknown]]
    .map(([k, v]) => h("div", null, h("dt", null, k), h("dd", null, dash(v)))));
  sync($("#groups"), d.groups, (g) => g.group, group);
  sync($("#group-list"), d.groups, (g) => g.group, (g) => h("option", { value: g.group }));
}

let uid = 0;
/* a group: policy rollout (bar, percentage, stacked versions), bundle rollout */
function group(g) {
  const { policy: p, bundles: b, devices: n } = g, id = "group-" + ++uid;
  const vname = (v) => (v ? "v" + v : "none");
  const vcls = (v, i) => (v.version === p.target ? "vt" : "v" + (i % 3));
  const applied = b.applied || 0, some = b.assigned.length > 0;
  let x = 0;
  const rects = p.versions.map((v, i) => {
    const w = n ? (v.devices * 100) / n : 0;
    x += w;
    return s("rect", { x: x - w, y: 0, width: w, height: 10, class: vcls(v, i) }, s("title", null, `${vname(v.version)}: ${v.devices} devices`));
  });
  return h("section", { class: "card", "data-group": g.group, "aria-labelledby": id },
    h("h3", { id }, g.group),
    h("p", { class: "muted" }, `${n} devices, ${g.online} online`),
    h("h4", null, "Policy"),
    h("p", null, "Target ", h("span", { class: "policy-target" }, p.target == null ? "none" : "v" + p.target),
      " · applied on ", h("span", { class: "policy-pct" }, pct(p.applied, n)), ` (${p.applied} of ${n})`),
    h("progress", { max: n || 1, value: Math.min(p.applied, n), "aria-label": "Policy rollout" }),
    s("svg", { class: "stack", viewBox: "0 0 100 10", preserveAspectRatio: "none", role: "img",
      "aria-label": "Policy versions: " + (p.versions.map((v) => `${vname(v.version)} on ${v.devices}`).join(", ") || "none reported") }, rects),
    h("ul", { class: "legend" }, p.versions.map((v, i) => h("li", null, h("span", { class: "swatch " + vcls(v, i) }),
      `${vname(v.version)}: ${v.devices}`, v.version === p.target && " (target)"))),
    h("h4", null, "Bundles"),
    h("p", null, some ? b.assigned.map((a) => `${a.name} ${a.version}`).join(", ") : "None assigned",
      " · applied on ", h("span", { class: "bundle-pct" }, some ? pct(applied, n) : "—"), some && ` (${applied} of ${n})`),
    some && h("progress", { max: n || 1, value: Math.min(applied, n), "aria-label": "Bundle rollout" }));
}

/* ---- device list ---- */
const list = { offset: 0 };
const FILTERS = [["q", "#device-search"], ["group", "#device-group"], ["state", "#device-state"]];
async function loadDevices(signal) {
  const p = new URLSearchParams({ offset: list.offset, limit: PAGE });
  for (const [k, sel] of FILTERS) if ($(sel).value.trim()) p.set(k, $(sel).value.trim());
  const d = await api("/v1/devices?" + p, { signal });
  sync($("#device-table").tBodies[0], d.devices, (x) => x.id, (x) => row(DEVICE_COLS, x, { "data-device": x.id }));
  $("#device-empty").hidden = d.devices.length > 0;
  const range = d.devices.length ? `${list.offset + 1}–${list.offset + d.devices.length} of ${d.total}` : `0 of ${d.total}`;
  setText($("#device-range"), range);
  $("#device-prev").disabled = list.offset === 0;
  $("#device-next").disabled = list.offset + PAGE >= d.total;
}

/* ---- one device ---- */
let tele = { id: null };
function enterDevice(r) {
  $("#device-audit-link").href = "#/audit?device=" + enc(r.id);
  $("#device-grant-link").href = "#/actions?device=" + enc(r.id);
  if (tele.id === r.id) return;
  tele = { id: r.id, last: 0, series: new Map(), rev: 0, drawn: null };
  setText($("#device-title"), r.id);
  for (const n of document.querySelectorAll("#device-view :is(.kv, #device-badges, #status-at, ul, svg, tbody)")) {
    n.replaceChildren();
    n.nanoSig = null;
  }
}

async function loadDevice(signal) {
  const id = tele.id, base = "/v1/devices/" + enc(id);
  const [d, t] = await Promise.all([
    api(base, { signal }),
    api(`${base}/telemetry?since_ms=${tele.last || Math.floor(now() - WINDOW_MS)}`, { signal }).catch((e) => {
      if (e.name === "AbortError" || e instanceof AuthError) throw e;
      return { error: e.message }; // shown in the charts
    }),
  ]);
  if (tele.id !== id) return;
  const dev = d.device, st = d.status, posture = st && st.posture != null ? st.posture : dev.posture;
  once($("#device-badges"), [dev.online, dev.last_seen_ms > 0, dev.degraded], () => [online(dev), dev.degraded && [" ", badge("warn", "posture degraded")]]);
  once($("#device-info"), [dev, posture, st && [st.battery_pct, st.external_power]], () => [
    ["Group", dev.group], ["Last seen", when(dev.last_seen_ms)], ["Enrolled", when(dev.enrolled_ms)],
    ["Firmware", dash(dev.firmware)], ["Policy", ver(dev.policy_version)], ["Battery", battery(st || dev)],
    ["Posture", h("span", { class: "mono" }, dash(posture))], ["Sessions", dash(dev.sessions)],
    ["Audit backlog", dash(dev.audit_backlog)], ["Lowest trust", dash(dev.trust_min)], ["Denials", dash(dev.denials)],
  ].map(([k, v]) => h("div", null, h("dt", null, k), h("dd", null, v))));
  once($("#status-at"), st && st.at_ms, () => (st ? ["Status reported ", when(st.at_ms), "."] : "No status report yet."));
  sync($("#agent-table").tBodies[0], (st && st.agents) || [], (a) => a.name, (a) => row(AGENT_COLS, a, { "data-agent": a.name }));
  sync($("#denials"), d.denials, (x) => x.seq, (x) => h("li", null,
    h("p", { class: "meta" }, h("strong", null, dash(x.agent)), " ", h("span", { class: "mono" }, dash(x.kind)), " ", when(x.time_ms), ` · #${x.seq}`),
    h("p", { class: "reason" }, dash(x.reason))));
  $("#denials-empty").hidden = d.denials.length > 0;
  merge(t);
  if (tele.drawn !== tele.rev + (t.error || "")) {
    tele.drawn = tele.rev + (t.error || "");
    chart("memory", "Memory", 1, bytes, t.error);
    chart("energy", "Energy", 2, mwh, t.error);
  }
}

/* Appends each agent's new [at_ms, memory, energy] points (since_ms is inclusive, so those not
 * newer than the last held are skipped); drops those out of the window. */
function merge(t) {
  const cut = now() - WINDOW_MS;
  for (const [name, pts] of Object.entries(t.agents || {})) {
    const have = tele.series.get(name) || [];
    for (const p of pts) {
      if (Array.isArray(p) && !(have.length && p[0] <= have[have.length - 1][0])) {
        have.push(p);
        tele.last = Math.max(tele.last, p[0]);
        tele.rev++;
      }
    }
    const keep = have.findIndex((p) => p[0] >= cut), drop = keep < 0 ? have.length : keep;
    if (drop) { have.splice(0, drop); tele.rev++; }
    tele.series.set(name, have);
  }
}

/* Line chart of column idx: a polyline per agent (a dot for one point), y 0..peak, x over the
 * span; the legend and aria-label give the latest values. */
function chart(id, what, idx, fmt, error) {
  const svg = $("#chart-" + id), legend = $("#legend-" + id);
  const W = Math.min(900, Math.max(320, svg.clientWidth || 640)), H = 220, L = 76, R = 12, T = 14, B = 30; // 1 unit = 1 px
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const series = [...tele.series].filter(([, p]) => p.length).sort(([a], [b]) => (a < b ? -1 : 1));
  const kids = [s("title", null, what + " per agent")];
  legend.replaceChildren();
  if (!series.length) {
    const msg = error ? "Telemetry unavailable: " + error : "No telemetry yet";
    svg.setAttribute("aria-label", `${what} per agent: ${msg}`);
    return svg.replaceChildren(...kids, s("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, msg));
  }
  let x0 = Infinity, x1 = -Infinity, y1 = 0;
  for (const [, pts] of series) for (const p of pts) { x0 = Math.min(x0, p[0]); x1 = Math.max(x1, p[0]); y1 = Math.max(y1, p[idx]); }
  if (x1 === x0) x0 -= 60000; // a single instant sits at the right edge
  y1 = y1 || 1;
  const X = (t) => (L + ((t - x0) / (x1 - x0)) * (W - L - R)).toFixed(1);
  const Y = (v) => (H - B - (v / y1) * (H - T - B)).toFixed(1);
  const text = (x, y, t, end) => s("text", { x, y, "text-anchor": end && "end" }, t);
  kids.push(s("path", { class: "grid", d: `M${L} ${T}H${W - R}` }), s("path", { class: "axis", d: `M${L} ${T}V${H - B}H${W - R}` }),
    text(L - 6, T + 4, fmt(y1), 1), text(L - 6, H - B, fmt(0), 1), text(L, H - 8, clock(x0)), text(W - R, H - 8, clock(x1), 1));
  const latest = series.map(([name, pts], i) => {
    const c = "s" + (i % 6), last = pts[pts.length - 1][idx];
    kids.push(pts.length === 1
      ? s("circle", { class: c, cx: X(pts[0][0]), cy: Y(last), r: 4 }, s("title", null, name))
      : s("polyline", { class: c, points: pts.map((p) => X(p[0]) + "," + Y(p[idx])).join(" ") }, s("title", null, name)));
    legend.append(h("li", null, h("span", { class: "swatch " + c }), name, " ", h("span", { class: "muted" }, fmt(last))));
    return `${name} ${fmt(last)}`;
  });
  svg.setAttribute("aria-label", `${what} per agent from ${clock(x0)} to ${clock(x1)}, scale 0 to ${fmt(y1)}. Latest: ${latest.join(", ")}.`);
  svg.replaceChildren(...kids);
}

/* ---- audit search ---- */
async function loadAudit(signal) {
  const p = new URLSearchParams();
  for (const k of ["device", "agent", "kind", "q"]) if ($("#audit-" + k).value.trim()) p.set(k, $("#audit-" + k).value.trim());
  p.set("last", Math.min(1000, Math.max(1, parseInt($("#audit-last").value, 10) || 100)));
  const d = await api("/v1/audit?" + p, { signal });
  sync($("#audit-table").tBodies[0], d.records, (r) => r.device + "\n" + r.seq, (r) => row(AUDIT_COLS, r));
  setText($("#audit-summary"), `${d.records.length} records, newest first (${d.scanned} scanned).`);
}

/* ---- routing: #/, #/devices, #/devices/ID, #/audit, #/actions; ?query presets forms ---- */
const VIEWS = {
  overview: { title: "Overview", load: loadOverview },
  devices: { title: "Devices", load: loadDevices, enter(r) {
    if (![...r.q.keys()].length) return;
    for (const [k, sel] of FILTERS) $(sel).value = r.q.get(k) || "";
    list.offset = 0;
  } },
  device: { title: "Device", load: loadDevice, enter: enterDevice, nav: "devices" },
  audit: { title: "Audit", load: loadAudit, live: () => $("#audit-live").checked, enter(r) {
    for (const k of ["device", "agent", "kind"]) if (r.q.has(k)) $("#audit-" + k).value = r.q.get(k);
  } },
  actions: { title: "Actions", enter(r) {
    if (r.q.has("device")) { $("#grant-target-kind").value = "device"; $("#grant-target").value = r.q.get("device"); }
    if (r.q.has("agent")) $("#grant-agent").value = r.q.get("agent");
  } },
};
let route = null;

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, ""), qi = raw.indexOf("?");
  const q = new URLSearchParams(qi < 0 ? "" : raw.slice(qi + 1));
  const [first, ...rest] = (qi < 0 ? raw : raw.slice(0, qi)).split("/");
  if (first === "devices" && rest.join("")) {
    let id = rest.join("/");
    try { id = decodeURIComponent(id); } catch { /* keep it as typed */ }
    return { name: "device", id, q };
  }
  return { name: VIEWS[first] && first !== "device" ? first : "overview", q };
}

function onRoute(focus) {
  if (!token) return showLogin();
  const r = (route = parseHash()), v = VIEWS[r.name];
  for (const name in VIEWS) $(`#${name}-view`).hidden = name !== r.name;
  for (const a of document.querySelectorAll("#nav a")) {
    const cur = a.dataset.nav === r.name ? "page" : a.dataset.nav === v.nav && "true";
    if (cur) a.setAttribute("aria-current", cur); else a.removeAttribute("aria-current");
  }
  document.title = `${r.id || v.title} — nanoclaw fleet`;
  if (v.enter) v.enter(r);
  if (focus) (r.name === "actions" && r.q.has("device") ? $("#grant-agent") : $(`#${r.name}-view h1`)).focus();
  if (!v.load) setText($("#updated"), "");
  restart();
}

/* ---- polling: one setTimeout chain, never two requests in flight ---- */
let timer = 0, inflight = null;
function stop() {
  clearTimeout(timer);
  timer = 0;
  if (inflight) inflight.abort();
  inflight = null;
}
function restart() { stop(); tick(); }
async function tick() {
  clearTimeout(timer);
  timer = 0;
  const r = route, v = r && VIEWS[r.name];
  if (!token || !v || !v.load || document.hidden || inflight) return;
  const ctl = (inflight = new AbortController());
  try {
    await v.load(ctl.signal);
    setText($("#updated"), "updated " + clock(Date.now()));
    if ($("#status").classList.contains("error")) notify("Live updates resumed.");
  } catch (e) {
    if (e.name !== "AbortError" && !(e instanceof AuthError)) notify(e.message, "error");
  } finally {
    if (inflight === ctl) {
      inflight = null;
      refreshTimes();
      if (route === r && token && (!v.live || v.live())) timer = setTimeout(tick, POLL_MS);
    }
  }
}
document.addEventListener("visibilitychange", () => { if (!document.hidden && !timer && !inflight) tick(); });

/* ---- login and logout: the token lives in sessionStorage (this tab only) ---- */
function showLogin() {
  $("#login-view").hidden = false;
  $("#nav").hidden = $("#logout").hidden = true;
  for (const name in VIEWS) $(`#${name}-view`).hidden = true;
  document.title = "Sign in — nanoclaw fleet";
  $("#updated").textContent = "";
  $("#token").focus();
}
function logout(reason) {
  token = "";
  sessionStorage.removeItem(TOKEN_KEY);
  stop();
  route = null;
  tele = { id: null };
  notify("");
  setText($("#login-error"), reason);
  showLogin();
}
function signedIn(focus) {
  $("#login-view").hidden = true;
  $("#nav").hidden = $("#logout").hidden = false;
  onRoute(focus);
}
$("#login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  token = $("#token").value.trim();
  setText($("#login-error"), token ? "" : "Enter the admin token.");
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("#login").disabled = true;
  try {
    await api("/v1/overview");
    $("#token").value = "";
    signedIn(true);
  } catch (err) {
    if (!(err instanceof AuthError)) {
      token = "";
      sessionStorage.removeItem(TOKEN_KEY);
      setText($("#login-error"), err.message);
    }
  }
  $("#login").disabled = false;
});
$("#logout").addEventListener("click", () => logout("Logged out."));

/* ---- list and audit controls ---- */
let debounce = 0;
const refilter = () => { clearTimeout(debounce); list.offset = 0; restart(); };
$("#device-filters").addEventListener("input", (e) => {
  clearTimeout(debounce);
  if (e.target.id === "device-state") refilter();
  else debounce = setTimeout(refilter, 300);
});
$("#device-filters").addEventListener("submit", (e) => { e.preventDefault(); refilter(); });
const page = (delta) => { list.offset = Math.max(0, list.offset + delta); restart(); };
$("#device-prev").addEventListener("click", () => page(-PAGE));
$("#device-next").addEventListener("click", () => page(PAGE));
$("#audit-form").addEventListener("submit", (e) => { e.preventDefault(); restart(); });
$("#audit-live").addEventListener("change", () => ($("#audit-live").checked ? restart() : stop()));

/* ---- actions: submit runs send() and shows its text, or the error, in #ID-result ---- */
function action(id, send) {
  const form = $("#" + id), out = $(`#${id}-result`), button = form.querySelector("button");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    button.disabled = true;
    out.className = "result";
    setText(out, "Sending…");
    try {
      const text = await send();
      out.className = "result ok";
      setText(out, text);
    } catch (err) {
      out.className = "result bad";
      setText(out, err instanceof AuthError ? "" : err.message);
    }
    button.disabled = false;
  });
}
const target = (p) => [$(`#${p}-target-kind`).value, $(`#${p}-target`).value.trim()]; // [group|device, name]

action("push-policy", async () => {
  const [kind, name] = target("policy");
  const r = await api(`/v1/policies?${kind}=${enc(name)}`, { method: "POST", body: $("#policy-text").value, type: "text/plain" });
  return `Policy v${r.version} queued for ${r.target}`;
});
action("publish-bundle", async () => {
  const [kind, name] = target("bundle"), body = new FormData(); // the browser sets the multipart type
  body.append("bundle", $("#bundle-file").files[0]);
  body.append("signature", $("#bundle-sig").files[0]);
  const r = await api(`/v1/bundles?${kind}=${enc(name)}`, { method: "POST", body });
  return `Published ${r.published} for ${r.target}`;
});
action("grant", async () => {
  const [kind, name] = target("grant");
  const g = { agent: $("#grant-agent").value.trim(), capability: $("#grant-capability").value.trim(), ttl_s: Number($("#grant-ttl").value), [kind]: name };
  const r = await api("/v1/grants", { method: "POST", body: JSON.stringify(g), type: "application/json" });
  const p = (r.grant && r.grant.payload) || {};
  return `Grant of ${g.capability} to ${g.agent} queued for ${kind}:${name}` +
    (p.not_after ? `, valid until ${new Date(p.not_after * 1000).toLocaleString()}` : "");
});

/* ---- start ---- */
for (const k of ("denied_connect denied_exec denied_operation admission_denied channel_refused syscall_anomaly oom_kill " +
  "crash_loop violation install_refused policy_rejected posture grant_applied grant_refused start exit energy battery console")
  .split(" ")) $("#audit-kind").append(h("option", null, k)); // common kinds (proto's AuditKind)
head($("#device-table"), DEVICE_COLS);
head($("#agent-table"), AGENT_COLS);
head($("#audit-table"), AUDIT_COLS);
$("#skip").addEventListener("click", (e) => { e.preventDefault(); $("#main").focus(); });
window.addEventListener("hashchange", () => onRoute(true));
setInterval(refreshTimes, 10000);
window.addEventListener("resize", () => { tele.drawn = null; }); // charts are redrawn at their new size on the next poll
if (token) signedIn(false); else showLogin();
