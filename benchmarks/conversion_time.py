"""Conversion time: ``lambda-export`` against plain tf2onnx on the zoo's largest models, side by side, in fresh
processes, alternating, N rounds (issue 25).

    python benchmarks/conversion_time.py                          # the default set, 3 rounds, end to end once
    python benchmarks/conversion_time.py --only ConvNeXtBase --rounds 5 --e2e-rounds 0
    python benchmarks/conversion_time.py --stages                 # + where our conversion's time goes

What is compared, per round, each in a fresh subprocess (the order of the two alternates from round to round, so that
a change of load on a shared machine hits both):

* **conversion** (the number the 1.25× target is about): from the ``.keras`` file to the written ``.onnx`` file, in
  the process, after the imports. Ours: :func:`lambda_export.loading.load_model` + :func:`lambda_export.convert` with
  an output path (tf2onnx, our rewrite passes, the structural checks, canonical names, the atomic write). Plain:
  ``keras.models.load_model`` + ``tf2onnx.convert.from_keras(model, input_signature=..., opset=17,
  output_path=...)``, what ``benchmarks/zoo.py`` runs. Both include loading the Keras file.
* **process**: the same workers' wall time from start to exit (Python start-up and imports included).
* **end to end** (``--e2e-rounds``, default 1): ``lambda-export MODEL.keras -o OUT.onnx --json --force``, the real
  command with its parity check (TensorFlow float32 references, the float64 truth, ONNX Runtime runs), wall time and
  the stage timings of its JSON report. Plain tf2onnx checks nothing, so this is reported, not compared against 1.25×.

The ratio is ours / plain per round (paired), summarised by its median. Models are built once per run (the zoo's
seeded builder, :func:`benchmarks.zoo_models.build_model`) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_MODELS = (
    "ConvNeXtBase",
    "ConvNeXtSmall",
    "ResNet152",
    "ResNet152V2",
    "NASNetMobile",
    "EfficientNetV2S",
    "DenseNet201",
)
DEFAULT_OUT = ROOT / "out" / "conversion_time"
TARGET_RATIO = 1.25

# -- workers (each in a fresh subprocess) ------------------------------------------------------------------------------


def _build(name: str, folder: Path) -> dict[str, Any]:
    from benchmarks.zoo_models import build_model, by_name

    model = build_model(by_name(name))
    model.save(folder / f"{name}.keras")
    return {"params": int(model.count_params())}


def _plain(name: str, folder: Path) -> dict[str, Any]:
    import logging

    import keras
    import tensorflow as tf
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    started = time.perf_counter()
    model = keras.models.load_model(folder / f"{name}.keras")
    loaded = time.perf_counter()
    signature = [tf.TensorSpec(t.shape, t.dtype, name=t.name) for t in model.inputs]
    proto, _ = tf2onnx.convert.from_keras(
        model, input_signature=signature, opset=17, output_path=str(folder / f"{name}.tf2onnx.onnx")
    )
    done = time.perf_counter()
    return {
        "load_s": loaded - started,
        "convert_s": done - loaded,
        "total_s": done - started,
        "nodes": len(proto.graph.node),
    }


_STAGES = {
    "lambda_export.conversion": ["_tf2onnx_convert", "_rewritten", "_check_converted", "_canonical_names", "_stamp"],
    "lambda_export.upstream": ["freeze_function", "grappler_optimize", "convert_graph_def"],
    "lambda_export.conversion:run": [
        "attach_weights",
        "squeeze_matmul_weights",
        "toposort",
        "canonical_order",
        "save_model_atomic",
        "check_target",
    ],
}


def _instrument() -> dict[str, float]:
    """Wrap the conversion's stages to add up their seconds (names as in :data:`_STAGES`; nested ones overlap)."""
    import importlib

    from lambda_export import conversion

    seconds: dict[str, float] = {}

    def wrap(owner: Any, attribute: str) -> None:
        original = getattr(owner, attribute)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[attribute] = seconds.get(attribute, 0.0) + time.perf_counter() - started

        setattr(owner, attribute, timed)

    for module, names in _STAGES.items():
        owner = conversion if module.endswith(":run") else importlib.import_module(module)
        for name in names:
            wrap(owner, name)
    return seconds


def _ours(name: str, folder: Path, stages: bool = False) -> dict[str, Any]:
    import lambda_export
    from lambda_export.loading import load_model

    seconds = _instrument() if stages else {}
    started = time.perf_counter()
    loaded = load_model(folder / f"{name}.keras")
    after_load = time.perf_counter()
    result = lambda_export.convert(loaded.model, folder / f"{name}.onnx", loaded=loaded, overwrite=True)
    done = time.perf_counter()
    out = {
        "load_s": after_load - started,
        "convert_s": done - after_load,
        "total_s": done - started,
        "nodes": result.node_count,
    }
    if stages:
        out["stages"] = {key: round(value, 3) for key, value in seconds.items()}
    return out


def _worker(argv: list[str]) -> int:
    step, name, folder = argv[:3]
    workers = {"build": _build, "plain": _plain, "ours": _ours}
    kwargs = {"stages": True} if step == "ours" and "--stages" in argv else {}
    print(json.dumps(workers[step](name, Path(folder), **kwargs)))
    return 0


# -- the driver -----------------------------------------------------------------------------------------------------


def _run(argv: list[str], timeout: float) -> tuple[dict[str, Any], float, int | None]:
    from benchmarks.zoo import _json_tail, run_measured

    run = run_measured(argv, timeout=timeout)
    result = _json_tail(run.stdout)
    if run.returncode != 0:
        result = {**result, "error": run.error_line()}
    return result, run.seconds, run.returncode


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 2) if values else None


def measure(name: str, folder: Path, rounds: int, e2e_rounds: int, stages: bool, timeout: float) -> dict[str, Any]:
    """Build ``name`` once, then ``rounds`` alternating rounds of (ours, plain) conversions and ``e2e_rounds`` runs of
    the real command; medians and the paired ratio."""
    from benchmarks.zoo_models import by_name, cli_arguments

    folder.mkdir(parents=True, exist_ok=True)
    me = [sys.executable, str(Path(__file__).resolve()), "_worker"]
    built, _, code = _run([*me, "build", name, str(folder)], timeout)
    if code != 0:
        return {"name": name, "error": built.get("error")}
    record: dict[str, Any] = {"name": name, "params": built.get("params"), "rounds": []}
    for index in range(rounds):
        sides = [
            ("ours", [*me, "ours", name, str(folder), *(["--stages"] if stages else [])]),
            ("plain", [*me, "plain", name, str(folder)]),
        ]
        if index % 2:
            sides.reverse()
        row: dict[str, Any] = {}
        for side, argv in sides:
            result, wall, code = _run(argv, timeout)
            row[side] = {**result, "process_s": round(wall, 2), "exit": code}
        record["rounds"].append(row)
        print(
            f"  round {index + 1}: ours {row['ours'].get('total_s', float('nan')):.1f} s "
            f"(load {row['ours'].get('load_s', float('nan')):.1f}), plain {row['plain'].get('total_s', float('nan')):.1f} s "
            f"(load {row['plain'].get('load_s', float('nan')):.1f})",
            flush=True,
        )
    record["e2e"] = []
    entry = by_name(name)
    for _ in range(e2e_rounds):
        onnx_path = folder / f"{name}.cli.onnx"
        argv = [str(Path(sys.executable).parent / "lambda-export"), str(folder / f"{name}.keras"), "-o", str(onnx_path),
                "--json", "--force", *cli_arguments(entry, folder / f"{name}.inputs.npz")]  # fmt: skip
        result, wall, code = _run(argv, timeout)
        timings = (result.get("parity") or {}).get("timings") or {}
        record["e2e"].append({"wall_s": round(wall, 2), "exit": code, "timings": timings,
                              "passed": (result.get("parity") or {}).get("passed")})  # fmt: skip
        print(f"  end to end: {wall:.1f} s, exit {code}, timings {json.dumps(_rounded(timings))}", flush=True)
    record["summary"] = summarise(record)
    return record


def _rounded(timings: dict[str, float]) -> dict[str, float]:
    return {key: round(value, 1) for key, value in timings.items() if isinstance(value, (int, float))}


def summarise(record: dict[str, Any]) -> dict[str, Any]:
    rows = [r for r in record["rounds"] if "total_s" in r.get("ours", {}) and "total_s" in r.get("plain", {})]
    ratios = [r["ours"]["total_s"] / r["plain"]["total_s"] for r in rows]
    process = [r["ours"]["process_s"] / r["plain"]["process_s"] for r in rows]
    summary = {
        "ours_conversion_s": _median([r["ours"]["total_s"] for r in rows]),
        "ours_load_s": _median([r["ours"]["load_s"] for r in rows]),
        "plain_conversion_s": _median([r["plain"]["total_s"] for r in rows]),
        "plain_load_s": _median([r["plain"]["load_s"] for r in rows]),
        "ratio": round(statistics.median(ratios), 3) if ratios else None,
        "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)] if ratios else None,
        "ours_process_s": _median([r["ours"]["process_s"] for r in rows]),
        "plain_process_s": _median([r["plain"]["process_s"] for r in rows]),
        "process_ratio": round(statistics.median(process), 3) if process else None,
        "nodes": [rows[0]["ours"].get("nodes"), rows[0]["plain"].get("nodes")] if rows else None,
    }
    if record.get("e2e"):
        summary["e2e_wall_s"] = _median([r["wall_s"] for r in record["e2e"]])
    stages = [r["ours"].get("stages") for r in rows if r["ours"].get("stages")]
    if stages:
        summary["stages"] = {key: _median([s.get(key) for s in stages]) for key in stages[0]}
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="a zoo model (repeatable)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating conversion rounds (default 3)")
    parser.add_argument("--e2e-rounds", type=int, default=1, help="runs of the real command (default 1; 0: none)")
    parser.add_argument("--stages", action="store_true", help="time our conversion's stages too")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"work folder (default {DEFAULT_OUT})")
    parser.add_argument("--json", type=Path, default=None, help="write the records there")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per subprocess")
    args = parser.parse_args(argv)
    names = args.only or list(DEFAULT_MODELS)
    records = []
    for name in names:
        print(f"{name}:", flush=True)
        record = measure(name, args.out / name, args.rounds, args.e2e_rounds, args.stages, args.timeout)
        records.append(record)
        if args.json:
            args.json.write_text(json.dumps(records, indent=1) + "\n")
    print()
    print("| model | ours conversion s | plain tf2onnx s | ratio (median, range) | ours / plain process s "
          "| ours end to end s |")  # fmt: skip
    print("|---|---:|---:|---|---|---:|")
    for record in records:
        s = record.get("summary") or {}
        if not s:
            print(f"| {record['name']} | error: {record.get('error')} | | | | |")
            continue
        rng = s.get("ratio_range") or [None, None]
        print(
            f"| {record['name']} | {s['ours_conversion_s']} (load {s['ours_load_s']}) "
            f"| {s['plain_conversion_s']} (load {s['plain_load_s']}) | {s['ratio']} ({rng[0]}–{rng[1]}) "
            f"| {s['ours_process_s']} / {s['plain_process_s']} ({s['process_ratio']}) | {s.get('e2e_wall_s', '–')} |"
        )
        if s.get("stages"):
            print(f"|   stages | {json.dumps(s['stages'])} | | | | |")
    over = [r["name"] for r in records if ((r.get("summary") or {}).get("ratio") or 0) > TARGET_RATIO]
    print(f"\nover {TARGET_RATIO}x: {', '.join(over) or 'none'}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        sys.exit(_worker(sys.argv[2:]))
    sys.exit(main())
