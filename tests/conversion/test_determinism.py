"""The same saved model gives a byte-identical .onnx file from two fresh processes.

tf2onnx emits the same graph in a node order that changes from one process to the next (and keeps whichever of two
merged duplicate nodes came first); before the canonical order (``graph.canonical_order``) and the stable duplicate
merge, a MobileNetV2 or an LSTM exported twice gave two different files (41 of a 50-model corpus differed).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras

_EXPORT = """
import sys
from lambda_export import convert
for source in sys.argv[2:]:
    for optimize in ("speed", "size"):
        convert(source, f"{source}.{optimize}.{sys.argv[1]}.onnx", optimize=optimize)
"""


def _models() -> dict[str, keras.Model]:
    keras.utils.set_random_seed(0)
    x = keras.Input((12, 8), name="x")
    lstm = keras.Model(x, keras.layers.Dense(4)(keras.layers.LSTM(16)(x)))
    mobilenet = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classes=10, alpha=0.35)
    return {"lstm": lstm, "mobilenetv2": mobilenet}


def test_two_processes_write_the_same_bytes(tmp_path: Path) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    sources = []
    for name, model in _models().items():
        sources.append(tmp_path / f"{name}.keras")
        model.save(sources[-1])
    for run in ("first", "second"):
        subprocess.run([sys.executable, "-c", _EXPORT, run, *map(str, sources)], check=True, env=env, timeout=600)
    for source in sources:
        for optimize in ("speed", "size"):
            first, second = (Path(f"{source}.{optimize}.{run}.onnx").read_bytes() for run in ("first", "second"))
            assert first == second, f"{source.name} ({optimize}): the two exports differ"
