// The live performance page: polls /dashboard/performance/data and measures itself.
// Plain JavaScript on purpose: one small file, no build step (only web-vitals is bundled).
// Values from the server are written with textContent, never as HTML.
"use strict";

(() => {
  const params = new URLSearchParams(location.search);
  const REFRESH_MS = Math.max(500, Number(params.get("refresh")) || 2000);
  const UI_FLUSH_MS = 5000;
  const VITALS_FLUSH_MS = 2000;
  const MAX_FRAMES_PER_BATCH = 300;
  const PERF_API = "/api/v1/performance";

  // -- small DOM helpers ------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null) continue;
      if (key === "class") node.className = value;
      else node.setAttribute(key, String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  // A number on the page: its text for people, its exact value in data-value for checks.
  function metric(key, value, text) {
    return el("span", { "data-metric": key, "data-value": value === null || value === undefined ? "" : value },
      text === undefined ? fmtNumber(value) : text);
  }

  function fmtNumber(v, digits = 0) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    return Number(v).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
  }

  // Up to three decimals, none when the value is whole (settings such as 50000 or 0.25).
  function fmtPlain(v) {
    if (v === null || v === undefined || Number.isNaN(Number(v))) return "–";
    return Number(v).toLocaleString("en-US", { maximumFractionDigits: 3 });
  }

  function fmtSeconds(s) {
    if (s === null || s === undefined) return "–";
    if (s === 0) return "0 s"; // nothing waiting: not "0 µs", which reads as a measured delay
    if (s < 1e-3) return `${fmtNumber(s * 1e6)} µs`;
    if (s < 1) return `${fmtNumber(s * 1e3, s < 0.01 ? 2 : 1)} ms`;
    if (s < 120) return `${fmtNumber(s, 2)} s`;
    return `${fmtNumber(s / 60, 1)} min`;
  }

  function fmtPercent(r) {
    return r === null || r === undefined ? "–" : `${fmtNumber(r * 100, 1)} %`;
  }

  function table(headers, rows) {
    return el("table", {},
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", { class: h.num ? "num" : "" }, h.label || h)))),
      el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c, i) =>
        el("td", { class: headers[i].num ? "num" : "" }, c))))));
  }

  function dl(pairs) {
    return el("dl", {}, pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  }

  function fill(id, section, render) {
    const body = document.querySelector(`#${id} .body`);
    let content;
    if (!section || !section.ok) {
      const reason = section ? section.error : "no data";
      content = el("p", { class: "down", "data-down": id }, `unavailable: ${reason}`);
    } else {
      try {
        content = render(section.data);
      } catch (err) {
        content = el("p", { class: "down" }, `cannot show: ${err.message}`);
      }
    }
    body.replaceChildren(content);
  }

  // -- sections ---------------------------------------------------------------------------

  function renderBreakers(breakers) {
    const names = Object.keys(breakers).sort();
    if (!names.length) return el("p", { class: "muted" }, "no breakers");
    return table(
      ["breaker", "state", { label: "opened", num: true }, { label: "half-open", num: true },
        { label: "closed", num: true }, { label: "failure rate", num: true }, { label: "calls in window", num: true }],
      names.map((name) => {
        const b = breakers[name];
        return [
          name,
          el("span", { class: `state-${b.state}` }, metric(`breaker.${name}.state`, b.state, b.state.replace("_", "-"))),
          metric(`breaker.${name}.open`, b.open),
          metric(`breaker.${name}.half_open`, b.half_open),
          metric(`breaker.${name}.closed`, b.closed),
          b.failure_rate === null || b.failure_rate === undefined ? "–" : `${fmtNumber(b.failure_rate, 1)} %`,
          metric(`breaker.${name}.calls_in_window`, b.calls_in_window),
        ];
      }));
  }

  function renderEvents(ev) {
    const lat = ev.latency_seconds || {};
    return dl([
      ["events / s", metric("events.per_second", ev.events_per_second, fmtNumber(ev.events_per_second, 1))],
      ["processed", metric("events.processed_total", ev.processed_total)],
      ["failed", metric("events.failed_total", ev.failed_total)],
      ["latency p50", metric("events.latency.p50", lat.p50, fmtSeconds(lat.p50))],
      ["latency p95", metric("events.latency.p95", lat.p95, fmtSeconds(lat.p95))],
      ["latency p99", metric("events.latency.p99", lat.p99, fmtSeconds(lat.p99))],
      ["measured by", ev.source],
    ]);
  }

  function renderRequests(services) {
    const names = Object.keys(services);
    return table(
      ["service", { label: "requests", num: true }, { label: "p50", num: true }, { label: "p95", num: true },
        { label: "p99", num: true }, { label: "mean", num: true }, { label: "5xx", num: true }],
      names.map((name) => {
        const s = services[name];
        if (!s.ok) return [name, el("span", { class: "down", "data-down": `requests.${name}` }, s.error), "", "", "", "", ""];
        const d = s.data;
        return [name, metric(`requests.${name}.count`, d.requests),
          metric(`requests.${name}.p50`, d.p50, fmtSeconds(d.p50)),
          metric(`requests.${name}.p95`, d.p95, fmtSeconds(d.p95)),
          metric(`requests.${name}.p99`, d.p99, fmtSeconds(d.p99)),
          fmtSeconds(d.mean), metric(`requests.${name}.server_errors`, d.server_errors)];
      }));
  }

  function renderOperations(ops) {
    const rows = ops.slowest || [];
    const down = Object.entries(ops.unreachable || {}).map(([svc, err]) => `${svc}: ${err}`);
    return el("div", {},
      rows.length
        ? table(["service", "operation", { label: "count", num: true }, { label: "p50", num: true },
          { label: "p95", num: true }, { label: "p99", num: true }],
        rows.map((r, i) => [r.service, el("code", { "data-metric": `ops.${i}.name`, "data-value": `${r.service}|${r.operation}` }, r.operation),
          metric(`ops.${i}.count`, r.count), fmtSeconds(r.p50), metric(`ops.${i}.p95`, r.p95, fmtSeconds(r.p95)),
          fmtSeconds(r.p99)]))
        : el("p", { class: "muted" }, "no timed operations yet"),
      down.length ? el("p", { class: "down" }, `not reachable: ${down.join("; ")}`) : null);
  }

  // -- trends: small plots of what the page has polled (kept in memory, last TREND_POINTS) ----

  const TREND_POINTS = 150;
  const trends = { events: [], latency: [], requests: [], backlog: [], breakers: [] };

  function pushTrend(name, value) {
    const series = trends[name];
    series.push(value === null || value === undefined || Number.isNaN(Number(value)) ? null : Number(value));
    if (series.length > TREND_POINTS) series.shift();
  }

  function recordTrends(data) {
    const ev = data.events && data.events.ok ? data.events.data : null;
    pushTrend("events", ev ? ev.events_per_second : null);
    pushTrend("latency", ev && ev.latency_seconds ? ev.latency_seconds.p95 : null);
    const reqs = data.requests && data.requests.ok ? data.requests.data : {};
    const p95s = Object.values(reqs).filter((r) => r.ok && r.data.p95 !== null).map((r) => r.data.p95);
    pushTrend("requests", p95s.length ? Math.max(...p95s) : null);
    const rep = data.replication && data.replication.ok ? data.replication.data : null;
    pushTrend("backlog", rep ? rep.backlog_seconds : null);
    const br = data.breakers && data.breakers.ok ? data.breakers.data : null;
    pushTrend("breakers", br ? Object.values(br).filter((b) => b && b.state && b.state !== "closed").length : null);
  }

  const SVG_NS = "http://www.w3.org/2000/svg";
  function sparkline(name, label, format) {
    const values = trends[name];
    const known = values.filter((v) => v !== null);
    const w = 220, h = 48;
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("width", w);
    svg.setAttribute("height", h);
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", label);
    svg.dataset.trend = name;
    svg.dataset.points = String(known.length);
    const max = Math.max(...known, 1e-9);
    const step = w / Math.max(TREND_POINTS - 1, 1);
    const offset = (TREND_POINTS - values.length) * step;
    const points = values.map((v, i) => (v === null ? null : `${(offset + i * step).toFixed(1)},${(h - 2 - (v / max) * (h - 4)).toFixed(1)}`))
      .filter((p) => p !== null);
    const line = document.createElementNS(SVG_NS, "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("class", "trend-line");
    svg.append(line);
    const last = known.length ? known[known.length - 1] : null;
    return el("figure", { class: "trend" },
      el("figcaption", {}, label, " ", metric(`trend.${name}.last`, last, format(last)),
        el("span", { class: "muted" }, ` (max ${format(known.length ? max : null)})`)),
      svg);
  }

  function renderTrends() {
    const body = document.querySelector("#trends .body");
    body.replaceChildren(el("div", { class: "trends" },
      sparkline("events", "events / s", (v) => fmtNumber(v, 1)),
      sparkline("latency", "event latency p95", fmtSeconds),
      sparkline("requests", "slowest service p95", fmtSeconds),
      sparkline("backlog", "replication backlog", fmtSeconds),
      sparkline("breakers", "breakers not closed", (v) => fmtNumber(v))));
  }

  function renderCache(cache) {
    const tiers = Object.keys(cache.hit_ratio_by_tier || {});
    if (!tiers.length) return el("p", { class: "muted" }, "no cache traffic yet");
    return dl(tiers.map((t) => [t.toUpperCase(), metric(`cache.${t}.hit_ratio`, cache.hit_ratio_by_tier[t],
      fmtPercent(cache.hit_ratio_by_tier[t]))]));
  }

  function renderReplication(rep) {
    const st = rep.status || {};
    const wm = st.watermark && typeof st.watermark === "object"
      ? Object.entries(st.watermark).map(([k, v]) => `${k} ${v ?? "–"}`).join(" · ")
      : String(st.watermark ?? "–");
    const last = st.last_batch;
    // `errors` counts failures per database; only the ones that failed are worth a red word.
    const errors = Object.entries(st.errors || {}).filter(([, v]) => v).map(([k, v]) => `${k} (${v})`);
    return dl([
      ["lag", metric("replication.lag_seconds", rep.lag_seconds, fmtSeconds(rep.lag_seconds))],
      ["backlog", metric("replication.backlog_seconds", rep.backlog_seconds, fmtSeconds(rep.backlog_seconds))],
      ["rows replicated", metric("replication.rows_total", rep.rows_total)],
      ["watermark", wm],
      ["last batch", last ? `${fmtNumber(last.rows_inserted)} rows in ${fmtSeconds(last.seconds)}` : "–"],
      ["errors", errors.length ? el("span", { class: "down" }, errors.join(", ")) : "none"],
    ]);
  }

  // Settings per service as the optimizer reports them ({"services": {svc: {"settings": {name:
  // {"value", "recommended", "default", "bounds": {"min", "max"}}}}}); anything else is listed as
  // key → value.
  function renderOptimizer(opt) {
    const rows = [];
    for (const [service, entry] of Object.entries(opt.services || {}).sort()) {
      for (const [name, knob] of Object.entries((entry && entry.settings) || {}).sort()) {
        const k = knob && typeof knob === "object" ? knob : { value: knob };
        rows.push([service, name, metric(`optimizer.${service}.${name}`, k.value, fmtPlain(k.value)),
          k.recommended === null || k.recommended === undefined ? "–" : fmtPlain(k.recommended),
          k.default === undefined ? "–" : fmtPlain(k.default),
          k.bounds && typeof k.bounds === "object" && "min" in k.bounds
            ? `${fmtPlain(k.bounds.min)} – ${fmtPlain(k.bounds.max)}` : "–"]);
      }
    }
    // The optimizer repeats a recommendation every cycle while it stands; show each once.
    const seen = new Set();
    const decisions = (opt.decisions || []).filter((d) => {
      const key = typeof d === "string" ? d : `${d.service}|${d.setting}|${d.old}|${d.new}|${d.applied}`;
      if (seen.has(key)) return false;
      seen.add(key);
      return true;
    }).slice(0, 5);
    return el("div", {},
      el("p", {}, `mode: ${opt.mode || (opt.enabled ? "apply" : "recommend")}`,
        opt.cycles !== undefined ? ` · cycles: ${opt.cycles}` : "",
        opt.signal_source ? ` · signals: ${opt.signal_source}` : ""),
      rows.length
        ? table(["service", "setting", { label: "value", num: true }, { label: "recommended", num: true },
          { label: "default", num: true }, { label: "bounds", num: true }], rows)
        : el("p", { class: "muted" }, "no settings reported"),
      decisions.length ? el("ul", { class: "alerts" }, decisions.map((d) => el("li", {},
        typeof d === "string" ? d
          : `${d.service}.${d.setting} ${fmtPlain(d.old)} → ${fmtPlain(d.new)}${d.applied ? "" : " (recommended)"}: ${d.reason || d.rule || ""}`)))
        : el("p", { class: "muted" }, "no decisions yet"));
  }

  function renderAlerts(data) {
    const failing = (data.thresholds || []).filter((t) => t.failing);
    const list = (data.alerts || []).slice(0, 10);
    const vitals = data.vitals || {};
    return el("div", {},
      el("p", {}, metric("alerts.failing", failing.length, `${failing.length} threshold(s) failing`),
        data.channels && data.channels.length ? ` · channels: ${data.channels.join(", ")}` : " · no channels configured"),
      list.length ? el("ul", { class: "alerts" }, list.map((a) => el("li", {},
        el("span", { class: `alert-${a.status}` }, a.status), " ", new Date(a.at).toLocaleTimeString(), " ",
        a.summary))) : el("p", { class: "muted" }, "no alerts"),
      Object.keys(vitals).length ? table(["vital (p75, all pages)", { label: "value", num: true }, "rating"],
        Object.entries(vitals).map(([name, v]) => [name, name === "CLS" ? fmtNumber(v.p75, 3) : `${fmtNumber(v.p75)} ms`,
          el("span", { class: `rating-${v.rating}` }, v.rating)])) : null);
  }

  // -- self measurement: Core Web Vitals and frame times -----------------------------------

  const vitalsQueue = [];
  const ownVitals = {};
  const frameTimes = [];
  const callbacks = [];

  function renderSelf() {
    const body = document.querySelector("#self .body");
    const recent = frameTimes.slice(-120);
    const mean = recent.length ? recent.reduce((a, b) => a + b, 0) / recent.length : null;
    body.replaceChildren(dl([
      ...["TTFB", "FCP", "LCP", "INP", "CLS"].map((n) => [n, ownVitals[n]
        ? el("span", { class: `rating-${ownVitals[n].rating}` },
          metric(`self.${n}`, ownVitals[n].value, n === "CLS" ? fmtNumber(ownVitals[n].value, 3) : `${fmtNumber(ownVitals[n].value)} ms`))
        : "–"]),
      ["frame time", mean === null ? "–" : `${fmtNumber(mean, 1)} ms (${fmtNumber(1000 / mean)} fps)`],
    ]));
  }

  function onVital(m) {
    ownVitals[m.name] = { value: m.value, rating: m.rating };
    vitalsQueue.push({ name: m.name, value: m.value, page: location.pathname, id: m.id, rating: m.rating });
  }

  function send(path, payload, useBeacon) {
    const body = JSON.stringify(payload);
    if (useBeacon && navigator.sendBeacon) {
      navigator.sendBeacon(PERF_API + path, new Blob([body], { type: "application/json" }));
      return;
    }
    fetch(PERF_API + path, { method: "POST", body, keepalive: true, headers: { "content-type": "application/json" } })
      .catch(() => { /* the analytics service may be down; the page keeps working */ });
  }

  function flushVitals(useBeacon) {
    if (vitalsQueue.length) send("/vitals", vitalsQueue.splice(0), useBeacon);
  }

  function flushUi(useBeacon) {
    const frames = frameTimes.splice(0);
    // Keep the batch small: an even sample of the frames since the last flush.
    const step = Math.max(1, Math.ceil(frames.length / MAX_FRAMES_PER_BATCH));
    const batch = frames.filter((_, i) => i % step === 0).map((ms) => ({ frame_time_ms: Math.round(ms * 100) / 100 }));
    batch.push(...callbacks.splice(0));
    if (batch.length) send("/ui", batch, useBeacon);
  }

  let lastFrame = null;
  function onFrame(now) {
    if (lastFrame !== null) {
      const delta = now - lastFrame;
      if (delta < 1000) frameTimes.push(delta); // longer gaps are a hidden tab, not a slow frame
    }
    lastFrame = now;
    requestAnimationFrame(onFrame);
  }

  // -- refresh loop -----------------------------------------------------------------------

  const status = document.getElementById("status");
  let failures = 0;

  async function refresh() {
    const started = performance.now();
    try {
      const response = await fetch("/dashboard/performance/data", { cache: "no-store", signal: AbortSignal.timeout(8000) });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const data = await response.json();
      fill("breakers", data.breakers, renderBreakers);
      fill("events", data.events, renderEvents);
      fill("requests", data.requests, renderRequests);
      fill("cache", data.cache, renderCache);
      fill("replication", data.replication, renderReplication);
      fill("optimizer", data.optimizer, renderOptimizer);
      fill("alerts", data.alerts, renderAlerts);
      fill("operations", data.operations, renderOperations);
      recordTrends(data);
      renderTrends();
      renderSelf();
      const took = performance.now() - started;
      callbacks.push({ callback: "dashboard.refresh", duration_s: Math.round(took) / 1000 });
      failures = 0;
      status.dataset.state = "ok";
      status.dataset.updated = String(data.generated_at);
      status.textContent = `updated ${new Date(data.generated_at * 1000).toLocaleTimeString()} · ${fmtNumber(took)} ms · every ${REFRESH_MS / 1000} s`;
    } catch (err) {
      failures += 1;
      status.dataset.state = "error";
      status.textContent = `cannot reach the gateway (${err.message}); retrying`;
    }
    // Back off while the gateway does not answer, up to 30 s.
    setTimeout(refresh, Math.min(REFRESH_MS * 2 ** failures, 30000));
  }

  function start() {
    if (window.webVitals) {
      const wv = window.webVitals;
      for (const on of [wv.onTTFB, wv.onFCP, wv.onLCP, wv.onINP, wv.onCLS]) on(onVital);
    }
    requestAnimationFrame(onFrame);
    setInterval(() => flushVitals(false), VITALS_FLUSH_MS);
    setInterval(() => flushUi(false), UI_FLUSH_MS);
    // The last reports (LCP, CLS, INP are final only now) leave with the page.
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "hidden") {
        flushVitals(true);
        flushUi(true);
      }
    });
    refresh();
  }

  start();
})();
