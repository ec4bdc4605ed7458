// kp-gateway web page: live updates by a small fetch loop. No framework, no inline script
// (the page's Content-Security-Policy forbids it); data is put in with textContent only.
'use strict';

const KP = (() => {
  const csrf = () => document.body.dataset.csrf || '';

  async function getJSON(url) {
    const r = await fetch(url, { credentials: 'same-origin', headers: { Accept: 'application/json' } });
    if (r.status === 401) { location.href = '/login'; throw new Error('logged out'); }
    if (!r.ok) throw new Error(url + ': ' + r.status + ' ' + (await r.text()));
    return r.json();
  }

  async function send(method, url, body) {
    const headers = { 'X-CSRF-Token': csrf() };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const r = await fetch(url, {
      method, credentials: 'same-origin', headers,
      body: body === undefined ? undefined : (typeof body === 'string' ? body : JSON.stringify(body)),
    });
    if (r.status === 401) { location.href = '/login'; throw new Error('logged out'); }
    const text = await r.text();
    let data = text;
    try { data = text ? JSON.parse(text) : null; } catch (_) { /* plain text */ }
    if (!r.ok) throw new Error((data && data.error) || text || String(r.status));
    return data;
  }

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'class') e.className = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? '' : String(c)));
    return e;
  }

  function bytes(n) {
    if (n == null) return '—';
    const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + ' ' + u[i];
  }

  function duration(s) {
    if (s == null) return '—';
    if (s < 60) return s + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
    if (s < 86400) return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
    return Math.floor(s / 86400) + ' d ' + Math.floor((s % 86400) / 3600) + ' h';
  }

  // Draws [[x, y], ...] as a polyline filling the SVG's viewBox.
  function chart(svg, series) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    if (!series || series.length === 0) return;
    const vb = svg.viewBox.baseVal;
    const xs = series.map(p => p[0]), ys = series.map(p => p[1]);
    const x0 = Math.min(...xs), x1 = Math.max(...xs);
    let y0 = Math.min(...ys), y1 = Math.max(...ys);
    if (y1 === y0) { y0 -= 1; y1 += 1; }
    const pts = series.map(([x, y]) => {
      const px = x1 === x0 ? vb.width : ((x - x0) / (x1 - x0)) * vb.width;
      const py = vb.height - 4 - ((y - y0) / (y1 - y0)) * (vb.height - 8);
      return px.toFixed(1) + ',' + py.toFixed(1);
    });
    const line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
    line.setAttribute('points', pts.join(' '));
    svg.appendChild(line);
    svg.dataset.points = String(series.length);
  }

  function every(ms, f) {
    let stopped = false;
    const run = async () => {
      try { await f(); } catch (e) { console.warn(e); }
      if (!stopped) setTimeout(run, ms);
    };
    run();
    return () => { stopped = true; };
  }

  return { getJSON, send, el, bytes, duration, chart, every, csrf };
})();

// ---- dashboard ----------------------------------------------------------------------------
function dashboard() {
  const set = (k, v) => document.querySelectorAll(`[data-k="${k}"]`).forEach(e => { e.textContent = v; });
  KP.every(2000, async () => {
    const s = await KP.getJSON('/api/status');
    const up = s.upstream;
    set('upstream.state', up.connected ? 'connected' : 'disconnected');
    document.getElementById('link-state').className = up.connected ? 'ok' : 'bad';
    set('upstream.broker', up.broker);
    set('upstream.since', up.since || '—');
    set('upstream.last_error', up.last_error || 'none');
    const b = s.buffer;
    set('buffer.pending', b.pending);
    set('buffer.bytes', KP.bytes(b.bytes));
    set('buffer.oldest', b.oldest_age_s == null ? 'nothing waiting' : KP.duration(b.oldest_age_s) + ' old');
    set('buffer.in_flight', b.in_flight);
    set('buffer.dead_letters', b.dead_letters);
    const drops = Object.entries(b.drops).map(([r, n]) => `${r}: ${n}`).join(', ');
    set('buffer.drops', b.dropped_total ? `${b.dropped_total} (${drops})` : 'none');
    KP.chart(document.getElementById('depth-chart'), s.depth);
    const p = s.process;
    set('process.cpu', p.cpu_percent == null ? '—' : p.cpu_percent.toFixed(1) + ' %');
    set('process.rss', KP.bytes(p.rss_bytes));
    set('process.free', KP.bytes(p.free_bytes));
    set('process.version', p.version);
    set('process.uptime', KP.duration(p.uptime_s));
    const tbody = document.querySelector('#health tbody');
    tbody.replaceChildren(...s.devices.map(d => KP.el('tr', { 'data-device': d.name },
      KP.el('td', {}, d.name, KP.el('br'), KP.el('small', { class: 'muted' }, d.kind)),
      KP.el('td', { class: 'state-' + d.state }, d.state),
      KP.el('td', {}, d.last_success || '—'),
      KP.el('td', {}, d.consecutive_failures),
      KP.el('td', {}, d.latency_ms == null ? '—' : d.latency_ms.toFixed(1) + ' ms'),
      KP.el('td', {}, d.last_error || ''))));
  });
}

// ---- devices and live values ----------------------------------------------------------------
function devices() {
  let open = null; // {device, point}
  const showChart = async () => {
    if (!open) return;
    const h = await KP.getJSON(`/api/history?device=${encodeURIComponent(open.device)}&point=${encodeURIComponent(open.point)}`);
    document.getElementById('chart-card').hidden = false;
    document.getElementById('chart-title').textContent = `${open.device} · ${open.point}`;
    KP.chart(document.getElementById('point-chart'), h.series);
    const n = h.series.length;
    document.getElementById('chart-range').textContent = n
      ? `${n} ten-second means, ${new Date(h.series[0][0]).toLocaleTimeString()} – ${new Date(h.series[n - 1][0]).toLocaleTimeString()}`
      : 'no numeric values yet';
  };
  const render = (data) => {
    const root = document.getElementById('devices');
    root.replaceChildren(...data.devices.map(d => KP.el('section', { class: 'card', 'data-device': d.name },
      KP.el('h2', {}, d.name, ' ', KP.el('small', { class: 'state-' + (d.state || 'unknown') }, d.state || 'not polled yet')),
      KP.el('div', { class: 'scroll' }, KP.el('table', {},
        KP.el('thead', {}, KP.el('tr', {}, ...['Point', 'Value', 'Time', 'Quality', ''].map(h => KP.el('th', {}, h)))),
        KP.el('tbody', {}, ...d.points.map(p => KP.el('tr', { 'data-point': p.name },
          KP.el('td', {}, p.name),
          KP.el('td', { class: 'value' }, p.bad ? '—' : (typeof p.value === 'object' ? JSON.stringify(p.value) : String(p.value)) + (p.unit ? ' ' + p.unit : '')),
          KP.el('td', {}, p.time),
          KP.el('td', { class: p.bad ? 'bad' : 'ok' }, p.bad ? p.bad : 'good'),
          KP.el('td', {}, KP.el('button', { class: 'secondary', type: 'button',
            onclick: () => { open = { device: d.name, point: p.name }; showChart(); } }, 'Chart'))))))))));
  };
  KP.every(2000, async () => { render(await KP.getJSON('/api/devices')); await showChart(); });
}

// ---- logs --------------------------------------------------------------------------------
function logs() {
  const level = document.getElementById('level'), search = document.getElementById('search');
  const refresh = async () => {
    const q = `level=${encodeURIComponent(level.value)}&q=${encodeURIComponent(search.value)}`;
    document.getElementById('download').href = '/logs/download?' + q;
    const data = await KP.getJSON('/api/logs?' + q);
    const pre = document.getElementById('log');
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.replaceChildren(...data.lines.map(l => KP.el('span', { class: l.level }, `${l.time} ${l.level.padEnd(5)} ${l.target}: ${l.message}\n`)));
    if (atBottom) pre.scrollTop = pre.scrollHeight;
    document.getElementById('log-count').textContent =
      `${data.total} matching line(s)` + (data.total > data.lines.length ? `, the newest ${data.lines.length} shown` : '');
  };
  level.addEventListener('change', refresh);
  search.addEventListener('input', refresh);
  document.getElementById('log-filter').addEventListener('submit', e => { e.preventDefault(); refresh(); });
  KP.every(3000, refresh);
}

// The bus scan: follows the running scan's progress; the finished page is the server's.
function scan() {
  const box = document.getElementById('scan');
  if (!box || box.dataset.finished === 'true') return;
  const url = '/tools/scan/progress.json?bus=' + encodeURIComponent(box.dataset.bus);
  const bar = document.getElementById('scan-progress');
  const status = document.getElementById('scan-status');
  const tbody = document.querySelector('#scan-found tbody');
  const stop = KP.every(500, async () => {
    const { progress: p, add } = await KP.getJSON(url);
    bar.max = p.total; bar.value = p.done;
    status.textContent = p.done + ' of ' + p.total + ' IDs, ' + p.found.length + ' found, about ' +
      Math.ceil(p.eta_ms / 1000) + ' s left';
    while (tbody.rows.length < p.found.length) {
      const i = tbody.rows.length, h = p.found[i];
      tbody.append(KP.el('tr', { 'data-unit': h.unit }, KP.el('td', {}, h.unit), KP.el('td', {}, h.answer),
        KP.el('td', {}, KP.el('a', { class: 'add-device', href: add[i] }, 'Add as device'))));
    }
    if (p.finished) { stop(); location.reload(); }
  });
}

// CSV import: a chosen file fills the text box (it is sent as text, checked on the server).
function csvImport() {
  const file = document.getElementById('csv-file');
  if (!file) return;
  file.addEventListener('change', async () => {
    if (file.files.length) document.getElementById('csv').value = await file.files[0].text();
  });
}

// Forms that ask before doing something that cannot be undone lightly.
function confirmations() {
  document.querySelectorAll('form.confirm').forEach(f => f.addEventListener('submit', e => {
    if (!window.confirm(f.dataset.confirm || 'Are you sure?')) e.preventDefault();
  }));
}

document.addEventListener('DOMContentLoaded', () => {
  confirmations();
  const page = document.body.dataset.page;
  if (page === 'dashboard') dashboard();
  if (page === 'devices') devices();
  if (page === 'logs') logs();
  if (page === 'scan') scan();
  if (page === 'import') csvImport();
});
