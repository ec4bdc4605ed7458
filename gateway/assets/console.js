// Core console: the embedded core's REST API (/core/api/v1/...), behind the page's session
// and CSRF token. Nothing here is a second implementation: every action is an API call.
'use strict';

function coreConsole() {
  const api = '/core/api/v1';
  const errBox = document.getElementById('console-error');
  const fail = (e) => { errBox.hidden = false; errBox.textContent = String(e.message || e); };
  const ok = () => { errBox.hidden = true; };
  let current = null; // {endpointId, app}

  async function apps() {
    const list = await KP.getJSON(`${api}/applications`);
    document.getElementById('apps').replaceChildren(...list.map(a =>
      KP.el('li', {}, a.name, ' ', KP.el('span', { class: 'muted' }, (a.appVersions || []).join(', ')))));
  }

  // States as the API writes them (ACTIVE, SUSPENDED, REVOKED, INACTIVE).
  const ACTIONS = [['Activate', 'ACTIVE'], ['Suspend', 'SUSPENDED'], ['Revoke', 'REVOKED']];
  const stateButtons = (current, act) => ACTIONS.filter(([, s]) => s !== current).map(([label, to]) =>
    KP.el('button', { class: to === 'REVOKED' ? 'danger' : 'secondary', type: 'button', 'data-action': to.toLowerCase(),
      onclick: () => act(to).catch(fail) }, label));
  // The gateway's own credential in its embedded core: revoking it would cut the gateway off.
  const INTERNAL = 'kp-gateway-internal';

  async function creds() {
    const list = await KP.getJSON(`${api}/credentials/basic`);
    document.querySelector('#creds tbody').replaceChildren(...list.map(c => KP.el('tr', { 'data-user': c.username },
      KP.el('td', {}, c.username), KP.el('td', {}, c.state.toLowerCase()),
      KP.el('td', {}, ...(c.state === 'REVOKED' ? [] : c.username === INTERNAL ? [KP.el('span', { class: 'muted' }, 'the gateway\'s own')] : stateButtons(c.state,
        async (to) => {
          if (to === 'REVOKED' && !confirm(`Revoke ${c.username} for good? Its sessions are cut.`)) return;
          await KP.send('PUT', `${api}/credentials/basic/${encodeURIComponent(c.username)}/state`, { state: to });
          ok(); await creds();
        }))))));
  }

  async function endpoints() {
    const list = await KP.getJSON(`${api}/endpoints`);
    document.querySelector('#endpoints tbody').replaceChildren(...list.map(e => KP.el('tr', { 'data-endpoint': e.endpointId },
      KP.el('td', {}, KP.el('code', {}, e.endpointId)),
      KP.el('td', {}, (e.appVersion || {}).name || ''),
      KP.el('td', { class: e.connected ? 'ok' : 'muted' }, e.connected ? 'connected' : 'offline'),
      KP.el('td', {}, KP.el('button', { class: 'secondary', type: 'button',
        onclick: () => { current = { endpointId: e.endpointId, app: e.applicationName }; details().catch(fail); } }, 'Open')))));
  }

  async function tokens() {
    const id = current.endpointId;
    const list = await KP.getJSON(`${api}/endpoints/${id}/tokens`);
    document.querySelector('#tokens tbody').replaceChildren(...list.map(t => KP.el('tr', { 'data-token-state': t.state.toLowerCase() },
      KP.el('td', {}, KP.el('code', {}, t.token)), KP.el('td', {}, t.state.toLowerCase()),
      KP.el('td', {}, ...(t.state === 'REVOKED' ? [] : stateButtons(t.state,
        async (to) => {
          if (to === 'REVOKED' && !confirm('Revoke this token for good? Sessions using it are cut.')) return;
          await KP.send('PUT', `${api}/endpoints/${id}/tokens/${encodeURIComponent(t.token)}/state`, { state: to });
          ok(); await tokens(); await endpoints();
        }))))));
  }

  async function details() {
    const id = current.endpointId;
    document.getElementById('endpoint').hidden = false;
    document.getElementById('endpoint-title').textContent = `Endpoint ${id}`;
    await tokens();
    const md = await KP.getJSON(`${api}/endpoints/${id}/metadata`).catch(e => ({ error: e.message }));
    document.getElementById('metadata').textContent = JSON.stringify(md, null, 2);
    const cfg = await KP.getJSON(`${api}/endpoints/${id}/config`).catch(() => null);
    document.getElementById('cfg-text').value = cfg == null ? '{}' : JSON.stringify(cfg.config !== undefined ? cfg.config : cfg, null, 2);
  }

  async function series(e) {
    e.preventDefault();
    if (!current) return;
    const names = document.getElementById('ts-names').value.split(',').map(s => s.trim()).filter(Boolean).join(',');
    const q = `endpointId=${encodeURIComponent(current.endpointId)}&timeSeriesName=${encodeURIComponent(names)}`;
    const app = encodeURIComponent(current.app);
    const last = await KP.getJSON(`${api}/applications/${app}/time-series/last?${q}`);
    document.getElementById('ts-last').textContent = JSON.stringify(last, null, 2);
    const from = new Date(Date.now() - 3600e3).toISOString();
    const data = await KP.getJSON(`${api}/applications/${app}/time-series/data?${q}&fromDate=${encodeURIComponent(from)}`);
    const first = Object.values((data[0] || {})[current.endpointId] || {})[0] || [];
    const pts = first.map(p => [Date.parse(p.timestamp), Object.values(p.values || {})[0]]).filter(p => typeof p[1] === 'number');
    KP.chart(document.getElementById('ts-chart'), pts);
  }

  async function command(e) {
    e.preventDefault();
    if (!current) return;
    const type = encodeURIComponent(document.getElementById('cmd-type').value.trim());
    const payload = document.getElementById('cmd-payload').value.trim() || 'null';
    const out = document.getElementById('cmd-result');
    out.textContent = 'sent; waiting up to 30 s for the result…';
    const r = await KP.send('POST', `${api}/endpoints/${current.endpointId}/commands/${type}?awaitTimeout=30000`, payload);
    out.textContent = JSON.stringify(r, null, 2);
  }

  async function config(e) {
    e.preventDefault();
    if (!current) return;
    const r = await KP.send('PUT', `${api}/endpoints/${current.endpointId}/config`, document.getElementById('cfg-text').value);
    document.getElementById('cfg-result').textContent = JSON.stringify(r, null, 2);
  }

  async function newCred(e) {
    e.preventDefault();
    const user = document.getElementById('new-cred-user').value.trim();
    const bytes = new Uint8Array(18);
    crypto.getRandomValues(bytes);
    const password = btoa(String.fromCharCode(...bytes)).replace(/[+/=]/g, 'x');
    await KP.send('POST', `${api}/credentials/basic`, { username: user, password });
    const shown = document.getElementById('new-cred-password');
    shown.hidden = false;
    shown.textContent = `Password of ${user} (shown once, write it down now): ${password} — the credential starts inactive: activate it to use it.`;
    ok(); await creds();
  }

  const guard = (f) => (e) => f(e).then(ok).catch(fail);
  document.getElementById('ts-form').addEventListener('submit', guard(series));
  document.getElementById('cmd-form').addEventListener('submit', guard(command));
  document.getElementById('cfg-form').addEventListener('submit', guard(config));
  document.getElementById('new-cred').addEventListener('submit', guard(newCred));
  apps().catch(fail);
  creds().catch(fail);
  KP.every(3000, async () => { await endpoints(); if (current) await tokens(); });
}

document.addEventListener('DOMContentLoaded', () => {
  if (document.body.dataset.page === 'console') coreConsole();
});
