"""Run an ONNX model exported by ``lambda-export`` with OpenVINO's CPU plugin, with the inference precision pinned.

OpenVINO's CPU plugin picks its own inference precision: on CPUs with AVX-512 BF16 or AMX it compiles float32 models in
**bfloat16** unless told otherwise, which costs about three significant digits. This script compiles with
``INFERENCE_PRECISION_HINT=f32`` by default, and can also compile with the plugin's default (``--precision default``) or
bf16 to show the difference; for each run it prints the precision the *compiled* model reports
(``compiled_model.get_property("INFERENCE_PRECISION_HINT")``) and, given a reference, the max abs error.

Usage::

    python examples/openvino/infer.py --model demo.onnx --inputs inputs.npz --reference reference.npz \\
        --precision f32 --precision default

``--inputs`` is an ``.npz`` whose keys are the model's input names (a single-input model also accepts any one key);
``--reference`` an ``.npz`` keyed by output names. Exit status: 0 success, 1 error (message on stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: --precision value -> INFERENCE_PRECISION_HINT (None: leave it unset, i.e. the plugin's default).
PRECISIONS = {"f32": "f32", "bf16": "bf16", "default": None}


@dataclass
class RunReport:
    """One compile-and-run of the model.

    Attributes:
        requested: the ``--precision`` value (``f32``, ``bf16`` or ``default``).
        reported: the inference precision the compiled model reports (``f32``, ``bf16``, ...).
        latency_ms: median wall time of one inference over the timed runs.
        outputs: output name -> shape.
        top_classes: argmax of the first output for each batch item.
        max_abs_error: max |output - reference| over all outputs (None without a reference).
        max_rel_error: max |output - reference| / max(|reference|, 1e-6) (None without a reference).
    """

    requested: str
    reported: str
    latency_ms: float
    outputs: dict[str, list[int]]
    top_classes: list[int]
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


def load_inputs(path: Path, input_names: list[str]) -> dict[str, np.ndarray]:
    """Read the model inputs from an ``.npz``, matched by name, as float32 C-order arrays."""
    with np.load(path) as archive:
        arrays = {key: archive[key] for key in archive.files}
    if len(input_names) == 1 and len(arrays) == 1:
        arrays = {input_names[0]: next(iter(arrays.values()))}
    missing = [name for name in input_names if name not in arrays]
    if missing:
        raise ValueError(f"{path}: no array for model input(s) {missing}; the file holds {sorted(arrays)}")
    feeds = {}
    for name in input_names:
        array = arrays[name]
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"{path}: input {name!r} has dtype {array.dtype}, expected floating point")
        feeds[name] = np.ascontiguousarray(array, dtype=np.float32)
    return feeds


def compile_model(core: Any, model: Any, device: str, precision: str) -> tuple[Any, str]:
    """Compile ``model`` with the given precision choice; return the compiled model and the precision it reports."""
    hint = PRECISIONS[precision]
    config = {} if hint is None else {"INFERENCE_PRECISION_HINT": hint}
    compiled = core.compile_model(model, device, config)
    reported = compiled.get_property("INFERENCE_PRECISION_HINT")
    name = reported.get_type_name() if hasattr(reported, "get_type_name") else str(reported)
    return compiled, name


def run_once(
    core: Any,
    model: Any,
    device: str,
    precision: str,
    feeds: dict[str, np.ndarray],
    reference: dict[str, np.ndarray] | None,
    runs: int,
) -> RunReport:
    """Compile with ``precision``, run ``runs`` timed inferences after one warm-up, compare with ``reference``."""
    compiled, reported = compile_model(core, model, device, precision)
    request = compiled.create_infer_request()
    request.infer(feeds)  # warm-up
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        results = request.infer(feeds)
        timings.append((time.perf_counter() - start) * 1e3)
    arrays = {port.get_any_name(): np.array(results[port], dtype=np.float32) for port in compiled.outputs}
    first = next(iter(arrays.values()))
    report = RunReport(
        requested=precision,
        reported=reported,
        latency_ms=float(np.median(timings)),
        outputs={name: list(array.shape) for name, array in arrays.items()},
        top_classes=[int(i) for i in first.reshape(first.shape[0], -1).argmax(axis=1)],
        arrays=arrays,
    )
    if reference is not None:
        abs_errors, rel_errors = [], []
        for name, array in arrays.items():
            if name not in reference:
                raise ValueError(f"reference has no array for output {name!r}; it holds {sorted(reference)}")
            expected = reference[name].astype(np.float32)
            if expected.shape != array.shape:
                raise ValueError(f"output {name!r} has shape {array.shape}, the reference {expected.shape}")
            diff = np.abs(array - expected)
            abs_errors.append(float(diff.max()))
            rel_errors.append(float((diff / np.maximum(np.abs(expected), 1e-6)).max()))
        report.max_abs_error = max(abs_errors)
        report.max_rel_error = max(rel_errors)
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True, help="ONNX model from `lambda-export MODEL.h5 -o M.onnx`")
    parser.add_argument("--inputs", type=Path, required=True, help=".npz keyed by input name")
    parser.add_argument("--reference", type=Path, help=".npz of reference outputs keyed by output name")
    parser.add_argument(
        "--precision",
        choices=sorted(PRECISIONS),
        action="append",
        help="f32 (pinned, the default), bf16, or default (whatever the plugin picks); repeat to compare",
    )
    parser.add_argument("--device", default="CPU", help="OpenVINO device (default CPU)")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per precision (default 10)")
    parser.add_argument("--output", type=Path, help="write the outputs of the first precision to this .npz")
    parser.add_argument("--json", type=Path, help="write a machine-readable report to this file")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    args.precision = list(dict.fromkeys(args.precision or ["f32"]))
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = parse_args(argv)
    for flag, path in (("--model", args.model), ("--inputs", args.inputs), ("--reference", args.reference)):
        if path is not None and not path.is_file():
            print(f"error: {flag} {path}: no such file", file=sys.stderr)
            return 1
    try:
        import openvino as ov
    except ImportError:
        print("error: openvino is not installed: pip install 'lambda-export[openvino]'", file=sys.stderr)
        return 1

    try:
        core = ov.Core()
        model = core.read_model(str(args.model))
        input_names = [port.get_any_name() for port in model.inputs]
        feeds = load_inputs(args.inputs, input_names)
        reference = None
        if args.reference is not None:
            with np.load(args.reference) as archive:
                reference = {key: archive[key] for key in archive.files}
        capabilities = core.get_property(args.device, "OPTIMIZATION_CAPABILITIES")
        print(f"OpenVINO {ov.__version__}, device {args.device}: {core.get_property(args.device, 'FULL_DEVICE_NAME')}")
        print(f"  optimization capabilities: {', '.join(capabilities)}")
        print(f"  model {args.model}: inputs {[(n, list(a.shape)) for n, a in feeds.items()]}")
        reports = [
            run_once(core, model, args.device, precision, feeds, reference, args.runs) for precision in args.precision
        ]
    except Exception as error:  # OpenVINO raises RuntimeError subclasses; report any failure as one line
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1

    for report in reports:
        line = f"precision {report.requested:<7} -> compiled model reports {report.reported:<5}"
        line += f" latency {report.latency_ms:.3f} ms, top classes {report.top_classes}"
        if report.max_abs_error is not None:
            line += f", max abs error {report.max_abs_error:.3g} (max rel {report.max_rel_error:.3g})"
        print(line)
    default = next((r for r in reports if r.requested == "default"), None)
    if default is not None and default.reported != "f32":
        print(
            f"note: this CPU's default inference precision is {default.reported}, not f32: pin "
            "INFERENCE_PRECISION_HINT=f32 for float32 parity"
        )
    if args.output is not None:
        np.savez(args.output, **reports[0].arrays)
        print(f"wrote {args.output}")
    if args.json is not None:
        payload = {
            "openvino_version": ov.__version__,
            "device": args.device,
            "capabilities": list(capabilities),
            "runs": [{k: v for k, v in asdict(r).items() if k != "arrays"} for r in reports],
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
