"""timm's LambdaResNets through the exporter (issue 27 item 4): each ported network, end to end, with the real command.

    python benchmarks/timm_export.py                              # all three networks; writes TIMM_EXPORT.md + json
    python benchmarks/timm_export.py --only lambda_resnet26t      # one network (results merged into timm_export.json)
    python benchmarks/timm_export.py --render                     # rewrite TIMM_EXPORT.md from timm_export.json

Per network, each in a worker subprocess of its own (memory is given back between networks; the worker runs the
commands below as its own subprocesses):

1. **Checkpoint**: ``tests/layers/timm_reference.py NAME DIR`` (a PyTorch subprocess; timm is never imported next to
   TensorFlow, see that file): timm's network with seeded random weights and batch-norm statistics far from the
   identity, eval mode, saved with ``safetensors.torch.save_file``; plus timm's own logits on its three probe images.
2. **Keras**: ``lambda_layers.from_timm(NAME, checkpoint=...)`` saved as ``NAME.keras``; its logits on
   :func:`structured_images` (float32, and float64 from ``from_timm(..., dtype="float64")`` with the same checkpoint:
   the truth against which TensorFlow float32's own error is measured) and on timm's probe images (the port's check).
3. **Export**: ``lambda-export NAME.keras -o NAME.onnx --json`` (the defaults: portable target, ``--optimize speed``,
   the relative rule against the Keras model in float64): exit code, verdict, deciding rule, worst ratio
   ``onnx error / TF float32 error`` (both against float64) with the factor it must stay under, max abs error,
   the command's own timings and its wall time.
4. **Runtimes vs Keras** on the structured images: ONNX Runtime CPU and OpenVINO with
   ``INFERENCE_PRECISION_HINT=f32`` (``benchmarks.zoo.check_onnx``), graded as the zoo grades them (max abs ≤ 1e-4, or,
   where TensorFlow float32 is itself further than that from float64, no further from float64 than 5× TF's own error);
   onnxruntime-web (WASM, one thread) in Debian's headless Chromium through ``examples/browser/run_in_browser.mjs``,
   the browser example's page served on 127.0.0.1 with the file and a reference JSON (two of the images).
5. **int8**: ``lambda-export NAME.keras -o NAME.int8.onnx --quantize int8 --calibration calibration.npz --json``:
   calibration on structured images (gradients, shapes, checkerboards, smooth noise; the last 20 % held out by the
   command itself), its verdict (top-1 agreement with TensorFlow float32 ≥ 0.99 on both sets, ONNX Runtime and
   OpenVINO), the mean logits cosine, the int8 / float32 file size and the measured speed-up in ONNX Runtime CPU.

Random weights, not ImageNet's: no download; the numbers say whether the export computes what Keras computes, not how
accurate the network is. Writes ``benchmarks/timm_export.json`` and ``benchmarks/TIMM_EXPORT.md``. Not in CI (tens of
minutes on 2 cores); ``tests/conformance/test_timm_export.py`` runs the same functions on ``lambda_resnet26t``.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.zoo import NOISE_FACTOR, check_onnx, grade  # noqa: E402

NETWORKS = ("lambda_resnet26t", "lambda_resnet26rpt_256", "lambda_resnet50ts")
TIMM_REFERENCE = ROOT / "tests" / "layers" / "timm_reference.py"
BROWSER = ROOT / "examples" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
SIZE = 256
EVAL_IMAGES = 4  # one of each kind of structured image
BROWSER_IMAGES = 2
CALIBRATION_IMAGES = 40  # 32 calibrate, the last 8 are held out by lambda-export for the verdict
EVAL_SEED = 11
CALIBRATION_SEED = 7
SCHEMA = "lambda-export/timm-export/v1"
IMAGENET_MEAN = np.array((0.485, 0.456, 0.406))
IMAGENET_STD = np.array((0.229, 0.224, 0.225))


def _log(message: str) -> None:
    click.echo(f"[timm_export] {message}", err=True)


def lambda_export_exe() -> str:
    """The ``lambda-export`` next to this Python (the venv's), else the one on PATH."""
    local = Path(sys.executable).with_name("lambda-export")
    return str(local) if local.exists() else (shutil.which("lambda-export") or "lambda-export")


# -- structured images -----------------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-resolution uniform noise, bilinearly upsampled: smooth colour blobs."""
    cells = int(rng.integers(4, 17))
    low = rng.uniform(0.0, 1.0, (cells, cells, 3))
    position = np.linspace(0.0, cells - 1.0, size)
    index = np.minimum(position.astype(int), cells - 2)
    frac = position - index
    rows = low[index] * (1 - frac)[:, None, None] + low[index + 1] * frac[:, None, None]
    return rows[:, index] * (1 - frac)[None, :, None] + rows[:, index + 1] * frac[None, :, None]


def structured_images(count: int, seed: int, size: int = SIZE) -> np.ndarray:
    """``count`` natural-ish (b, size, size, 3) NHWC float32 images, normalised as timm feeds them (ImageNet mean/std
    on [0, 1] RGB), cycling through four kinds (image ``i`` is of kind ``i % 4``): a linear colour gradient at a
    random angle, 2-5 filled discs and rectangles on a plain background, a two-colour checkerboard (period 4-47 px),
    smooth colour noise; each with a little pixel noise (σ 0.02). Deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1.0)
    out = np.empty((count, size, size, 3))
    for i in range(count):
        kind = i % 4
        if kind == 0:
            angle = rng.uniform(0.0, 2 * np.pi)
            t = np.cos(angle) * xx + np.sin(angle) * yy
            t = (t - t.min()) / (np.ptp(t) + 1e-12)
            a, b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
            image = a + (b - a) * t[..., None]
        elif kind == 1:
            image = np.ones((size, size, 3)) * rng.uniform(0, 1, 3)
            for _ in range(int(rng.integers(2, 6))):
                colour = rng.uniform(0, 1, 3)
                cx, cy, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.3)
                if rng.random() < 0.5:
                    mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
                else:
                    mask = (np.abs(xx - cx) < r) & (np.abs(yy - cy) < r * rng.uniform(0.3, 1.0))
                image[mask] = colour
        elif kind == 2:
            period = int(rng.integers(4, 48))
            a, b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
            cells = ((np.mgrid[0:size, 0:size] // period).sum(0) % 2)[..., None]
            image = np.where(cells == 1, a, b)
        else:
            image = _smooth_noise(rng, size)
        image = np.clip(image + rng.normal(0.0, 0.02, image.shape), 0.0, 1.0)
        out[i] = (image - IMAGENET_MEAN) / IMAGENET_STD
    return out.astype(np.float32)


# -- steps -----------------------------------------------------------------------------------------------------------


def make_checkpoint(name: str, folder: Path, seed: int = 0) -> dict[str, Any]:
    """timm's random checkpoint ``folder/model.safetensors`` and timm's logits ``folder/reference.npz``, made by
    tests/layers/timm_reference.py in a PyTorch subprocess (reused when present)."""
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if not (folder / "model.safetensors").is_file() or not (folder / "reference.npz").is_file():
        done = subprocess.run(
            [sys.executable, str(TIMM_REFERENCE), name, str(folder), "--seed", str(seed)],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if done.returncode != 0:
            raise RuntimeError(f"timm_reference.py {name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return {"checkpoint": str(folder / "model.safetensors"), "seed": seed, "s": round(time.perf_counter() - started, 1)}


def keras_step(name: str, folder: Path) -> dict[str, Any]:
    """Port ``folder/model.safetensors`` with ``from_timm``, save ``folder/NAME.keras``, write the structured
    evaluation images (``eval.npz``, key ``image``), Keras' float32 logits on them (``reference.npz``, key ``logits``)
    and the float64 port's (``float64.npz``); and compare the port with timm's own logits on timm's probe images."""
    import keras

    from lambda_layers import from_timm

    started = time.perf_counter()
    checkpoint = folder / "model.safetensors"
    model = from_timm(name, checkpoint=checkpoint)
    path = folder / f"{name}.keras"
    model.save(path)
    x = structured_images(EVAL_IMAGES, EVAL_SEED)
    logits = np.asarray(model.predict(x, batch_size=2, verbose=0))
    with np.load(folder / "reference.npz") as timm_ref:
        probe = np.ascontiguousarray(timm_ref["x"].transpose(0, 2, 3, 1))
        timm32, timm64 = timm_ref["want32"], timm_ref["want64"]
    port32 = np.asarray(model.predict(probe, batch_size=3, verbose=0))
    params = int(model.count_params())
    del model
    keras.backend.clear_session()
    wide = from_timm(name, checkpoint=checkpoint, dtype="float64")
    truth = np.asarray(wide.predict(x.astype(np.float64), batch_size=2, verbose=0), dtype=np.float64)
    port64 = np.asarray(wide.predict(probe.astype(np.float64), batch_size=3, verbose=0), dtype=np.float64)
    del wide
    keras.backend.clear_session()
    np.savez(folder / "eval.npz", image=x)
    np.savez(folder / "keras_logits.npz", logits=logits)
    np.savez(folder / "float64.npz", logits=truth)
    scale = float(np.abs(timm64).max())
    return {
        "keras": str(path),
        "params": params,
        "eval_images": EVAL_IMAGES,
        "logits_scale": float(np.abs(truth).max()),
        "tf32_error": float(np.abs(logits.astype(np.float64) - truth).max()),
        "top1": [int(i) for i in np.argmax(logits, axis=1)],
        "timm": {  # the port against timm itself (PyTorch), on timm_reference.py's three probe images
            "max_abs_float32": float(np.abs(port32 - timm32).max()),
            "max_abs_float64": float(np.abs(port64 - timm64).max()),
            "scale": scale,
            "top1_agree": bool(np.array_equal(np.argmax(port32, 1), np.argmax(timm32, 1))),
        },
        "s": round(time.perf_counter() - started, 1),
    }


def run_lambda_export(arguments: list[str], timeout: float = 3600) -> dict[str, Any]:
    """The real command with ``--json``: {"exit", "json" (parsed stdout, or None), "stderr" (tail), "wall_s"}."""
    command = [lambda_export_exe(), *arguments, "--json"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - started
    try:
        document = json.loads(done.stdout)
    except json.JSONDecodeError:
        document = None
    return {"command": command, "exit": done.returncode, "json": document, "stderr": done.stderr[-3000:],
            "wall_s": round(wall, 1)}  # fmt: skip


def export_summary(run: dict[str, Any]) -> dict[str, Any]:
    """What the float export's JSON says: exit, verdict, deciding rule, worst float64 ratio and its factor, max abs
    error against TensorFlow, node count, the command's timings (load / convert / write / parity) and its wall time."""
    document = run["json"] or {}
    parity = document.get("parity") or {}
    results = parity.get("results") or []
    rules = sorted({(r.get("metrics") or {}).get("rule") for r in results} - {None})
    ratios = [((r.get("metrics") or {}).get("vs_float64") or {}).get("ratio_max") for r in results]
    ratios_rms = [((r.get("metrics") or {}).get("vs_float64") or {}).get("ratio_rms") for r in results]
    max_abs = [(r.get("metrics") or {}).get("max_abs") for r in results]
    timings = parity.get("timings") or {}
    conversion = document.get("conversion") or {}
    convert_s = sum(timings.get(k) or 0.0 for k in ("load", "convert", "write"))
    return {
        "exit": run["exit"],
        "verdict": document.get("verdict"),
        "passed": parity.get("passed"),
        "rule": parity.get("rule"),
        "rules_used": rules,
        "float64_available": (parity.get("float64") or {}).get("available"),
        "factor": parity.get("factor"),
        "ratio_max": max((r for r in ratios if r is not None), default=None),
        "ratio_rms": max((r for r in ratios_rms if r is not None), default=None),
        "max_abs": max((m for m in max_abs if m is not None), default=None),
        "checks": len(results),
        "providers": parity.get("providers_run"),
        "nodes": conversion.get("nodes"),
        "warnings": conversion.get("warnings"),
        "parity_warnings": parity.get("warnings"),
        "timings": timings,
        "conversion_s": round(convert_s, 1) if timings else None,
        "wall_s": run["wall_s"],
        "stderr": None if run["exit"] == 0 else run["stderr"],
    }


def runtime_checks(onnx_path: Path, folder: Path) -> dict[str, Any]:
    """ONNX Runtime CPU and OpenVINO (f32 pinned) on ``eval.npz`` against Keras float32 (and float64), graded."""
    with (
        np.load(folder / "eval.npz") as a,
        np.load(folder / "keras_logits.npz") as b,
        np.load(folder / "float64.npz") as c,
    ):
        feeds, reference, truth = {"image": a["image"]}, [b["logits"]], [c["logits"]]
    noise = float(np.abs(reference[0].astype(np.float64) - truth[0]).max())
    result = check_onnx(onnx_path, feeds, reference, openvino=True, truth=truth)
    for runtime in ("ort", "openvino"):
        record = result.get(runtime) or {"error": "not run"}
        record["grade"] = grade(record, noise)
        if "max_abs" in record:
            record["scaled"] = record["max_abs"] / max(float(np.abs(reference[0]).max()), 1e-30)
        result[runtime] = record
    return result


# -- onnxruntime-web in Chromium -------------------------------------------------------------------------------------


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves examples/browser, plus /model.onnx and /reference.json from ``extra``."""

    extensions_map = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm"}  # noqa: RUF012

    def __init__(self, *args: Any, extra: dict[str, Path], **kwargs: Any) -> None:
        self.extra = extra
        super().__init__(*args, **kwargs)

    def translate_path(self, path: str) -> str:
        route = path.split("?", 1)[0].split("#", 1)[0]
        return str(self.extra[route]) if route in self.extra else super().translate_path(path)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve_browser_page(extra: dict[str, Path]) -> Iterator[str]:
    """examples/browser over HTTP on 127.0.0.1 (a free port), with ``extra`` routes; yields the page URL."""
    handler = functools.partial(_Handler, directory=str(BROWSER), extra=extra)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/index.html"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def browser_missing() -> str | None:
    """Why the browser check cannot run here, or None."""
    if shutil.which("node") is None:
        return "Node.js (node) not found"
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} not found"
    if not (BROWSER / "node_modules" / "onnxruntime-web" / "dist" / "ort.wasm.min.js").is_file():
        return "onnxruntime-web not installed: cd examples/browser && npm ci"
    return None


def browser_check(onnx_path: Path, folder: Path, images: int = BROWSER_IMAGES, timeout_s: float = 600) -> dict:
    """onnxruntime-web (WASM, one thread) in headless Chromium on the first ``images`` evaluation images, driven by
    examples/browser/run_in_browser.mjs (its UI path and its ``window.runReference`` API), against Keras float32."""
    why = browser_missing()
    if why is not None:
        return {"error": why}
    with (
        np.load(folder / "eval.npz") as a,
        np.load(folder / "keras_logits.npz") as b,
        np.load(folder / "float64.npz") as c,
    ):
        x, reference, truth = a["image"][:images], b["logits"][:images], c["logits"][:images]
    reference_json = folder / "browser_reference.json"
    reference_json.write_text(json.dumps({"inputs": {"image": x.tolist()}, "outputs": {"logits": reference.tolist()}}))
    out = folder / "browser_result.json"
    out.unlink(missing_ok=True)
    step_ms = int(timeout_s * 1000 / 3)
    with serve_browser_page({"/model.onnx": onnx_path, "/reference.json": reference_json}) as url:
        command = [shutil.which("node") or "node", "run_in_browser.mjs", url, "--out", str(out), "--runs", "1"]
        command += ["--chromium", str(CHROMIUM), "--timeout-ms", str(step_ms)]
        env = {**os.environ, "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"}
        started = time.perf_counter()
        process = subprocess.Popen(
            command, cwd=BROWSER, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            start_new_session=True,
        )  # fmt: skip
        try:
            _, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            _, stderr = process.communicate(timeout=10)
            return {"error": f"run_in_browser.mjs did not finish in {timeout_s:.0f} s: {stderr[-500:]}"}
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # a Chromium left behind
        wall = time.perf_counter() - started
    report = json.loads(out.read_text()) if out.is_file() else {}
    if process.returncode != 0 or not report.get("api"):
        return {"error": f"driver exit {process.returncode}: {report.get('error') or stderr[-800:]}"}
    noise = float(np.abs(reference.astype(np.float64) - truth).max())
    record: dict[str, Any] = {"wall_s": round(wall, 1), "images": int(images), "page_errors": report["page_errors"]}
    worst, worst64 = 0.0, 0.0
    for path in ("ui", "api"):
        run = report[path]
        output = run["outputs"]["logits"]
        values = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
        if values.shape != reference.shape:
            return {"error": f"{path}: output shape {values.shape}, Keras {reference.shape}"}
        worst = max(worst, float(np.abs(values.astype(np.float64) - reference).max()))
        worst64 = max(worst64, float(np.abs(values.astype(np.float64) - truth).max()))
        record[path] = {
            "backend": run.get("backend"),
            "threads": run.get("threads"),
            "ort_version": run.get("ort_version"),
            "latency_ms": run.get("latency_ms"),
            "first_run_ms": run.get("first_run_ms"),
            "page_max_abs_error": run.get("max_abs_error"),
            "top1_agree": bool(np.array_equal(np.argmax(values, 1), np.argmax(reference, 1))),
        }
    record.update(max_abs=worst, max_abs_float64=worst64)
    record["grade"] = grade(record, noise)
    return record


# -- int8 ------------------------------------------------------------------------------------------------------------


def write_calibration(folder: Path, count: int = CALIBRATION_IMAGES, seed: int = CALIBRATION_SEED) -> Path:
    """``folder/calibration.npz`` (key ``image``): ``count`` structured images, a seed the evaluation does not use."""
    path = folder / "calibration.npz"
    np.savez(path, image=structured_images(count, seed))
    return path


def quantize_summary(run: dict[str, Any]) -> dict[str, Any]:
    """What the ``--quantize int8`` JSON says: exit, verdict, worst top-1 agreement and mean cosine over the sets and
    runtimes, the rule, size ratio, speed-up, groups kept float, and the command's wall time."""
    document = run["json"] or {}
    quantization = document.get("quantization") or {}
    verdict = quantization.get("verdict") or {}
    rows = verdict.get("results") or []
    agreements = [r["top1_agreement"] for r in rows if r.get("top1_agreement") is not None]
    cosines = [r["cosine"] for r in rows if r.get("cosine") is not None]
    speed = quantization.get("speed") or {}
    size = quantization.get("size") or {}
    calibration = quantization.get("calibration") or {}
    return {
        "exit": run["exit"],
        "verdict": document.get("verdict"),
        "passed": quantization.get("passed"),
        "rule": verdict.get("rule"),
        "runtimes": verdict.get("runtimes_run"),
        "rows": [
            {k: r.get(k) for k in ("runtime", "set", "samples", "top1_agreement", "cosine", "cosine_on", "max_abs")}
            for r in rows
        ],
        "agreement_min": min(agreements, default=None),
        "cosine_min": min(cosines, default=None),
        "failures": verdict.get("failures"),
        "size_ratio": size.get("ratio"),
        "int8_bytes": size.get("int8_bytes"),
        "float32_bytes": size.get("float32_bytes"),
        "speedup": speed.get("speedup"),
        "speed": {k: speed.get(k) for k in ("int8_ms", "float32_ms", "speedup_p10", "speedup_p90", "rounds", "batch")},
        "float_groups": quantization.get("float_groups"),
        "groups": len((quantization.get("sensitivity") or {}).get("groups") or []),
        "calibration": {k: calibration.get(k) for k in ("samples", "held_out", "source", "method") if k in calibration},
        "warnings": quantization.get("warnings"),
        "wall_s": run["wall_s"],
        "stderr": None if run["exit"] == 0 else run["stderr"],
    }


def enrich(record: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Add what the files in ``folder`` say beyond the commands' JSON: the top-1 margins of Keras' logits on the
    evaluation images (gap between the two largest logits over their standard deviation: how near a tie a random
    network's classes are) and the Q/DQ pairs left in the int8 file (which tensors are quantized)."""
    logits_path = folder / "keras_logits.npz"
    if logits_path.is_file() and record.get("keras"):
        with np.load(logits_path) as archive:
            logits = archive["logits"].astype(np.float64)
        ordered = np.sort(logits, axis=1)
        record["keras"]["top1_margin"] = [float(v) for v in (ordered[:, -1] - ordered[:, -2]) / logits.std(axis=1)]
        browser = record.get("browser") or {}
        if "max_abs" in browser:
            browser["scaled"] = browser["max_abs"] / max(float(np.abs(logits[: browser["images"]]).max()), 1e-30)
    int8_path = folder / f"{record['name']}.int8.onnx"
    if int8_path.is_file() and record.get("int8"):
        import onnx

        graph = onnx.load(str(int8_path), load_external_data=False).graph
        quantized = [node.input[0] for node in graph.node if node.op_type == "QuantizeLinear"]
        record["int8"]["quantized_tensors"] = quantized
        if record["int8"].get("groups") is None and (folder / "int8.json").is_file():
            with contextlib.suppress(ValueError, AttributeError):
                quantization = json.loads((folder / "int8.json").read_text()).get("quantization") or {}
                record["int8"]["groups"] = len((quantization.get("sensitivity") or {}).get("groups") or [])
    return record


# -- one network -----------------------------------------------------------------------------------------------------


def run_network(name: str, folder: Path, *, browser: bool = True, int8: bool = True) -> dict[str, Any]:
    """Every step for one network in ``folder``; the record that timm_export.json keeps under its name."""
    record: dict[str, Any] = {"name": name}
    _log(f"{name}: timm checkpoint (PyTorch subprocess)")
    record["checkpoint"] = make_checkpoint(name, folder)
    _log(f"{name}: from_timm, .keras, Keras float32/float64 logits")
    record["keras"] = keras_step(name, folder)
    onnx_path = folder / f"{name}.onnx"
    _log(f"{name}: lambda-export {name}.keras -o {name}.onnx --json")
    run = run_lambda_export([str(folder / f"{name}.keras"), "-o", str(onnx_path), "--force"])
    record["export"] = export_summary(run)
    (folder / "export.json").write_text(json.dumps(run["json"], indent=1) if run["json"] else run["stderr"])
    if run["exit"] not in (0, 1) or not onnx_path.is_file():
        return record
    _log(f"{name}: ONNX Runtime and OpenVINO f32 vs Keras")
    record["runtimes"] = runtime_checks(onnx_path, folder)
    if browser:
        _log(f"{name}: onnxruntime-web in Chromium vs Keras")
        record["browser"] = browser_check(onnx_path, folder)
    if int8:
        calibration = write_calibration(folder)
        _log(f"{name}: lambda-export --quantize int8 --calibration {calibration.name}")
        arguments = [str(folder / f"{name}.keras"), "-o", str(folder / f"{name}.int8.onnx"), "--force"]
        q = run_lambda_export([*arguments, "--quantize", "int8", "--calibration", str(calibration)])
        (folder / "int8.json").write_text(json.dumps(q["json"], indent=1) if q["json"] else q["stderr"])
        record["int8"] = quantize_summary(q)
    return record


# -- Markdown --------------------------------------------------------------------------------------------------------


def _num(value: Any, spec: str = ".2e") -> str:
    return "–" if value is None else format(value, spec)


def _runtime_cell(result: dict[str, Any] | None) -> str:
    if not result:
        return "not run"
    if "max_abs" not in result:
        return f"error: {str(result.get('error'))[:80]}"
    mark = {"ok": "", "noise": " ≈", "fail": " **FAIL**"}.get(result.get("grade"), "")
    return f"{result['max_abs']:.2e}{mark}"


def markdown(document: dict[str, Any]) -> str:
    env = document.get("environment") or {}
    lines = [
        "# timm's LambdaResNets through `lambda-export`",
        "",
        f"Produced by `python benchmarks/timm_export.py` ({document.get('date')}, {env.get('cpu')}, "
        f"{env.get('cores')} cores, load average {env.get('load_average')} at the start; the machine was shared).",
        "Each network: timm's model with seeded random weights and batch-norm statistics (`tests/layers/timm_reference.py`,"
        " no download), ported by `lambda_layers.from_timm`, saved as `.keras`, exported by the real command "
        "`lambda-export NAME.keras -o NAME.onnx --json` (defaults: portable target, `--optimize speed`, parity against "
        "the Keras model run in float64: the relative rule), then run in ONNX Runtime CPU, OpenVINO "
        "(`INFERENCE_PRECISION_HINT=f32`) and onnxruntime-web (WASM, headless Chromium, the browser example's page) "
        f"against Keras on {EVAL_IMAGES} structured 256×256 images (gradient, shapes, checkerboard, smooth noise; "
        f"{BROWSER_IMAGES} of them in the browser), and quantized by `lambda-export NAME.keras --quantize int8 "
        f"--calibration calibration.npz` on {CALIBRATION_IMAGES} structured images (the last 20 % held out by the "
        "command for its verdict).",
        "",
        "| | " + " | ".join(f"`{r['name']}`" for r in document["networks"]) + " |",
        "|---|" + "---|" * len(document["networks"]),
    ]
    rows: list[tuple[str, Any]] = [
        ("parameters", lambda r: f"{r['keras']['params'] / 1e6:.1f} M"),
        ("port vs timm (max abs, float32 / float64)",
         lambda r: f"{r['keras']['timm']['max_abs_float32']:.1e} / {r['keras']['timm']['max_abs_float64']:.1e}"),
        ("exit code", lambda r: str(r["export"]["exit"])),
        ("verdict", lambda r: str(r["export"]["verdict"])),
        ("deciding rule", lambda r: f"{r['export']['rule']} (float64 {'available' if r['export']['float64_available'] else 'missing'})"),
        ("worst ratio max (rms) / factor",
         lambda r: f"{_num(r['export']['ratio_max'], '.2f')} ({_num(r['export']['ratio_rms'], '.2f')}) / {r['export']['factor']}"),
        ("max abs vs TF (the command, random inputs)", lambda r: _num(r["export"]["max_abs"])),
        ("nodes", lambda r: str(r["export"]["nodes"])),
        ("TF float32 vs float64 (structured)", lambda r: _num(r["keras"]["tf32_error"])),
        ("logits scale (max abs)", lambda r: _num(r["keras"]["logits_scale"], ".2f")),
        ("top-1 margin / logits σ (smallest)", lambda r: _num(min(r["keras"]["top1_margin"]), ".3f")),
        ("ONNX Runtime err", lambda r: _runtime_cell((r.get("runtimes") or {}).get("ort"))),
        ("OpenVINO f32 err", lambda r: _runtime_cell((r.get("runtimes") or {}).get("openvino"))),
        ("onnxruntime-web err", lambda r: _runtime_cell(r.get("browser"))),
        ("relative err: ORT / OpenVINO / web (err ÷ max abs logit)",
         lambda r: " / ".join(_num((x or {}).get("scaled"), ".1e")
                              for x in (r["runtimes"]["ort"], r["runtimes"]["openvino"], r.get("browser")))),
        ("onnxruntime-web latency (ms, 1 thread)",
         lambda r: _num(((r.get("browser") or {}).get("api") or {}).get("latency_ms"), ".0f")),
        ("int8 exit / verdict", lambda r: f"{(r.get('int8') or {}).get('exit')} / {(r.get('int8') or {}).get('verdict')}"),
        ("int8 top-1 agreement (worst set/runtime)", lambda r: _num((r.get("int8") or {}).get("agreement_min"), ".3f")),
        ("int8 logits cosine (worst)", lambda r: _num((r.get("int8") or {}).get("cosine_min"), ".5f")),
        ("int8 size / float32", lambda r: _num((r.get("int8") or {}).get("size_ratio"), ".2f")),
        ("int8 speed-up (ORT CPU, p10–p90)",
         lambda r: f"{_num(r['int8']['speedup'], '.2f')}× ({_num(r['int8']['speed']['speedup_p10'], '.2f')}–"
         f"{_num(r['int8']['speed']['speedup_p90'], '.2f')})"),
        ("int8 groups kept float", lambda r: f"{len((r.get('int8') or {}).get('float_groups') or [])} of {(r.get('int8') or {}).get('groups')}"),
        ("int8 Q/DQ pairs left (tensors)", lambda r: f"{len(r['int8']['quantized_tensors'])}: " + ", ".join(t.rsplit('/', 1)[0].split('/')[-1] for t in r["int8"]["quantized_tensors"][:4])),
        ("conversion s (load + convert + write)", lambda r: _num(r["export"]["conversion_s"], ".1f")),
        ("`lambda-export` wall s (with parity)", lambda r: _num(r["export"]["wall_s"], ".1f")),
        ("`--quantize int8` wall s", lambda r: _num((r.get("int8") or {}).get("wall_s"), ".1f")),
    ]  # fmt: skip
    for label, cell in rows:
        cells = []
        for record in document["networks"]:
            try:
                cells.append(cell(record))
            except (KeyError, TypeError):
                cells.append("–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Errors are max |runtime − Keras float32| on the logits; ≈: over 1e-4 but no further from the float64 truth "
        f"than {NOISE_FACTOR:g}× TensorFlow float32's own error (the zoo's grade). The ratio is the command's: the ONNX "
        "file's error against float64 over TensorFlow float32's, worst over its checks (batch 1 and 4, N(0,1) and "
        "U[0,1) inputs), which must stay under the factor. int8: worst over calibration and held-out sets and over "
        "ONNX Runtime and OpenVINO; pass needs top-1 agreement ≥ 0.99 on each. Random weights: the logits of these "
        "networks are not ImageNet classes, only the agreement of the exports with Keras means something.",
    ]
    for record in document["networks"]:
        keras = record.get("keras") or {}
        if keras.get("logits_scale", 0.0) > 1e6:
            lines += [
                "",
                f"`{record['name']}` on the structured images: logits up to {keras['logits_scale']:.1e} (random "
                "weights whose batch-norm statistics come from timm_reference.py's three probe images blow up on "
                f"these inputs); TensorFlow float32 itself is {keras['tf32_error']:.1e} from the float64 port there, "
                "so the absolute errors are that large too, and the relative row is the one to read. The command's "
                "own check (N(0, 1) and U[0, 1) inputs) sees logits of a normal size.",
            ]
    for record in document["networks"]:
        int8 = record.get("int8") or {}
        margins = (record.get("keras") or {}).get("top1_margin")
        if int8.get("groups") and len(int8.get("float_groups") or []) == int8["groups"] and margins:
            left = int8.get("quantized_tensors") or []
            lines += [
                "",
                f"`{record['name']}` int8: every one of the {int8['groups']} measured groups is kept in float by "
                "the command's sensitivity selection (its reasons: int8.json), so the int8 file is the float32 "
                f"graph plus {len(left)} Q/DQ pair(s) (on {', '.join(f'`{t}`' for t in left) or 'nothing'}); the "
                f"remaining disagreement comes from that rounding on logits whose two largest values are as little as "
                f"{min(margins):.3f} of the logits' standard deviation apart. A random network's 1000 classes are near "
                "ties: the verdict measures the checkpoint here, and the file brings neither size nor speed.",
            ]
    for record in document["networks"]:
        notes = []
        for key in ("export", "int8"):
            part = record.get(key) or {}
            if part.get("stderr"):
                notes.append(f"{key}: {part['stderr'][-300:]}")
            for warning in (part.get("warnings") or []) + (part.get("parity_warnings") or []):
                notes.append(f"{key} warning: {warning}")
        for failure in (record.get("int8") or {}).get("failures") or []:
            notes.append(f"int8: {failure}")
        if notes:
            lines += ["", f"`{record['name']}`:", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def environment() -> dict[str, Any]:
    from importlib import metadata

    versions = {}
    for dist in ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "openvino", "torch", "timm"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    cpu = platform.processor() or None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = [round(v, 1) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "load_average": load, "python": platform.python_version(), **versions}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--only", "only", multiple=True, type=click.Choice(NETWORKS), help="Run these networks (repeatable).")
@click.option("--workdir", type=click.Path(path_type=Path), default=HERE / "out" / "timm_export", show_default=True)
@click.option("--no-browser", is_flag=True, help="Skip onnxruntime-web.")
@click.option("--no-int8", is_flag=True, help="Skip --quantize int8.")
@click.option("--render", is_flag=True, help="Only rewrite TIMM_EXPORT.md from timm_export.json.")
@click.option("--worker", type=click.Choice(NETWORKS), hidden=True)
def main(
    only: tuple[str, ...], workdir: Path, no_browser: bool, no_int8: bool, render: bool, worker: str | None
) -> None:
    """Export timm's LambdaResNets with lambda-export and check them everywhere (see the module docstring)."""
    json_path, md_path = HERE / "timm_export.json", HERE / "TIMM_EXPORT.md"
    if worker:
        folder = workdir / worker
        record = enrich(run_network(worker, folder, browser=not no_browser, int8=not no_int8), folder)
        (folder / "record.json").write_text(json.dumps(record, indent=1, default=str))
        return
    if render:
        document = json.loads(json_path.read_text())
        for record in document["networks"]:
            if (workdir / record["name"]).is_dir():
                enrich(record, workdir / record["name"])
        json_path.write_text(json.dumps(document, indent=1, default=str) + "\n")
        md_path.write_text(markdown(document))
        return
    document = json.loads(json_path.read_text()) if json_path.is_file() else {"networks": []}
    document.update(schema=SCHEMA, date=time.strftime("%Y-%m-%d"), environment=environment())
    for name in only or NETWORKS:
        folder = workdir / name
        (folder / "record.json").unlink(missing_ok=True)
        started = time.perf_counter()
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--workdir", str(workdir)]
        command += ["--no-browser"] * no_browser + ["--no-int8"] * no_int8
        done = subprocess.run(command)
        if done.returncode != 0 or not (folder / "record.json").is_file():
            _log(f"{name}: worker failed ({done.returncode})")
            record = {"name": name, "error": f"worker exit {done.returncode}"}
        else:
            record = json.loads((folder / "record.json").read_text())
        record["total_s"] = round(time.perf_counter() - started, 1)
        _log(f"{name}: done in {record['total_s']} s")
        kept = [r for r in document["networks"] if r["name"] != name]
        document["networks"] = sorted([*kept, record], key=lambda r: NETWORKS.index(r["name"]))
        json_path.write_text(json.dumps(document, indent=1, default=str) + "\n")
        md_path.write_text(markdown(document))
    click.echo(f"wrote {json_path} and {md_path}", err=True)


if __name__ == "__main__":
    main()
