#!/usr/bin/env node
// Drives the example page in headless Chromium (Debian's /usr/bin/chromium via playwright-core; no browser download)
// the way a user would: load model.onnx, load reference.json, run; then also calls window.runReference(json).
//
//   node run_in_browser.mjs URL --out result.json [--screenshot page.png] [--chromium /usr/bin/chromium]
//                           [--timeout-ms 45000] [--runs 10]
//
// URL is the page (e.g. http://127.0.0.1:8000/index.html) served next to model.onnx and reference.json. The result file
// holds {"ui": result, "api": result, "requests": [...], "console": [...], "page_errors": [...]} where a result is what
// the page reports: {"outputs": {name: {"shape", "data"}}, "latency_ms", "first_run_ms", "max_abs_error", ...}.
// Exit status: 0 when both runs finished, 1 otherwise (the result file and screenshot are still written when possible).
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

process.env.PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD = '1';
const { chromium } = await import('playwright-core');

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    out: { type: 'string' },
    screenshot: { type: 'string' },
    chromium: { type: 'string', default: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium' },
    'timeout-ms': { type: 'string', default: '45000' },
    runs: { type: 'string', default: '10' },
  },
});
if (positionals.length !== 1 || !values.out) {
  console.error('usage: node run_in_browser.mjs URL --out result.json [--screenshot page.png] [--chromium PATH]');
  process.exit(2);
}
const url = positionals[0];
const timeout = Number(values['timeout-ms']);
const runs = Number(values.runs);

const userDataDir = mkdtempSync(path.join(tmpdir(), 'lambda-export-chromium-'));
const report = { url, ui: null, api: null, requests: [], console: [], page_errors: [], error: null };
let context;
let exitCode = 1;
const deadline = setTimeout(() => {
  console.error(`timed out after ${timeout} ms`);
  process.exit(1);
}, timeout + 15000);
try {
  // launchPersistentContext: a fresh --user-data-dir that is removed afterwards.
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: values.chromium,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
    ],
    viewport: { width: 1000, height: 900 },
    timeout,
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(timeout);
  page.on('request', (request) => report.requests.push(request.url()));
  page.on('console', (message) => report.console.push(`${message.type()}: ${message.text()}`));
  page.on('pageerror', (error) => report.page_errors.push(String(error)));

  // Wait until `condition` (a page expression) holds or the page shows its error state; throw on the error.
  const step = async (condition) => {
    await page.waitForFunction(`(${condition}) || document.getElementById('status').dataset.state === 'error'`);
    if ((await page.getAttribute('#status', 'data-state')) === 'error') {
      throw new Error(`page reported: ${await page.textContent('#status')}`);
    }
  };

  await page.goto(url, { waitUntil: 'load' });
  await step("document.getElementById('status').dataset.state === 'ready'");

  // 1. The UI path: buttons, as a user would click them.
  await page.fill('#runs', String(runs));
  await page.click('#load-model-url');
  await step("!document.getElementById('model-info').textContent.startsWith('No model')");
  await page.click('#load-reference-url');
  await step("!document.getElementById('run').disabled");
  await page.click('#run');
  await step("document.getElementById('status').dataset.state === 'done'");
  report.ui = JSON.parse(await page.textContent('#outputs'));

  // 2. The automation API, with the reference JSON fetched by the page itself.
  report.api = await page.evaluate(
    async (n) => window.runReference(await (await fetch('reference.json')).json(), { runs: n }),
    runs,
  );
  exitCode = 0;
} catch (error) {
  report.error = String(error?.stack ?? error);
  console.error(report.error);
} finally {
  if (context && values.screenshot) {
    try {
      await context.pages()[0].screenshot({ path: values.screenshot, fullPage: true });
    } catch (error) {
      console.error(`screenshot failed: ${error}`);
    }
  }
  writeFileSync(values.out, JSON.stringify(report));
  if (context) await context.close().catch(() => {});
  rmSync(userDataDir, { recursive: true, force: true });
  clearTimeout(deadline);
}
process.exit(exitCode);
