// Outrider dashboard: plain JavaScript, no build step. Every page is drawn from the control
// plane's API every 2 seconds; all text goes through textContent (never innerHTML), so names
// from proxies or policies cannot inject markup.
'use strict';

const POLL_MS = 2000;
const TOKEN_KEY = 'outrider.token';
let timer = null;
let generation = 0;

// ---- small helpers ----

function h(tag, attrs, ...children) {
  const svg = ['svg', 'g', 'rect', 'line', 'path', 'text', 'polyline', 'title', 'a', 'tspan', 'defs', 'marker'].includes(tag) && attrs && attrs.svg;
  const el = svg ? document.createElementNS('http://www.w3.org/2000/svg', tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'svg' || v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const s = (tag, attrs, ...children) => h(tag, Object.assign({ svg: true }, attrs), ...children);

async function api(path, options) {
  const res = await fetch(path, Object.assign({ cache: 'no-store' }, options || {}));
  let body = null;
  const text = await res.text();
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = { error: text }; }
  return { status: res.status, ok: res.ok, body };
}

const fmt = {
  rate: (v) => (v === null || v === undefined ? '–' : `${Number(v).toFixed(v < 10 ? 2 : 1)} rps`),
  pct: (v) => (v === null || v === undefined ? '–' : `${Number(v).toFixed(2)}%`),
  ms: (v) => (v === null || v === undefined ? '–' : `${Number(v) < 10 ? Number(v).toFixed(2) : Number(v).toFixed(1)} ms`),
  int: (v) => (v === null || v === undefined ? '–' : String(v)),
  dur(secs) {
    if (secs === null || secs === undefined) return '–';
    secs = Math.max(0, Math.round(secs));
    const d = Math.floor(secs / 86400), hh = Math.floor((secs % 86400) / 3600), m = Math.floor((secs % 3600) / 60);
    if (d) return `${d}d ${hh}h`;
    if (hh) return `${hh}h ${m}m`;
    if (m) return `${m}m ${secs % 60}s`;
    return `${secs}s`;
  },
  time: (unix) => (unix ? new Date(unix * 1000).toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC') : '–'),
};

// Health of a number set, as a word (never colour alone).
function health(n, breaker) {
  if (breaker === 'open') return ['bad', 'breaker open'];
  if (!n || !n.requests) return ['idle', 'no traffic'];
  if (n.successRate >= 99) return ['ok', 'healthy'];
  if (n.successRate >= 95) return ['warn', 'degraded'];
  return ['bad', 'failing'];
}

// An endpoint's health: ejected by a caller's outlier detection (with the time left), else
// from its success rate over the last minute.
function endpointHealth(e) {
  if (e.ejectedSeconds) return ['bad', `ejected, ${e.ejectedSeconds.toFixed(1)} s left`];
  const [cls, word] = health(e);
  return [cls, word === 'healthy' ? 'ok' : word];
}

function badge(cls, word) {
  return h('span', { class: `badge ${cls}`, text: word });
}

// A small YAML writer for showing documents read-only.
function yaml(v, indent) {
  indent = indent || '';
  const scalar = (x) => {
    if (x === null || x === undefined) return 'null';
    if (typeof x === 'number' || typeof x === 'boolean') return String(x);
    const str = String(x);
    if (/^[A-Za-z_/.][A-Za-z0-9_ ./:@%+=-]*$/.test(str) && !/^(true|false|null|yes|no|on|off|~)$/i.test(str) && !/\s$/.test(str)) return str;
    return JSON.stringify(str);
  };
  if (Array.isArray(v)) {
    if (!v.length) return '[]';
    return v.map((x) => {
      if (x && typeof x === 'object' && Object.keys(x).length) {
        const inner = yaml(x, indent + '  ');
        return `${indent}- ${inner.slice(indent.length + 2)}`;
      }
      return `${indent}- ${scalar(x)}`;
    }).join('\n');
  }
  if (v && typeof v === 'object') {
    const keys = Object.keys(v);
    if (!keys.length) return '{}';
    return keys.map((k) => {
      const x = v[k];
      if (x && typeof x === 'object' && (Array.isArray(x) ? x.length : Object.keys(x).length)) {
        return `${indent}${scalar(k)}:\n${yaml(x, indent + '  ')}`;
      }
      return `${indent}${scalar(k)}: ${x && typeof x === 'object' ? (Array.isArray(x) ? '[]' : '{}') : scalar(x)}`;
    }).join('\n');
  }
  return indent + scalar(v);
}

function table(headers, rows, attrs) {
  return h('table', attrs || {},
    h('thead', {}, h('tr', {}, headers.map((x) => h('th', { scope: 'col', class: /rate|success|p50|p99|ewma|requests|errors|rejected|retries|budget|endpoints|weight/i.test(x) ? 'num' : null, text: x })))),
    h('tbody', {}, rows));
}
const num = (text, attrs) => h('td', Object.assign({ class: 'num', text }, attrs || {}));

function announce(text) {
  document.getElementById('live').textContent = text;
}

// ---- token ----

function token() { return sessionStorage.getItem(TOKEN_KEY) || ''; }
function showToken() {
  document.getElementById('token-state').textContent = token() ? 'set for this tab' : 'none set';
}

// ---- pages ----

async function meshPage() {
  const r = await api('/v1/mesh?window=1m');
  if (!r.ok) return [h('h1', { text: 'Mesh' }), h('p', { class: 'error', text: r.body && r.body.error })];
  const { services, edges } = r.body;
  const bySvc = new Map(services.map((x) => [x.service, x]));
  for (const e of edges) {
    if (!bySvc.has(e.source)) bySvc.set(e.source, { service: e.source, endpoints: 0, requests: 0, resilience: { breaker: { state: 'unknown' } }, outside: true });
  }
  // Columns by call depth: callers left, callees right.
  const depth = new Map([...bySvc.keys()].map((k) => [k, 0]));
  for (let i = 0; i < bySvc.size; i++) {
    for (const e of edges) {
      if (e.source !== e.destination && depth.get(e.destination) < depth.get(e.source) + 1 && depth.get(e.source) + 1 < bySvc.size) depth.set(e.destination, depth.get(e.source) + 1);
    }
  }
  const cols = [];
  for (const [name, d] of depth) (cols[d] = cols[d] || []).push(name);
  const W = 430, H = 110, NW = 190, NH = 64;
  const pos = new Map();
  cols.forEach((names, c) => names.forEach((n, i) => pos.set(n, { x: 20 + c * W, y: 20 + i * H })));
  const width = Math.max(1, cols.length) * W - (W - NW) + 40, height = Math.max(1, ...cols.map((c) => c.length)) * H + 60;
  const svg = s('svg', { class: 'graph', width, height, viewBox: `0 0 ${width} ${height}`, role: 'group', 'aria-label': 'Service graph: services and the calls between them' });
  const edgeLayer = s('g', {}), labelLayer = s('g', {});
  // An arrowhead at the callee's end of every arrow: the direction reads without colour.
  const defs = s('defs', {}, s('marker', { id: 'arrowhead', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 8, markerHeight: 8, markerUnits: 'userSpaceOnUse', orient: 'auto' },
    s('path', { class: 'arrowhead', d: 'M0,0 L10,5 L0,10 z' })));
  svg.append(defs, edgeLayer, labelLayer);
  for (const e of edges) {
    const a = pos.get(e.source), b = pos.get(e.destination);
    if (!a || !b) continue;
    const [cls, word] = health(e);
    const label = `${fmt.rate(e.rps)} · ${fmt.pct(e.successRate)} · p99 ${fmt.ms(e.latencyMs.p99)}`;
    // Neighbouring columns: a straight arrow; farther (or backwards): an arc below the boxes.
    const near = b.x - a.x === W;
    const x1 = near ? a.x + NW : a.x + NW / 2, y1 = near ? a.y + NH / 2 : a.y + NH;
    const x2 = near ? b.x : b.x + NW / 2, y2 = near ? b.y + NH / 2 : b.y + NH;
    const low = Math.max(y1, y2) + 36;
    const mx = (x1 + x2) / 2, my = near ? (y1 + y2) / 2 - 10 : low - 4;
    edgeLayer.append(s('g', { class: `edge ${cls}` },
      s('title', { text: `${e.source} → ${e.destination}: ${label} (${word})` }),
      near ? s('line', { x1, y1, x2: x2 - 2, y2, 'marker-end': 'url(#arrowhead)' }) : s('path', { d: `M${x1},${y1} Q${mx},${low + 20} ${x2},${y2 + 2}`, fill: 'none', 'marker-end': 'url(#arrowhead)' }),
      s('rect', { x: mx - 104, y: my - 12, width: 208, height: 16 }),
      s('text', { x: mx, y: my, 'text-anchor': 'middle', text: `${word === 'healthy' ? '' : word.toUpperCase() + ' '}${label}` })));
  }
  for (const [name, n] of bySvc) {
    const p = pos.get(name);
    const breaker = n.resilience && n.resilience.breaker ? n.resilience.breaker.state : 'unknown';
    const [cls, word] = health(n, breaker);
    const line2 = n.requests ? `${fmt.rate(n.rps)} · ${fmt.pct(n.successRate)}` : (n.outside ? 'calls into the mesh' : 'no traffic');
    const line3 = n.requests ? `p99 ${fmt.ms(n.latencyMs.p99)} · ${word}` : (n.outside ? 'not a mesh service' : word);
    const g = s('g', { class: `node ${cls}` },
      s('rect', { x: p.x, y: p.y, width: NW, height: NH, rx: 6 }),
      s('text', { class: 'name', x: p.x + 8, y: p.y + 18, text: name }),
      s('text', { x: p.x + 8, y: p.y + 36, text: line2 }),
      s('text', { x: p.x + 8, y: p.y + 54, text: line3 }));
    labelLayer.append(n.outside ? g : s('a', { href: `#/service/${encodeURIComponent(name)}`, 'data-key': `node-${name}`, 'aria-label': `${name}: ${line2}, ${line3}` }, g));
  }
  const svcRows = [...bySvc.values()].filter((n) => !n.outside).map((n) => {
    const breaker = n.resilience.breaker.state;
    const [cls, word] = health(n, breaker);
    return h('tr', { 'data-service': n.service },
      h('th', { scope: 'row' }, h('a', { href: `#/service/${encodeURIComponent(n.service)}`, 'data-key': `svc-${n.service}`, text: n.service })),
      h('td', {}, badge(cls, word)),
      num(fmt.rate(n.rps)), num(fmt.pct(n.successRate), { 'data-field': 'success' }), num(fmt.ms(n.latencyMs.p99)),
      h('td', { 'data-field': 'breaker', text: breaker }), num(fmt.int(n.resilience.rejected)), num(fmt.int(n.endpoints)));
  });
  const edgeRows = edges.map((e) => {
    const [cls, word] = health(e);
    return h('tr', { 'data-edge': `${e.source}->${e.destination}` },
      h('td', { text: e.source }), h('td', { text: e.destination }), h('td', {}, badge(cls, word)),
      num(fmt.rate(e.rps)), num(fmt.pct(e.successRate), { 'data-field': 'success' }), num(fmt.ms(e.latencyMs.p99)), num(fmt.int(e.errors)));
  });
  return [
    h('h1', { text: 'Mesh' }),
    h('p', { class: 'muted', text: 'Last minute. Each box is a service (click or press Enter to open it); each arrow is calls from one service to another. Healthy ≥ 99% success, degraded ≥ 95%, failing below.' }),
    svg,
    h('h2', { text: 'Services' }),
    table(['Service', 'Health', 'Rate', 'Success', 'p99', 'Breaker', 'Rejected', 'Endpoints'], svcRows, { id: 'services' }),
    h('h2', { text: 'Calls' }),
    edges.length ? table(['From', 'To', 'Health', 'Rate', 'Success', 'p99', 'Errors'], edgeRows, { id: 'edges' }) : h('p', { text: 'No calls reported in the last minute.' }),
  ];
}

function chart(title, points, key, fmtv, extra) {
  const W = 300, H = 80;
  const vals = points.map(key);
  const known = vals.filter((v) => v !== null && v !== undefined);
  const max = Math.max(1e-9, ...known, ...(extra ? points.map(extra).filter((v) => v !== null) : []));
  // One polyline per run of windows with a value: a window without requests is a gap, not a 0.
  const line = (f, cls) => {
    const runs = [[]];
    points.forEach((p, i) => {
      const v = f(p);
      if (v === null || v === undefined || Number.isNaN(v)) { if (runs[runs.length - 1].length) runs.push([]); return; }
      runs[runs.length - 1].push(`${(i * (W / Math.max(1, points.length - 1))).toFixed(1)},${(H - (v / max) * (H - 4)).toFixed(1)}`);
    });
    return s('g', {}, runs.filter((r) => r.length).map((r) => s('polyline', { class: cls, points: r.length === 1 ? `${r[0]} ${r[0]}` : r.join(' ') })));
  };
  // Latest and highest of a series, as text.
  const said = (vs) => {
    const k = vs.filter((v) => v !== null && v !== undefined && !Number.isNaN(v));
    return `latest ${fmtv(k.length ? k[k.length - 1] : null)}, max ${fmtv(k.length ? Math.max(...k) : null)}`;
  };
  const names = title.split(' / ');
  const text = extra ? `${names[0]} ${said(vals)}; ${names[1]} ${said(points.map(extra))}` : said(vals);
  return h('figure', { class: 'chart', 'data-chart': title },
    h('figcaption', {}, h('strong', { text: extra ? `${title} (${names[1]} dashed)` : title }), ' — ', h('span', { 'data-field': 'caption', text })),
    s('svg', { width: W, height: H, role: 'img', 'aria-label': `${title} over the last 15 minutes; ${text}` },
      line(key, 'main'), extra ? line(extra, 'p99') : null));
}

// The last action's result per rollout, kept across redraws.
const results = new Map();

async function rolloutAction(name, command) {
  const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
  const r = await api(`/v1/rollouts/${encodeURIComponent(name)}/${command}`, { method: 'POST', headers });
  const text = r.ok ? `${command}: done — rollout ${name} is now ${r.body.phase}` : `${command}: refused (${r.status}) — ${r.body && r.body.error}`;
  results.set(name, { text, cls: r.ok ? 'ok' : 'error' });
  announce(text);
  refresh();
}

async function servicePage(name) {
  const [st, pol, ro] = await Promise.all([
    api(`/v1/stats/${encodeURIComponent(name)}?window=1m`),
    api(`/v1/policies?service=${encodeURIComponent(name)}`), api(`/v1/rollouts?service=${encodeURIComponent(name)}`),
  ]);
  const out = [h('h1', {}, 'Service ', h('span', { text: name }))];
  if (!st.ok) return out.concat(h('p', { class: 'error', text: st.body && st.body.error }));
  const x = st.body, res = x.resilience;
  const [cls, word] = health(x.total, res.breaker.state);
  out.push(h('p', {}, badge(cls, word), ` Last minute: ${fmt.rate(x.total.rps)}, ${fmt.pct(x.total.successRate)} success, p50 ${fmt.ms(x.total.latencyMs.p50)}, p99 ${fmt.ms(x.total.latencyMs.p99)}.`));
  const hist = x.history;
  out.push(h('h2', { text: 'Golden signals, last 15 minutes (10-second windows)' }), h('div', { class: 'charts' },
    chart('Rate', hist, (p) => p.requests / 10, fmt.rate),
    chart('Success', hist, (p) => p.successRate, fmt.pct),
    chart('Latency p50 / p99', hist, (p) => p.latencyMs.p50, fmt.ms, (p) => p.latencyMs.p99)));
  out.push(h('h2', { text: 'Resilience (last minute, as callers report it)' }),
    table(['Breaker', 'Rejected', 'Retries', 'Retry budget exhausted'], [h('tr', { id: 'resilience' },
      h('td', { 'data-field': 'breaker' }, badge({ open: 'bad', 'half-open': 'warn', closed: 'ok' }[res.breaker.state] || 'idle', res.breaker.state),
        ` (open at ${res.breaker.open}, half-open at ${res.breaker.halfOpen}, closed at ${res.breaker.closed} callers)`),
      num(fmt.int(res.rejected), { 'data-field': 'rejected' }), num(fmt.int(res.retries)), num(fmt.int(res.retryBudgetExhausted)))]));
  out.push(h('h2', { text: 'Endpoints' }), table(['Address', 'Labels', 'Health', 'Rate', 'Success', 'p99', 'EWMA'],
    x.endpoints.map((e) => h('tr', { 'data-endpoint': e.address },
      h('td', { text: e.address }), h('td', { text: Object.entries(e.labels).map(([k, v]) => `${k}=${v}`).join(', ') || '–' }),
      h('td', { 'data-field': 'health' }, badge(...endpointHealth(e))),
      num(fmt.rate(e.rps)), num(fmt.pct(e.successRate)), num(fmt.ms(e.latencyMs.p99)), num(fmt.ms(e.ewmaMs))))));
  const rollouts = ro.ok ? ro.body.items : [];
  out.push(h('h2', { text: 'Rollout' }));
  if (!rollouts.length) out.push(h('p', { text: 'No rollout for this service.' }));
  for (const r of rollouts) {
    const last = results.get(r.name) || { text: '', cls: null };
    const result = h('p', { id: `rollout-result-${r.name}`, class: last.cls, text: last.text });
    const button = (cmd, label) => h('button', { type: 'button', 'data-key': `btn-${r.name}-${cmd}`, 'data-command': cmd, onclick: () => rolloutAction(r.name, cmd), text: label });
    out.push(h('section', { class: 'rollout', 'data-rollout': r.name },
      h('p', {}, h('strong', { text: r.name }), ` ${r.strategy} — `, h('span', { 'data-field': 'phase', text: r.phase }),
        `, step ${r.step} of ${r.steps.length}, canary weight ${r.weight}%. ${r.message || ''}`),
      table(['This check', 'Endpoints', 'Requests', 'Success', 'p99'], ['canary', 'stable'].map((k) => h('tr', {},
        h('td', { text: `${k} ${Object.entries(r[k].labels).map(([a, b]) => `${a}=${b}`).join(',')}` }),
        num(fmt.int(r[k].endpoints)), num(fmt.int(r[k].requests)), num(fmt.pct(r[k].successRate)), num(fmt.ms(r[k].p99Ms))))),
      h('div', { class: 'actions' }, button('pause', 'Pause'), button('resume', 'Resume'), button('promote', 'Promote'), button('abort', 'Abort'), button('start', 'Start over')),
      result));
  }
  const docs = pol.ok ? pol.body.items : [];
  out.push(h('h2', { text: 'Policies (read-only)' }));
  out.push(docs.length ? h('pre', { id: 'service-policies', tabindex: 0, text: docs.map((d) => yaml(d.document)).join('\n---\n') }) : h('p', { text: 'No documents name this service.' }));
  return out;
}

// The xDS sync state in words, always with the versions the proxy ACKed (what it runs), and the
// newest NACK of any type (kept after a later ACK: the record of what was refused, and when).
function syncState(p) {
  const types = Object.entries(p.types || {});
  const acked = types.length ? `ACKed: ${types.map(([k, t]) => `${k} ${t.acked || 'none'}`).join(', ')}` : '';
  const last = types.filter(([, t]) => t.lastNack).map(([k, t]) => [k, t.lastNack]).sort((a, b) => b[1].at - a[1].at)[0];
  const lastText = last ? `${last[0]} ${last[1].version}, ${fmt.time(last[1].at)}: ${last[1].error}` : '';
  const nack = types.find(([, t]) => t.nack);
  if (nack) return ['bad', `NACK of ${nack[0]} ${nack[1].nack.version}`, acked, lastText];
  if (!types.length) return ['warn', 'connecting', '', lastText];
  const pending = types.filter(([, t]) => t.sent !== t.acked);
  if (pending.length) return ['warn', `waiting for ACK of ${pending.map(([k, t]) => `${k} ${t.sent}`).join(', ')}`, acked, lastText];
  return ['ok', 'in sync', acked, lastText];
}

async function proxiesPage() {
  const r = await api('/v1/status');
  if (!r.ok) return [h('h1', { text: 'Proxies' }), h('p', { class: 'error', text: r.body && r.body.error })];
  const now = Date.now() / 1000;
  const rows = r.body.proxies.map((p) => {
    const [cls, word, acked, nack] = syncState(p);
    const expiry = p.certExpiresAt ? `${fmt.time(p.certExpiresAt)} (in ${fmt.dur(p.certExpiresAt - now)})` : (p.identity ? 'unknown' : 'no certificate');
    const expCls = p.certExpiresAt && p.certExpiresAt - now < 3600 ? 'bad' : null;
    return h('tr', { 'data-node': p.nodeId },
      h('th', { scope: 'row', text: p.nodeId }), h('td', { text: p.service || '–' }), h('td', { text: [p.userAgent, p.version].filter(Boolean).join(' ') || '–' }),
      h('td', { 'data-field': 'sync' }, badge(cls, word), acked ? h('div', { class: 'acked', text: acked }) : null),
      h('td', { 'data-field': 'nack', text: nack || '–' }),
      h('td', { class: expCls, 'data-field': 'expiry', text: expiry }), num(fmt.dur(now - p.connectedAt), { 'data-field': 'uptime' }),
      h('td', { text: p.draining ? 'draining' : p.protocol }));
  });
  return [h('h1', { text: 'Proxies' }),
    h('p', { class: 'muted', text: `Config version ${r.body.version}; ${r.body.proxies.length} connected.` }),
    table(['Node', 'Service', 'Version', 'xDS sync', 'Last NACK', 'Certificate expires', 'Uptime', 'Stream'], rows, { id: 'proxies' })];
}

async function policiesPage() {
  const [pol, rej] = await Promise.all([api('/v1/policies'), api('/v1/policies/rejected')]);
  const out = [h('h1', { text: 'Policies' })];
  out.push(h('h2', { text: 'Last rejected write' }));
  const last = rej.ok && rej.body.response;
  if (!last) out.push(h('p', { id: 'rejected', text: 'None since the control plane started.' }));
  else {
    out.push(h('div', { id: 'rejected' },
      h('p', { class: 'error', text: `${fmt.time(rej.body.at)}: ${last.error}` }),
      last.errors ? table(['File', 'Document', 'Kind', 'Name', 'Field', 'Problem'], last.errors.map((e) => h('tr', {},
        h('td', { text: e.file || '–' }), h('td', { text: fmt.int(e.document) }), h('td', { text: e.kind || '–' }),
        h('td', { text: e.name || '–' }), h('td', { text: e.field || '–' }), h('td', { text: e.message })))) : null));
  }
  if (!pol.ok) return out.concat(h('p', { class: 'error', text: pol.body && pol.body.error }));
  out.push(h('h2', { text: `The set (revision ${pol.body.revision})` }),
    table(['Kind', 'Name', 'Source', 'Version', 'Document'], pol.body.items.map((d) => h('tr', { 'data-policy': `${d.kind}/${d.name}` },
      h('td', { text: d.kind }), h('td', { text: d.name }), h('td', { text: d.source }), num(fmt.int(d.resourceVersion)),
      h('td', {}, h('details', { 'data-key': `doc-${d.kind}-${d.name}` }, h('summary', { text: 'YAML' }), h('pre', { text: yaml(d.document) }))))), { id: 'policies' }));
  return out;
}

// ---- routing and polling ----

function route() {
  const parts = (location.hash.replace(/^#\/?/, '') || 'mesh').split('/');
  return { page: parts[0], arg: parts.slice(1).map(decodeURIComponent).join('/') };
}

async function refresh() {
  const mine = ++generation;
  clearTimeout(timer);
  const { page, arg } = route();
  let content;
  try {
    content = page === 'service' ? await servicePage(arg)
      : page === 'proxies' ? await proxiesPage()
      : page === 'policies' ? await policiesPage()
      : await meshPage();
  } catch (e) {
    content = [h('p', { class: 'error', text: `Cannot reach the control plane: ${e.message}` })];
  }
  if (mine !== generation) return;
  const main = document.getElementById('main');
  // Keep keyboard focus and open <details> across redraws.
  const focused = document.activeElement && document.activeElement.getAttribute('data-key');
  const open = [...main.querySelectorAll('details[open]')].map((d) => d.getAttribute('data-key'));
  main.replaceChildren(...content);
  for (const key of open) { const d = main.querySelector(`[data-key="${CSS.escape(key)}"]`); if (d) d.open = true; }
  if (focused) { const el = main.querySelector(`[data-key="${CSS.escape(focused)}"]`); if (el) el.focus(); }
  document.getElementById('updated').textContent = `Last update ${new Date().toLocaleTimeString()}.`;
  for (const a of document.querySelectorAll('nav a')) {
    if (a.dataset.page === (page === 'service' ? 'mesh' : page)) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  document.body.dataset.loaded = page;
  timer = setTimeout(refresh, POLL_MS);
}

document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const input = document.getElementById('token');
    if (input.value) sessionStorage.setItem(TOKEN_KEY, input.value.trim()); else sessionStorage.removeItem(TOKEN_KEY);
    input.value = '';
    showToken();
    announce(token() ? 'API token set for this tab.' : 'API token cleared.');
  });
  showToken();
  window.addEventListener('hashchange', () => { refresh(); document.getElementById('main').focus(); });
  refresh();
});
