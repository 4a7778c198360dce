// One check of the dashboard in Debian's headless chromium, driven by playwright-core.
// tests/tests/dashboard.rs runs it: `node check.mjs BASE_URL CHECK [ARGS...]`; it prints what it
// saw and exits 0, or prints why and exits 1. Every wait polls the page with a deadline.
// Screenshots go to $OUTRIDER_SCREENSHOTS (target/dashboard-screenshots/, or docs/dashboard/
// with OUTRIDER_UPDATE_SCREENSHOTS=1).
import { chromium } from 'playwright-core';
import path from 'node:path';
import fs from 'node:fs';
import os from 'node:os';

const [base, check, ...args] = process.argv.slice(2);
const DEADLINE = Number(process.env.OUTRIDER_BROWSER_DEADLINE_MS || 60000);
const shots = process.env.OUTRIDER_SCREENSHOTS;
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'outrider-chromium-'));

const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.OUTRIDER_CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  viewport: { width: 1200, height: 900 },
});
const page = browser.pages()[0] || await browser.newPage();
const problems = [];
page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
page.on('console', (m) => { if (m.type() === 'error') problems.push(`console error: ${m.text()}`); });

async function shot(name) {
  if (!shots) return;
  fs.mkdirSync(shots, { recursive: true });
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
}
const text = async (selector) => (await page.locator(selector).first().textContent({ timeout: DEADLINE })).trim();
async function waitText(selector, pred, what) {
  const start = Date.now();
  let last = null;
  for (;;) {
    const loc = page.locator(selector).first();
    if (await loc.count()) {
      last = (await loc.textContent()).trim();
      if (pred(last)) return last;
    }
    if (Date.now() - start > DEADLINE) throw new Error(`${what}: not within ${DEADLINE} ms (last seen: ${JSON.stringify(last)})`);
    await page.waitForTimeout(200); // the page polls every 2 s; this re-reads the DOM
  }
}
const pct = (s) => parseFloat(s.replace('%', ''));

const checks = {
  // The mesh page lists these services and the frontend → reviews edge; the graph is reachable
  // by keyboard: Tab to a service's box, Enter opens its page.
  async mesh(...services) {
    await page.goto(`${base}/ui/#/mesh`);
    for (const svc of services) await waitText(`#services tr[data-service="${svc}"] th`, (t) => t === svc, `service ${svc} listed`);
    const edge = await waitText('#edges tr[data-edge="frontend->reviews"] [data-field=success]', (t) => pct(t) > 0, 'the frontend → reviews edge');
    console.log(`services ${services.join(', ')} listed; frontend → reviews success ${edge}`);
    await shot('mesh');
    for (let i = 0; i < 40; i++) {
      await page.keyboard.press('Tab');
      if (await page.evaluate(() => document.activeElement && document.activeElement.getAttribute('data-key')) === 'node-reviews') {
        await page.keyboard.press('Enter');
        await page.waitForFunction(() => location.hash === '#/service/reviews', null, { timeout: DEADLINE });
        await waitText('main h1', (t) => t === 'Service reviews', 'the service page after Enter');
        console.log(`keyboard: ${i + 1} Tab presses reach the reviews box; Enter opens its page`);
        return;
      }
    }
    throw new Error('Tab never reached the reviews box of the graph');
  },
  // The edge's success rate on the mesh page falls below `below` percent.
  async edgeDrops(source, destination, below) {
    await page.goto(`${base}/ui/#/mesh`);
    const sel = `#edges tr[data-edge="${source}->${destination}"] [data-field=success]`;
    const seen = await waitText(sel, (t) => pct(t) < Number(below), `${source} → ${destination} success below ${below}%`);
    console.log(`${source} → ${destination} success now ${seen}`);
    await shot('mesh-failing');
  },
  // The graph's box of the service says its breaker is open (in words, not only a colour),
  // and the service page shows it open, with rejections.
  async breakerOpen(service) {
    await page.goto(`${base}/ui/#/mesh`);
    const node = await waitText(`.graph a[data-key="node-${service}"]`, (t) => t.includes('breaker open'), `the graph's ${service} box saying breaker open`);
    const row = await waitText(`#services tr[data-service="${service}"] [data-field=breaker]`, (t) => t === 'open', `the services table's ${service} breaker open`);
    console.log(`graph box: ${node}; services table breaker: ${row}`);
    await shot('mesh-breaker');
    await page.goto(`${base}/ui/#/service/${service}`);
    const b = await waitText('#resilience [data-field=breaker]', (t) => t.startsWith('open'), `${service}'s breaker open`);
    const rejected = await waitText('#resilience [data-field=rejected]', (t) => Number(t) > 0, 'rejections counted');
    console.log(`breaker: ${b}; rejected ${rejected}`);
    // The golden signals are drawn: a line per chart, p50 and p99 on the latency chart, whose
    // caption gives both as text; the policies naming the service are shown as YAML.
    const latency = '[data-chart="Latency p50 / p99"]';
    const caption = await waitText(`${latency} [data-field=caption]`, (t) => /p50 latest [\d.]+ ms/.test(t) && /p99 latest [\d.]+ ms, max [\d.]+ ms/.test(t), 'the latency caption with p50 and p99');
    for (const sel of [`${latency} polyline.main`, `${latency} polyline.p99`, '[data-chart="Rate"] polyline.main', '[data-chart="Success"] polyline.main']) {
      if (!(await page.locator(sel).count())) throw new Error(`no line drawn: ${sel}`);
    }
    const dash = await page.locator(`${latency} polyline.p99`).first().evaluate((el) => getComputedStyle(el).strokeDasharray);
    if (!dash || dash === 'none') throw new Error('the p99 line is not dashed: it would differ from p50 by colour only');
    const yaml = await waitText('#service-policies', (t) => t.includes('kind: TrafficPolicy') && t.includes('circuitBreaker:'), 'the policies as YAML');
    console.log(`latency caption: ${caption}; p99 dashed (${dash}); policies YAML ${yaml.split('\n').length} lines`);
    await shot('service');
  },
  // The service page says a caller ejected `ejected` and that `ok` is fine, in words.
  async ejected(service, ejected, ok) {
    await page.goto(`${base}/ui/#/service/${service}`);
    const bad = await waitText(`tr[data-endpoint="${ejected}"] [data-field=health]`, (t) => /^ejected, [\d.]+ s left$/.test(t), `${ejected} ejected`);
    const good = await waitText(`tr[data-endpoint="${ok}"] [data-field=health]`, (t) => t === 'ok', `${ok} ok`);
    console.log(`${ejected}: ${bad}; ${ok}: ${good}`);
    await shot('service-ejected');
  },
  // The proxies page shows the node's NACK with its message.
  async nack(node, message) {
    await page.goto(`${base}/ui/#/proxies`);
    const seen = await waitText(`#proxies tr[data-node="${node}"] [data-field=nack]`, (t) => t.includes(message), `${node}'s NACK`);
    const sync = await waitText(`#proxies tr[data-node="${node}"] [data-field=sync]`, (t) => t.startsWith('NACK of Cluster') && /ACKed: .*Listener \S+/.test(t), `${node}'s NACK with its ACKed versions`);
    console.log(`NACK shown: ${seen}; sync: ${sync}`);
  },
  // After a later ACK the node is in sync, with its ACKed versions, and its last NACK stays
  // with its time and message.
  async nackKept(node, message) {
    await page.goto(`${base}/ui/#/proxies`);
    const sync = await waitText(`#proxies tr[data-node="${node}"] [data-field=sync]`, (t) => t.startsWith('in sync') && /ACKed: .*Cluster \S+/.test(t), `${node} in sync`);
    const seen = await waitText(`#proxies tr[data-node="${node}"] [data-field=nack]`, (t) => t.includes(message) && /\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC/.test(t), `${node}'s last NACK kept`);
    console.log(`sync: ${sync}; last NACK kept: ${seen}`);
    await shot('proxies');
  },
  // The policies page shows the last rejected write's errors.
  async rejected(message) {
    await page.goto(`${base}/ui/#/policies`);
    const seen = await waitText('#rejected', (t) => t.includes(message), 'the rejected write');
    console.log(`rejected write shown: ${seen.slice(0, 200)}`);
    await waitText('#policies tbody tr', (t) => t.length > 0, 'the policy set');
    await shot('policies');
  },
  // Promote and abort are refused without the token; with it (typed, submitted with Enter),
  // pause, resume, abort, start and promote work, each seen in the rollout's phase.
  async rollout(name, service, token) {
    await page.goto(`${base}/ui/#/service/${service}`);
    const phase = `[data-rollout="${name}"] [data-field=phase]`;
    const result = `#rollout-result-${name}`;
    const before = await waitText(phase, (t) => t === 'progressing', 'the rollout progressing');
    for (const cmd of ['promote', 'abort']) {
      await page.locator(`[data-rollout="${name}"] button[data-command=${cmd}]`).click();
      const r = await waitText(result, (t) => t.startsWith(`${cmd}: refused (401)`), `${cmd} refused without the token`);
      console.log(`without token: ${r}`);
    }
    await waitText(phase, (t) => t === before, 'phase unchanged');
    await page.locator('#token').focus();
    await page.keyboard.type(token);
    await page.keyboard.press('Enter');
    await waitText('#token-state', (t) => t === 'set for this tab', 'the token set');
    for (const [cmd, want] of [['pause', 'paused'], ['resume', 'progressing'], ['abort', 'aborted'], ['start', 'progressing'], ['promote', 'promoted']]) {
      const button = page.locator(`[data-rollout="${name}"] button[data-command=${cmd}]`);
      if (cmd === 'pause' || cmd === 'resume') {
        await button.click(); // the mouse
      } else {
        await button.focus(); // the keyboard: focus the button and press Enter
        await page.keyboard.press('Enter');
      }
      const r = await waitText(result, (t) => t.startsWith(`${cmd}: done`), `${cmd} done with the token`);
      await waitText(phase, (t) => t === want, `phase ${want} after ${cmd}`);
      console.log(`with token: ${r}`);
      if (cmd === 'start') await shot('rollout');
    }
  },
};

let code = 0;
try {
  if (!checks[check]) throw new Error(`unknown check ${check}`);
  await checks[check](...args);
  const real = problems.filter((p) => !/401|409/.test(p));
  if (real.length) throw new Error(real.join('\n'));
} catch (e) {
  console.error(`FAILED ${check}: ${e.message}`);
  try {
    const where = path.join(os.tmpdir(), `outrider-dashboard-failed-${check}.png`);
    await page.screenshot({ path: where, fullPage: true });
    console.error(`screenshot of the failure: ${where}`);
  } catch (_) { /* best effort */ }
  code = 1;
} finally {
  await browser.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
process.exit(code);
