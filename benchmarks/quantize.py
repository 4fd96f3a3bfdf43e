"""INT8 targets (issue 16): the demo model and LambdaResNet-26 at 128², trained, quantized by `--quantize int8`.

    python benchmarks/quantize.py                  # both models; trains them once (cached in --workdir)
    python benchmarks/quantize.py --only demo      # the demo model only (~1 min on 2 cores)

For each model: train it on the demo task (generated images, ``lambda_layers.models.make_demo_data``; the demo model as
``lambda-export demo`` trains it, LambdaResNet-26 at 128×128 with a 10-class head for 120 steps), export it as
``lambda-export MODEL`` does (target portable, ``--optimize speed``: the float32 default export), quantize it with
:func:`lambda_export.quantize` on calibration images and judge it on held-out images that neither training nor
calibration saw, then time ONNX Runtime float32 against int8 (and TensorFlow) side by side: batch 8, N threads on both
sides, interleaved rounds, the median of the per-round ratios (``lambda_export.timing``).

Targets: top-1 agreement with TensorFlow float32 ≥ 99 % on the held-out images, cosine ≥ 0.999 on the logits, ORT int8
≥ 1.8× faster than the float32 default export at batch 8, int8 file ≤ 30 % of the float32 file. Each is printed with
its figure and met / missed; nothing is adjusted to meet one. Writes WORKDIR/quantize.json (the machine under
``environment``: CPU model and SIMD flags, cores, versions, threads; the models under ``models``) and quantize.md (the
machine line, then the table): int8 speed depends on the CPU's int8 dot-product instructions (VNNI, AMX).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import click
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from lambda_export.io import write_text_atomic  # noqa: E402
from lambda_export.timing import latency_stats, measure_interleaved, paired_ratio  # noqa: E402

TARGETS = {"agreement": 0.99, "logits_cosine": 0.999, "speedup": 1.8, "size_ratio": 0.30}
RESNET_STEPS = 120  # LambdaResNet-26, batch 16, Adam 2e-3: held-out accuracy ~0.94 after 100 steps (measured)
MODELS: dict[str, dict[str, Any]] = {
    "demo": {"size": 32, "calibration": 256, "held_out": 512, "file": "demo.h5"},
    "lambda_resnet26_128": {"size": 128, "calibration": 128, "held_out": 256, "file": "lambda_resnet26_128.keras"},
}


def _log(message: str) -> None:
    click.echo(f"[quantize] {message}", err=True)


def _train(name: str, folder: Path) -> tuple[Path, dict[str, Any]]:
    """The trained model's file (trained now, or by an earlier run with the same recipe) and its training record."""
    import keras

    from lambda_layers import models

    path = folder / MODELS[name]["file"]
    record_path = path.with_suffix(".train.json")
    if path.exists() and record_path.exists():
        return path, json.loads(record_path.read_text())
    started = time.perf_counter()
    if name == "demo":
        model = models.build_demo_model(seed=0)
        history = models.train_demo_model(model, steps=models.DEMO_TRAIN_STEPS, seed=0)
        recipe = f"lambda-export demo's: {models.DEMO_TRAIN_STEPS} steps of batch 32, Adam 1e-2"
    else:
        keras.utils.set_random_seed(0)
        model = models.lambda_resnet26((128, 128, 3), 10)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=2e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(),
            metrics=["accuracy"],
        )
        history = models.train_demo_model(model, steps=RESNET_STEPS, seed=0, batch_size=16, eval_size=128)
        recipe = f"{RESNET_STEPS} steps of batch 16, Adam 2e-3, 10 classes"
    record = {
        "recipe": recipe,
        "val_accuracy": history.get("val_accuracy"),
        "train_s": round(time.perf_counter() - started, 1),
        "parameters": int(model.count_params()),
    }
    model.save(path)
    record_path.write_text(json.dumps(record, indent=2))
    return path, record


def _samples(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(calibration images, held-out images, held-out labels): seeds that neither training (0, 1000003) uses."""
    from lambda_layers import models

    spec = MODELS[name]
    calibration, _ = models.make_demo_data(spec["calibration"], seed=7001, image_size=spec["size"])
    held_out, labels = models.make_demo_data(spec["held_out"], seed=7002, image_size=spec["size"])
    return calibration, held_out, labels


def _timing(
    float_path: Path, int8_path: Path, keras_model: Any, x: np.ndarray, threads: int, budget: float
) -> dict[str, Any]:
    """ORT float32 vs ORT int8 (and TensorFlow graph mode) on batch ``x``, interleaved; paired ratios."""
    import tensorflow as tf

    from lambda_export.bench.runners import as_numpy, tf_function
    from lambda_export.ort import cpu_session

    fp32 = cpu_session(float_path.read_bytes(), threads)
    int8 = cpu_session(int8_path.read_bytes(), threads)
    name = fp32.get_inputs()[0].name
    function = tf_function(keras_model, False, [tf.TensorSpec(x.shape, tf.float32)])
    tensor = tf.constant(x)
    runners = {
        "ort_fp32": lambda: fp32.run(None, {name: x}),
        "ort_int8": lambda: int8.run(None, {name: x}),
        "tf_graph": lambda: as_numpy(function(tensor)),
    }
    measured = measure_interleaved(runners, budget_s=budget, min_rounds=10, block_s=0.3, warmup=3)
    ratio = paired_ratio(measured["rounds"], "ort_int8", "ort_fp32")
    return {
        "batch": int(x.shape[0]),
        "threads": threads,
        "latency": {runner: latency_stats(samples) for runner, samples in measured["samples"].items()},
        "int8/fp32": ratio,
        "int8/tf_graph": paired_ratio(measured["rounds"], "ort_int8", "tf_graph"),
        "fp32/tf_graph": paired_ratio(measured["rounds"], "ort_fp32", "tf_graph"),
        "speedup": round(1.0 / ratio["median"], 3) if ratio else None,
        "rounds": len(measured["rounds"]),
    }


def _held_out_rows(verdict: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["runtime"]: row for row in verdict["results"] if row["set"] == "held_out"}


def _bench_model(name: str, folder: Path, threads: int, budget: float, method: str) -> dict[str, Any]:
    from lambda_export import load_model, quantize

    path, training = _train(name, folder)
    _log(f"{name}: trained ({training['recipe']}; held-out accuracy {training['val_accuracy']:.3f})")
    calibration, held_out, labels = _samples(name)
    loaded = load_model(path)
    int8_path = folder / f"{name}.int8.onnx"
    float_path = folder / f"{name}.onnx"
    started = time.perf_counter()
    result = quantize(
        loaded,
        int8_path,
        calibration={"images": calibration},
        held_out={"images": held_out},
        calibration_method=method,
        overwrite=True,
        timing=False,  # timed below, longer and with TensorFlow alongside
        progress=lambda message: _log(f"{name}: {message}"),
    )
    quantize_s = time.perf_counter() - started
    from lambda_export.io import save_model_atomic

    save_model_atomic(result.float_model, float_path, overwrite=True)
    summary = result.summary()
    verdict = summary["verdict"]
    rows = _held_out_rows(verdict)
    tf_accuracy = None
    from lambda_export.quantization.verdict import tensorflow_outputs

    (probabilities,) = tensorflow_outputs(loaded, {"images": held_out}, 32)
    tf_accuracy = float(np.mean(probabilities.argmax(-1) == labels))
    _log(f"{name}: timing ORT float32 vs int8 at batch 8, {threads} threads")
    timing = _timing(float_path, int8_path, loaded.model, held_out[:8], threads, budget)
    size = {"float32_bytes": float_path.stat().st_size, "int8_bytes": int8_path.stat().st_size}
    size["ratio"] = round(size["int8_bytes"] / size["float32_bytes"], 4)
    size["floor_ratio"] = round(size_floor(result.float_model), 4)
    ort = rows.get("onnxruntime", {})
    figures = {
        "agreement": ort.get("top1_agreement"),
        "logits_cosine": ort.get("logits_cosine"),
        "speedup": timing["speedup"],
        "size_ratio": size["ratio"],
    }
    met = {
        "agreement": figures["agreement"] is not None and figures["agreement"] >= TARGETS["agreement"],
        "logits_cosine": figures["logits_cosine"] is not None and figures["logits_cosine"] >= TARGETS["logits_cosine"],
        "speedup": figures["speedup"] is not None and figures["speedup"] >= TARGETS["speedup"],
        "size_ratio": figures["size_ratio"] <= TARGETS["size_ratio"],
    }
    return {
        "model": name,
        "training": training,
        "tf_held_out_accuracy": tf_accuracy,
        "quantize_s": round(quantize_s, 1),
        "quantization": summary,
        "held_out": rows,
        "timing": timing,
        "size": size,
        "figures": figures,
        "met": met,
    }


def size_floor(float_model: Any) -> float:
    """The smallest int8/fp32 file ratio int8 weights can give: every float32 initializer a quarter of its bytes and
    nothing else changed (no scales, zero points or QDQ nodes added). A model whose file is mostly graph structure
    (nodes, names, metadata) cannot get below it, whatever the quantizer does."""
    weight_bytes = sum(
        int(np.prod(init.dims, dtype=np.int64)) * 4 for init in float_model.graph.initializer if init.data_type == 1
    )
    total = float_model.ByteSize()
    return (total - 0.75 * weight_bytes) / total


def results_document(records: list[dict[str, Any]], environment: dict[str, Any]) -> dict[str, Any]:
    """What quantize.json holds: the machine (``lambda_export.bench.harness.environment_info``: CPU model, family and
    SIMD flags, cores, versions, threads), the targets and the models' records."""
    return {
        "schema": "lambda-export/quantize/v2",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "environment": environment,
        "targets": TARGETS,
        "models": records,
    }


def _markdown(records: list[dict[str, Any]], environment: dict[str, Any] | None = None) -> str:
    from lambda_export.bench.render import environment_text

    head = [f"Machine: {environment_text({'environment': environment})}.", ""] if environment else []
    lines = [
        *head,
        "| model | held-out n | top-1 agreement (ORT / OpenVINO) | logits cosine (ORT / OpenVINO) | worst-sample "
        "logits cosine | ORT fp32 ms | ORT int8 ms | speed-up (p10–p90) | fp32 MB | int8 MB | size | size floor "
        "| verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for record in records:
        ort, ov = record["held_out"].get("onnxruntime", {}), record["held_out"].get("openvino", {})
        timing, ratio = record["timing"], record["timing"]["int8/fp32"] or {}
        lat = timing["latency"]
        spread = f"{1 / ratio['p90']:.2f}–{1 / ratio['p10']:.2f}" if ratio.get("p10") else "–"
        mark = {key: "✅" if value else "❌" for key, value in record["met"].items()}
        lines.append(
            f"| {record['model']} | {ort.get('samples')} "
            f"| {ort.get('top1_agreement', 0):.4f} / {ov.get('top1_agreement', float('nan')):.4f} {mark['agreement']} "
            f"| {ort.get('logits_cosine') or 0:.5f} / {ov.get('logits_cosine') or float('nan'):.5f} "
            f"{mark['logits_cosine']} | {ort.get('logits_cosine_min') or 0:.5f} "
            f"| {lat['ort_fp32']['median_ms']:.2f} | {lat['ort_int8']['median_ms']:.2f} "
            f"| {timing['speedup']:.2f}× ({spread}) {mark['speedup']} "
            f"| {record['size']['float32_bytes'] / 1e6:.2f} | {record['size']['int8_bytes'] / 1e6:.2f} "
            f"| {record['size']['ratio']:.1%} {mark['size_ratio']} | {record['size'].get('floor_ratio', float('nan')):.1%} "
            f"| {'PASS' if record['quantization']['passed'] else 'FAIL'} |"
        )
    lines.append("")
    for record in records:
        kept = [g for g in record["quantization"]["sensitivity"]["groups"] if g["kept_float"]]
        lines.append(
            f"{record['model']}: trained {record['training']['recipe']} (TensorFlow held-out accuracy "
            f"{record['tf_held_out_accuracy']:.3f}); kept in float:"
        )
        lines += [f"- {group['group']} ({group['nodes']} node(s)): {group['reason']}" for group in kept]
        lines.append("")
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default=str(HERE / "out" / "quantize"),
    show_default=True,
    help="Trained models (kept for the next run), ONNX files, quantize.json, quantize.md.",
)
@click.option("--only", type=click.Choice(list(MODELS)), multiple=True, help="Only these models (repeatable).")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--budget", type=float, default=20.0, show_default=True, help="Seconds of interleaved timing per model.")
@click.option(
    "--calibration-method",
    "method",
    type=click.Choice(["percentile", "minmax", "entropy"]),
    default="percentile",
    show_default=True,
)
def main(workdir: str, only: tuple[str, ...], threads: int, budget: float, method: str) -> None:
    from lambda_export import env
    from lambda_export.bench.harness import environment_info
    from lambda_export.bench.runners import configure_tensorflow

    tf_threads = configure_tensorflow(threads)  # before TensorFlow runs anything (training included)
    environment = environment_info(threads)
    environment["threads"].update({k: v for k, v in tf_threads.items() if v is not None})
    folder = Path(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for name in only or MODELS:
        records.append(_bench_model(name, folder, threads, budget, method))
        document = results_document(records, environment)
        write_text_atomic(folder / "quantize.json", json.dumps(document, indent=2, default=str), what="the results")
    environment["load_average_end"] = env.load_average()
    document = results_document(records, environment)
    write_text_atomic(folder / "quantize.json", json.dumps(document, indent=2, default=str), what="the results")
    text = _markdown(records, environment)
    write_text_atomic(folder / "quantize.md", text + "\n", what="the Markdown table")
    click.echo(text)
    click.echo(f"wrote {folder / 'quantize.json'} and {folder / 'quantize.md'}", err=True)


if __name__ == "__main__":
    main()
