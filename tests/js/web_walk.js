// The web page walked in a real browser (Debian's chromium driven by playwright-core), as a
// technician would: claim with the setup code, log out and in, add a Modbus TCP bus and
// device, watch its live value, make a configuration error and see it next to the field,
// fix it, roll back, and in the core console revoke a token and see its session cut.
//
// Usage: node web_walk.js SPEC_JSON   (see tests/e2e/test_web_page.py)
// Prints one JSON line: {"steps": [...]} on success; exits 1 with the failing step.
// Every main page is saved as <shots>/<name>.png and its HTML as <shots>/<name>.html.
'use strict';

const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const spec = JSON.parse(process.argv[2]);
const WAIT = 60000; // generous: a slow, loaded machine must pass
const steps = [];

async function shot(page, name) {
  await page.screenshot({ path: path.join(spec.shots, `${name}.png`), fullPage: true });
  fs.writeFileSync(path.join(spec.shots, `${name}.html`), await page.content());
}

async function step(name, f) {
  try {
    await f();
    steps.push(name);
  } catch (e) {
    throw new Error(`step "${name}": ${e.stack || e}`);
  }
}

async function main() {
  const browser = await chromium.launch({
    executablePath: spec.chromium || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  context.setDefaultTimeout(WAIT);
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', e => problems.push(String(e)));
  page.on('dialog', d => d.accept());
  const base = spec.base;

  await step('unclaimed: the page asks only for the setup code', async () => {
    await page.goto(base + '/');
    if (!page.url().endsWith('/setup')) throw new Error('not sent to /setup: ' + page.url());
    await shot(page, 'setup');
  });

  await step('claim with the code from the state directory', async () => {
    const code = fs.readFileSync(spec.codeFile, 'utf8').trim();
    await page.fill('#code', code);
    await page.fill('#password', spec.password);
    await page.fill('#password2', spec.password);
    await page.click('#claim');
    await page.waitForSelector('#health tbody tr');
  });

  await step('log out and log in again', async () => {
    await page.click('#logout');
    await page.waitForURL(/\/login$/);
    await page.fill('#password', 'not the password at all');
    await page.click('#login');
    await page.waitForSelector('#error');
    await page.fill('#password', spec.password);
    await page.click('#login');
    await page.waitForSelector('#health tbody tr');
    // The dashboard fills itself: upstream connected, buffer numbers.
    await page.waitForFunction(() => document.getElementById('link-state').textContent === 'connected');
    await shot(page, 'dashboard');
  });

  await step('add a Modbus TCP bus', async () => {
    await page.goto(base + '/config');
    await page.click('#add-bus');
    await page.fill('[name="name"]', 'plant-tcp');
    await page.selectOption('[name="kind"]', 'tcp');
    await page.fill('[name="address"]', `127.0.0.1:${spec.modbusPort}`);
    await page.fill('[name="timeout_ms"]', '500');
    await page.click('#save');
    await page.waitForSelector('#saved');
  });

  await step('add a device on it', async () => {
    await page.click('#add-device');
    await page.fill('[name="name"]', 'boiler');
    await page.fill('[name="token"]', spec.deviceToken);
    await page.fill('[name="app_version"]', spec.appVersion);
    await page.fill('[name="poll_interval_ms"]', '500');
    await page.selectOption('[name="modbus.bus"]', 'plant-tcp');
    await page.fill('[name="modbus.unit_id"]', '1');
    await page.fill('[name="points[0].name"]', 'temperature');
    await page.fill('[name="points[0].unit"]', '°C');
    await page.selectOption('[name="points[0].table"]', 'holding');
    await page.fill('[name="points[0].address"]', '0');
    await page.selectOption('[name="points[0].type"]', 'i16');
    await page.fill('[name="points[0].scale"]', '0.1');
    await shot(page, 'device-form');
    await page.click('#save');
    await page.waitForSelector('#saved');
    await shot(page, 'config');
  });

  await step('its live value appears without a reload', async () => {
    await page.goto(base + '/devices');
    const cell = '[data-device="boiler"] [data-point="temperature"] td.value';
    await page.waitForFunction((sel) => {
      const e = document.querySelector(sel);
      return e && e.textContent === '21.5 °C';
    }, cell);
    await page.click('[data-device="boiler"] [data-point="temperature"] button');
    await page.waitForFunction(() => Number(document.getElementById('point-chart').dataset.points || 0) > 0);
    await shot(page, 'devices');
  });

  await step('read now shows raw registers and the decoded value', async () => {
    await page.goto(base + '/config');
    await page.click('#device-list >> text=boiler');
    await page.click('#read-now');
    await page.waitForSelector('#decoded');
    const decoded = await page.textContent('#decoded');
    if (!decoded.includes('21.5')) throw new Error('decoded: ' + decoded);
    const raw = await page.textContent('#raw');
    if (!raw.includes('215')) throw new Error('raw: ' + raw);
  });

  await step('a configuration error appears next to its field and nothing is applied', async () => {
    await page.goto(base + '/config');
    await page.click('#device-list >> text=boiler');
    await page.fill('[name="modbus.unit_id"]', '300');
    await page.click('#save');
    const err = await page.waitForSelector('.field-error[data-for="modbus.unit_id"]');
    const text = await err.textContent();
    if (!/300/.test(text)) throw new Error('error text: ' + text);
    await shot(page, 'config-error');
  });

  await step('fix it', async () => {
    await page.fill('[name="modbus.unit_id"]', '1');
    await page.click('#save');
    await page.waitForSelector('#saved');
  });

  await step('roll back to the configuration before the bus', async () => {
    await page.goto(base + '/config/versions');
    await shot(page, 'versions');
    const first = await page.$$eval('#versions tbody tr', rows => rows.map(r => r.dataset.version));
    const oldest = first[first.length - 1];
    await page.fill('#diff-a', oldest);
    await page.fill('#diff-b', first[0]);
    await page.click('#diff-form button');
    await page.waitForSelector('#diff');
    await shot(page, 'diff');
    await page.goto(base + '/config/versions');
    await page.click(`#versions tr[data-version="${oldest}"] button.rollback`);
    await page.waitForSelector('#saved');
    const devices = await page.textContent('#device-list');
    if (devices.includes('boiler')) throw new Error('boiler still configured: ' + devices);
    await page.goto(base + '/devices');
    await page.waitForSelector('#devices section');
    if (await page.$('[data-device="boiler"]')) throw new Error('boiler still shown on the devices page');
  });

  await step('buffer and logs pages', async () => {
    await page.goto(base + '/buffer');
    await shot(page, 'buffer');
    await page.goto(base + '/logs');
    await page.selectOption('#level', 'trace');
    await page.fill('#search', 'applied');
    await page.waitForFunction(() => document.getElementById('log').textContent.includes('configuration version'));
    await shot(page, 'logs');
  });

  await step('core console: revoke a token and see its session cut', async () => {
    await page.goto(base + '/console');
    const row = `#endpoints tr[data-endpoint="${spec.externalEndpoint}"]`;
    await page.waitForFunction((sel) => {
      const r = document.querySelector(sel);
      return r && r.textContent.includes('connected') && !r.textContent.includes('offline');
    }, row);
    await shot(page, 'console');
    await page.click(`${row} button`);
    await page.waitForSelector('#tokens tbody tr[data-token-state="active"]');
    await page.click('#tokens tbody tr[data-token-state="active"] button[data-action="revoked"]');
    await page.waitForSelector('#tokens tbody tr[data-token-state="revoked"]');
    await page.waitForFunction((sel) => {
      const r = document.querySelector(sel);
      return r && r.textContent.includes('offline');
    }, row);
  });

  // Every page's config download, for the test's secret scan.
  const download = await page.evaluate(async () => (await fetch('/config/download')).text());
  fs.writeFileSync(path.join(spec.shots, 'download.toml'), download);
  await browser.close();
  if (problems.length) throw new Error('script errors on the page: ' + problems.join('; '));
  console.log(JSON.stringify({ steps }));
}

main().catch(e => {
  console.error(String(e.stack || e));
  console.log(JSON.stringify({ steps, error: String(e.message || e) }));
  process.exit(1);
});
