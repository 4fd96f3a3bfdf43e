"""Option groups shared by the ``lambda-export`` verbs, each parsed into a typed object; parsers; the CLI's wording.

* Option groups, as decorators: :func:`convert_options` → :class:`ConvertOptions`, :func:`parity_options` →
  :class:`ParityOptions`, :func:`load_options` → :class:`LoadOptions`, :func:`output_options` →
  :class:`OutputOptions`. A decorated command receives one keyword argument per group (``convert``, ``parity``,
  ``load``, ``output``) in place of the raw option values; the dataclass defaults are the options' defaults, so a
  verb can build the same objects itself (``demo`` does).
* Parsers of option text: :func:`parse_shape` (``--input-shape``), :func:`parse_providers` (``--providers``),
  :func:`parse_batch_sizes` (``--batch-sizes``).
* :func:`cli_message`: a library error's message with the Python argument it names (``opset``, ``overwrite=True``)
  replaced by the flag (``--opset``, ``--force``); :func:`cli_warning`: the same for a library warning, whose
  arguments are written ``name=VALUE`` (``calibration=FILE.npz`` → ``--calibration FILE.npz``).
* Constants the verbs share: the choices of ``--target``/``--optimize``, the exit-code epilog, the result schema.

This module imports only click: ``lambda-export --help`` must start without TensorFlow, ONNX or ONNX Runtime.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from lambda_export.errors import InputError, LambdaExportError

if TYPE_CHECKING:  # imported when used: this module must not import numpy, onnx or onnxruntime
    from lambda_export.parity import ParityConfig

__all__ = [
    "CALIBRATION_METHOD_CHOICES",
    "EXIT_CODES_HELP",
    "FLAGS",
    "OPTIMIZE_CHOICES",
    "QUANTIZE_CHOICES",
    "RESULT_SCHEMA",
    "TARGET_CHOICES",
    "ConvertOptions",
    "LoadOptions",
    "OutputOptions",
    "ParityOptions",
    "QuantizeOptions",
    "cli_message",
    "cli_text",
    "cli_warning",
    "convert_options",
    "load_options",
    "output_options",
    "parity_options",
    "parse_batch_sizes",
    "parse_providers",
    "parse_shape",
    "quantize_options",
]

EXIT_CODES_HELP = (
    "Exit codes: 0 parity holds everywhere it ran; 1 parity failed (or the int8 verdict); 2 bad usage or "
    "unreadable input; 3 conversion failed; 130 interrupted (Ctrl-C); 143 terminated (SIGTERM)."
)
# literal copies (the CLI starts without importing onnx); tests/cli/test_cli.py checks them against the library
TARGET_CHOICES = ["portable", "ort", "openvino", "opencv4", "opencv5"]
OPTIMIZE_CHOICES = ["speed", "size"]
QUANTIZE_CHOICES = ["int8"]
CALIBRATION_METHOD_CHOICES = ["minmax", "entropy", "percentile"]
RESULT_SCHEMA = "lambda-export/result/v1"

# The Python API's argument names, as library messages write them (LambdaExportError.argument) → the flag.
FLAGS = {
    "opset": "--opset",
    "target": "--target",
    "optimize": "--optimize",
    "batch_size": "--batch-size",
    "input_shapes": "--input-shape",
    "overwrite=True": "--force",
    "overwrite": "--force",
    "trust_code=True": "--trust-code",
    "trust_code": "--trust-code",
    "imports": "--import",
    "imports=[MODULE_OR_FILE]": "--import MODULE_OR_FILE",
    # lambda_export.triton
    "name=NAME": "--name",
    "version": "--version",
    "instances": "--instances",
    "max_batch_size": "--max-batch-size",
    "dynamic_batching=True": "--dynamic-batching",
    "preferred_batch_sizes": "--preferred-batch-size",
    "max_queue_delay_us": "--max-queue-delay-us",
    "tensorrt_precision": "--tensorrt-precision",
    "tensorrt=True": "--tensorrt",
    "gpu=True": "--gpu",
    "repo": "--repo",
    "force=True": "--force",
    "providers": "--providers",
    "atol": "--atol",
    "rtol": "--rtol",
    "rule": "--rule",
    "inputs": "--inputs",
    "samples": "--samples",
    "seed": "--seed",
    "batch_sizes": "--batch-sizes",
    "fp16": "--fp16",
    "tf32": "--tf32",
    "locate": "--locate",
    # lambda_export.quantization
    "quantize": "--quantize",
    "calibration": "--calibration",
    "calibration_method": "--calibration-method",
    "min_agreement": "--min-agreement",
    "min_cosine": "--min-cosine",
    # what warnings suggest (cli_warning)
    "calibration=FILE.npz": "--calibration FILE.npz",
    "inputs=FILE.npz": "--inputs FILE.npz",
}


def cli_message(exc: LambdaExportError) -> str:
    """The message of ``exc`` as the command line says it: each of ``exc.argument`` (a token or a tuple of them; the
    first time it stands as a word) replaced by its flag, e.g. "opset 19: supported opsets are 13 to 18" →
    "--opset 19: ...".

    A message without an argument, or with one the table does not know, is returned as it is.
    """
    return cli_text(str(exc), getattr(exc, "argument", None) or ())


def cli_warning(message: str) -> str:
    """A library warning as the command line says it: each Python argument it names as ``name=VALUE`` (how warnings
    write them: ``calibration=FILE.npz``, ``overwrite=True``) replaced by its flag (``--calibration FILE.npz``,
    ``--force``) with :func:`cli_text`. A ``name=VALUE`` whose name is not an argument is left as it is."""
    arguments = [
        match.group(0)
        for match in re.finditer(r"(?<![\w-])([a-z_][a-z0-9_]*)=([^\s,;)]*)", message)
        if match.group(0) in FLAGS or match.group(1) in FLAGS
    ]
    return cli_text(message, tuple(arguments), flags={**FLAGS, **_value_flags(arguments)})


def _value_flags(tokens: list[str]) -> dict[str, str]:
    """``name=VALUE`` tokens that the table lacks → ``--flag VALUE`` (``--flag`` alone for ``True`` or no value)."""
    flags = {}
    for token in tokens:
        if token in FLAGS:
            continue
        name, _, value = token.partition("=")
        flags[token] = FLAGS[name] if value in ("", "True") else f"{FLAGS[name]} {value}"
    return flags


def cli_text(message: str, arguments: str | tuple[str, ...], *, flags: dict[str, str] | None = None) -> str:
    """``message`` with each of ``arguments`` (a token or a tuple of them; the first time it stands as a word)
    replaced by its flag in ``flags`` (default :data:`FLAGS`); tokens the table does not know stay as they are."""
    table = FLAGS if flags is None else flags
    for argument in (arguments,) if isinstance(arguments, str) else arguments:
        flag = table.get(argument)
        if flag is None:
            continue
        match = re.search(rf"(?<![\w-]){re.escape(argument)}(?!\w)", message)
        if match is None:
            message = message.replace(argument, flag, 1)
        else:
            message = message[: match.start()] + flag + message[match.end() :]
    return message


# -- parsers -----------------------------------------------------------------------------------------------------------


def parse_shape(value: str) -> tuple[str, tuple[int | None, ...]]:
    """``NAME=DIMS`` (``images=?,64,64,3`` or ``images=1x64x64x3``) → (name, dims, None for a dynamic dim).

    Raises:
        click.BadParameter: no ``=``, or a dim that is not a positive integer or ``?``/``-1``/``None``/``N``.
    """
    if "=" not in value:
        raise click.BadParameter(f"{value!r}: expected NAME=DIMS, e.g. images=?,64,64,3", param_hint="--input-shape")
    name, dims_text = value.split("=", 1)
    dims: list[int | None] = []
    separator = "," if "," in dims_text else "x"  # images=?,64,64,3 or images=1x64x64x3
    for token in dims_text.split(separator):
        token = token.strip()
        if token in ("?", "-1", "None", "none", "N", ""):
            dims.append(None)
        elif token.isdigit() and int(token) > 0:
            dims.append(int(token))
        else:
            raise click.BadParameter(
                f"{value!r}: dim {token!r} is not a positive integer or ?", param_hint="--input-shape"
            )
    return name.strip(), tuple(dims)


def parse_providers(value: str | None) -> list[str] | None:
    """``--providers`` text → the names listed (``cpu,cuda``), or None for every available provider (none given,
    ``all``, ``auto``)."""
    if value is None or value.strip().lower() in ("", "all", "auto"):
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """``--batch-sizes`` text (``1,4``) → the sizes.

    Raises:
        InputError: empty, or an item that is not a positive integer.
    """
    try:
        sizes = tuple(int(item) for item in text.split(",") if item.strip())
    except ValueError as exc:
        raise InputError(f"--batch-sizes {text!r}: expected a comma-separated list of positive integers") from exc
    if not sizes or any(size <= 0 for size in sizes):
        raise InputError(f"--batch-sizes {text!r}: expected a comma-separated list of positive integers")
    return sizes


# -- typed option groups -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvertOptions:
    """How ``export`` converts: ``-o``, ``--opset``, ``--batch-size``, ``--input-shape``, ``--target``, ... ."""

    output: str | None = None
    opset: int = 17
    batch_size: int | None = None
    dynamic_batch: bool = False
    input_shapes: tuple[str, ...] = ()  # NAME=DIMS as typed; see shapes()
    target: str = "portable"
    optimize: str = "speed"
    force: bool = False
    skip_verify: bool = False

    def shapes(self) -> dict[str, tuple[int | None, ...]]:
        """``--input-shape`` values parsed: input name → dims (None = dynamic).

        Raises:
            click.BadParameter: a malformed value.
        """
        return dict(parse_shape(text) for text in self.input_shapes)


@dataclass(frozen=True)
class ParityOptions:
    """How the parity check runs: ``--providers``, ``--atol``/``--rtol``, ``--inputs``, ``--batch-sizes``, ... ."""

    providers: str | None = None  # as typed; see provider_list()
    atol: float | None = None  # None: not given (1e-4 where the absolute rule applies)
    rtol: float | None = None  # None: not given (1e-3)
    inputs: str | None = None  # .npz / .npy path
    samples: int = 1
    seed: int = 0
    batch_sizes: str = "1,4"  # as typed; see batch_size_list()
    fp16: bool = False
    tf32: bool = False
    locate: bool = True
    rule: str | None = None  # --rule; None: not given (absolute when --atol/--rtol are given, else relative)

    def tolerances(self) -> tuple[float, float]:
        """(atol, rtol): the values given, or the defaults 1e-4 and 1e-3."""
        return (1e-4 if self.atol is None else self.atol, 1e-3 if self.rtol is None else self.rtol)

    def resolved_rule(self) -> str:
        """``--rule`` when given; else ``absolute`` when a tolerance was given explicitly, ``relative`` otherwise."""
        if self.rule:
            return self.rule
        return "absolute" if self.atol is not None or self.rtol is not None else "relative"

    def provider_list(self) -> list[str] | None:
        """The providers asked for, or None for every available one."""
        return parse_providers(self.providers)

    def batch_size_list(self) -> tuple[int, ...]:
        """The ``--batch-sizes`` values (InputError when malformed)."""
        return parse_batch_sizes(self.batch_sizes)

    def check(self) -> None:
        """Refuse bad values before the slow work (an exit 2 must not come with a freshly written file): the checks
        of :meth:`lambda_export.parity.ParityConfig.validate`, a bad tolerance named before a bad ``--batch-sizes``.

        Raises:
            InputError: a tolerance that is negative or not finite, malformed ``--batch-sizes``, an unknown provider.
            ProviderUnavailableError: a provider asked for cannot run here.
        """
        from lambda_export.parity.metrics import check_tolerance

        check_tolerance(*self.tolerances())
        self.config(fixed_batch=False).validate()

    def config(self, *, fixed_batch: bool, **fields: Any) -> ParityConfig:
        """The :class:`lambda_export.parity.ParityConfig` these values stand for.

        Args:
            fixed_batch: the ONNX graph has a fixed batch: check that batch only (``--batch-sizes`` is not used).
            fields: other ``ParityConfig`` fields (``int_high``).

        Raises:
            InputError: malformed ``--batch-sizes``.
        """
        from lambda_export.parity import ParityConfig

        return ParityConfig(
            providers=self.provider_list(),
            atol=self.tolerances()[0],
            rtol=self.tolerances()[1],
            inputs=self.inputs,
            batch_sizes=(None,) if fixed_batch else self.batch_size_list(),
            samples=self.samples,
            seed=self.seed,
            tf32=self.tf32,
            locate="on_failure" if self.locate else "never",
            fp16=self.fp16,
            rule=self.resolved_rule(),
            **fields,
        )


@dataclass(frozen=True)
class LoadOptions:
    """How the Keras model is loaded: ``--import`` (code registering custom layers) and ``--trust-code``."""

    imports: tuple[str, ...] = ()
    trust_code: bool = False


@dataclass(frozen=True)
class OutputOptions:
    """What is printed and written besides the result: ``--report``, ``--json``, ``-q``, ``-v``."""

    report: str | None = None
    json: bool = False
    quiet: bool = False
    verbose: int = 0

    def check_report(self) -> None:
        """Raises InputError when ``--report`` names neither a .json nor an .html file."""
        if self.report and Path(self.report).suffix.lower() not in (".json", ".html", ".htm"):
            raise InputError(f"--report {self.report}: the report file must end in .json or .html")


@dataclass(frozen=True)
class QuantizeOptions:
    """``--quantize int8`` and its settings: ``--calibration``, ``--calibration-method``, ``--min-agreement``,
    ``--min-cosine`` (see :func:`lambda_export.quantization.quantize`)."""

    precision: str | None = None  # --quantize; None: a float32 export
    calibration: str | None = None  # .npz / .npy path; None: generated inputs (with a warning)
    calibration_method: str = "percentile"  # lambda_export.quantization.DEFAULT_CALIBRATION_METHOD
    min_agreement: float = 0.99
    min_cosine: float | None = None  # None: 0.999 for outputs that are not classifiers, no cosine rule for these

    @property
    def enabled(self) -> bool:
        return self.precision is not None

    def check(self, target: str) -> list[str]:
        """Refuse bad values (and a target that cannot load QDQ) before the slow work; return the warnings.

        Raises:
            InputError: a threshold outside [0, 1], target ``opencv4``, ``--calibration`` without ``--quantize``, a
                calibration file that does not exist.
        """
        if not self.enabled:
            if self.calibration is not None:
                raise InputError("--calibration is only used with --quantize int8")
            return []
        from lambda_export.quantization import check_quantize_arguments

        warnings = check_quantize_arguments(
            precision=self.precision or "int8",
            calibration_method=self.calibration_method,
            min_agreement=self.min_agreement,
            min_cosine=self.min_cosine,
            target=target,
        )
        if self.calibration is not None and not Path(self.calibration).is_file():
            what = "not a regular file" if Path(self.calibration).exists() else "no such file"
            raise InputError(f"--calibration {self.calibration}: {what}")
        return warnings


# -- the decorators ------------------------------------------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])
Decorator = Callable[[F], F]


def _option_group(cls: type, keyword: str, options: list[Decorator]) -> Decorator:
    """Add ``options`` to a command (in this order in ``--help``) and hand it ``keyword=cls(**their values)``."""
    names = [item.name for item in dataclasses.fields(cls)]

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def parsed(*args: Any, **kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in names if name in kwargs}
            return fn(*args, **{keyword: cls(**values)}, **kwargs)

        for option in reversed(options):
            parsed = option(parsed)
        return parsed  # type: ignore[return-value]

    return decorate


_CONVERT = ConvertOptions()
_PARITY = ParityOptions()

convert_options = _option_group(
    ConvertOptions,
    "convert",
    [
        click.option(
            "-o",
            "--output",
            type=click.Path(dir_okay=False),
            help="Output .onnx file (default: MODEL with .onnx suffix).",
        ),
        click.option(
            "--opset",
            type=click.IntRange(13, 18),
            default=_CONVERT.opset,
            show_default=True,
            help="ONNX opset (13–18).",
        ),
        click.option(
            "--batch-size", type=click.IntRange(min=1), default=None, help="Fix the batch dimension (default: dynamic)."
        ),
        click.option("--dynamic-batch", is_flag=True, help="Keep the batch dimension dynamic (the default)."),
        click.option(
            "--input-shape",
            "input_shapes",
            multiple=True,
            metavar="NAME=DIMS",
            help="Shape for an input with unknown dims, e.g. images=?,64,64,3 (repeatable).",
        ),
        click.option(
            "--target",
            type=click.Choice(TARGET_CHOICES),
            default=_CONVERT.target,
            show_default=True,
            help="Runtimes the graph must load on.",
        ),
        click.option(
            "--optimize",
            type=click.Choice(OPTIMIZE_CHOICES),
            default=_CONVERT.optimize,
            show_default=True,
            help="speed: the exact rewrites ONNX Runtime's CPU runs fastest (under the target's rules); size: fewest nodes.",
        ),
        click.option("--force", is_flag=True, help="Overwrite an existing output file."),
        click.option(
            "--skip-verify", is_flag=True, help="Convert only; no parity check (exit 0 after a successful conversion)."
        ),
    ],
)
"""``export``'s conversion options → ``convert: ConvertOptions``."""

parity_options = _option_group(
    ParityOptions,
    "parity",
    [
        click.option(
            "--providers",
            metavar="LIST",
            help="ONNX Runtime providers to verify on: cpu,cuda,tensorrt (default: all available).",
        ),
        click.option(
            "--atol",
            type=float,
            default=None,
            show_default="1e-4",
            help="Absolute tolerance: |onnx − tf| ≤ atol + rtol·|tf|; giving it (or --rtol) selects --rule absolute.",
        ),
        click.option("--rtol", type=float, default=None, show_default="1e-3", help="Relative tolerance."),
        click.option(
            "--rule",
            type=click.Choice(["relative", "absolute"]),
            help="relative (default): judge the export against the Keras model run in float64, relative to "
            "TensorFlow float32's own error; absolute (the default when --atol or --rtol is given): "
            "|onnx − tf| ≤ atol + rtol·|tf|.",
        ),
        click.option(
            "--inputs",
            type=click.Path(dir_okay=False),
            help="Inputs for the check: .npz (keys = input names) or .npy.",
        ),
        click.option(
            "--samples",
            type=click.IntRange(min=1),
            default=_PARITY.samples,
            show_default=True,
            help="Random draws per batch size and distribution.",
        ),
        click.option("--seed", type=int, default=_PARITY.seed, show_default=True, help="Seed of the random inputs."),
        click.option(
            "--batch-sizes",
            default=_PARITY.batch_sizes,
            show_default=True,
            help="Batch sizes checked when the batch is dynamic.",
        ),
        click.option(
            "--fp16", is_flag=True, help="Also check a float16 export (weights and compute) against the fp32 reference."
        ),
        click.option("--tf32", is_flag=True, help="Leave TF32 matmuls on for GPU checks (default: off on both sides)."),
        click.option(
            "--locate/--no-locate",
            default=_PARITY.locate,
            show_default=True,
            help="On failure, name the first Keras layer that diverges.",
        ),
    ],
)
"""The parity check's options (``export``, ``verify``) → ``parity: ParityOptions``."""

load_options = _option_group(
    LoadOptions,
    "load",
    [
        click.option(
            "--import",
            "imports",
            multiple=True,
            metavar="MODULE_OR_FILE",
            help="Import code that registers custom layers (repeatable).",
        ),
        click.option(
            "--trust-code", is_flag=True, help="Allow Lambda layers (loading them executes code from the model file)."
        ),
    ],
)
"""How to load the Keras model (``export``, ``verify``) → ``load: LoadOptions``."""

_QUANTIZE = QuantizeOptions()

quantize_options = _option_group(
    QuantizeOptions,
    "quantize",
    [
        click.option(
            "--quantize",
            "precision",
            type=click.Choice(QUANTIZE_CHOICES),
            default=None,
            help="Write an int8 model (static QDQ, per-channel weights) and judge it against TensorFlow: top-1 "
            "agreement (classifiers) or cosine on the calibration and held-out samples; exit 1 when it fails.",
        ),
        click.option(
            "--calibration",
            type=click.Path(dir_okay=False),
            help="Samples for --quantize: .npz (keys = input names) or .npy; the last 20% are held out for the "
            "verdict (default: generated inputs, with a warning).",
        ),
        click.option(
            "--calibration-method",
            type=click.Choice(CALIBRATION_METHOD_CHOICES),
            default=_QUANTIZE.calibration_method,
            show_default=True,
            help="How activation ranges are chosen.",
        ),
        click.option(
            "--min-agreement",
            type=float,
            default=_QUANTIZE.min_agreement,
            show_default=True,
            help="Top-1 agreement with TensorFlow each classifier output needs (--quantize).",
        ),
        click.option(
            "--min-cosine",
            type=float,
            default=None,
            show_default="0.999 for outputs that are not classifiers",
            help="Mean cosine similarity with TensorFlow each output needs (given: classifiers too, on their logits).",
        ),
    ],
)
"""``export``'s int8 options → ``quantize: QuantizeOptions``."""


def output_options(
    *,
    report: bool = True,
    json: str | None = "Print a machine-readable verdict (JSON) on stdout.",
    quiet: str | None = "Only errors and the final verdict line.",
    verbose: str = "Show progress and tracebacks.",
) -> Decorator:
    """``--report``, ``--json``, ``-q``, ``-v`` → ``output: OutputOptions``.

    Args:
        report: offer ``--report FILE``.
        json, quiet, verbose: the help text of that option in this verb, or None when the verb does not offer it
            (its field keeps the default).
    """
    options: list[Decorator] = []
    if report:
        options.append(
            click.option("--report", type=click.Path(dir_okay=False), help="Write a report: FILE.json or FILE.html.")
        )
    if json is not None:
        options.append(click.option("--json", "json", is_flag=True, help=json))
    if quiet is not None:
        options.append(click.option("-q", "--quiet", is_flag=True, help=quiet))
    options.append(click.option("-v", "--verbose", count=True, help=verbose))
    return _option_group(OutputOptions, "output", options)
