#!/usr/bin/env node
// Minimal HTTP inference service for an ONNX model exported by `lambda-export`, using onnxruntime-node (CPU).
//
//   node server.js --model model.onnx [--port 8080] [--host 127.0.0.1] [--max-body-bytes 10485760] [--threads N]
//
// Environment fallbacks: MODEL_PATH, PORT, HOST, MAX_BODY_BYTES, ORT_THREADS. `--port 0` picks a free port; the bound
// address is printed on stdout as `listening on http://HOST:PORT`.
//
// Routes:
//   GET  /health   -> {"status": "ok", "model": ..., "inputs": [...], "outputs": [...]}
//   POST /predict  -> {"outputs": {name: {"shape": [...], "data": [...]}}, "latency_ms": ...}
//     Content-Type: application/json
//       {"inputs": {name: nested list}}  or  {"inputs": {name: {"data": flat list, "shape": [...]}}}
//     Content-Type: application/octet-stream
//       raw little-endian float32 bytes; X-Shape: 4,32,32,3; X-Input-Name: name (optional for single-input models)
// Errors are JSON {"error": message} with 400 (malformed request), 404 (unknown route), 405 (wrong method),
// 413 (body too large), 415 (unsupported content type), 422 (valid JSON but wrong input name/shape/values) or 500.
'use strict';

const http = require('node:http');
const path = require('node:path');
const ort = require('onnxruntime-node');

const DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024;

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function parseArgs(argv) {
  const options = {
    model: process.env.MODEL_PATH,
    port: process.env.PORT ?? '8080',
    host: process.env.HOST ?? '127.0.0.1',
    maxBodyBytes: process.env.MAX_BODY_BYTES ?? String(DEFAULT_MAX_BODY_BYTES),
    threads: process.env.ORT_THREADS,
  };
  const names = { '--model': 'model', '--port': 'port', '--host': 'host', '--max-body-bytes': 'maxBodyBytes', '--threads': 'threads' };
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i];
    let value;
    const eq = arg.indexOf('=');
    if (arg.startsWith('--') && eq > 0) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    if (arg === '-h' || arg === '--help') {
      console.log('usage: node server.js --model MODEL.onnx [--port 8080] [--host 127.0.0.1] [--max-body-bytes N] [--threads N]');
      process.exit(0);
    }
    if (!(arg in names)) throw new Error(`unknown argument: ${arg}`);
    if (value === undefined) {
      value = argv[++i];
      if (value === undefined) throw new Error(`${arg} needs a value`);
    }
    options[names[arg]] = value;
  }
  if (!options.model) throw new Error('no model: pass --model MODEL.onnx (or set MODEL_PATH)');
  const port = Number(options.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`invalid port: ${options.port}`);
  const maxBodyBytes = Number(options.maxBodyBytes);
  if (!Number.isInteger(maxBodyBytes) || maxBodyBytes <= 0) throw new Error(`invalid --max-body-bytes: ${options.maxBodyBytes}`);
  let threads;
  if (options.threads !== undefined && options.threads !== '') {
    threads = Number(options.threads);
    if (!Number.isInteger(threads) || threads < 0) throw new Error(`invalid --threads: ${options.threads}`);
  }
  return { model: options.model, port, host: options.host, maxBodyBytes, threads };
}

// ---------------------------------------------------------------------------------------------------------------------
// Request parsing and validation

function readBody(req, maxBodyBytes) {
  return new Promise((resolve, reject) => {
    const declared = req.headers['content-length'];
    if (declared !== undefined && Number(declared) > maxBodyBytes) {
      reject(new HttpError(413, `request body of ${declared} bytes exceeds the limit of ${maxBodyBytes} bytes`));
      return;
    }
    const chunks = [];
    let size = 0;
    let failed = false;
    req.on('data', (chunk) => {
      if (failed) return;
      size += chunk.length;
      if (size > maxBodyBytes) {
        failed = true;
        chunks.length = 0;
        reject(new HttpError(413, `request body exceeds the limit of ${maxBodyBytes} bytes`));
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => {
      if (!failed) resolve(Buffer.concat(chunks, size));
    });
    req.on('error', (err) => {
      if (!failed) reject(new HttpError(400, `could not read the request body: ${err.message}`));
    });
  });
}

function describeShape(shape) {
  return `[${shape.join(', ')}]`;
}

// Check a concrete shape against the model's declared one (symbolic dims such as "batch" accept any size >= 1).
function checkShape(name, shape, meta) {
  if (!Array.isArray(shape) || shape.length === 0) throw new HttpError(422, `input "${name}": shape must be a non-empty list`);
  for (const dim of shape) {
    if (!Number.isInteger(dim) || dim < 1) {
      throw new HttpError(422, `input "${name}": shape ${JSON.stringify(shape)} must contain positive integers`);
    }
  }
  const expected = meta.shape;
  if (!Array.isArray(expected)) return;
  if (shape.length !== expected.length) {
    throw new HttpError(
      422,
      `input "${name}": got rank ${shape.length} ${describeShape(shape)}, the model expects rank ${expected.length} ${describeShape(expected)}`,
    );
  }
  expected.forEach((want, axis) => {
    if (typeof want === 'number' && want > 0 && shape[axis] !== want) {
      throw new HttpError(
        422,
        `input "${name}": got shape ${describeShape(shape)}, the model expects ${describeShape(expected)} (axis ${axis} must be ${want})`,
      );
    }
  });
}

function checkFinite(name, data) {
  for (let i = 0; i < data.length; i++) {
    if (!Number.isFinite(data[i])) {
      throw new HttpError(422, `input "${name}": value at flat index ${i} is ${data[i]}; NaN and Infinity are not allowed`);
    }
  }
}

// Shape of a nested list (must be rectangular), checked before flattening.
function nestedShape(name, value) {
  const shape = [];
  let level = value;
  while (Array.isArray(level)) {
    if (level.length === 0) throw new HttpError(422, `input "${name}": empty list at depth ${shape.length}`);
    shape.push(level.length);
    level = level[0];
  }
  return shape;
}

function flattenNested(name, value, shape) {
  const total = shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(total);
  let offset = 0;
  const walk = (node, depth, where) => {
    if (depth === shape.length) {
      if (typeof node !== 'number') {
        throw new HttpError(422, `input "${name}": non-numeric value ${JSON.stringify(node)} at ${where}`);
      }
      out[offset++] = node;
      return;
    }
    if (!Array.isArray(node) || node.length !== shape[depth]) {
      throw new HttpError(
        422,
        `input "${name}": ragged nested list at ${where} (expected a list of ${shape[depth]} items, shape ${describeShape(shape)})`,
      );
    }
    for (let i = 0; i < node.length; i++) walk(node[i], depth + 1, `${where}[${i}]`);
  };
  walk(value, 0, name);
  return out;
}

function flatFromList(name, list, shape) {
  const total = shape.reduce((a, b) => a * b, 1);
  if (list.length !== total) {
    throw new HttpError(422, `input "${name}": ${list.length} values do not match shape ${describeShape(shape)} (${total} values)`);
  }
  const out = new Float32Array(total);
  for (let i = 0; i < total; i++) {
    const v = list[i];
    if (typeof v !== 'number') throw new HttpError(422, `input "${name}": non-numeric value ${JSON.stringify(v)} at flat index ${i}`);
    out[i] = v;
  }
  return out;
}

function parseJsonInputs(body, model) {
  let payload;
  try {
    payload = JSON.parse(body.toString('utf8'));
  } catch (err) {
    const hint = /\b(NaN|-?Infinity)\b/.test(body.toString('utf8')) ? ' (NaN and Infinity are not valid JSON)' : '';
    throw new HttpError(400, `malformed JSON: ${err.message}${hint}`);
  }
  if (payload === null || typeof payload !== 'object' || Array.isArray(payload)) {
    throw new HttpError(400, 'the JSON body must be an object {"inputs": {name: values}}');
  }
  const inputs = payload.inputs;
  if (inputs === null || typeof inputs !== 'object' || Array.isArray(inputs)) {
    throw new HttpError(400, 'missing "inputs": expected {"inputs": {name: nested list | {"data": [...], "shape": [...]}}}');
  }
  const unknown = Object.keys(inputs).filter((n) => !model.inputs.has(n));
  if (unknown.length > 0) {
    throw new HttpError(422, `unknown input name(s) ${JSON.stringify(unknown)}; the model's inputs are ${JSON.stringify([...model.inputs.keys()])}`);
  }
  const feeds = {};
  for (const [name, meta] of model.inputs) {
    if (!(name in inputs)) throw new HttpError(422, `missing input "${name}"; the model's inputs are ${JSON.stringify([...model.inputs.keys()])}`);
    const value = inputs[name];
    let data;
    let shape;
    if (Array.isArray(value)) {
      shape = nestedShape(name, value);
      checkShape(name, shape, meta);
      data = flattenNested(name, value, shape);
    } else if (value !== null && typeof value === 'object' && Array.isArray(value.data) && 'shape' in value) {
      shape = value.shape;
      checkShape(name, shape, meta);
      data = flatFromList(name, value.data, shape);
    } else {
      throw new HttpError(422, `input "${name}": expected a nested list or {"data": flat list, "shape": [...]}`);
    }
    checkFinite(name, data);
    feeds[name] = new ort.Tensor('float32', data, shape);
  }
  return feeds;
}

function parseRawInput(req, body, model) {
  const header = req.headers['x-shape'];
  if (header === undefined) throw new HttpError(400, 'raw float32 input needs an X-Shape header, e.g. "X-Shape: 4,32,32,3"');
  const parts = String(header).split(/[,x ]+/).filter((p) => p !== '');
  if (parts.length === 0 || !parts.every((p) => /^\d+$/.test(p))) {
    throw new HttpError(400, `invalid X-Shape header ${JSON.stringify(header)}: expected comma-separated positive integers`);
  }
  const shape = parts.map(Number);
  let name = req.headers['x-input-name'];
  if (name === undefined) {
    if (model.inputs.size !== 1) {
      throw new HttpError(400, `the model has ${model.inputs.size} inputs: name one with an X-Input-Name header`);
    }
    name = model.inputs.keys().next().value;
  }
  const meta = model.inputs.get(name);
  if (meta === undefined) {
    throw new HttpError(422, `unknown input name ${JSON.stringify(name)}; the model's inputs are ${JSON.stringify([...model.inputs.keys()])}`);
  }
  if (model.inputs.size !== 1) throw new HttpError(422, 'raw float32 bodies carry one input; this model has several: send JSON');
  checkShape(name, shape, meta);
  const total = shape.reduce((a, b) => a * b, 1);
  if (body.length !== total * 4) {
    throw new HttpError(
      422,
      `input "${name}": body has ${body.length} bytes, shape ${describeShape(shape)} needs ${total * 4} bytes of float32`,
    );
  }
  // Copy into an aligned buffer; float32 is read little-endian (the layout of numpy's "<f4" and of x86/ARM memory).
  const data = new Float32Array(total);
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  for (let i = 0; i < total; i++) data[i] = view.getFloat32(i * 4, true);
  checkFinite(name, data);
  return { [name]: new ort.Tensor('float32', data, shape) };
}

// ---------------------------------------------------------------------------------------------------------------------
// Server

// Before an error reply (413 above all), read and drop the rest of an unread upload, so that clients which send the
// whole body before reading the reply (urllib, requests, fetch; with `Connection: close` Node closes the socket right
// after the reply) get the error instead of a broken pipe. Past DRAIN_LIMIT_BYTES the reply goes out at once and the
// connection is cut.
const DRAIN_LIMIT_BYTES = 64 * 1024 * 1024;

function discardBody(req) {
  return new Promise((resolve) => {
    if (req.complete) {
      resolve(true);
      return;
    }
    let drained = 0;
    req.removeAllListeners('data');
    req.on('data', (chunk) => {
      drained += chunk.length;
      if (drained > DRAIN_LIMIT_BYTES) {
        req.pause();
        resolve(false);
      }
    });
    req.on('end', () => resolve(true));
    req.on('close', () => resolve(req.complete));
    req.on('error', () => resolve(false));
    req.resume();
  });
}

function sendJson(res, status, payload, headers = {}) {
  const body = JSON.stringify(payload);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body), ...headers });
  res.end(body);
}

function createServer(session, model, options) {
  const routes = { '/health': 'GET', '/predict': 'POST' };

  async function predict(req, res) {
    const contentType = String(req.headers['content-type'] ?? 'application/json').split(';')[0].trim().toLowerCase();
    if (contentType !== 'application/json' && contentType !== 'application/octet-stream') {
      throw new HttpError(415, `unsupported Content-Type ${JSON.stringify(contentType)}: use application/json or application/octet-stream`);
    }
    const body = await readBody(req, options.maxBodyBytes);
    const feeds = contentType === 'application/json' ? parseJsonInputs(body, model) : parseRawInput(req, body, model);
    const start = performance.now();
    let results;
    try {
      results = await session.run(feeds);
    } catch (err) {
      throw new HttpError(500, `inference failed: ${err.message}`);
    }
    const latencyMs = performance.now() - start;
    const outputs = {};
    for (const name of session.outputNames) {
      const tensor = results[name];
      outputs[name] = { shape: tensor.dims, data: Array.from(tensor.data, Number) };
    }
    sendJson(res, 200, { outputs, latency_ms: latencyMs });
  }

  return http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://localhost');
    try {
      const method = routes[url.pathname];
      if (method === undefined) throw new HttpError(404, `no route ${url.pathname}; try GET /health or POST /predict`);
      if (req.method !== method && !(method === 'GET' && req.method === 'HEAD')) {
        res.setHeader('Allow', method === 'GET' ? 'GET, HEAD' : method);
        throw new HttpError(405, `${req.method} is not allowed on ${url.pathname}; use ${method}`);
      }
      if (url.pathname === '/health') {
        sendJson(res, 200, {
          status: 'ok',
          model: path.basename(options.model),
          inputs: [...model.inputs.values()],
          outputs: [...model.outputs.values()],
          onnxruntime: ort.env.versions?.node ?? null,
        });
      } else {
        await predict(req, res);
      }
    } catch (err) {
      const status = err instanceof HttpError ? err.status : 500;
      if (!(err instanceof HttpError)) console.error(err);
      let drained = true;
      if (!req.complete) drained = await discardBody(req);
      if (res.headersSent) {
        res.destroy();
        return;
      }
      sendJson(res, status, { error: err.message }, drained ? {} : { Connection: 'close' });
      if (!drained) res.on('finish', () => req.socket.destroy());
    }
  });
}

async function main() {
  let options;
  try {
    options = parseArgs(process.argv.slice(2));
  } catch (err) {
    console.error(`error: ${err.message}`);
    process.exit(2);
  }
  const sessionOptions = { executionProviders: ['cpu'], graphOptimizationLevel: 'all' };
  if (options.threads !== undefined) sessionOptions.intraOpNumThreads = options.threads;
  let session;
  try {
    session = await ort.InferenceSession.create(options.model, sessionOptions);
  } catch (err) {
    console.error(`error: could not load ${options.model}: ${err.message}`);
    process.exit(1);
  }
  const model = { inputs: new Map(), outputs: new Map() };
  for (const meta of session.inputMetadata) {
    model.inputs.set(meta.name, { name: meta.name, type: meta.type, shape: meta.shape });
    if (meta.type !== 'float32') {
      console.error(`error: input "${meta.name}" has type ${meta.type}; this example serves float32 inputs only`);
      process.exit(1);
    }
  }
  for (const meta of session.outputMetadata) model.outputs.set(meta.name, { name: meta.name, type: meta.type, shape: meta.shape });

  const server = createServer(session, model, options);
  server.requestTimeout = 30_000;
  server.on('error', (err) => {
    console.error(`error: ${err.message}`);
    process.exit(1);
  });
  server.listen(options.port, options.host, () => {
    const { address, port } = server.address();
    const host = address.includes(':') ? `[${address}]` : address;
    console.log(`listening on http://${host}:${port}`);
    console.log(
      `model ${options.model}: inputs ${JSON.stringify([...model.inputs.values()])}, outputs ${JSON.stringify([...model.outputs.values()])}`,
    );
  });
  const shutdown = () => {
    server.close(() => session.release().finally(() => process.exit(0)));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGINT', shutdown);
  process.on('SIGTERM', shutdown);
}

main();
