"""Numerical parity: does an exported ONNX file compute what the ORIGINAL PyTorch model computes?

:func:`check_parity` is the whole check, in the order that makes the cheapest mistakes fail
first: the options (:class:`ParityOptions`), the execution providers (an unknown name is a usage
error, a known one that is not installed exits 3), the ONNX file (an int8 file is refused unless
``atol``/``rtol`` are given: its check is ``dcd-deploy evaluate``), the inputs, and only then the
checkpoint. The reference network then runs the samples (:mod:`.reference`), each provider runs
them and is compared output by output (:mod:`.runs`, :mod:`.metrics`, under the tolerance policy
of :mod:`.tolerance`), a failure is localised on request (:mod:`.localize`), and the requested
files are written last, each complete or not at all (:mod:`.saveio`, the ``--json`` report).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnxruntime
from torch import nn

from ..errors import InputError
from ..reporting import check_output_path
from ..runtime.inputs import IMAGENET_MEAN, IMAGENET_STD, InputSet, check_shape, load_inputs
from ..runtime.onnxfile import InputSpec, OnnxFile, read_onnx
from ..runtime.session import check_available, parse_provider_options, parse_providers, provider_name
from ..sysinfo import machine, versions
from .localize import localize
from .metrics import worst_samples
from .reference import Reference, check_pairing, check_reference_dtype, evaluate_reference, reference_info, reference_model
from .results import ParityResult, ProviderResult  # noqa: F401 - ProviderResult is part of this module's API
from .runs import ProviderRun, run_provider
from .saveio import check_save_io, save_io
from .tolerance import check_tolerances


@dataclasses.dataclass(frozen=True)
class ParityOptions:
    """How to run a parity check; every field is also a keyword of :func:`check_parity`.

    ``inputs`` is anything :func:`dcd_deploy.runtime.inputs.load_inputs` takes (``None``: seeded
    random) or a ready :class:`InputSet`. ``provider_options`` maps a provider (alias or full name)
    to its ONNX Runtime options, or lists ``'PROVIDER:KEY=VALUE'`` strings. ``mean``/``std``
    normalise images (``None``: ImageNet's). ``save_io_dir`` and ``json_path`` name files to write
    once the check has run; ``load_options`` go to :func:`dcd_deploy.load_model` when the reference
    is a checkpoint path.
    """

    providers: str | Sequence[str] = ("cpu",)
    provider_options: Mapping[str, Mapping[str, Any]] | Sequence[str] | None = None
    inputs: str | os.PathLike | np.ndarray | InputSet | Any | None = None
    samples: int | None = None
    batch: int | None = None
    seed: int = 0
    atol: float | None = None
    rtol: float | None = None
    reference_dtype: str | None = None  # None: float64, or float32 with a note where the network cannot run in it
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    input_size: tuple[int, int] | None = None
    save_io_dir: str | os.PathLike | None = None
    json_path: str | os.PathLike | None = None
    localize: bool = False
    load_options: dict[str, Any] | None = None

    def validate(self) -> None:
        """Raise :class:`InputError` (or ``OutputError``) for an option that cannot work, before any work."""
        check_reference_dtype(self.reference_dtype)
        check_tolerances(self.atol, self.rtol)
        if self.batch is not None and self.batch < 1:
            raise InputError(f"--batch {self.batch} is not a positive batch size.", "Use --batch 1 or more, or leave it out.")
        if self.json_path is not None:
            check_output_path(self.json_path, "--json report")
        if self.save_io_dir is not None:
            check_save_io(self.save_io_dir)
        self.options_by_provider()

    def options_by_provider(self) -> dict[str, dict[str, Any]]:
        """``provider_options`` keyed by full provider name."""
        given = self.provider_options or {}
        if isinstance(given, Mapping):
            return {provider_name(k): dict(v) for k, v in given.items()}
        return parse_provider_options([given] if isinstance(given, str) else given)

    def resolve_providers(self) -> list[str]:
        """Full provider names, each known (else exit 2) and available here (else exit 3)."""
        names = parse_providers(self.providers)
        for name in names:
            check_available(name)
        return names

    def load_samples(self, spec: InputSpec) -> InputSet:
        if self.batch is not None and spec.static_batch and self.batch != spec.static_batch:
            raise InputError(f"--batch {self.batch} does not fit the model, whose batch size is fixed at "
                             f"{spec.static_batch}.", "Leave --batch out (samples are run in batches of the fixed size).")
        if isinstance(self.inputs, InputSet):
            return dataclasses.replace(self.inputs, data=check_shape(self.inputs.data, spec, "The inputs"))
        return load_inputs(self.inputs, spec, samples=self.samples, seed=self.seed, mean=self.mean or IMAGENET_MEAN,
                           std=self.std or IMAGENET_STD, input_size=self.input_size)


def check_comparable(onnx_file: OnnxFile, opts: ParityOptions) -> None:
    """Refuse an int8 file unless the user set the tolerance: parity's default tolerances bound float
    rounding, and an int8 model is not meant to be element-wise close to its float original; its
    check is accuracy on labelled data (``dcd-deploy evaluate``, with ``--max-drop`` as the gate)."""
    if onnx_file.precision == "int8" and opts.atol is None and opts.rtol is None:
        raise InputError(
            f"{onnx_file.path} is an int8 model: its logits are not meant to match the float32 original element by "
            "element, so parity's float tolerances do not apply.",
            f"Measure it with `dcd-deploy evaluate {onnx_file.path} CHECKPOINT --data LABELLED --max-drop 1` (top-1 "
            "accuracy and agreement with the original), or give --atol and --rtol to compare element-wise anyway.")


def check_parity(model: str | os.PathLike | OnnxFile, reference: Reference, options: ParityOptions | None = None,
                 **fields: Any) -> ParityResult:
    """Compare ONNX file ``model`` on each provider with the original PyTorch ``reference``.

    ``reference`` is a checkpoint path (loaded with :func:`dcd_deploy.load_model` and
    ``load_options``), a :class:`LoadedModel`, an ``nn.Module`` (put in eval mode), or a function
    returning one of those (called after the cheaper checks). ``fields`` are
    :class:`ParityOptions` fields (``providers='cpu,cuda'``, ``inputs=...``, ``samples=``, ``atol=``,
    ...), applied over ``options``. Raises :class:`InputError` (exit 2) for unusable options, files
    or inputs and a checkpoint that does not fit the model, and :class:`ProviderUnavailableError`
    (exit 3); a numerical mismatch is not raised but reported by the falsy result.
    """
    opts = dataclasses.replace(options or ParityOptions(), **fields)
    opts.validate()
    names = opts.resolve_providers()
    onnx_file = model if isinstance(model, OnnxFile) else read_onnx(model)
    check_comparable(onnx_file, opts)
    data = opts.load_samples(onnx_file.spec)
    run_batch = onnx_file.spec.static_batch or opts.batch or data.count

    loaded, module = reference_model(reference, opts.load_options)
    notes = check_pairing(onnx_file.metadata, loaded)
    if data.available is not None and data.available > data.count:
        notes.append(f"used the first {data.count} of the {data.available} samples in {data.path or 'the input array'}")
    ref = evaluate_reference(module, data.data, run_batch, opts.reference_dtype)
    notes += [ref.note] if ref.note else []
    ref_outputs = ref.outputs
    given = opts.options_by_provider()
    runs = [run_provider(onnx_file, name, given.get(name, {}), data.data, run_batch, ref_outputs, opts.atol, opts.rtol,
                         ref.noise) for name in names]
    result = ParityResult(onnx_file.path, onnx_file.precision, onnx_file.spec, data, run_batch,
                          reference_info(loaded, module, ref.dtype, onnx_file, ref.noise), [r.result for r in runs],
                          notes, localized=opts.localize, machine=machine(),
                          versions={**versions(), "onnxruntime_available_providers":
                                    ",".join(onnxruntime.get_available_providers())})
    if opts.localize:
        # the layers are traced in float32 unless float64 was asked for (the lowered forms are float32 code)
        _localize_failures(result, runs, onnx_file, module, data.data, ref_outputs, opts.reference_dtype or "float32")
    _write_outputs(result, runs, data.data, ref_outputs, opts)
    return result


def _localize_failures(result: ParityResult, runs: list[ProviderRun], onnx_file: OnnxFile, module: nn.Module,
                       data: np.ndarray, ref_outputs: list[np.ndarray], reference_dtype: str) -> None:
    failing = [run for run in runs if not run.result]
    if not failing:
        result.notes.append("--localize: every provider passed, so there is no divergence to localise")
    for run in failing:
        order = worst_samples(ref_outputs, run.outputs)
        result.localizations.append(localize(onnx_file, module, data, order, run.result.provider, run.options,
                                             run.result.precision, reference_dtype))


def _write_outputs(result: ParityResult, runs: list[ProviderRun], data: np.ndarray, ref_outputs: list[np.ndarray],
                   opts: ParityOptions) -> None:
    """--save-io, then the --json report (which names the saved files); on any failure, neither stays."""
    saved = None
    if opts.save_io_dir is not None:
        names = runs[0].names if runs else []
        saved = save_io(opts.save_io_dir, data, names, ref_outputs, {r.result.short: r.outputs for r in runs})
        result.saved_io = saved.paths()
    try:
        if opts.json_path is not None:
            result.write_json(opts.json_path)
    except BaseException:
        if saved is not None:
            saved.remove()
        raise
