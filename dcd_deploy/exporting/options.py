"""What an export is asked to do, as one value, and the check of it that runs before any work.

Importing this module imports neither torch nor ONNX Runtime, so the command line can read its
defaults (:data:`DEFAULT_OPSET`) without paying for them.

The opset range is what every side accepts: torch.onnx's TorchScript exporter (the one dcd-deploy
uses, ``dynamo=False``) declares its lowest and highest opsets in ``torch.onnx._constants``, read at
run time (:data:`TORCHSCRIPT_OPSETS` are the values of torch 2.13, used when that private module is
missing); the lowered graphs need at least :data:`LOWEST_OPSET` (they slice with computed bounds,
a ``Slice`` input since opset 10, and the per-sample convolutions' Loops give Squeeze/Unsqueeze
their axes as inputs, opset 13, so a network's lowering never decides late that the opset is too
old; the tests export at both ends of the range and check the Loops' own minimum); ONNX Runtime
is asked directly whether it loads a graph of the requested opset.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..runtime.inputs import IMAGENET_MEAN, IMAGENET_STD

DEFAULT_OPSET = 17
LOWEST_OPSET = 13
TORCHSCRIPT_OPSETS = (7, 20)


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """Everything :func:`dcd_deploy.export` takes besides the model; see its docstring."""

    path: Path
    input_size: int | tuple[int, int] = 224
    batch: int | None = None
    dynamic_size: bool = False
    opset: int = DEFAULT_OPSET
    fp16: bool = False
    simplify: bool = True
    form: str | Callable = "auto"
    target: str = "cpu"
    self_check: bool = True
    keep_failed: bool = False
    allow_unlowered: bool = False
    metadata: dict[str, Any] | None = None
    report: Path | None = None  # also write the result as JSON here
    on_stage: Callable[[str], None] | None = None
    progress: bool = False
    int8: bool = False
    calibration: str | os.PathLike | np.ndarray | None = None  # int8: samples, a .npz, or an image folder
    calibration_method: str = "minmax"
    mean: tuple[float, ...] = IMAGENET_MEAN  # normalisation of calibration images read from files
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if self.report is not None:
            object.__setattr__(self, "report", Path(self.report))

    @property
    def hw(self) -> tuple[int, int]:
        """The input's (height, width)."""
        from ..runtime.onnxfile import parse_size

        return parse_size(self.input_size)

    @property
    def precision(self) -> str:
        return "int8" if self.int8 else "float16" if self.fp16 else "float32"

    @property
    def lowering_form(self) -> str | Callable:
        """The form the lowering picks: int8 turns ``auto`` into ``factored`` (every W0 a static,
        quantizable convolution)."""
        return "factored" if self.int8 and self.form == "auto" else self.form

    @property
    def check_batches(self) -> list[int]:
        """The batch sizes the self-check runs: the static batch, or 1 and 3 (not a batch the graph could bake in)."""
        return [self.batch] if self.batch is not None else [1, 3]

    def stage(self, message: str) -> None:
        if self.on_stage is not None:
            self.on_stage(message)


def supported_opsets() -> range:
    """The opsets both torch.onnx's TorchScript exporter and the lowered graphs support."""
    try:
        from torch.onnx import _constants

        lowest = _constants.ONNX_MIN_OPSET
        highest = _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    except (ImportError, AttributeError):
        lowest, highest = TORCHSCRIPT_OPSETS
    return range(max(lowest, LOWEST_OPSET), highest + 1)


def runtime_accepts_opset(opset: int) -> str | None:
    """``None`` when ONNX Runtime loads a graph of ``opset``, else its reason in one line."""
    import onnxruntime
    from onnx import TensorProto, helper

    from ..errors import summarize_exception

    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [value],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    try:
        onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - any refusal means: not this opset
        return summarize_exception(exc, limit=160)
    return None


def check_opset(opset: int) -> None:
    """Raise :class:`InputError` unless torch.onnx, the lowered graphs and ONNX Runtime all take ``opset``."""
    opsets = supported_opsets()
    fix = f"Pass --opset between {opsets.start} and {opsets[-1]} (default {DEFAULT_OPSET}), or leave it out."
    if opset not in opsets:
        raise InputError(f"--opset {opset} is outside the opsets dcd-deploy can export ({opsets.start}-{opsets[-1]}: "
                         f"torch.onnx's exporter, and the lowered graphs' computed slices, need at least "
                         f"{opsets.start}).", fix)
    refusal = runtime_accepts_opset(opset)
    if refusal is not None:
        raise InputError(f"--opset {opset}: this ONNX Runtime cannot load graphs of that opset ({refusal}).", fix)


def check_int8(options: ExportOptions) -> None:
    """``int8`` needs calibration data (an existing path, or an array), excludes ``fp16``, and the
    calibration method must be one the quantizer knows; calibration without ``int8`` is a mistake."""
    from .quantize import METHODS

    if not options.int8:
        if options.calibration is not None:
            raise InputError("--calibration was given without --int8; calibration data is only used by int8 exports.",
                             "Add --int8 to export an int8 model, or drop --calibration.")
        return
    if options.fp16:
        raise InputError("--int8 and --fp16 are exclusive: an int8 export keeps its float parts in float32.",
                         "Choose one precision: --int8 (with --calibration) or --fp16.")
    if options.calibration_method not in METHODS:
        raise InputError(f"Unknown calibration method {options.calibration_method!r}.", f"Choose one of: {', '.join(METHODS)}.")
    if options.calibration is None:
        raise InputError("--int8 needs calibration data to fit the activations' int8 ranges.",
                         "Pass --calibration DATA: an .npz with 'input' (N×3×H×W, preprocessed as in training), "
                         "or a folder of images with --mean/--std; a few dozen to a few hundred training images.")
    if not isinstance(options.calibration, np.ndarray) and not os.path.exists(options.calibration):
        raise InputError(f"Calibration data {options.calibration} does not exist.",
                         "Pass an existing .npz/.npy file or image folder to --calibration.")


def validate(options: ExportOptions) -> ExportOptions:
    """The first stage: every check that needs no model, so that a bad option fails before any work.

    Checks the batch, the target (and that no --form it excludes is asked for), the input size, the
    int8 options, the opset, and that the output (and the report) can be written. Returns ``options`` unchanged.
    """
    from ..lowering.costmodel import NO_CONTROL_FLOW, TARGETS, control_flow_forms
    from ..reporting import check_output_path

    if options.batch is not None and options.batch < 1:
        raise InputError(f"--batch {options.batch} is not a positive batch size.", "Omit --batch for a dynamic batch axis.")
    if options.target not in TARGETS:
        raise InputError(f"Unknown target {options.target!r}.", f"Choose one of: {', '.join(TARGETS)}.")
    if options.target in NO_CONTROL_FLOW and isinstance(options.form, str) and options.form in control_flow_forms():
        raise InputError(f"The {options.form} form writes an ONNX Loop over the samples, and --target {options.target} "
                         "writes no control flow (CUDA graphs cannot capture it).",
                         "Use the unfold form (the same arithmetic with no Loop) or let the cost model choose (auto).")
    options.hw  # noqa: B018 - parses the input size, raising InputError when it is not one
    check_int8(options)
    check_opset(options.opset)
    check_output_path(options.path, "-o model")
    if options.report is not None:
        check_output_path(options.report, "--report")
        if os.path.abspath(options.report) == os.path.abspath(options.path):
            raise InputError(f"--report {options.report} is the ONNX file itself.", "Write the report to another file.")
    return options
