// Runs an ONNX model exported by `lambda-export` in the browser with onnxruntime-web (WASM backend, one thread).
//
// UI: load a model (model.onnx next to the page, or a picked file), make an input (random, or a reference JSON
// {"inputs": {name: nested list}, "outputs": {name: nested list}} such as the test suite writes), run, and see the
// top classes, the latency and, with a reference, the max abs error against it.
//
// Automation: `await window.runReference(json, {runs})` loads model.onnx if no model is loaded, runs the reference
// inputs and returns {outputs: {name: {shape, data}}, latency_ms, first_run_ms, runs, max_abs_error, ...}; the same
// result is written as JSON into <pre id="outputs">, and #status carries data-state="done" (or "error").

const DIST = new URL('node_modules/onnxruntime-web/dist/', window.location.href).href;
const MAX_PRE_VALUES = 20000; // larger outputs are summarised in <pre id="outputs">; the full data is in window.lastResult

const $ = (id) => document.getElementById(id);
const state = { session: null, modelName: null, inputs: null, inputSource: null, reference: null };

function setStatus(text, kind = 'idle') {
  const status = $('status');
  status.textContent = text;
  status.dataset.state = kind;
}

function fail(err) {
  console.error(err);
  setStatus(`Error: ${err.message ?? err}`, 'error');
}

const shapeText = (shape) => `[${shape.join(', ')}]`;
const product = (shape) => shape.reduce((a, b) => a * b, 1);

// ---------------------------------------------------------------------------------------------------------------------
// Runtime and model

function checkRuntime() {
  if (typeof window.ort === 'undefined') {
    throw new Error('onnxruntime-web is missing: run `npm ci` in examples/browser (the page loads node_modules/onnxruntime-web)');
  }
  const ort = window.ort;
  ort.env.wasm.numThreads = 1; // no SharedArrayBuffer / cross-origin isolation needed
  ort.env.wasm.proxy = false;
  ort.env.wasm.wasmPaths = DIST; // the .mjs/.wasm files come from this server, never from a CDN
  ort.env.logLevel = 'warning';
  return ort;
}

async function loadModel(source, name) {
  const ort = checkRuntime();
  setStatus(`Loading ${name}…`, 'busy');
  let bytes = source;
  if (typeof source === 'string') {
    const response = await fetch(source);
    if (!response.ok) throw new Error(`could not fetch ${source}: HTTP ${response.status}`);
    bytes = await response.arrayBuffer();
  }
  const start = performance.now();
  const session = await ort.InferenceSession.create(new Uint8Array(bytes), {
    executionProviders: ['wasm'],
    graphOptimizationLevel: 'all',
  });
  const loadMs = performance.now() - start;
  if (state.session) await state.session.release();
  state.session = session;
  state.modelName = name;
  const describe = (list, names) =>
    (list ?? names.map((n) => ({ name: n })))
      .map((m) => `${m.name}: ${m.type ?? '?'} ${m.shape ? shapeText(m.shape) : ''}`)
      .join('\n  ');
  $('model-info').textContent =
    `${name} (${(bytes.byteLength / 1024).toFixed(1)} KiB), session created in ${loadMs.toFixed(1)} ms\n` +
    `inputs:\n  ${describe(session.inputMetadata, session.inputNames)}\n` +
    `outputs:\n  ${describe(session.outputMetadata, session.outputNames)}`;
  // A previous input that does not fit this model is dropped.
  if (state.inputs && !Object.keys(state.inputs).every((n) => session.inputNames.includes(n))) clearInput();
  updateRunButton();
  setStatus('Model loaded', 'idle');
  return session;
}

// ---------------------------------------------------------------------------------------------------------------------
// Inputs

function clearInput() {
  state.inputs = null;
  state.reference = null;
  state.inputSource = null;
  $('input-info').textContent = 'No input yet.';
}

function nestedToTensor(name, value) {
  const shape = [];
  for (let level = value; Array.isArray(level); level = level[0]) shape.push(level.length);
  const data = new Float32Array(product(shape));
  let offset = 0;
  const walk = (node, depth) => {
    if (depth === shape.length) {
      if (typeof node !== 'number' || !Number.isFinite(node)) throw new Error(`${name}: non-numeric value ${JSON.stringify(node)}`);
      data[offset++] = node;
      return;
    }
    if (!Array.isArray(node) || node.length !== shape[depth]) throw new Error(`${name}: ragged nested list`);
    for (const item of node) walk(item, depth + 1);
  };
  walk(value, 0);
  return { data, shape };
}

function setReference(json, source) {
  if (!json || typeof json.inputs !== 'object') throw new Error('reference JSON needs {"inputs": {name: nested list}}');
  const inputs = {};
  for (const [name, value] of Object.entries(json.inputs)) inputs[name] = nestedToTensor(name, value);
  const reference = {};
  for (const [name, value] of Object.entries(json.outputs ?? {})) reference[name] = nestedToTensor(name, value);
  state.inputs = inputs;
  state.reference = Object.keys(reference).length > 0 ? reference : null;
  state.inputSource = source;
  showInputInfo();
}

function randomInput() {
  const session = state.session;
  if (!session) throw new Error('load a model first');
  const batch = Math.max(1, Number($('batch').value) || 1);
  const inputs = {};
  for (const meta of session.inputMetadata) {
    if (meta.type !== 'float32') throw new Error(`input ${meta.name} is ${meta.type}: random inputs are float32 only`);
    const shape = meta.shape.map((d, axis) => (typeof d === 'number' && d > 0 ? d : axis === 0 ? batch : 1));
    const data = new Float32Array(product(shape));
    for (let i = 0; i < data.length; i++) data[i] = Math.random();
    inputs[meta.name] = { data, shape };
  }
  state.inputs = inputs;
  state.reference = null;
  state.inputSource = `random uniform [0, 1), batch ${batch}`;
  showInputInfo();
}

function showInputInfo() {
  const parts = Object.entries(state.inputs).map(([n, t]) => `${n}: float32 ${shapeText(t.shape)}`);
  const ref = state.reference ? `\nreference outputs: ${Object.entries(state.reference).map(([n, t]) => `${n} ${shapeText(t.shape)}`).join(', ')}` : '';
  $('input-info').textContent = `${state.inputSource}\n${parts.join('\n')}${ref}`;
  updateRunButton();
}

function updateRunButton() {
  $('run').disabled = !(state.session && state.inputs);
}

// ---------------------------------------------------------------------------------------------------------------------
// Running and showing results

async function run(runs = Number($('runs').value) || 1) {
  const ort = checkRuntime();
  const session = state.session;
  if (!session) throw new Error('load a model first');
  if (!state.inputs) throw new Error('make an input first');
  const missing = session.inputNames.filter((n) => !(n in state.inputs));
  if (missing.length > 0) throw new Error(`the input has no ${missing.join(', ')}; the model needs ${session.inputNames.join(', ')}`);
  setStatus('Running…', 'busy');
  await new Promise((resolve) => setTimeout(resolve, 0)); // let the status paint
  const feeds = {};
  for (const name of session.inputNames) feeds[name] = new ort.Tensor('float32', state.inputs[name].data, state.inputs[name].shape);
  const times = [];
  let results;
  for (let i = 0; i < Math.max(1, runs); i++) {
    const start = performance.now();
    results = await session.run(feeds);
    times.push(performance.now() - start);
  }
  const steady = times.length > 1 ? times.slice(1) : times;
  const sorted = [...steady].sort((a, b) => a - b);
  const outputs = {};
  for (const name of session.outputNames) outputs[name] = { shape: [...results[name].dims], data: Array.from(results[name].data) };
  let maxAbsError = null;
  if (state.reference) {
    maxAbsError = 0;
    for (const [name, ref] of Object.entries(state.reference)) {
      const out = outputs[name];
      if (!out || product(out.shape) !== ref.data.length) throw new Error(`output ${name} does not match the reference shape`);
      for (let i = 0; i < ref.data.length; i++) maxAbsError = Math.max(maxAbsError, Math.abs(out.data[i] - ref.data[i]));
    }
  }
  const result = {
    model: state.modelName,
    input: state.inputSource,
    backend: 'wasm',
    threads: ort.env.wasm.numThreads,
    ort_version: ort.env.versions?.web ?? ort.env.versions?.common ?? null,
    runs: times.length,
    first_run_ms: times[0],
    latency_ms: sorted[Math.floor(sorted.length / 2)],
    max_abs_error: maxAbsError,
    outputs,
  };
  window.lastResult = result;
  render(result);
  setStatus(`Done: ${times.length} run(s), median ${result.latency_ms.toFixed(2)} ms`, 'done');
  return result;
}

function drawThumbnail(tensor, item) {
  // Channels-last images (N, H, W, 1|3) are drawn; values in [0, 1] as they are, anything else min-max scaled.
  const [, h, w, c] = tensor.shape;
  if (tensor.shape.length !== 4 || !(c === 1 || c === 3) || h > 512 || w > 512) return null;
  const size = h * w * c;
  const pixels = tensor.data.subarray(item * size, (item + 1) * size);
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of pixels) {
    lo = Math.min(lo, v);
    hi = Math.max(hi, v);
  }
  if (lo >= 0 && hi <= 1) [lo, hi] = [0, 1];
  const scale = hi > lo ? 255 / (hi - lo) : 0;
  const canvas = document.createElement('canvas');
  canvas.width = w;
  canvas.height = h;
  canvas.className = 'thumb';
  const ctx = canvas.getContext('2d');
  const image = ctx.createImageData(w, h);
  for (let p = 0; p < h * w; p++) {
    for (let k = 0; k < 3; k++) image.data[4 * p + k] = (pixels[p * c + (c === 3 ? k : 0)] - lo) * scale;
    image.data[4 * p + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
  return canvas;
}

function render(result) {
  const container = $('result');
  container.replaceChildren();
  const metrics = document.createElement('div');
  metrics.className = 'metrics';
  const metric = (value, label, cls = '') => {
    const div = document.createElement('div');
    div.className = `metric ${cls}`;
    div.innerHTML = `<b></b><span></span>`;
    div.querySelector('b').textContent = value;
    div.querySelector('span').textContent = label;
    metrics.append(div);
  };
  metric(`${result.latency_ms.toFixed(2)} ms`, `median latency (${result.runs} runs)`);
  metric(`${result.first_run_ms.toFixed(2)} ms`, 'first run');
  if (result.max_abs_error !== null) {
    metric(result.max_abs_error.toExponential(2), 'max abs error vs reference', result.max_abs_error <= 1e-4 ? 'ok' : 'bad');
  }
  metric(`${result.backend} · ${result.threads} thread`, `onnxruntime-web ${result.ort_version ?? ''}`);
  container.append(metrics);

  // Per item: the top-3 of the first 2-D output (batch, classes), with the reference's top class when there is one.
  const [outName, out] = Object.entries(result.outputs)[0];
  if (out.shape.length === 2) {
    const [batch, classes] = out.shape;
    const refOut = state.reference?.[outName];
    const firstInput = Object.values(state.inputs)[0];
    const table = document.createElement('table');
    table.innerHTML = `<thead><tr><th>item</th><th>input</th><th>top classes (${outName})</th>${refOut ? '<th>reference top-1</th>' : ''}</tr></thead>`;
    const body = document.createElement('tbody');
    for (let b = 0; b < batch; b++) {
      const row = out.data.slice(b * classes, (b + 1) * classes);
      const top = [...row.keys()].sort((i, j) => row[j] - row[i]).slice(0, 3);
      const largest = Math.max(...row.map(Math.abs)) || 1;
      const tr = document.createElement('tr');
      const cells = [document.createElement('td'), document.createElement('td'), document.createElement('td')];
      cells[0].textContent = String(b);
      const thumb = drawThumbnail(firstInput, b);
      if (thumb) cells[1].append(thumb);
      else cells[1].textContent = '—';
      for (const k of top) {
        const line = document.createElement('div');
        const bar = document.createElement('span');
        bar.className = 'bar';
        bar.style.width = `${Math.max(1, Math.round((Math.abs(row[k]) / largest) * 120))}px`;
        line.append(bar, `class ${k}: ${row[k].toFixed(4)}`);
        cells[2].append(line);
      }
      tr.append(...cells);
      if (refOut) {
        const refRow = refOut.data.slice(b * classes, (b + 1) * classes);
        const refTop = refRow.indexOf(Math.max(...refRow));
        const td = document.createElement('td');
        td.textContent = `class ${refTop}${refTop === top[0] ? ' ✓' : ' ✗'}`;
        td.className = refTop === top[0] ? 'ok' : 'bad';
        tr.append(td);
      }
      body.append(tr);
    }
    table.append(body);
    container.append(table);
  }

  const total = Object.values(result.outputs).reduce((n, o) => n + o.data.length, 0);
  const shown = total <= MAX_PRE_VALUES ? result : { ...result, outputs: '(too large to show: see window.lastResult)' };
  $('outputs').textContent = JSON.stringify(shown);
}

// ---------------------------------------------------------------------------------------------------------------------
// Wiring

function guarded(fn) {
  return async (...args) => {
    try {
      return await fn(...args);
    } catch (err) {
      fail(err);
      return undefined;
    }
  };
}

async function fetchJson(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`could not fetch ${url}: HTTP ${response.status}`);
  return response.json();
}

$('load-model-url').addEventListener('click', guarded(() => loadModel('model.onnx', 'model.onnx')));
$('model-file').addEventListener(
  'change',
  guarded(async (event) => {
    const file = event.target.files[0];
    if (file) await loadModel(await file.arrayBuffer(), file.name);
  }),
);
$('random-input').addEventListener('click', guarded(randomInput));
$('load-reference-url').addEventListener(
  'click',
  guarded(async () => setReference(await fetchJson('reference.json'), 'reference.json')),
);
$('reference-file').addEventListener(
  'change',
  guarded(async (event) => {
    const file = event.target.files[0];
    if (file) setReference(JSON.parse(await file.text()), file.name);
  }),
);
$('run').addEventListener('click', guarded(() => run()));

// For automation (tests, scripts): run a reference JSON end to end and return the result. Throws on errors.
window.runReference = async (json, { runs = 10 } = {}) => {
  try {
    if (!state.session) await loadModel('model.onnx', 'model.onnx');
    setReference(json, 'reference JSON (runReference)');
    return await run(runs);
  } catch (err) {
    fail(err);
    throw err;
  }
};

try {
  const ort = checkRuntime();
  setStatus(`Ready: onnxruntime-web ${ort.env.versions?.web ?? ''} (WASM). Load a model.`, 'ready');
} catch (err) {
  fail(err);
}
