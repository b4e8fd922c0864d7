// The operator page: sign in with the station's PIN, then the line board, live over
// server-sent events. No framework, no build step; strings in strings.json (en, ko).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let T = {}, csrf = "", lines = [], events = null;

  function pickLanguage(configured, all) {
    if (configured === "en" || configured === "ko") return configured;
    const langs = navigator.languages || [navigator.language || "en"];
    for (const l of langs) { if (l.toLowerCase().startsWith("ko")) return "ko"; if (l.toLowerCase().startsWith("en")) return "en"; }
    return "en";
  }
  function translate() {
    document.querySelectorAll("[data-t]").forEach((el) => { if (T[el.dataset.t]) el.textContent = T[el.dataset.t]; });
    document.querySelectorAll("[data-tp]").forEach((el) => { if (T[el.dataset.tp]) el.placeholder = T[el.dataset.tp]; });
  }
  const pct = (v) => (v === null || v === undefined ? "-" : (v * 100).toFixed(1) + " %");
  const num = (v, d) => (v === null || v === undefined ? "-" : Number(v).toFixed(d || 0));
  const when = (iso) => (iso ? new Date(iso).toLocaleTimeString() : "-");

  async function api(path, body) {
    const opts = { credentials: "same-origin", headers: {} };
    if (body !== undefined) {
      opts.method = "POST"; opts.body = JSON.stringify(body);
      opts.headers["Content-Type"] = "application/json"; opts.headers["X-CSRF-Token"] = csrf;
    }
    const r = await fetch(path, opts);
    let doc = {}; try { doc = await r.json(); } catch (e) { doc = {}; }
    return { status: r.status, doc };
  }

  function show(signedIn) {
    $("login").hidden = signedIn; $("board").hidden = !signedIn;
    $("logout").hidden = !signedIn; $("line").hidden = !signedIn || lines.length < 2;
  }

  function render(b) {
    const st = $("state");
    st.className = "state " + b.state;
    st.dataset.state = b.state;
    $("state-name").textContent = T["state_" + b.state] || b.state;
    $("state-since").textContent = when(b.since);
    const k = b.kpi || {};
    $("k-oee").textContent = pct(k.oee);
    $("k-availability").textContent = pct(k.availability);
    $("k-performance").textContent = pct(k.performance);
    $("k-quality").textContent = pct(k.quality);
    $("k-throughput").textContent = num(k.throughput_good_per_h, 0);
    $("k-coverage").textContent = pct(k.data_coverage);
    $("window").textContent = k.window ? k.window.name + " " + when(k.window.start) + " - " + when(k.window.end) : "-";
    const losses = $("losses"); losses.textContent = "";
    for (const r of k.top_downtime_reasons || []) {
      const li = document.createElement("li");
      li.textContent = r.reason + ": " + Math.floor(r.time_s / 60) + ":" + String(Math.round(r.time_s % 60)).padStart(2, "0");
      losses.appendChild(li);
    }
    const note = document.querySelector("#note textarea");
    if (document.activeElement !== note) note.value = k.shift_note || "";
    const o = b.order || {};
    $("o-id").textContent = o.order_id || T.none;
    $("o-product").textContent = o.product || "-";
    $("o-progress").textContent = o.order_id ? num(o.good_count) + " / " + (o.target_quantity === null ? "-" : num(o.target_quantity)) : "-";
    $("o-remaining").textContent = o.remaining_quantity === null || o.remaining_quantity === undefined ? "-" : num(o.remaining_quantity);
    $("o-eta").textContent = when(o.eta_current);
  }

  const mmss = (s) => Math.floor(s / 60) + ":" + String(Math.round(s % 60)).padStart(2, "0");
  let stopsDoc = null, stopsBusy = false;
  async function loadStops(line) {
    if (stopsBusy) return;
    stopsBusy = true;
    try { const r = await api("/api/lines/" + encodeURIComponent(line) + "/stops"); if (r.status === 200 && JSON.stringify(r.doc) !== JSON.stringify(stopsDoc)) renderStops(r.doc); }
    finally { stopsBusy = false; }
  }
  function reasonSelect(reasons, cls) {
    const sel = document.createElement("select"); sel.className = cls;
    for (const r of reasons) { const o = document.createElement("option"); o.value = r.name; o.textContent = r.label; sel.appendChild(o); }
    return sel;
  }
  function button(text, act, cls) {
    const b = document.createElement("button"); b.type = "button"; b.textContent = text; b.dataset.act = act; if (cls) b.className = cls; return b;
  }
  function renderStops(doc) {
    stopsDoc = doc;
    const body = document.querySelector("#stops tbody"); body.textContent = "";
    $("stops-panel").hidden = !doc.reasons.length;
    if (!doc.stops.length) { $("stops-msg").textContent = T.no_stops; }
    for (const st of doc.stops.slice().reverse()) {
      const tr = document.createElement("tr"); tr.dataset.start = st.start;
      const cells = [new Date(st.start * 1000).toLocaleTimeString(), mmss(st.length_s), T["state_" + st.state] || st.state,
        st.reasons.length ? st.reasons.map((r) => r.reason).join(" / ") : T.unclassified];
      for (const c of cells) { const td = document.createElement("td"); td.textContent = c; tr.appendChild(td); }
      tr.children[3].className = "reason";
      const td = document.createElement("td"); td.className = "actions";
      const split = document.createElement("input"); split.type = "time"; split.step = 1; split.className = "split-at";
      split.setAttribute("aria-label", T.split);
      td.append(reasonSelect(doc.reasons, "r1"), button(T.set, "set"), split, reasonSelect(doc.reasons, "r2"),
        button(T.split, "split", "secondary"), button(T.undo, "undo", "secondary"));
      tr.appendChild(td); body.appendChild(tr);
    }
  }
  document.querySelector("#stops tbody").addEventListener("click", async (e) => {
    const act = e.target.dataset && e.target.dataset.act; if (!act) return;
    const tr = e.target.closest("tr"), start = Number(tr.dataset.start);
    const body = { start: start, reason: act === "undo" ? null : tr.querySelector(".r1").value };
    if (act === "split") {
      const v = tr.querySelector(".split-at").value; if (!v) return;
      const day = new Date(start * 1000), parts = v.split(":").map(Number);
      day.setHours(parts[0], parts[1], parts[2] || 0, 0);
      body.split_at = day.getTime() / 1000; body.reason2 = tr.querySelector(".r2").value;
    }
    const line = $("line").value || lines[0];
    const r = await api("/api/lines/" + encodeURIComponent(line) + "/classify", body);
    $("stops-msg").textContent = r.status === 200 ? T.classified : T.invalid + " " + (r.doc.errors || [r.doc.error]).join("; ");
    if (r.status === 200) renderStops(r.doc.stops);
  });

  function follow(line) {
    if (events) events.close();
    events = new EventSource("/api/lines/" + encodeURIComponent(line) + "/events");
    events.addEventListener("board", (e) => { render(JSON.parse(e.data)); loadStops(line); });
    events.onerror = () => { $("state-since").textContent = T.offline; };
  }

  function signedIn(doc) {
    csrf = doc.csrf; lines = doc.lines;
    $("who").textContent = doc.station;
    const sel = $("line"); sel.textContent = "";
    for (const l of lines) { const opt = document.createElement("option"); opt.value = l; opt.textContent = l; sel.appendChild(opt); }
    show(true); if (lines.length) follow(lines[0]);
  }

  async function start() {
    const all = await (await fetch("/static/strings.json")).json();
    const s = await api("/api/session");
    T = all[pickLanguage(s.doc.language, all)] || all.en;
    document.documentElement.lang = T === all.ko ? "ko" : "en";
    translate();
    if (s.status === 200) { signedIn(s.doc); return; }
    const sel = $("station"); sel.textContent = "";
    for (const n of s.doc.stations || []) { const opt = document.createElement("option"); opt.value = n; opt.textContent = n; sel.appendChild(opt); }
    show(false);
  }

  $("login").addEventListener("submit", async (e) => {
    e.preventDefault();
    const r = await api("/api/login", { station: $("station").value, pin: $("pin").value });
    $("pin").value = "";
    if (r.status === 200) { $("login-error").textContent = ""; signedIn(r.doc); return; }
    $("login-error").textContent = r.status === 429 ? T.locked.replace("{s}", r.doc.retry_after_s) : T.wrong_pin;
  });
  $("logout").addEventListener("click", async () => {
    await api("/api/logout", {}); if (events) events.close(); location.reload();
  });
  $("line").addEventListener("change", (e) => follow(e.target.value));
  $("order").addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = e.target, body = { order_id: f.order_id.value, target_quantity: Number(f.target_quantity.value) };
    if (f.product.value) body.product = f.product.value;
    const r = await api("/api/lines/" + encodeURIComponent($("line").value || lines[0]) + "/order", body);
    $("order-msg").textContent = r.status === 200 ? T.saved : T.invalid + " " + (r.doc.errors || [r.doc.error]).join("; ");
  });
  $("clear-order").addEventListener("click", async () => {
    const r = await api("/api/lines/" + encodeURIComponent($("line").value || lines[0]) + "/order", { clear: true });
    $("order-msg").textContent = r.status === 200 ? T.cleared : T.invalid + " " + (r.doc.errors || [r.doc.error]).join("; ");
  });
  $("note").addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = e.target.note.value;
    const r = await api("/api/lines/" + encodeURIComponent($("line").value || lines[0]) + "/note", { note: text || null });
    $("note-msg").textContent = r.status === 200 ? T.note_saved : T.invalid + " " + (r.doc.errors || [r.doc.error]).join("; ");
    e.target.note.blur();
  });
  start();
})();
