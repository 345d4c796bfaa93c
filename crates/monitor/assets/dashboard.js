// Vigil monitoring dashboard: vanilla ES2020, no dependencies, charts drawn as inline SVG.
'use strict';

const REFRESH_MS = 10000;
const RANGES = { '15m': 900, '1h': 3600, '6h': 21600, '24h': 86400, '7d': 604800 };
const PALETTE = ['#3b82f6', '#f59e0b', '#10b981', '#8b5cf6', '#ef4444', '#06b6d4', '#ec4899', '#84cc16'];
const KEY_COLORS = { ok: '#10b981', accept: '#10b981', defect: '#ef4444', reject: '#ef4444', review: '#f59e0b' };
const STATE_ORDER = { firing: 0, pending: 1, resolved: 2 };
const SEVERITY_ORDER = { critical: 0, warning: 1, info: 2 };
const SVG_NS = 'http://www.w3.org/2000/svg';

const state = { models: [], model: '', version: '', range: 3600, group: 'verdicts', data: null, seq: 0, timer: null, draws: [] };

// ---------- small helpers ----------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c != null && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v != null) el.setAttribute(k, v);
  if (text != null) el.textContent = text;
  return el;
}

const num = (v) => typeof v === 'number' && Number.isFinite(v);
const ms = (iso) => Date.parse(iso);
const sum = (xs) => xs.reduce((a, b) => a + (num(b) ? b : 0), 0);
const plural = (n, word) => `${fmtNum(n)} ${word}${n === 1 ? '' : 's'}`;

function fmtNum(v) {
  if (!num(v)) return '—';
  const a = Math.abs(v);
  if (a >= 1e6) return (v / 1e6).toFixed(1).replace(/\.0$/, '') + 'M';
  if (a >= 1e4) return (v / 1e3).toFixed(1).replace(/\.0$/, '') + 'k';
  if (a >= 100 || Number.isInteger(v)) return Math.round(v).toLocaleString('en-US');
  if (a === 0) return '0';
  return String(parseFloat(v.toPrecision(3)));
}
const fmtPct = (v) => (num(v) ? (Math.abs(v) < 0.001 && v !== 0 ? '<0.1' : fmtNum(v * 100)) + '%' : '—');
const fmtMs = (v) => (num(v) ? fmtNum(v) + ' ms' : '—');
const pad = (n) => String(n).padStart(2, '0');
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
const fmtDay = (d) => `${MONTHS[d.getMonth()]} ${d.getDate()}`;
const fmtHM = (d) => `${pad(d.getHours())}:${pad(d.getMinutes())}`;
function fmtTime(t, withDay) {
  const d = new Date(t);
  return withDay ? `${fmtDay(d)} ${fmtHM(d)}` : `${fmtHM(d)}:${pad(d.getSeconds())}`;
}
function fmtAgo(iso) {
  const t = ms(iso);
  if (!num(t)) return '—';
  const sec = Math.max(0, (Date.now() - t) / 1000);
  const rel = sec < 90 ? `${Math.round(sec)}s` : sec < 5400 ? `${Math.round(sec / 60)}m` : sec < 172800 ? `${Math.round(sec / 3600)}h` : `${Math.round(sec / 86400)}d`;
  return `${fmtTime(t, true)} (${rel} ago)`;
}
function fmtRange(sec) {
  const name = Object.keys(RANGES).find((k) => RANGES[k] === sec);
  return name || (sec % 86400 === 0 ? `${sec / 86400}d` : sec % 3600 === 0 ? `${sec / 3600}h` : `${Math.round(sec / 60)}m`);
}
function colorFor(key, i) {
  return KEY_COLORS[key] || PALETTE[i % PALETTE.length];
}

// ---------- scales and axes ----------

function niceTicks(lo, hi, count = 5) {
  if (lo === hi) { const d = Math.abs(lo) * 0.1 || 1; lo -= d; hi += d; }
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((st) => st >= raw);
  const ticks = [];
  for (let v = Math.floor(lo / step) * step; v <= hi + step * 0.999; v += step) {
    ticks.push(Math.abs(v) < step * 1e-9 ? 0 : parseFloat(v.toPrecision(12)));
    if (v >= hi) break;
  }
  return ticks;
}

function timeTicks(t0, t1, maxTicks) {
  const steps = [60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800].map((x) => x * 1000);
  const step = steps.find((st) => (t1 - t0) / st <= maxTicks) || steps[steps.length - 1];
  const off = -new Date(t0).getTimezoneOffset() * 60000;
  const ticks = [];
  for (let t = Math.ceil((t0 + off) / step) * step - off; t <= t1; t += step) {
    const d = new Date(t);
    const midnight = d.getHours() === 0 && d.getMinutes() === 0;
    ticks.push({ t, label: step >= 86400000 || (midnight && t1 - t0 > 86400000) ? fmtDay(d) : fmtHM(d) });
  }
  return ticks;
}

// Prepares an svg for drawing and returns its geometry.
function frame(svg, opts = {}) {
  svg.replaceChildren();
  const W = Math.max(200, Math.round(svg.getBoundingClientRect().width || svg.parentNode.clientWidth || 400));
  const H = Number(svg.getAttribute('height')) || 200;
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  const m = { l: opts.left ?? 52, r: 14, t: 10, b: 24 };
  return { W, H, m, pw: W - m.l - m.r, ph: H - m.t - m.b };
}

function emptyChart(svg, g, text) {
  svg.dataset.points = '0';
  svg.append(s('text', { x: g.W / 2, y: g.H / 2, class: 'empty-note', 'text-anchor': 'middle' }, text));
}

function yAxis(svg, g, ticks, y, fmt) {
  for (const v of ticks) {
    svg.append(s('line', { x1: g.m.l, x2: g.W - g.m.r, y1: y(v), y2: y(v), class: 'gridline' }));
    svg.append(s('text', { x: g.m.l - 6, y: y(v) + 4, class: 'tick', 'text-anchor': 'end' }, fmt(v)));
  }
}

function xTimeAxis(svg, g, x0, x1, x) {
  svg.append(s('line', { x1: g.m.l, x2: g.W - g.m.r, y1: g.H - g.m.b, y2: g.H - g.m.b, class: 'axis' }));
  for (const { t, label } of timeTicks(x0, x1, Math.max(2, Math.floor(g.pw / 80)))) {
    svg.append(s('line', { x1: x(t), x2: x(t), y1: g.H - g.m.b, y2: g.H - g.m.b + 4, class: 'axis' }));
    svg.append(s('text', { x: x(t), y: g.H - 6, class: 'tick', 'text-anchor': 'middle' }, label));
  }
}

// ---------- hover tooltip ----------

const tip = () => document.getElementById('tooltip');
function hideTip() { const el = tip(); if (el) el.hidden = true; }

// `positions` is a sorted list of x pixel positions; rowsAt(i) gives {title, rows:[{name,color,value}], dots:[y]}.
function hover(svg, g, positions, rowsAt) {
  const guide = s('line', { y1: g.m.t, y2: g.H - g.m.b, class: 'guide', visibility: 'hidden' });
  const dots = s('g', { class: 'dots' });
  svg.append(guide, dots);
  const overlay = s('rect', { x: g.m.l, y: g.m.t, width: g.pw, height: g.ph, fill: 'transparent' });
  svg.append(overlay);
  overlay.addEventListener('mousemove', (ev) => {
    const r = svg.getBoundingClientRect();
    const px = ((ev.clientX - r.left) / r.width) * g.W;
    let best = 0;
    positions.forEach((p, i) => { if (Math.abs(p - px) < Math.abs(positions[best] - px)) best = i; });
    const info = rowsAt(best);
    guide.setAttribute('x1', positions[best]);
    guide.setAttribute('x2', positions[best]);
    guide.setAttribute('visibility', 'visible');
    dots.replaceChildren(...(info.dots || []).map((d) => s('circle', { cx: positions[best], cy: d.y, r: 3.5, fill: d.color })));
    const el = tip();
    el.replaceChildren(h('div', { class: 'tip-title' }, info.title),
      ...info.rows.map((row) => h('div', { class: 'tip-row' },
        h('span', { class: 'swatch', style: `background:${row.color || '#94a3b8'}` }), h('span', { class: 'tip-name' }, row.name), h('b', {}, row.value))));
    el.hidden = false;
    const left = ev.clientX + 14 + el.offsetWidth > window.innerWidth ? ev.clientX - el.offsetWidth - 14 : ev.clientX + 14;
    el.style.left = `${left + window.scrollX}px`;
    el.style.top = `${Math.max(4, ev.clientY - el.offsetHeight / 2) + window.scrollY}px`;
  });
  overlay.addEventListener('mouseleave', () => { guide.setAttribute('visibility', 'hidden'); dots.replaceChildren(); hideTip(); });
}

// ---------- charts ----------

// series: [{name, color, points: [[tMs, value|null], ...], dash}]
// opts: {xDomain:[t0,t1], zero, fmt, gapMs, empty, extra(t) -> rows}
function lineChart(svg, series, opts = {}) {
  const g = frame(svg, opts);
  const all = series.flatMap((sr) => sr.points.filter((p) => num(p[1])));
  if (!all.length) return emptyChart(svg, g, opts.empty || 'No data in this range');
  svg.dataset.points = String(all.length);
  const fmt = opts.fmt || fmtNum;
  const [x0, x1] = opts.xDomain || [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let lo = Math.min(...all.map((p) => p[1])), hi = Math.max(...all.map((p) => p[1]));
  if (opts.zero) lo = Math.min(0, lo);
  if (opts.max != null) hi = Math.max(hi, opts.max);
  const ticks = niceTicks(lo, hi, Math.max(3, Math.floor(g.ph / 40)));
  const y0 = ticks[0], y1 = ticks[ticks.length - 1];
  const x = (t) => g.m.l + ((t - x0) / (x1 - x0 || 1)) * g.pw;
  const y = (v) => g.m.t + g.ph - ((v - y0) / (y1 - y0 || 1)) * g.ph;
  yAxis(svg, g, ticks, y, fmt);
  xTimeAxis(svg, g, x0, x1, x);
  series.forEach((sr) => {
    let d = '', prev = null;
    const pts = sr.points.filter((p) => num(p[1])).sort((a, b) => a[0] - b[0]);
    pts.forEach((p, i) => {
      const gap = prev == null || (opts.gapMs && p[0] - prev[0] > opts.gapMs);
      d += `${gap ? 'M' : 'L'}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`;
      const next = pts[i + 1];
      const isolated = gap && (!next || (opts.gapMs && next[0] - p[0] > opts.gapMs));
      if (isolated) svg.append(s('circle', { cx: x(p[0]), cy: y(p[1]), r: 2.5, fill: sr.color }));
      prev = p;
    });
    svg.append(s('path', { d, class: 'line', stroke: sr.color, 'stroke-dasharray': sr.dash }));
  });
  const times = [...new Set(all.map((p) => p[0]))].sort((a, b) => a - b);
  const lookup = series.map((sr) => new Map(sr.points.map((p) => [p[0], p[1]])));
  hover(svg, g, times.map(x), (i) => {
    const t = times[i];
    const rows = series.map((sr, k) => ({ name: sr.name, color: sr.color, value: fmt(lookup[k].get(t)) }));
    return {
      title: fmtTime(t, x1 - x0 > 86400000),
      rows: rows.concat(opts.extra ? opts.extra(t) : []),
      dots: series.map((sr, k) => ({ y: y(lookup[k].get(t)), color: sr.color })).filter((d) => num(d.y)),
    };
  });
}

// Stacked bars: rows [{t, values:{key:n}}], keys [..], one bar per row spanning widthMs.
function barChart(svg, rows, keys, opts = {}) {
  const g = frame(svg, opts);
  const points = rows.reduce((n, r) => n + keys.filter((k) => num(r.values[k]) && r.values[k] > 0).length, 0);
  if (!points) return emptyChart(svg, g, opts.empty || 'No data in this range');
  svg.dataset.points = String(points);
  const [x0, x1] = opts.xDomain;
  const totals = rows.map((r) => sum(keys.map((k) => r.values[k])));
  const ticks = niceTicks(0, Math.max(...totals), Math.max(3, Math.floor(g.ph / 40)));
  const yMax = ticks[ticks.length - 1];
  const x = (t) => g.m.l + ((t - x0) / (x1 - x0 || 1)) * g.pw;
  const y = (v) => g.m.t + g.ph - (v / (yMax || 1)) * g.ph;
  yAxis(svg, g, ticks, y, fmtNum);
  const bw = Math.max(1, (x(x0 + opts.widthMs) - x(x0)) * 0.82);
  for (const r of rows) {
    let acc = 0;
    keys.forEach((k, i) => {
      const v = r.values[k];
      if (!num(v) || v <= 0) return;
      svg.append(s('rect', { x: x(r.t + opts.widthMs / 2) - bw / 2, y: y(acc + v), width: bw, height: Math.max(0.5, y(acc) - y(acc + v)), fill: colorFor(k, i), class: 'bar' }));
      acc += v;
    });
  }
  xTimeAxis(svg, g, x0, x1, x);
  hover(svg, g, rows.map((r) => x(r.t + opts.widthMs / 2)), (i) => ({
    title: fmtTime(rows[i].t, x1 - x0 > 86400000),
    rows: keys.map((k, j) => ({ name: k, color: colorFor(k, j), value: fmtNum(rows[i].values[k] || 0) }))
      .concat([{ name: 'total', value: fmtNum(totals[i]) }]),
  }));
}

// Reference vs current fractions per bin over `edges` (bins drawn equally wide, labelled by edge).
function histogram(svg, entry, opts = {}) {
  const g = frame(svg, { left: 44 });
  if (!entry || !Array.isArray(entry.reference) || !entry.reference.length) {
    return emptyChart(svg, g, opts.empty || 'No distribution available');
  }
  const ref = entry.reference, cur = entry.current || [], edges = entry.edges || [];
  const n = Math.max(ref.length, cur.length);
  svg.dataset.points = String(ref.filter(num).length + cur.filter(num).length);
  const ticks = niceTicks(0, Math.max(...ref.filter(num), ...cur.filter(num), 0.01), 3);
  const yMax = ticks[ticks.length - 1];
  const band = g.pw / n;
  const x = (i) => g.m.l + i * band;
  const y = (v) => g.m.t + g.ph - (v / yMax) * g.ph;
  yAxis(svg, g, ticks, y, (v) => fmtNum(v * 100) + '%');
  for (let i = 0; i < n; i++) {
    if (num(ref[i])) svg.append(s('rect', { x: x(i) + band * 0.06, y: y(ref[i]), width: band * 0.88, height: g.H - g.m.b - y(ref[i]), class: 'hist-ref' }));
    if (num(cur[i])) svg.append(s('rect', { x: x(i) + band * 0.25, y: y(cur[i]), width: band * 0.5, height: g.H - g.m.b - y(cur[i]), class: 'hist-cur' }));
  }
  svg.append(s('line', { x1: g.m.l, x2: g.W - g.m.r, y1: g.H - g.m.b, y2: g.H - g.m.b, class: 'axis' }));
  const every = Math.max(1, Math.ceil(n / Math.max(2, Math.floor(g.pw / 60))));
  for (let i = 0; i <= n; i += every) {
    if (num(edges[i])) svg.append(s('text', { x: x(i), y: g.H - 6, class: 'tick', 'text-anchor': 'middle' }, fmtNum(edges[i])));
  }
  const edge = (i) => (num(edges[i]) ? fmtNum(edges[i]) : i === 0 ? '−∞' : '+∞');
  hover(svg, g, Array.from({ length: n }, (_, i) => x(i) + band / 2), (i) => ({
    title: `bin [${edge(i)}, ${edge(i + 1)})`,
    rows: [{ name: 'reference', color: '#94a3b8', value: fmtPct(ref[i]) }, { name: 'current', color: '#3b82f6', value: fmtPct(cur[i]) }],
  }));
}

// ---------- page sections ----------

function chartSvg(id, height) {
  return s('svg', { class: 'chart', 'data-chart': id, 'data-points': '0', height, width: '100%', role: 'img', 'aria-label': id });
}

function legend(items) {
  return h('div', { class: 'legend' }, items.map((it) => h('span', { class: 'legend-item' },
    h('span', { class: `swatch${it.dash ? ' dashed' : ''}`, style: `background:${it.color}` }), it.name)));
}

function panel(title, opts, ...body) {
  return h('section', { class: `panel ${opts.cls || ''}` },
    h('div', { class: 'panel-head' }, h('h3', {}, title), opts.badge || null, opts.aside || null), ...body);
}

function driftBadge(entry) {
  if (!entry) return h('span', { class: 'badge-na', title: 'No drift result for this range' }, 'drift n/a');
  const usesP = num(entry.p_value);
  const detail = usesP ? `${entry.method} p=${fmtNum(entry.p_value)} ${entry.drifted ? '<' : '≥'} ${fmtNum(entry.threshold)}`
    : `${entry.method} ${fmtNum(entry.statistic)} ${entry.drifted ? '>' : '≤'} ${fmtNum(entry.threshold)}`;
  const psi = num(entry.psi) ? ` · PSI ${fmtNum(entry.psi)}` : '';
  return h('span', { class: `drift-badge ${entry.drifted ? 'drifted' : 'ok'}`, title: detail + psi },
    entry.drifted ? `drift: ${detail}` : 'no drift');
}

function tile(label, value, sub, tone) {
  return h('div', { class: `tile ${tone || ''}` }, h('div', { class: 'tile-label' }, label), h('div', { class: 'tile-value' }, value), h('div', { class: 'tile-sub' }, sub || '\u00a0'));
}

function tiles(d) {
  const w = d.windows || [];
  const count = sum(w.map((x) => x.count)), errors = sum(w.map((x) => x.errors)), nulls = sum(w.map((x) => x.nulls));
  const p99 = w.map((x) => x.latency_p99_ms).filter(num);
  const acc = (d.accuracy || []).filter((a) => num(a.accuracy) && num(a.labeled) && a.labeled > 0);
  const labeled = sum(acc.map((a) => a.labeled));
  const accuracy = labeled ? sum(acc.map((a) => a.accuracy * a.labeled)) / labeled : null;
  // Models answering in text (a recogniser): word error rate over every labelled word.
  const words = sum(acc.map((a) => a.reference_words || 0));
  const wer = words ? sum(acc.map((a) => a.word_errors || 0)) / words : null;
  const alerts = d.alerts || [];
  const firing = alerts.filter((a) => a.state === 'firing').length, pending = alerts.filter((a) => a.state === 'pending').length;
  const errRate = count ? errors / count : null, nullRate = count ? nulls / count : null;
  const tone = (v, warn, bad) => (!num(v) ? '' : v >= bad ? 'bad' : v >= warn ? 'warn' : '');
  return h('div', { class: 'tiles' },
    tile('Requests', fmtNum(count), count ? `${fmtNum(count / Math.max(1, (ms(d.to) - ms(d.from)) / 1000))} req/s avg` : 'no traffic in range'),
    tile('Error rate', fmtPct(errRate), count ? plural(errors, 'error') : '', tone(errRate, 0.01, 0.05)),
    tile('Null-output rate', fmtPct(nullRate), count ? plural(nulls, 'null output') : '', tone(nullRate, 0.01, 0.05)),
    tile('p99 latency (peak)', fmtMs(p99.length ? Math.max(...p99) : null), p99.length ? `latest ${fmtMs(p99[p99.length - 1])}` : ''),
    wer == null ? tile('Accuracy', accuracy == null ? '—' : fmtPct(accuracy), labeled ? `${fmtNum(labeled)} labeled` : 'no labels yet')
      : tile('Word error rate', fmtPct(wer), `${fmtNum(words)} words in ${fmtNum(labeled)} labels`, wer >= 0.3 ? 'bad' : wer >= 0.15 ? 'warn' : ''),
    h('a', { href: '#alerts-section', class: 'tile-link' }, tile('Firing alarms', String(firing), pending ? `${pending} pending` : 'none pending', firing ? 'bad' : pending ? 'warn' : 'good')));
}

function banners(d) {
  const out = [];
  const ds = d.drift && d.drift.dataset;
  if (ds && ds.drifted) {
    out.push(h('div', { class: 'banner danger', id: 'drift-banner' }, h('b', {}, 'Dataset drift detected. '),
      `${ds.drifted_features} of ${ds.total} features drifted (${fmtPct(ds.share)}) compared with ${d.drift.baseline || 'the reference'}.`));
  }
  if (d.drift && d.drift.error) out.push(h('div', { class: 'banner info' }, h('b', {}, 'Drift unavailable: '), d.drift.error));
  return out;
}

function alertsTable(alerts) {
  const sorted = [...(alerts || [])].sort((a, b) => (STATE_ORDER[a.state] ?? 3) - (STATE_ORDER[b.state] ?? 3)
    || (SEVERITY_ORDER[a.severity] ?? 3) - (SEVERITY_ORDER[b.severity] ?? 3) || (ms(b.since) || 0) - (ms(a.since) || 0));
  const rows = sorted.map((a) => h('tr', { 'data-state': a.state, class: `state-${a.state}` },
    h('td', {}, h('span', { class: `state-pill ${a.state}` }, a.state)), h('td', { class: 'rule' }, a.rule),
    h('td', {}, h('span', { class: `sev ${a.severity}` }, a.severity || '—')), h('td', { class: 'mono' }, a.metric || '—'),
    h('td', { class: 'num' }, fmtNum(a.value)), h('td', { class: 'num' }, fmtNum(a.threshold)),
    h('td', { class: 'since' }, a.since ? fmtAgo(a.since) : '—'), h('td', { class: 'msg' }, a.message || '')));
  if (!rows.length) rows.push(h('tr', { class: 'empty-row' }, h('td', { colspan: 8 }, 'No alarms in this range. All quiet.')));
  return h('table', { id: 'alerts', class: 'alerts' },
    h('thead', {}, h('tr', {}, ['State', 'Rule', 'Severity', 'Metric', 'Value', 'Threshold', 'Since', 'Message'].map((c) => h('th', {}, c)))),
    h('tbody', {}, rows));
}

// Who decided: the share of items the model decided, the review queue, and how often
// reviewers agree with each version of the model.
function reviewSection(d, w) {
  const r = d.review || {};
  const decided = sum(w.map((x) => sum(Object.values(x.decisions || {}))));
  const byPerson = sum(w.map((x) => (x.decisions || {}).human_review || 0));
  const rate = decided ? (decided - byPerson) / decided : null;
  const agreement = (r.agreement || []).map((a) => h('tr', { 'data-variant': a.variant, 'data-version': a.model_version },
    h('td', {}, a.variant), h('td', {}, a.model_version), h('td', { class: 'num' }, fmtNum(a.compared)),
    h('td', { class: 'num' }, fmtPct(a.compared ? a.agreed / a.compared : null))));
  if (!agreement.length) agreement.push(h('tr', { class: 'empty-row' }, h('td', { colspan: 4 }, 'No reviewed predictions in this range.')));
  // Several people deciding one item: how they agree with each other, the model and their panel.
  const panel = r.panel || {};
  const reviewers = (panel.reviewers || []).map((x) => h('tr', { 'data-reviewer': x.reviewer },
    h('td', {}, x.reviewer), h('td', { class: 'num' }, fmtNum(x.decisions)),
    h('td', { class: 'num' }, fmtPct(x.with_model)), h('td', { class: 'num' }, fmtPct(x.with_panel))));
  const panelTable = panel.items ? h('div', { class: 'panel table-panel' },
    h('p', { id: 'panel-agreement' }, `${fmtNum(panel.items)} items decided by several people: they agree on `,
      h('strong', {}, fmtPct(panel.pairwise_agreement)), ' of pairs; Fleiss\' kappa ',
      h('strong', {}, num(panel.fleiss_kappa) ? panel.fleiss_kappa.toFixed(2) : '—'), '.'),
    h('table', { id: 'reviewers', class: 'alerts' },
      h('thead', {}, h('tr', {}, ['Reviewer', 'Decisions', 'Agrees with model', 'Agrees with panel'].map((c) => h('th', {}, c)))),
      h('tbody', {}, reviewers))) : null;
  return h('div', { class: 'section', id: 'review-section' }, h('h2', {}, 'Human review'),
    h('div', { class: 'tiles' },
      tile('Automation rate', fmtPct(rate), decided ? `${fmtNum(byPerson)} of ${fmtNum(decided)} to a person` : 'no decisions in range'),
      tile('Review queue', fmtNum(r.open ?? 0), `${fmtNum(r.claimed ?? 0)} claimed`, (r.open || 0) > 0 ? 'warn' : ''),
      tile('Oldest open item', num(r.oldest_open_age_s) ? fmtAgo(new Date(Date.now() - r.oldest_open_age_s * 1000).toISOString()) : '—', `${fmtNum(r.decided ?? 0)} decided in all`),
      h('a', { href: '/review', class: 'tile-link' }, tile('Review', 'Open →', 'take the next item'))),
    h('div', { class: 'panel table-panel' }, h('table', { id: 'review-agreement', class: 'alerts' },
      h('thead', {}, h('tr', {}, ['Variant', 'Version', 'Reviewed', 'Reviewers agree'].map((c) => h('th', {}, c)))),
      h('tbody', {}, agreement))), panelTable);
}

function auditTable(events) {
  const rows = (events || []).map((e) => h('tr', { 'data-action': e.action },
    h('td', { class: 'since' }, fmtAgo(e.time)), h('td', {}, e.actor), h('td', {}, e.action), h('td', { class: 'mono' }, e.subject),
    h('td', {}, e.from || '—'), h('td', {}, e.to || '—'), h('td', { class: 'msg' }, e.reason || '')));
  if (!rows.length) rows.push(h('tr', { class: 'empty-row' }, h('td', { colspan: 7 }, 'No registry or deployment changes for this model.')));
  return h('table', { id: 'audit', class: 'alerts' },
    h('thead', {}, h('tr', {}, ['When', 'Who', 'Action', 'Subject', 'From', 'To', 'Why'].map((c) => h('th', {}, c)))),
    h('tbody', {}, rows));
}

// Each rollout of the model: its plan, where it stands, and every decision with its checks.
function rolloutsTable(rollouts) {
  const pct = (v) => `${Math.round(v * 1000) / 10}%`;
  const rows = (rollouts || []).flatMap((r) => {
    const steps = r.plan || [];
    const head = h('tr', { class: 'rollout', 'data-state': r.state },
      h('td', { class: 'since' }, fmtAgo(r.step_started_at)), h('td', { class: 'mono' }, `${r.primary_version} → ${r.candidate_version}`),
      h('td', {}, r.state), h('td', {}, `step ${r.step + 1} of ${steps.length}${steps[r.step] ? ` (${pct(steps[r.step].share)})` : ''}`),
      h('td', { class: 'msg' }, steps.map((s) => pct(s.share)).join(' → ')));
    const decisions = (r.history || []).map((d) => h('tr', { class: 'decision', 'data-decision': d.decision },
      h('td', { class: 'since' }, fmtAgo(d.time)), h('td', {}, d.by || 'controller'), h('td', {}, d.decision), h('td', {}, `step ${d.step + 1}`),
      h('td', { class: 'msg' }, (d.checks || []).map((c) => `${c.name} ${c.passed ? 'ok' : 'FAILED'} (${fmtNum(c.candidate)} vs ${fmtNum(c.primary)}, limit ${fmtNum(c.limit)})`).join('; ') || d.reason || '')));
    return [head, ...decisions];
  });
  if (!rows.length) rows.push(h('tr', { class: 'empty-row' }, h('td', { colspan: 5 }, 'No rollouts of this model (vigil rollout start).')));
  return h('table', { id: 'rollouts', class: 'alerts' },
    h('thead', {}, h('tr', {}, ['When', 'Versions / who', 'State / decision', 'Step', 'Plan / checks'].map((c) => h('th', {}, c)))),
    h('tbody', {}, rows));
}

// Builds the panels and returns [elements, drawFns]; draws run once the elements are in the page.
function buildPanels(d) {
  const w = (d.windows || []).map((x) => ({ ...x, t: ms(x.start) })).filter((x) => num(x.t)).sort((a, b) => a.t - b.t);
  const resMs = (d.resolution_s || 60) * 1000;
  const to = num(ms(d.to)) ? ms(d.to) : Date.now(), from = num(ms(d.from)) ? ms(d.from) : to - state.range * 1000;
  const base = { xDomain: [from, to], gapMs: resMs * 1.5 };
  const line = (name, color, key, dash) => ({ name, color, dash, points: w.map((x) => [x.t, x[key]]) });
  const rate = (key) => w.map((x) => [x.t, x.count ? (x[key] || 0) / x.count : null]);
  const draws = [];
  const chart = (id, height, fn) => { const svg = chartSvg(id, height); draws.push(() => fn(svg)); return svg; };
  const driftOf = (name) => ((d.drift && d.drift.features) || []).find((f) => f.feature === name);
  const histNote = d.drift && d.drift.error ? `Drift unavailable: ${d.drift.error}` : 'No drift result for this range';

  const service = [
    panel('Traffic', { aside: legend([{ name: 'requests/s', color: PALETTE[0] }, { name: 'errors/s', color: '#ef4444' }]) },
      chart('traffic', 200, (svg) => lineChart(svg, [line('requests/s', PALETTE[0], 'throughput_rps'),
        { name: 'errors/s', color: '#ef4444', points: w.map((x) => [x.t, num(x.errors) ? x.errors / (resMs / 1000) : null]) }], { ...base, zero: true }))),
    panel('Latency', { aside: legend([{ name: 'p50', color: PALETTE[2] }, { name: 'p99', color: PALETTE[3] }]) },
      chart('latency', 200, (svg) => lineChart(svg, [line('p50', PALETTE[2], 'latency_p50_ms'), line('p99', PALETTE[3], 'latency_p99_ms')], { ...base, zero: true, fmt: fmtMs }))),
    panel('Null outputs & errors rate', { aside: legend([{ name: 'null rate', color: PALETTE[1] }, { name: 'error rate', color: '#ef4444' }]) },
      chart('errors', 200, (svg) => lineChart(svg, [{ name: 'null rate', color: PALETTE[1], points: rate('nulls') }, { name: 'error rate', color: '#ef4444', points: rate('errors') }], { ...base, zero: true, fmt: fmtPct }))),
    verdictPanel(w, base, resMs, chart),
  ];

  const pred = d.drift ? d.drift.prediction : null;
  const quality = [
    panel('Score mean & distribution', { badge: driftBadge(pred) },
      chart('score', 170, (svg) => lineChart(svg, [line('score mean', PALETTE[3], 'score_mean')], { ...base })),
      histHead('Score distribution'), chart('hist-score', 120, (svg) => histogram(svg, pred, { empty: histNote }))),
    accuracyPanel(d, base, chart),
  ];
  // Shadow versions: how often each answers as the primary did, when any ran in shadow.
  const shadows = d.shadow_agreement || [];
  if (shadows.length) quality.push(agreementPanel(shadows, base, chart));
  // User feedback per prediction (speech: redo-search, switch-to-typing, click-through), when any.
  const kinds = [...new Set(w.flatMap((x) => Object.keys(x.feedback || {})))].sort();
  if (kinds.length) {
    const series = kinds.map((k, i) => ({ name: k, color: colorFor(k, i), points: w.map((x) => [x.t, x.count ? ((x.feedback || {})[k] || 0) / x.count : null]) }));
    quality.push(panel('Feedback per prediction', { aside: legend(series) },
      chart('feedback', 200, (svg) => lineChart(svg, series, { ...base, zero: true, fmt: fmtPct }))));
  }

  const names = [...new Set([...w.flatMap((x) => Object.keys(x.features || {})), ...((d.drift && d.drift.features) || []).map((f) => f.feature)])].sort();
  const features = names.map((name) => {
    const entry = driftOf(name);
    const missing = sum(w.map((x) => x.features && x.features[name] && x.features[name].missing));
    return panel(name, { badge: driftBadge(entry), cls: entry && entry.drifted ? 'is-drifted' : '', aside: missing ? h('span', { class: 'muted' }, `${fmtNum(missing)} missing`) : null },
      chart(`feature-${name}`, 160, (svg) => lineChart(svg, [{ name: 'mean', color: PALETTE[0], points: w.map((x) => [x.t, x.features && x.features[name] ? x.features[name].mean : null]) }],
        { ...base, extra: (t) => featureExtra(w, name, t) })),
      histHead(`Distribution${d.drift && d.drift.baseline ? ` vs ${d.drift.baseline}` : ''}`),
      chart(`hist-${name}`, 120, (svg) => histogram(svg, entry, { empty: histNote })));
  });

  const sections = [
    section('Service', service),
    section('Model output', quality),
    section('Input features', features.length ? features : [h('div', { class: 'message small' }, 'No feature data in this range.')]),
    reviewSection(d, w),
    h('div', { class: 'section', id: 'alerts-section' }, h('h2', {}, 'Alarms'), h('div', { class: 'panel table-panel' }, alertsTable(d.alerts))),
    h('div', { class: 'section', id: 'rollouts-section' }, h('h2', {}, 'Rollouts'), h('div', { class: 'panel table-panel' }, rolloutsTable(d.rollouts))),
    h('div', { class: 'section', id: 'audit-section' }, h('h2', {}, 'Changes (audit)'), h('div', { class: 'panel table-panel' }, auditTable(d.audit))),
  ];
  return [sections, draws];
}

function section(title, panels) {
  return h('div', { class: 'section' }, h('h2', {}, title), h('div', { class: 'grid' }, panels));
}

function histHead(title) {
  return h('div', { class: 'hist-head' }, h('span', {}, title), legend([{ name: 'reference', color: '#94a3b8' }, { name: 'current', color: '#3b82f6' }]));
}

function featureExtra(w, name, t) {
  const f = (w.find((x) => x.t === t) || {}).features?.[name];
  return f ? [{ name: 'std', value: fmtNum(f.std) }, { name: 'count / missing', value: `${fmtNum(f.count)} / ${fmtNum(f.missing)}` }] : [];
}

function verdictPanel(w, base, resMs, chart) {
  const keysOf = (grp) => [...new Set(w.flatMap((x) => Object.keys(x[grp] || {})))].sort((a, b) => (KEY_COLORS[a] ? 0 : 1) - (KEY_COLORS[b] ? 0 : 1) || a.localeCompare(b));
  const keys = keysOf(state.group);
  const svg = chart('verdicts', 200, (el) => barChart(el, w.map((x) => ({ t: x.t, values: x[state.group] || {} })), keys, { ...base, widthMs: resMs }));
  const toggle = h('div', { class: 'seg' }, ['verdicts', 'decisions'].map((grp) => h('button', {
    type: 'button', class: grp === state.group ? 'active' : '', onclick: () => { state.group = grp; render(state.data); },
  }, grp)));
  return panel('Verdicts & decisions', { badge: toggle, aside: legend(keys.map((k, i) => ({ name: k, color: colorFor(k, i) }))) }, svg);
}

function accuracyPanel(d, base, chart) {
  const acc = (d.accuracy || []).map((a) => ({ ...a, t: ms(a.start) })).filter((a) => num(a.t)).sort((a, b) => a.t - b.t);
  const cov = num(d.label_coverage) ? ` · label coverage ${fmtPct(d.label_coverage)}` : '';
  const text = acc.some((a) => a.reference_words > 0);
  const wer = (a) => (a.reference_words > 0 ? a.word_errors / a.reference_words : null);
  const series = text
    ? [{ name: 'word error rate', color: PALETTE[3], points: acc.map((a) => [a.t, wer(a)]) },
      { name: 'exact transcripts', color: PALETTE[2], points: acc.map((a) => [a.t, a.accuracy]) }]
    : [['accuracy', PALETTE[2]], ['precision', PALETTE[0]], ['recall', PALETTE[1]]]
      .map(([k, c]) => ({ name: k, color: c, points: acc.map((a) => [a.t, a[k]]) }));
  const extra = (t) => {
    const a = acc.find((x) => x.t === t);
    return a ? [{ name: 'labeled', value: fmtNum(a.labeled) }, { name: 'label lag', value: num(a.label_lag_s) ? `${fmtNum(a.label_lag_s)} s` : '—' }] : [];
  };
  return panel(`${text ? 'Word error rate' : 'Accuracy'}${cov}`, { aside: acc.length ? legend(series) : null },
    chart('accuracy', 300, (svg) => lineChart(svg, series, { ...base, gapMs: null, max: text ? null : 1, fmt: fmtPct, extra,
      empty: 'No labels yet: accuracy appears once ground-truth labels arrive.' })));
}

function agreementPanel(rows, base, chart) {
  const versions = [...new Set(rows.map((r) => r.shadow_version))].sort();
  const series = versions.map((v, i) => ({
    name: `shadow v${v}`, color: colorFor(`shadow-${v}`, i),
    points: rows.filter((r) => r.shadow_version === v && r.compared > 0).map((r) => [ms(r.start), r.agreed / r.compared]).sort((a, b) => a[0] - b[0]),
  }));
  const totals = versions.map((v) => {
    const mine = rows.filter((r) => r.shadow_version === v);
    const compared = sum(mine.map((r) => r.compared)), agreed = sum(mine.map((r) => r.agreed)), failed = sum(mine.map((r) => r.shadow_failed));
    return h('span', { class: 'muted', 'data-shadow-version': v }, `v${v}: ${fmtPct(compared ? agreed / compared : 0)} of ${fmtNum(compared)} agree · ${fmtNum(failed)} failed`);
  });
  return panel('Shadow agreement with the primary', { aside: legend(series) },
    h('div', { class: 'agreement-totals' }, totals),
    chart('shadow-agreement', 200, (svg) => lineChart(svg, series, { ...base, gapMs: null, max: 1, zero: true, fmt: fmtPct })));
}

// ---------- rendering and data flow ----------

function markReady(error) {
  if (error) document.body.dataset.error = error; else delete document.body.dataset.error;
  document.body.dataset.ready = '1';
}

function showMessage(text, cls = '') {
  hideTip();
  document.getElementById('content').replaceChildren(h('div', { class: `message ${cls}` }, text));
}

function render(d) {
  hideTip();
  const content = document.getElementById('content');
  const [sections, draws] = buildPanels(d);
  const stale = state.error ? [h('div', { class: 'banner warn' }, h('b', {}, 'Refresh failed: '), `${state.error}. Showing the last data received.`)] : [];
  content.replaceChildren(...stale, ...banners(d), tiles(d), ...sections);
  state.draws = draws;
  drawAll();
}

function drawAll() {
  for (const draw of state.draws) {
    try { draw(); } catch (e) { console.error('chart failed', e); }
  }
}

async function getJSON(url) {
  const res = await authFetch(url, { headers: { Accept: 'application/json' } });
  if (!res.ok) {
    const body = await res.text().catch(() => '');
    throw new Error(`${url.split('?')[0]} returned HTTP ${res.status}${body ? `: ${body.slice(0, 200)}` : ''}`);
  }
  return res.json();
}

async function loadDashboard() {
  const seq = ++state.seq;
  const q = new URLSearchParams({ model: state.model, version: state.version, range: String(state.range) });
  try {
    const d = await getJSON(`/api/dashboard?${q}`);
    if (seq !== state.seq) return;
    state.data = d;
    state.error = null;
    render(d);
    setStatus(`Updated ${fmtTime(Date.now())}`);
    markReady();
  } catch (e) {
    if (seq !== state.seq) return;
    state.error = e.message || String(e);
    if (state.data) render(state.data); else showMessage(`Could not load the dashboard: ${state.error}`, 'error');
    setStatus('Update failed');
    markReady(state.error);
  }
}

function setStatus(text) {
  document.getElementById('refresh-status').textContent = text;
}

function syncControls() {
  const modelSel = document.getElementById('model-select'), versionSel = document.getElementById('version-select');
  const names = state.models.map((m) => m.model);
  if (state.model && !names.includes(state.model)) names.push(state.model);
  // Pipeline stages first (voice search: vad, asr, search), each labelled with its stage.
  const stageOf = (n) => ((state.models.find((m) => m.model === n) || {}).stages || []).join(', ');
  const order = ['vad', 'asr', 'search'];
  const rank = (n) => { const st = stageOf(n); const i = order.indexOf(st); return st ? (i < 0 ? order.length : i) : order.length + 1; };
  names.sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
  modelSel.replaceChildren(...names.map((n) => h('option', { value: n }, stageOf(n) ? `${stageOf(n)} stage: ${n}` : n)));
  modelSel.value = state.model;
  const versions = (state.models.find((m) => m.model === state.model) || {}).versions || [];
  if (state.version && !versions.includes(state.version)) versions.push(state.version);
  versionSel.replaceChildren(h('option', { value: '' }, 'All versions'), ...versions.map((v) => h('option', { value: v }, `v${v}`)));
  versionSel.value = state.version;
  for (const b of document.querySelectorAll('#range-buttons button')) b.classList.toggle('active', Number(b.dataset.range) === state.range);
  const url = new URL(window.location.href);
  url.searchParams.set('model', state.model);
  url.searchParams.set('range', String(state.range));
  if (state.version) url.searchParams.set('version', state.version); else url.searchParams.delete('version');
  window.history.replaceState(null, '', url);
}

function parseRange(v) {
  if (!v) return null;
  if (/^\d+$/.test(v)) return Number(v) > 0 ? Number(v) : null;
  const m = /^(\d+)([smhd])$/.exec(v);
  return m ? Number(m[1]) * { s: 1, m: 60, h: 3600, d: 86400 }[m[2]] : null;
}

function change(patch) {
  Object.assign(state, patch);
  if ('model' in patch || 'version' in patch) { state.data = null; showMessage('Loading dashboard…', 'loading'); }
  syncControls();
  setStatus('Loading…');
  loadDashboard();
}

function scheduleRefresh() {
  clearInterval(state.timer);
  if (!document.getElementById('auto-refresh').checked) return;
  state.timer = setInterval(() => { if (!document.hidden && state.model) loadDashboard(); }, REFRESH_MS);
}

async function init() {
  const params = new URLSearchParams(window.location.search);
  state.range = parseRange(params.get('range')) || RANGES['1h'];
  state.version = params.get('version') || '';
  document.getElementById('model-select').addEventListener('change', (e) => change({ model: e.target.value, version: '' }));
  document.getElementById('version-select').addEventListener('change', (e) => change({ version: e.target.value }));
  for (const b of document.querySelectorAll('#range-buttons button')) b.addEventListener('click', () => change({ range: Number(b.dataset.range) }));
  document.getElementById('auto-refresh').addEventListener('change', scheduleRefresh);
  let resizeTimer = null;
  window.addEventListener('resize', () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(drawAll, 150); });
  await start(params.get('model'));
}

// Loads the model list (retrying while it fails or is empty), then the dashboard.
async function start(wanted) {
  try {
    const res = await getJSON('/api/models');
    state.models = Array.isArray(res.models) ? res.models : [];
  } catch (e) {
    showMessage(`Could not load the model list: ${e.message || e}`, 'error');
    setStatus('Update failed');
    setTimeout(() => start(wanted), REFRESH_MS);
    return markReady(e.message || String(e));
  }
  state.model = wanted || (state.models[0] && state.models[0].model) || '';
  syncControls();
  if (!state.model) {
    showMessage('No models have reported any predictions yet. Send traffic to a serving endpoint and this page will fill in.', 'empty');
    setStatus('No models');
    setTimeout(() => start(wanted), REFRESH_MS);
    return markReady();
  }
  await loadDashboard();
  scheduleRefresh();
}

window.addEventListener('DOMContentLoaded', () => {
  init().catch((e) => { showMessage(`Unexpected error: ${e.message || e}`, 'error'); markReady(String(e)); });
});
