// The live dashboard's script: asks the query API's stats endpoints and draws the answers.
// No library and nothing from elsewhere: the chart is SVG drawn here, so the page works
// offline. The token (when auth is on) lives in sessionStorage only: gone with the tab.
// "Visitors right now" is polled every second and the range's stats every few seconds,
// both only while the tab is visible.
"use strict";

(() => {
  const TOKEN_KEY = "pageviews.stats-token";
  const LIVE_MS = 1000;
  const RANGE_MS = 3000;
  const SITES_MS = 30000;
  const SITE_RE = /^[A-Za-z0-9._-]{1,64}$/;
  const DATE_RE = /^\d{4}-\d{2}-\d{2}$/;
  const PERIODS = ["realtime", "today", "24h", "7d", "30d", "custom"];
  const LABELS = {
    realtime: "last 5 minutes", today: "today (UTC)", "24h": "last 24 hours",
    "7d": "last 7 days", "30d": "last 30 days", custom: "custom range",
  };
  const BEFORE = {
    realtime: "the 5 minutes before", today: "yesterday", "24h": "the 24 hours before",
    "7d": "the 7 days before", "30d": "the 30 days before", custom: "the period before",
  };
  // A finer interval than the API's default where it reads better (168 hours, not 7 days).
  const INTERVALS = { "7d": "hour" };
  const HOUR_MS = 3600000;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const numbers = new Intl.NumberFormat();

  const $ = (id) => document.getElementById(id);
  const state = { site: null, period: "24h", from: null, to: null, sites: [], devices: "device" };
  const DEVICE_HEADS = { device: "Device", browser: "Browser", os: "Operating system" };
  let running = false;
  let lastSeries = null;
  const errors = new Map();

  class HttpError extends Error {
    constructor(status, body) {
      super((body && body.message) || `the stats API answered ${status}`);
      this.status = status;
    }
  }

  // ---- talking to the API -------------------------------------------------------------

  async function api(path, params = {}) {
    const url = new URL(path, window.location.origin);
    for (const [key, value] of Object.entries(params)) url.searchParams.set(key, value);
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    let response;
    try {
      response = await fetch(url, { headers, cache: "no-store" });
    } catch (err) {
      throw new Error("the stats API did not answer (is the query API running?)");
    }
    if (!response.ok) {
      let body = null;
      try { body = await response.json(); } catch (err) { body = null; }
      throw new HttpError(response.status, body);
    }
    return response.json();
  }

  const isUnauthorized = (err) => err instanceof HttpError && err.status === 401;

  // A repeating task that never overlaps itself and stops for good when told to.
  function poller(task, everyMs, source) {
    let timer = 0;
    let generation = 0;
    async function run(mine) {
      try {
        await task();
        errors.delete(source);
      } catch (err) {
        if (mine !== generation) return;
        if (isUnauthorized(err)) { needToken(true); return; }
        errors.set(source, err.message);
      }
      showErrors();
      if (mine === generation && !document.hidden) {
        timer = setTimeout(() => run(mine), everyMs);
      }
    }
    return {
      start(now = true) {
        this.stop();
        const mine = generation;
        if (document.hidden) return;
        if (now) run(mine); else timer = setTimeout(() => run(mine), everyMs);
      },
      stop() { generation += 1; clearTimeout(timer); },
    };
  }

  const live = poller(loadLive, LIVE_MS, "live");
  const range = poller(loadRange, RANGE_MS, "range");
  const sitesPoller = poller(loadSites, SITES_MS, "sites");
  const pollers = [live, range, sitesPoller];

  // ---- state <-> URL ------------------------------------------------------------------

  function utcDate(ms) { return new Date(ms).toISOString().slice(0, 10); }

  function readUrl() {
    const query = new URLSearchParams(window.location.search);
    const site = query.get("site");
    if (site && SITE_RE.test(site)) state.site = site;
    const period = query.get("period");
    if (PERIODS.includes(period)) state.period = period;
    const from = query.get("from");
    const to = query.get("to");
    state.from = from && DATE_RE.test(from) ? from : utcDate(Date.now() - 6 * 24 * HOUR_MS);
    state.to = to && DATE_RE.test(to) ? to : utcDate(Date.now());
  }

  function writeUrl() {
    const query = new URLSearchParams({ site: state.site, period: state.period });
    if (state.period === "custom") { query.set("from", state.from); query.set("to", state.to); }
    window.history.replaceState(null, "", `${window.location.pathname}?${query}`);
  }

  const viewKey = () => `${state.site}|${state.period}|${state.from}|${state.to}`;

  function rangeParams() {
    return state.period === "custom" ? { from: state.from, to: state.to }
      : { period: state.period };
  }

  // ---- loading ------------------------------------------------------------------------

  async function loadSites() {
    const body = await api("/stats/sites");
    state.sites = body.sites;
    chooseSite();
    renderSites();
  }

  async function loadLive() {
    const site = state.site;
    const body = await api("/stats/realtime", { site_id: site });
    if (site !== state.site) return;
    setNumber("live-visitors", body.visitors_last_5_minutes);
    setNumber("live-views-minute", body.views_last_minute);
    setNumber("live-views-5", body.views_last_5_minutes);
    setStatus("live");
    $("updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
  }

  async function loadRange() {
    const key = viewKey();
    const site = { site_id: state.site };
    const series = { ...site, ...rangeParams() };
    if (INTERVALS[state.period]) series.interval = INTERVALS[state.period];
    const answers = await Promise.allSettled([
      api("/stats/compare", { ...site, ...rangeParams() }),
      api("/stats/timeseries", series),
      api("/stats/top", { ...site, ...rangeParams(), limit: "10" }),
      api("/stats/breakdown", { ...site, ...rangeParams(), dimension: "source", limit: "10" }),
      api("/stats/breakdown", { ...site, ...rangeParams(), dimension: state.devices, limit: "10" }),
    ]);
    if (key !== viewKey()) return;
    const [compare, timeseries, top, sources, devices] = answers;
    if (compare.status === "fulfilled") renderTotals(compare.value);
    if (timeseries.status === "fulfilled") { lastSeries = timeseries.value; drawChart(); }
    if (top.status === "fulfilled") renderTop(top.value);
    if (sources.status === "fulfilled") renderBreakdown("sources", sources.value, "Sources");
    if (devices.status === "fulfilled" && devices.value.dimension === state.devices) {
      renderBreakdown("devices", devices.value, DEVICE_HEADS[state.devices]);
    }
    const failed = answers.find((a) => a.status === "rejected");
    if (failed) throw failed.reason;
  }

  // ---- rendering ----------------------------------------------------------------------

  function setNumber(id, value) {
    const element = $(id);
    element.textContent = numbers.format(value);
    element.dataset.value = String(value);
  }

  function clearNumbers() {
    for (const id of ["live-visitors", "live-views-minute", "live-views-5", "views",
      "visitors"]) {
      $(id).textContent = "–";
      delete $(id).dataset.value;
    }
    for (const id of ["views-change", "visitors-change", "views-previous",
      "visitors-previous"]) $(id).textContent = "";
  }

  function setStatus(kind) {
    const status = $("live-status");
    status.dataset.state = kind;
    status.textContent = { live: "live", paused: "paused", error: "error", idle: "…" }[kind];
  }

  function showErrors() {
    const banner = $("banner");
    const messages = [...new Set(errors.values())];
    banner.hidden = messages.length === 0;
    banner.textContent = messages.length ? `Could not load the stats: ${messages.join("; ")}` : "";
    if (errors.has("live")) setStatus("error");
  }

  function renderChange(id, change) {
    const element = $(id);
    let text = "no change";
    let trend = "flat";
    if (change.percent === null) {
      text = change.absolute > 0 ? "new" : "–";
      trend = change.absolute > 0 ? "up" : "flat";
    } else if (change.absolute !== 0) {
      trend = change.absolute > 0 ? "up" : "down";
      const percent = Math.abs(change.percent);
      const shown = percent >= 10 ? Math.round(percent) : Math.round(percent * 10) / 10;
      text = `${change.absolute > 0 ? "▲" : "▼"} ${numbers.format(shown)}%`;
    }
    element.textContent = text;
    element.dataset.trend = trend;
  }

  function renderTotals(body) {
    setNumber("views", body.total_views);
    setNumber("visitors", body.unique_visitors);
    renderChange("views-change", body.change.total_views);
    renderChange("visitors-change", body.change.unique_visitors);
    const before = BEFORE[state.period];
    $("views-previous").textContent =
      `vs ${numbers.format(body.previous.total_views)} ${before}`;
    $("visitors-previous").textContent =
      `vs ${numbers.format(body.previous.unique_visitors)} ${before}`;
  }

  function renderTop(body) {
    $("top").replaceChildren(...rankedRows(body.pages, "page_id", "page",
                                           "No page views in this range yet."));
    $("top-title").textContent = `Top pages · ${LABELS[state.period]}`;
  }

  // A breakdown (/stats/breakdown) as rows like the top pages': value, views, visitors.
  function renderBreakdown(id, body, title) {
    // Events of /track and /events carry no referrer or User-Agent: in no breakdown.
    $(id).replaceChildren(...rankedRows(body.rows, "value", "value",
                                        "No page views from a tracker in this range yet."));
    $(`${id}-title`).textContent = `${title} · ${LABELS[state.period]}`;
  }

  // Table rows of a ranking: rank, name (field `field`, kept in data-`key`) with a meter
  // scaled to the most viewed, views and visitors; one row saying `empty` when there are none.
  function rankedRows(rows, field, key, empty) {
    const most = rows.reduce((m, r) => Math.max(m, r.views), 1);
    const made = rows.map((row) => {
      const tr = document.createElement("tr");
      tr.dataset[key] = row[field];
      const rank = cell(tr, "rank", String(row.rank));
      rank.setAttribute("aria-label", `rank ${row.rank}`);
      const name = cell(tr, "page", row[field]);
      const meter = document.createElement("span");
      meter.className = "meter";
      meter.style.width = `${(100 * row.views) / most}%`;
      name.appendChild(meter);
      cell(tr, "num", numbers.format(row.views));
      cell(tr, "num", numbers.format(row.unique_visitors));
      return tr;
    });
    if (!made.length) {
      const tr = document.createElement("tr");
      cell(tr, "none", empty).colSpan = 4;
      made.push(tr);
    }
    return made;
  }

  function chooseDevices(dimension) {
    state.devices = dimension;
    for (const tab of document.querySelectorAll(".tabs button")) {
      tab.setAttribute("aria-selected", String(tab.dataset.dimension === dimension));
    }
    $("devices-head").textContent = DEVICE_HEADS[dimension];
    $("devices").replaceChildren();
    if (running) range.start();
  }

  function cell(tr, className, text) {
    const td = document.createElement("td");
    td.className = className;
    td.textContent = text;
    tr.appendChild(td);
    return td;
  }

  function renderSites() {
    const wrap = $("site-wrap");
    const select = $("site");
    const list = state.sites.includes(state.site) ? state.sites : [state.site, ...state.sites];
    if (select.dataset.list !== list.join("\n")) {
      select.replaceChildren(...list.map((site) => new Option(site, site)));
      select.dataset.list = list.join("\n");
    }
    select.value = state.site;
    wrap.hidden = list.length < 2;
    $("site-one").textContent = list.length < 2 ? state.site : "";
  }

  function renderControls() {
    for (const button of $("periods").querySelectorAll("button")) {
      button.setAttribute("aria-pressed", String(button.dataset.period === state.period));
    }
    $("custom").hidden = state.period !== "custom";
    $("from").value = state.from;
    $("to").value = state.to;
    $("range-label").textContent = `· ${LABELS[state.period]}`;
    $("chart-title").textContent = `Views and visitors · ${LABELS[state.period]}`;
    document.title = `${state.site} · page views`;
  }

  // ---- the chart ----------------------------------------------------------------------

  function timeLabel(iso, interval) {
    const when = new Date(iso);
    if (interval === "day") {
      return when.toLocaleDateString(undefined, { month: "short", day: "numeric", timeZone: "UTC" });
    }
    return when.toLocaleTimeString(undefined, { hour: "numeric", minute: "2-digit" });
  }

  function fullLabel(iso, interval) {
    const when = new Date(iso);
    if (interval === "day") {
      return when.toLocaleDateString(undefined, { weekday: "short", month: "short", day: "numeric",
        timeZone: "UTC" });
    }
    return when.toLocaleString(undefined, { month: "short", day: "numeric", hour: "numeric",
      minute: "2-digit" });
  }

  function svg(name, attrs, parent) {
    const element = document.createElementNS(SVG_NS, name);
    for (const [key, value] of Object.entries(attrs)) element.setAttribute(key, String(value));
    if (parent) parent.appendChild(element);
    return element;
  }

  function niceStep(max, ticks) {
    const raw = max / ticks;
    const magnitude = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
    return Math.max(1, step);
  }

  function drawChart() {
    if (!lastSeries) return;
    const box = $("chart");
    const buckets = lastSeries.buckets;
    const interval = lastSeries.interval;
    const width = Math.max(280, Math.round(box.clientWidth || 640));
    const height = width < 520 ? 210 : 270;
    const m = { left: 44, right: 10, top: 12, bottom: 26 };
    const plotW = width - m.left - m.right;
    const plotH = height - m.top - m.bottom;
    const n = Math.max(1, buckets.length);
    const highest = buckets.reduce((h, b) => Math.max(h, b.views, b.unique_visitors), 0);
    const step = niceStep(Math.max(highest, 4), 4);
    const top = Math.ceil(Math.max(highest, 1) / step) * step;
    const y = (v) => m.top + plotH - (v / top) * plotH;
    const band = plotW / n;
    const totalViews = buckets.reduce((t, b) => t + b.views, 0);

    const root = svg("svg", {
      viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
      "aria-label": `${numbers.format(totalViews)} views in ${buckets.length} ${interval} buckets`,
      "data-total-views": totalViews, "data-buckets": buckets.length, "data-interval": interval,
    });
    for (let v = 0; v <= top; v += step) {
      svg("line", { class: "grid", x1: m.left, x2: width - m.right, y1: y(v), y2: y(v) }, root);
      const label = svg("text", { class: "axis", x: m.left - 6, y: y(v) + 4, "text-anchor": "end" }, root);
      label.textContent = numbers.format(v);
    }
    const barW = Math.max(1, band * (n > 60 ? 0.85 : 0.64));
    buckets.forEach((b, i) => {
      const h = (b.views / top) * plotH;
      svg("rect", {
        class: b.views ? "bar" : "bar zero", x: m.left + i * band + (band - barW) / 2,
        y: m.top + plotH - h, width: barW, height: h, rx: Math.min(3, barW / 3),
        "data-bucket": b.bucket, "data-views": b.views, "data-visitors": b.unique_visitors,
      }, root);
    });
    const points = buckets.map((b, i) => `${m.left + (i + 0.5) * band},${y(b.unique_visitors)}`);
    svg("polyline", { class: "line", points: points.join(" ") }, root);
    if (n <= 60) {
      buckets.forEach((b, i) => {
        if (b.unique_visitors) {
          svg("circle", { class: "dot", cx: m.left + (i + 0.5) * band, cy: y(b.unique_visitors), r: 2.5 }, root);
        }
      });
    }
    const every = Math.max(1, Math.ceil(n / Math.max(2, Math.floor(plotW / 74))));
    buckets.forEach((b, i) => {
      const hit = svg("rect", { class: "hit", x: m.left + i * band, y: m.top, width: band, height: plotH }, root);
      const title = svg("title", {}, hit);
      title.textContent = `${fullLabel(b.bucket, interval)}: ${numbers.format(b.views)} views, ` +
        `${numbers.format(b.unique_visitors)} unique visitors`;
      if (i % every === 0) {
        const x = Math.min(Math.max(m.left + (i + 0.5) * band, m.left + 18), width - m.right - 18);
        const label = svg("text", { class: "axis", x, y: height - 8, "text-anchor": "middle" }, root);
        label.textContent = timeLabel(b.bucket, interval);
      }
    });
    if (totalViews === 0) {
      const empty = svg("text", { class: "empty", x: m.left + plotW / 2, y: m.top + plotH / 2,
        "text-anchor": "middle" }, root);
      empty.textContent = "No page views in this range yet";
    }
    box.replaceChildren(root);
  }

  // ---- the token ----------------------------------------------------------------------

  function needToken(rejected) {
    running = false;
    for (const p of pollers) p.stop();
    const hadToken = sessionStorage.getItem(TOKEN_KEY) !== null;
    sessionStorage.removeItem(TOKEN_KEY);
    setStatus("idle");
    $("signin").hidden = false;
    const error = $("signin-error");
    error.hidden = !(rejected && hadToken);
    error.textContent = "That token is no longer accepted. Enter a current one.";
    $("token").focus();
  }

  async function signIn(event) {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    const error = $("signin-error");
    const submit = $("signin-submit");
    sessionStorage.setItem(TOKEN_KEY, token);
    submit.disabled = true;
    try {
      await loadSites();
    } catch (err) {
      if (isUnauthorized(err)) sessionStorage.removeItem(TOKEN_KEY);
      error.textContent = isUnauthorized(err)
        ? "That token was not accepted. Check it and try again." : `Could not check the token: ${err.message}`;
      error.hidden = false;
      $("token").select();
      return;
    } finally {
      submit.disabled = false;
    }
    $("token").value = "";
    error.hidden = true;
    start();
  }

  // ---- wiring -------------------------------------------------------------------------

  function changeView(update) {
    update();
    lastSeries = null;
    $("chart").replaceChildren();
    $("top").replaceChildren();
    $("sources").replaceChildren();
    $("devices").replaceChildren();
    clearNumbers();
    writeUrl();
    renderControls();
    renderSites();
    if (running) { live.start(); range.start(); }
  }

  // The site named in the URL, else "default" when it has events, else the first one known.
  function chooseSite() {
    if (state.site) return;
    const fallback = state.sites.includes("default") || !state.sites.length;
    state.site = fallback ? "default" : state.sites[0];
  }

  function start() {
    running = true;
    $("signin").hidden = true;
    $("forget").hidden = sessionStorage.getItem(TOKEN_KEY) === null;
    chooseSite();
    writeUrl();
    renderControls();
    renderSites();
    if (document.hidden) { setStatus("paused"); return; }
    live.start();
    range.start();
    sitesPoller.start(false);
  }

  function bind() {
    $("periods").addEventListener("click", (event) => {
      const period = event.target.closest("button")?.dataset.period;
      if (period && period !== state.period) changeView(() => { state.period = period; });
    });
    $("site").addEventListener("change", (event) => {
      changeView(() => { state.site = event.target.value; });
    });
    for (const id of ["from", "to"]) {
      $(id).addEventListener("change", () => {
        const from = $("from").value;
        const to = $("to").value;
        if (DATE_RE.test(from) && DATE_RE.test(to)) changeView(() => { state.from = from; state.to = to; });
      });
    }
    for (const tab of document.querySelectorAll(".tabs button")) {
      tab.addEventListener("click", () => {
        if (tab.dataset.dimension !== state.devices) chooseDevices(tab.dataset.dimension);
      });
    }
    $("signin-form").addEventListener("submit", signIn);
    $("forget").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      window.location.reload();
    });
    document.addEventListener("visibilitychange", () => {
      if (!running) return;
      if (document.hidden) {
        for (const p of pollers) p.stop();
        setStatus("paused");
      } else {
        live.start();
        range.start();
        sitesPoller.start();
      }
    });
    let pending = 0;
    window.addEventListener("resize", () => {
      cancelAnimationFrame(pending);
      pending = requestAnimationFrame(drawChart);
    });
  }

  async function boot() {
    readUrl();
    bind();
    if (state.site) { // the site is known: show it now, and load the picker's list alongside
      start();
      if (running) sitesPoller.start();
      return;
    }
    try {
      await loadSites();
    } catch (err) {
      if (isUnauthorized(err)) { needToken(false); return; }
      errors.set("sites", err.message);
      showErrors();
    }
    start();
  }

  boot();
})();
