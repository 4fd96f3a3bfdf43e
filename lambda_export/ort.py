"""ONNX Runtime in one place: execution providers (names, probing, how to get them) and session set-up.

Used by the conversion check (does ONNX Runtime accept the graph?), the parity engine (one session per provider) and
the benchmarks (CPU sessions with the thread settings we recommend). ``onnxruntime`` is imported only when a function
needs it, so the command line starts without it.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from lambda_export import env
from lambda_export.errors import InputError, ProviderUnavailableError, first_line

__all__ = [
    "CPU",
    "CUDA",
    "GPU_PROVIDERS",
    "KNOWN_PROVIDERS",
    "TENSORRT",
    "absent_here",
    "available_providers",
    "canonical_provider",
    "cpu_session",
    "cpu_session_options",
    "provider_problem",
    "recommended_cpu_settings",
    "resolve_providers",
    "session",
    "session_providers",
]

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
KNOWN_PROVIDERS = (CPU, CUDA, TENSORRT)
PROVIDER_ALIASES = {"cpu": CPU, "cuda": CUDA, "gpu": CUDA, "tensorrt": TENSORRT, "trt": TENSORRT}
GPU_PROVIDERS = frozenset({CUDA, TENSORRT})
QUIET = 4  # ONNX Runtime log severity: fatal only. Its warnings are not the user's business and its error lines
# repeat an exception the caller reports (a failed run would print ExecuteKernel's message, colour codes and all)


def _onnxruntime() -> Any:
    """The ``onnxruntime`` module. When lambda_export is the first to import it, its default logger (the one sessions'
    own settings do not reach: provider libraries that fail to load, device discovery) is set to :data:`QUIET`, as
    every session here is; a process that imported ONNX Runtime itself keeps its own setting."""
    first = "onnxruntime" not in sys.modules
    try:
        import onnxruntime
    except ModuleNotFoundError as exc:
        if exc.name != "onnxruntime":
            raise
        raise InputError(ONNXRUNTIME_MISSING) from exc

    if first:
        onnxruntime.set_default_logger_severity(QUIET)
    return onnxruntime


ONNXRUNTIME_MISSING = (
    "ONNX Runtime is not installed: pip install 'lambda-export[cpu]' (or 'lambda-export[gpu]' on a machine with an "
    "NVIDIA GPU; never both)"
)
"""The one-line error when neither ``onnxruntime`` nor ``onnxruntime-gpu`` is installed (the base install has none)."""


@functools.cache
def _preload_cuda_libraries() -> str | None:
    """Load the CUDA and cuDNN libraries that ``onnxruntime-gpu[cuda,cudnn]`` installed from pip (nvidia-* wheels),
    so the CUDA provider finds them without a system CUDA; None on success, else why not. A no-op on the CPU package
    and on builds older than 1.21 (no ``preload_dlls``); system libraries, where present, work without it."""
    ort = _onnxruntime()
    preload = getattr(ort, "preload_dlls", None)
    if preload is None or not env.installed("onnxruntime-gpu"):
        return None
    try:
        preload(cuda=True, cudnn=True, msvc=False)
    except Exception as exc:  # libraries missing: the session probe below says what that means
        return first_line(exc, None)
    return None


def _tiny_model() -> bytes:
    """A one-node model (``y = x + x``) to probe whether a provider can create a session."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    from lambda_export.io import model_bytes  # here: io imports onnx, which importing this module must not

    return model_bytes(model)


def session_providers(provider: str, *, tf32: bool = False) -> list[Any]:
    """The ``providers`` argument of ``ort.InferenceSession`` that runs on ``provider``, with its options.

    CUDA gets ``use_tf32`` ("0" unless ``tf32``): on Ampere and newer GPUs ONNX Runtime otherwise rounds float32
    matmul/convolution inputs to TF32's 10-bit mantissa, which breaks float32 parity. TensorRT is followed by CUDA
    and CPU (for the nodes TensorRT does not take), CUDA by CPU.
    """
    cuda = (CUDA, {"use_tf32": "1" if tf32 else "0"})
    if provider == CUDA:
        return [cuda, CPU]
    if provider == TENSORRT:
        return [(TENSORRT, {}), cuda, CPU]
    return [provider] if provider == CPU else [provider, CPU]


NO_GPU_PACKAGE = "onnxruntime-gpu not installed"
NO_DEVICE = "no NVIDIA device"
_ABSENT = (NO_GPU_PACKAGE, NO_DEVICE)


def absent_here(reason: str) -> str | None:
    """When :func:`provider_problem`'s ``reason`` says the provider cannot exist on this machine at all (a GPU
    provider without onnxruntime-gpu, or without an NVIDIA device), that in short (``onnxruntime-gpu not installed``,
    ``no NVIDIA device``); None for a provider that should be there and is broken (libraries missing, a session that
    fails), which the user must hear about. Reports say the absent ones in one quiet line."""
    return next((short for short in _ABSENT if reason.startswith(short)), None)


@functools.cache
def provider_problem(provider: str) -> str | None:
    """None when ``provider`` can run a session here, else why not (probed once per process with a tiny model)."""
    ort = _onnxruntime()

    gpu_package = env.installed("onnxruntime-gpu")
    if provider not in ort.get_available_providers():
        if provider in GPU_PROVIDERS and not gpu_package:
            return f"{NO_GPU_PACKAGE} (this environment has the CPU-only onnxruntime package)"
        return f"not built into this onnxruntime {ort.__version__}"
    if provider == CPU:
        return None
    preload_problem = _preload_cuda_libraries()
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        probe = ort.InferenceSession(_tiny_model(), options, providers=session_providers(provider))
    except Exception as exc:
        if provider in GPU_PROVIDERS and not env.nvidia_device_present():
            return f"{NO_DEVICE} (cannot create a session: {first_line(exc, None)})"
        return f"cannot create a session: {first_line(exc, None)}"
    if provider not in probe.get_providers():
        if provider in GPU_PROVIDERS and not env.nvidia_device_present():
            return f"{NO_DEVICE} (ONNX Runtime fell back to the CPU)"
        if provider == TENSORRT:
            return "TensorRT libraries not found (ONNX Runtime fell back to another provider)"
        why = f": {preload_problem}" if preload_problem else ""
        return f"CUDA / cuDNN libraries for onnxruntime-gpu {ort.__version__} not found or unusable{why} (ONNX Runtime fell back to the CPU)"
    return None


def available_providers() -> list[str]:
    """ONNX Runtime providers that can run here, among CPU, CUDA and TensorRT (each probed with a tiny session)."""
    return [provider for provider in KNOWN_PROVIDERS if provider_problem(provider) is None]


def _how_to_get(provider: str) -> str:
    if provider in GPU_PROVIDERS:
        extra = " and TensorRT 10" if provider == TENSORRT else ""
        return (
            'install the `gpu` extra instead of the `cpu` one: pip install "lambda-export[gpu]" in an environment '
            "without the onnxruntime package (both install the same module; the gpu extra brings CUDA 13 and cuDNN 9 "
            f"from pip); it needs an NVIDIA GPU and its driver (>= 580){extra}"
        )
    return "use an onnxruntime build that includes it"


def canonical_provider(name: str) -> str:
    """The full ONNX Runtime name of ``name`` (``cpu``, ``cuda``/``gpu``, ``tensorrt``/``trt``, or a full name).

    Raises:
        InputError: an unknown short name.
    """
    text = str(name).strip()
    lower = text.lower()
    if lower in PROVIDER_ALIASES:
        return PROVIDER_ALIASES[lower]
    for provider in KNOWN_PROVIDERS:
        if lower == provider.lower():
            return provider
    if lower.endswith("executionprovider") and text:
        return text
    choices = ", ".join(sorted({"cpu", "cuda", "tensorrt"}))
    raise InputError(
        f"providers {text!r}: unknown provider; choose among {choices} (or a full ONNX Runtime name)",
        argument="providers",
    )


def resolve_providers(requested: list[str] | str | None) -> tuple[list[str], dict[str, str]]:
    """Providers to run and the ones skipped (name → reason).

    Args:
        requested: short names (cpu, cuda, tensorrt) or full ORT names, as a list or a comma-separated string; None
            means every available provider, the others (CUDA, TensorRT) reported as skipped with the reason.

    Raises:
        InputError: an unknown name or an empty list.
        ProviderUnavailableError: a requested provider cannot run here (the message says how to get it).
    """
    if requested is None:
        run, skipped = [], {}
        for provider in KNOWN_PROVIDERS:
            reason = provider_problem(provider)
            if reason is None:
                run.append(provider)
            else:
                skipped[provider] = reason
        return run, skipped
    if isinstance(requested, str):
        requested = [item for item in requested.split(",") if item.strip()]
    if not requested:
        raise InputError("providers: give at least one provider (cpu, cuda, tensorrt)", argument="providers")
    run = []
    for name in requested:
        provider = canonical_provider(name)
        reason = provider_problem(provider)
        if reason is not None:
            raise ProviderUnavailableError(
                f"provider {provider} is not available: {reason}; to get it, {_how_to_get(provider)}"
            )
        if provider not in run:
            run.append(provider)
    return run, {}


def session(model: bytes | str, provider: str = CPU, *, tf32: bool = False, layout: bool = True) -> Any:
    """An ``InferenceSession`` on ``provider`` with every graph optimization and ORT's own log lines off.

    ``model`` is the serialized ONNX model or a path. Raises ``RuntimeError`` when ONNX Runtime silently fell back to
    another provider (a CUDA session that runs on the CPU would make a GPU check meaningless). ``layout=False`` leaves
    out the layout optimizations (``ORT_ENABLE_EXTENDED``: no NCHWc copies of the convolution weights, ~1.2x the
    weights less memory), for a session that only checks that ONNX Runtime loads a graph.
    """
    ort = _onnxruntime()

    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if layout else ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    )
    options.log_severity_level = QUIET
    created = ort.InferenceSession(model, options, providers=session_providers(provider, tf32=tf32))
    if provider not in created.get_providers():
        raise RuntimeError(f"ONNX Runtime fell back from {provider} to {created.get_providers()}")
    return created


def recommended_cpu_settings(threads: int) -> dict[str, Any]:
    """The ONNX Runtime CPU settings we recommend (and benchmark with), as a plain dict for reports."""
    return {
        "intra_op_num_threads": threads,
        "inter_op_num_threads": 1,
        "execution_mode": "ORT_SEQUENTIAL",
        "graph_optimization_level": "ORT_ENABLE_ALL",
        "session.intra_op.allow_spinning": "1",
        "session.disable_prepacking": "0",
    }


def cpu_session_options(threads: int, *, profile_prefix: str | None = None, optimized_path: str | None = None) -> Any:
    """``onnxruntime.SessionOptions`` with :func:`recommended_cpu_settings` (profiling / optimized-model dump on
    request)."""
    ort = _onnxruntime()

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.add_session_config_entry("session.disable_prepacking", "0")
    options.log_severity_level = QUIET
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    return options


def cpu_session(model: bytes | str, threads: int, **options: Any) -> Any:
    """A CPU ``InferenceSession`` with :func:`cpu_session_options` (``options``: ``profile_prefix``,
    ``optimized_path``)."""
    ort = _onnxruntime()

    return ort.InferenceSession(model, cpu_session_options(threads, **options), providers=[CPU])
