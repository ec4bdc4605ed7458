// Commissioning in a real browser (Debian's chromium driven by playwright-core), as a field
// engineer would on a new RS-485 line: claim the page, scan the bus, add a found device
// from the scan with a device profile and see its live values, find a float's byte order in the register browser
// and make it a point, write a value through the confirmation step.
//
// Usage: node commission_walk.js SPEC_JSON   (see tests/e2e/test_commissioning.py)
// Prints one JSON line: {"steps": [...], ...results} on success; exits 1 with the failing step.
'use strict';

const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const spec = JSON.parse(process.argv[2]);
const WAIT = 120000; // generous: a slow, loaded machine must pass
const steps = [];
const out = {};

// What the page showed and logged when a step failed (for the failure message).
const seen = { page: null, console: [], requests: [] };

async function step(name, f) {
  try {
    await f();
    steps.push(name);
  } catch (e) {
    let where = '';
    if (seen.page) {
      where = `\npage: ${seen.page.url()}`;
      try { await shot(seen.page, 'failed'); } catch (_) { /* the page may be gone */ }
    }
    throw new Error(`step "${name}": ${e.stack || e}${where}\nconsole: ${seen.console.slice(-20).join(' | ')}` +
      `\nlast requests: ${seen.requests.slice(-20).join(' | ')}`);
  }
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(spec.shots, `${name}.png`), fullPage: true });
  fs.writeFileSync(path.join(spec.shots, `${name}.html`), await page.content());
}

async function main() {
  const browser = await chromium.launch({
    executablePath: spec.chromium || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  context.setDefaultTimeout(WAIT);
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', e => problems.push(String(e)));
  seen.page = page;
  page.on('console', m => seen.console.push(`${m.type()}: ${m.text()}`));
  page.on('requestfinished', async r => {
    const resp = await r.response().catch(() => null);
    seen.requests.push(`${r.method()} ${r.url().replace(spec.base, '')} ${resp ? resp.status() : '?'}`);
  });
  page.on('requestfailed', r => seen.requests.push(`${r.method()} ${r.url().replace(spec.base, '')} failed: ${r.failure() && r.failure().errorText}`));
  const base = spec.base;

  await step('claim the page', async () => {
    await page.goto(base + '/');
    await page.fill('#code', fs.readFileSync(spec.codeFile, 'utf8').trim());
    await page.fill('#password', spec.password);
    await page.fill('#password2', spec.password);
    await page.click('#claim');
    await page.waitForSelector('#health tbody tr');
  });

  await step('scan the RS-485 bus with a live progress bar', async () => {
    await page.click('nav >> text=Tools');
    await page.selectOption('#scan-bus', spec.bus);
    await page.fill('[name="timeout_ms"]', String(spec.idTimeoutMs));
    out.scanStartMs = Date.now();
    await page.click('#scan-start');
    await page.waitForSelector('#scan-progress');
    // The bar moves while the scan runs (read twice from the page, never timed).
    const first = Number(await page.getAttribute('#scan-progress', 'value'));
    await page.waitForFunction((v) => {
      const s = document.getElementById('scan');
      const bar = document.getElementById('scan-progress');
      return (s && s.dataset.finished === 'true') || (bar && Number(bar.value) > v);
    }, first);
    await shot(page, 'scan-running');
    await page.waitForSelector('#scan[data-finished="true"]');
    out.scanEndMs = Date.now();
    out.found = await page.$$eval('#scan-found tbody tr', rows => rows.map(r => Number(r.dataset.unit)));
    out.scanStatus = await page.textContent('#scan-status');
    out.scanBound = await page.textContent('#scan-bound');
    await shot(page, 'scan-done');
  });

  await step('add a found device from a profile: the form comes pre-filled', async () => {
    await page.click(`#scan-found tr[data-unit="${spec.addUnit}"] a.add-device`);
    await page.waitForSelector('#profile');
    await page.selectOption('#profile', spec.profile);
    await page.click('#use-profile');
    await page.waitForSelector('#profile-note');
    const unit = await page.inputValue('[name="modbus.unit_id"]');
    const bus = await page.inputValue('[name="modbus.bus"]');
    if (unit !== String(spec.addUnit) || bus !== spec.bus) throw new Error(`pre-filled ${bus}/${unit}`);
    out.profilePoints = await page.$$eval('input[name$="].name"]', es => es.map(e => e.value).filter(v => v));
    await page.fill('[name="name"]', 'tank');
    await page.fill('[name="token"]', spec.deviceToken);
    await page.fill('[name="app_version"]', spec.appVersion);
    await page.fill('[name="poll_interval_ms"]', '300');
    // One more point of its own, in the first empty row.
    const n = out.profilePoints.length;
    await page.fill(`[name="points[${n}].name"]`, 'level');
    await page.fill(`[name="points[${n}].address"]`, '0');
    await page.selectOption(`[name="points[${n}].table"]`, 'holding');
    await page.selectOption(`[name="points[${n}].type"]`, 'u16');
    await shot(page, 'device-from-profile');
    await page.click('#save');
    await page.waitForSelector('#saved');
  });

  await step('its live values appear, with their units', async () => {
    await page.goto(base + '/devices');
    for (const [point, want] of Object.entries(spec.live)) {
      await page.waitForFunction(([sel, w]) => {
        const e = document.querySelector(sel);
        return e && e.textContent.trim() === w;
      }, [`[data-device="tank"] [data-point="${point}"] td.value`, want]);
    }
    await shot(page, 'devices');
  });

  await step('the register browser shows a CDAB float in every order; make it a point', async () => {
    await page.goto(`${base}/tools/registers?bus=${encodeURIComponent(spec.bus)}&unit=${spec.floatUnit}` +
      `&table=holding&address=${spec.floatAddress}&count=4`);
    await page.waitForSelector('#registers');
    const cells = await page.$$eval(`#registers tr[data-address="${spec.floatAddress}"] td.f32`,
      tds => tds.map(td => [td.dataset.order, td.textContent.replace('+', '').trim()]));
    out.f32 = Object.fromEntries(cells);
    await shot(page, 'registers');
    await page.click(`#registers tr[data-address="${spec.floatAddress}"] a.mk[data-type="f32"][data-order="CDAB"]`);
    await page.waitForSelector('[name="modbus.unit_id"]');
    // The new point is the row after the device's own (none yet: row 0).
    out.pointForm = {
      address: await page.inputValue('[name="points[0].address"]'),
      type: await page.inputValue('[name="points[0].type"]'),
      order: await page.inputValue('[name="points[0].order"]'),
      unit: await page.inputValue('[name="modbus.unit_id"]'),
    };
  });

  await step('write a value through the confirmation step and see it read back', async () => {
    await page.goto(`${base}/tools/registers?bus=${encodeURIComponent(spec.bus)}&unit=${spec.floatUnit}` +
      `&table=holding&address=${spec.writeAddress}&count=2`);
    await page.selectOption('#write-form [name="type"]', 'f32');
    await page.selectOption('#write-form [name="order"]', 'CDAB');
    await page.fill('#write-form [name="address"]', String(spec.writeAddress));
    await page.fill('#write-form [name="value"]', String(spec.writeValue));
    await page.click('#write');
    await page.waitForSelector('#confirm-write');
    await shot(page, 'write-confirm');
    await page.click('#confirm');
    await page.waitForSelector('#written');
    const cell = await page.textContent(
      `#registers tr[data-address="${spec.writeAddress}"] td.f32[data-order="CDAB"]`);
    out.readBack = cell.replace('+', '').trim();
  });

  await browser.close();
  if (problems.length) throw new Error('script errors on the page: ' + problems.join('; '));
  console.log(JSON.stringify({ steps, ...out }));
}

main().catch(e => {
  console.error(String(e.stack || e));
  console.log(JSON.stringify({ steps, error: String(e.message || e), ...out }));
  process.exit(1);
});
