"""``dcd-deploy bench``: the deployment options of one DCD model, timed side by side in one run.

Rows (each per execution provider and batch size, all measured in ONE interleaved round-robin run
on the same inputs, see :mod:`dcd_deploy.latency`):

=================  ===================================================================================
``eager``          PyTorch eager, the original network (CPU, or CUDA with the ``cuda`` provider)
``eager-lowered``  PyTorch eager, the network after dcd-deploy's lowering
``naive``          plain ``torch.onnx.export`` of the original network (``dynamo=True``, then
                   ``dynamo=False`` if that fails) on ONNX Runtime; when both fail, the row says why
``dcd-deploy``     ``dcd_deploy.export`` (lowered, simplified, checked) on ONNX Runtime
``static``         the static twin (every DCD layer replaced by W0, the head by its Linear,
                   :mod:`dcd_deploy.lowering.static_twin`), exported the same way: the floor
=================  ===================================================================================

Each ONNX file is made once and shared by every provider and batch size (batch axis dynamic);
each (row, provider, batch) gets its own session. ONNX Runtime CPU sessions run with intra-op
spinning OFF: an idle session's spinning threads would otherwise keep cores busy while the next
row is being timed. GPU providers (CUDA, TensorRT) run through IO binding: the input is copied to
the device once, input and output are bound once, and each run synchronises before the clock
stops; ``cuda_graph`` captures a CUDA graph (shapes are static per session). With an ONNX file
alone only the row that needs no checkpoint is measured: the file itself.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import logging
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import DcdDeployError, InputError, ProviderUnavailableError
from ..runtime.timing import LatencyStats, Progress, RowUnavailable, measure_interleaved, torch_threads
from ..load.model import LoadedModel
from ..lowering.costmodel import TARGETS
from ..runtime.session import check_available, create_session, device_name, parse_providers, provider_name, short_name

ROWS = ("eager", "eager-lowered", "naive", "dcd-deploy", "static")
ROW_DESCRIPTIONS = {
    "eager": "PyTorch eager, original network",
    "eager-lowered": "PyTorch eager, network after dcd-deploy lowering",
    "naive": "plain torch.onnx.export of the original network, on ONNX Runtime",
    "dcd-deploy": "dcd-deploy export, on ONNX Runtime",
    "static": "static twin (W0 only, plain Linear head), on ONNX Runtime: the floor",
    "onnx": "the given ONNX file, on ONNX Runtime",
}
TORCH_ROWS = ("eager", "eager-lowered")
TORCH_DEVICES = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda"}
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
NAIVE_EXPORTERS = {"auto": ("dynamo", "torchscript"), "dynamo": ("dynamo",), "torchscript": ("torchscript",)}
DEFAULT_INPUT_SIZE = 224
# A measured row whose output differs from the original network's by more than this (relative
# max error) gets a warning note: a fast row that computes something else is no option.
AGREEMENT_RTOL = 1e-3
# GPU rows compute float32 convolutions and products in TF32 by default (ONNX Runtime's use_tf32,
# PyTorch's cudnn.allow_tf32): 10 mantissa bits, so the same rule as `dcd-deploy parity` for tf32.
REDUCED_PRECISION_RTOL = 2e-2
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


class NothingMeasured(DcdDeployError):
    """No row could be measured (every provider unavailable or every row failed)."""


# ----------------------------------------------------------------------------------------------
# Results


@dataclasses.dataclass
class Prepared:
    """One row's artifact, made once: a PyTorch module or ONNX bytes/file, or why it failed."""

    row: str
    model: nn.Module | None = None
    onnx: bytes | str | None = None  # serialized model, or a path to it
    seconds: float | None = None
    note: str | None = None
    failure: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "seconds": self.seconds, "note": self.note, "failure": self.failure}


@dataclasses.dataclass
class BenchRow:
    """One row for one provider and batch size: its measurement, or why there is none."""

    row: str
    provider: str  # short name: cpu, cuda, ...
    batch: int
    status: str = "measured"  # measured | skipped (provider/device unavailable) | failed
    reason: str | None = None
    setup_s: float | None = None
    cold_s: float | None = None
    stats: LatencyStats | None = None
    vs_static: float | None = None  # p50 / static p50 (same provider and batch)
    vs_eager: float | None = None  # p50 / eager p50 (same provider and batch)
    max_rel_err: float | None = None  # output vs the original network, max|Δ| / max|ref|

    @property
    def measured(self) -> bool:
        return self.stats is not None

    def to_dict(self, include_times: bool = True) -> dict[str, Any]:
        return {
            "row": self.row, "provider": self.provider, "batch": self.batch, "status": self.status,
            "reason": self.reason,
            "session_ms": None if self.setup_s is None else self.setup_s * 1e3,
            "cold_ms": None if self.cold_s is None else self.cold_s * 1e3,
            "stats": self.stats.to_dict(include_times) if self.stats else None,
            "vs_static": self.vs_static, "vs_eager": self.vs_eager, "max_rel_err": self.max_rel_err,
        }


@dataclasses.dataclass
class BenchResult:
    """Everything one bench run found; truthy when at least one row was measured."""

    source: str
    mode: str  # checkpoint | onnx
    model: str
    input_size: tuple[int, int]
    providers: list[str]
    batches: list[int]
    threads: int
    warmup: int
    runs: int | None
    duration: float | None
    cuda_graph: bool
    rows: list[BenchRow]
    prepared: list[Prepared]
    devices: dict[str, str]
    versions: dict[str, str]
    machine: dict[str, Any]
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def measured(self) -> list[BenchRow]:
        return [r for r in self.rows if r.measured]

    def __bool__(self) -> bool:
        return bool(self.measured)

    def groups(self) -> list[tuple[str, int, list[BenchRow]]]:
        """(provider, batch, rows) in report order."""
        out = []
        for provider in dict.fromkeys(r.provider for r in self.rows):
            for batch in self.batches:
                rows = [r for r in self.rows if r.provider == provider and r.batch == batch]
                if rows:
                    out.append((provider, batch, rows))
        return out

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "threads": self.threads, "torch_threads": self.threads, "ort_intra_op_threads": self.threads,
            "ort_inter_op_threads": 1, "ort_spinning": False, "warmup": self.warmup, "runs": self.runs,
            "duration_s": self.duration, "interleaved": True, "cuda_graph": self.cuda_graph,
            "batches": self.batches, "providers": self.providers,
        }

    def to_dict(self, include_times: bool = True) -> dict[str, Any]:
        return {
            "tool": "dcd-deploy bench", "schema": 1, "date": self.machine.get("date"),
            "source": self.source, "mode": self.mode, "model": self.model, "input_size": list(self.input_size),
            "settings": self.settings, "versions": self.versions, "machine": self.machine, "devices": self.devices,
            "row_descriptions": {r: ROW_DESCRIPTIONS[r] for r in dict.fromkeys(x.row for x in self.rows)},
            "preparation": [p.to_dict() for p in self.prepared],
            "rows": [r.to_dict(include_times) for r in self.rows],
            "notes": self.notes,
        }

    def raise_if_nothing_measured(self) -> None:
        """Raise when no row was measured: :class:`ProviderUnavailableError` (exit 3) when every row was
        skipped for want of a provider or device, else :class:`NothingMeasured` (exit 2)."""
        if self:
            return
        if all(r.status == "skipped" for r in self.rows):
            import onnxruntime as ort

            offered = ", ".join(short_name(p) for p in ort.get_available_providers())
            raise ProviderUnavailableError(
                f"Nothing could be measured: none of the requested providers ({', '.join(self.providers)}) can run "
                "here (the reasons are listed above).",
                f"Choose providers this machine offers (this onnxruntime offers: {offered}), e.g. --providers cpu.",
            )
        raise NothingMeasured("Nothing could be measured: every row failed (the reasons are listed above).",
                              "Fix the first reason listed; a dcd-deploy export on --providers cpu should always run.")


# ----------------------------------------------------------------------------------------------
# Preparing the rows' artifacts


# Boilerplate that torch appends to exporter errors; it says nothing about this model.
_BOILERPLATE = ("Please feel free to request support", "[Caused by", "(Refer to the full stack trace", "(Size-like symbols")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def first_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` without torch's boilerplate, at most ``limit`` characters.

    When the exception wraps another (``raise ... from``), the root cause is given in parentheses
    after the first sentence of the wrapper: the dynamo exporter wraps the real reason.
    """
    root, depth = exc, 0
    while root.__cause__ is not None and depth < 10:
        root, depth = root.__cause__, depth + 1
    text = _message(exc)
    if root is not exc:
        text = f"{text.split('. ')[0].rstrip('.')} ({type(root).__name__}: {_message(root)})"
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _message(exc: BaseException) -> str:
    text = next((line.strip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()), "")
    for phrase in _BOILERPLATE:
        text = text.split(phrase)[0].strip()
    return text


@contextlib.contextmanager
def _silence_fds() -> Iterator[None]:
    """Send file descriptors 1 and 2 to a scratch file: the exporters' C++ side prints there directly."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for fd in saved:
            os.close(fd)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' printing (Python and C++), warnings and logging."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with _silence_fds(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def naive_export(model: nn.Module, hw: tuple[int, int], exporters: Sequence[str] = NAIVE_EXPORTERS["auto"]
                 ) -> tuple[bytes | None, str | None, str | None]:
    """Plain ``torch.onnx.export`` with a dynamic batch axis, as a user would write it.

    Tries each exporter in turn (``dynamo``: ``dynamo=True``; ``torchscript``: ``dynamo=False``)
    and returns ``(onnx bytes or None, note, failure)``: the note says which exporter produced the
    graph (and why an earlier one failed); the failure says why every exporter failed.
    """
    unknown = [e for e in exporters if e not in ("dynamo", "torchscript")]
    if unknown:
        raise ValueError(f"unknown exporter(s) {unknown}; use 'dynamo' and/or 'torchscript'")
    example = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(0))  # batch 2: not specialised
    model = model.eval()
    failures: list[str] = []
    for exporter in exporters:
        try:
            with _quiet():
                if exporter == "dynamo":
                    program = torch.onnx.export(model, (example,), dynamo=True, verbose=False,
                                                input_names=["input"], output_names=["logits"],
                                                dynamic_shapes=({0: torch.export.Dim("batch")},))
                    data = program.model_proto.SerializeToString()
                else:
                    buffer = io.BytesIO()
                    torch.onnx.export(model, (example,), buffer, dynamo=False, input_names=["input"],
                                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
                    data = buffer.getvalue()
        except Exception as exc:  # noqa: BLE001 - every exporter failure is a finding for the report
            failures.append(f"torch.onnx.export(dynamo={exporter == 'dynamo'}) failed: {first_line(exc)}")
            continue
        note = f"torch.onnx.export(dynamo={exporter == 'dynamo'})"
        if failures:
            note += " after " + "; ".join(failures)
        return data, note, None
    return None, None, "; ".join(failures)


def prepare_checkpoint_rows(model: nn.Module | LoadedModel, hw: tuple[int, int], naive_exporter: str = "auto",
                            progress: Progress | None = None, onnx_rows: bool = True, torch_rows: bool = True,
                            target: str = "cpu") -> list[Prepared]:
    """The artifacts of the five rows, each made once (failures recorded, not raised).

    ``onnx_rows`` / ``torch_rows`` False: no requested provider can run those rows, so their
    artifacts are not made (exporting can take minutes).
    """
    from ..lowering import lower_model
    from ..lowering.static_twin import static_twin
    from ..exporting.pipeline import export

    report = progress or (lambda stage, done, total, detail: None)
    original = model.model if isinstance(model, LoadedModel) else model
    original.eval()
    example = torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(0))
    prepared = [Prepared("eager", model=original, seconds=0.0)]
    steps = 4
    if not torch_rows:
        prepared.append(Prepared("eager-lowered", note="not made: PyTorch cannot run on any requested provider here"))
    else:
        report("preparing", 0, steps, "eager-lowered: lowering the DCD layers")
        t0 = time.perf_counter()
        try:
            lowered, rewrite = lower_model(original, example)
            prepared.append(Prepared("eager-lowered", model=lowered, seconds=time.perf_counter() - t0,
                                     note=rewrite.summary()))
        except DcdDeployError as exc:
            prepared.append(Prepared("eager-lowered", failure=exc.message))
    if not onnx_rows:
        not_made = "not made: no requested provider runs ONNX Runtime here"
        return prepared + [Prepared(row, note=not_made) for row in ("naive", "dcd-deploy", "static")]

    dynamo_hint = " (torch.export can take minutes)" if "dynamo" in NAIVE_EXPORTERS[naive_exporter] else ""
    report("preparing", 1, steps, f"naive: plain torch.onnx.export{dynamo_hint}")
    t0 = time.perf_counter()
    data, note, failure = naive_export(original, hw, NAIVE_EXPORTERS[naive_exporter])
    prepared.append(Prepared("naive", onnx=data, seconds=time.perf_counter() - t0, note=note, failure=failure))

    with tempfile.TemporaryDirectory(prefix="dcd-bench-") as tmp:
        report("preparing", 2, steps, "dcd-deploy: export")
        t0 = time.perf_counter()
        try:
            result = export(model, Path(tmp) / "dcd-deploy.onnx", input_size=hw, batch=None, target=target)
            prepared.append(Prepared("dcd-deploy", onnx=result.path.read_bytes(), seconds=time.perf_counter() - t0,
                                     note=f"{result.report.summary()}; {result.node_count} nodes; target {target}"))
        except DcdDeployError as exc:
            prepared.append(Prepared("dcd-deploy", failure=exc.message))

        report("preparing", 3, steps, "static: static twin export")
        t0 = time.perf_counter()
        try:
            twin = static_twin(original)
            result = export(twin, Path(tmp) / "static.onnx", input_size=hw, batch=None)
            prepared.append(Prepared("static", onnx=result.path.read_bytes(), seconds=time.perf_counter() - t0,
                                     note=f"{result.node_count} nodes"))
        except DcdDeployError as exc:
            prepared.append(Prepared("static", failure=exc.message))
    report("preparing", steps, steps, "")
    return prepared


def read_onnx_file(path: str | os.PathLike) -> tuple[Any, str]:
    """The ONNX model (without external data) and the row name to show it under."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise InputError(f"ONNX file {path} does not exist.", "Check the path, or run `dcd-deploy export` first.")
    try:
        proto = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure means: not an ONNX file
        raise InputError(f"{path} is not a readable ONNX model ({first_line(exc)}).",
                         "Pass an .onnx file written by `dcd-deploy export` (or a checkpoint).") from None
    return proto, ("dcd-deploy" if proto.producer_name == "dcd-deploy" else "onnx")


def onnx_input_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """The input size an ONNX file was exported for: metadata ``dcd_deploy.input_size``, else static H, W."""
    from ..compare.inputs import input_spec

    proto, _ = read_onnx_file(path)
    try:
        spec = input_spec(proto)
    except InputError:
        return None
    return spec.metadata_size or spec.static_hw


# ----------------------------------------------------------------------------------------------
# Row runners


class TorchRunner:
    """PyTorch eager on CPU or CUDA; the input is on the device before timing starts."""

    def __init__(self, label: str, model: nn.Module, x: np.ndarray, device: str, cache: dict[int, nn.Module]):
        self.label, self.batch = label, x.shape[0]
        self._source, self._x, self._device, self._cache = model, x, device, cache
        self.model: nn.Module | None = None
        self.out: torch.Tensor | None = None

    def setup(self) -> None:
        if self._device == "cpu":
            self.model = self._source
        else:
            key = id(self._source)
            if key not in self._cache:
                self._cache[key] = copy.deepcopy(self._source).to(self._device).eval()
            self.model = self._cache[key]
        self.input = torch.from_numpy(self._x).to(self._device)
        self._sync()

    def _sync(self) -> None:
        if self._device == "cuda":
            torch.cuda.synchronize()

    def run(self) -> None:
        try:
            self.out = self.model(self.input)  # type: ignore[misc]
            self._sync()
        except RuntimeError as exc:
            raise RowUnavailable(f"PyTorch failed to run it: {first_line(exc)}") from None

    def output(self) -> np.ndarray | None:
        return None if self.out is None else self.out.float().cpu().numpy()

    def close(self) -> None:
        self.model = self.out = None


class OrtRunner:
    """One ONNX Runtime session for one provider and batch size.

    CPU (and other non-GPU providers): ``session.run`` on a NumPy input. GPU providers: IO binding,
    input and output on the device, bound once; each run synchronises the outputs.
    """

    def __init__(self, label: str, model: bytes | str, x: np.ndarray, provider: str, threads: int, cuda_graph: bool):
        self.label, self.batch = label, x.shape[0]
        self._model, self._x, self.provider, self.threads, self.cuda_graph = model, x, provider, threads, cuda_graph
        self.session: Any = None
        self.binding: Any = None
        self.outputs: list[Any] | None = None
        self.provider_failed = False  # the provider itself could not start (a skip, not a failure)

    @property
    def on_gpu(self) -> bool:
        return self.provider in GPU_PROVIDERS

    def _provider_options(self) -> dict[str, Any]:
        if not self.cuda_graph:
            return {}
        if self.provider == "CUDAExecutionProvider":
            return {"enable_cuda_graph": "1"}
        if self.provider == "TensorrtExecutionProvider":
            return {"trt_cuda_graph_enable": "True"}
        return {}

    def setup(self) -> None:
        try:
            self.session = create_session(self._model, self.provider, threads=self.threads, spinning=False,
                                          provider_options=self._provider_options(), dynamic_shapes=False)
        except DcdDeployError as exc:
            self.provider_failed = isinstance(exc, ProviderUnavailableError)
            raise RowUnavailable(exc.message) from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise RowUnavailable(f"the model has {len(inputs)} inputs; bench feeds one image tensor (N×3×H×W)")
        spec = inputs[0]
        dtype = ORT_DTYPES.get(spec.type)
        if dtype is None:
            raise RowUnavailable(f"the model input is {spec.type}; bench feeds float images")
        shape = list(spec.shape)
        if len(shape) != 4 or any(isinstance(d, int) and d != s for d, s in zip(shape, self._x.shape)):
            raise RowUnavailable(f"the model input has shape {shape}; a batch of {self._x.shape[0]} images "
                                 f"{self._x.shape[2]}×{self._x.shape[3]} does not fit it")
        self.input_name = spec.name
        self.output_names = [o.name for o in self.session.get_outputs()]
        x = self._x.astype(dtype, copy=False)
        self.feed = {self.input_name: x}
        if self.on_gpu:
            self._bind(x)

    def _bind(self, x: np.ndarray) -> None:
        import onnxruntime as ort

        self.binding = self.session.io_binding()
        self._device_input = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
        self.binding.bind_ortvalue_input(self.input_name, self._device_input)
        self._device_outputs = []
        for out in self.session.get_outputs():
            shape = [self.batch if i == 0 and not isinstance(d, int) else d for i, d in enumerate(out.shape)]
            dtype = ORT_DTYPES.get(out.type)
            if all(isinstance(d, int) for d in shape) and dtype is not None:
                value = ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, "cuda", 0)
                self._device_outputs.append(value)
                self.binding.bind_ortvalue_output(out.name, value)
            elif self.cuda_graph:
                raise RowUnavailable(f"CUDA graphs need a static output shape; output {out.name} is {out.shape}")
            else:
                self.binding.bind_output(out.name, "cuda", 0)

    def run(self) -> None:
        try:
            if self.binding is not None:
                self.session.run_with_iobinding(self.binding)
                self.binding.synchronize_outputs()
            else:
                self.outputs = self.session.run(self.output_names, self.feed)
        except Exception as exc:  # noqa: BLE001 - ORT's own exception types; the row reports it
            raise RowUnavailable(f"ONNX Runtime failed to run it: {first_line(exc)}") from None

    def output(self) -> np.ndarray | None:
        if self.binding is not None:
            return np.asarray(self.binding.copy_outputs_to_cpu()[0], dtype=np.float32)
        return None if self.outputs is None else np.asarray(self.outputs[0], dtype=np.float32)

    def close(self) -> None:
        self.session = self.binding = self.outputs = None


# ----------------------------------------------------------------------------------------------
# The bench


def _inputs(batches: Sequence[int], hw: tuple[int, int], seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {b: rng.standard_normal((b, 3, *hw), dtype=np.float32) for b in batches}


def _relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    """:func:`dcd_deploy.lowering.relative_error` on arrays; inf when the shapes differ."""
    from ..lowering import relative_error

    if out.shape != ref.shape:
        return float("inf")
    return relative_error(torch.from_numpy(np.ascontiguousarray(out)), torch.from_numpy(np.ascontiguousarray(ref)))


def _hw(input_size: int | str | Sequence[int] | None, default: tuple[int, int]) -> tuple[int, int]:
    from ..compare.inputs import parse_size

    if input_size is None:
        return default
    try:
        if isinstance(input_size, (int, str)):
            return parse_size(input_size)
        h, w = (int(v) for v in input_size)
        return parse_size(f"{h}x{w}")
    except (TypeError, ValueError, InputError):
        raise InputError(f"Input size {input_size!r} is not N or HxW with positive N, H, W.", "Example: --input-size 224.") from None


def _provider_unavailable(provider: str) -> str | None:
    try:
        check_available(provider)
        return None
    except ProviderUnavailableError as exc:
        return exc.message


def _torch_unavailable(provider: str) -> str | None:
    device = TORCH_DEVICES[provider]
    if device == "cuda" and not torch.cuda.is_available():
        return f"PyTorch {torch.__version__} here cannot use CUDA (a CPU-only build, or no NVIDIA GPU or driver)."
    return None


def _reference_outputs(model: nn.Module, inputs: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    refs = {}
    with torch.inference_mode():
        for b, x in inputs.items():
            try:
                refs[b] = model(torch.from_numpy(x)).float().numpy()
            except RuntimeError as exc:
                raise InputError(
                    f"The network does not run on an input of shape {tuple(x.shape)}: {first_line(exc)}.",
                    "Choose an --input-size the network accepts (e.g. 224, or the size it was trained at).",
                ) from None
    return refs


def bench(
    source: nn.Module | LoadedModel | str | os.PathLike,
    providers: str | Sequence[str] = ("cpu",),
    batches: Sequence[int] = (1,),
    input_size: int | tuple[int, int] | None = None,
    threads: int | None = None,
    warmup: int = 10,
    runs: int | None = 100,
    duration: float | None = None,
    cuda_graph: bool = False,
    naive_exporter: str = "auto",
    progress: Progress | None = None,
    target: str | None = None,
) -> BenchResult:
    """Time every deployment option of ``source`` per provider and batch size, interleaved.

    ``source`` is a network (or :class:`LoadedModel`) with DCD layers: all five rows; or a path
    to an ONNX file: its one row. ``input_size`` defaults to 224 for a network and to the size
    the ONNX file was exported for. ``threads`` (default: PyTorch's default thread count) is used
    for PyTorch and for ONNX Runtime's intra-op pool alike. ``target`` is the cost model the
    ``dcd-deploy`` row is exported with (default: 'cuda' when a GPU provider is requested, else
    'cpu'). Rows that cannot run here are
    reported with their reason, never raised; see :meth:`BenchResult.raise_if_nothing_measured`.
    """

    batches = list(dict.fromkeys(int(b) for b in batches))
    if not batches or any(b < 1 for b in batches):
        raise InputError(f"Batch sizes {batches} must be positive integers.", "Example: --batch 1,8.")
    if naive_exporter not in NAIVE_EXPORTERS:
        raise InputError(f"Unknown naive exporter {naive_exporter!r}.", f"Choose one of: {', '.join(NAIVE_EXPORTERS)}.")
    if warmup < 0:
        raise InputError(f"--warmup {warmup} is negative.", "Use 0 or more warm-up rounds.")
    if runs is not None and runs < 1:
        raise InputError(f"--runs {runs} must be at least 1.", "Example: --runs 100.")
    if duration is not None and duration <= 0:
        raise InputError(f"--duration {duration} must be positive.", "Example: --duration 30.")
    if runs is not None and duration is not None:
        raise InputError("Both --runs and --duration were given.", "Give one: a number of rounds or seconds to measure.")
    if runs is None and duration is None:
        runs = 100
    provider_names = parse_providers(providers)
    if not provider_names:
        raise InputError("No execution provider was given.", "Example: --providers cpu,cuda.")
    if target is None:
        target = "cuda" if any(p in GPU_PROVIDERS for p in provider_names) else "cpu"
    if target not in TARGETS:
        raise InputError(f"Unknown target {target!r}.", f"Choose one of: {', '.join(TARGETS)}.")
    threads = int(threads) if threads else torch.get_num_threads()
    if threads < 1:
        raise InputError(f"--threads {threads} must be at least 1.", "Omit it to use PyTorch's default.")

    with torch_threads(threads, inference=False):  # preparation (lowering, exports) uses the same threads
        return _bench(source, provider_names, batches, input_size, threads, warmup, runs, duration, cuda_graph,
                      naive_exporter, progress, target)


def _bench(source: nn.Module | LoadedModel | str | os.PathLike, provider_names: list[str], batches: list[int],
           input_size: int | str | Sequence[int] | None, threads: int, warmup: int, runs: int | None,
           duration: float | None, cuda_graph: bool, naive_exporter: str, progress: Progress | None,
           target: str = "cpu") -> BenchResult:
    from ..sysinfo import machine, versions

    report = progress or (lambda stage, done, total, detail: None)
    notes: list[str] = []
    refs: dict[int, np.ndarray] = {}
    if isinstance(source, (nn.Module, LoadedModel)):
        mode = "checkpoint"
        loaded = source if isinstance(source, LoadedModel) else None
        original = source.model if isinstance(source, LoadedModel) else source
        name = loaded.describe() if loaded else type(original).__name__
        src = os.fspath(loaded.checkpoint.path) if loaded and loaded.checkpoint.path else name
        hw = _hw(input_size, (DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE))
        inputs = _inputs(batches, hw)  # type: ignore[arg-type]
        refs = _reference_outputs(original.eval(), inputs)
        ort_ok = [p for p in provider_names if _provider_unavailable(p) is None]
        torch_ok = [p for p in provider_names if p in TORCH_DEVICES and _torch_unavailable(p) is None]
        prepared = prepare_checkpoint_rows(source, hw, naive_exporter, report,  # type: ignore[arg-type]
                                           onnx_rows=bool(ort_ok), torch_rows=bool(torch_ok), target=target)
    else:
        mode = "onnx"
        proto, row_name = read_onnx_file(source)
        src = os.fspath(source)
        meta = {p.key: p.value for p in proto.metadata_props}
        name = f"{Path(src).name}" + (f" ({meta['dcd_deploy.arch']})" if meta.get("dcd_deploy.arch") else "")
        hw = _hw(input_size, onnx_input_size(source) or (DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE))
        inputs = _inputs(batches, hw)  # type: ignore[arg-type]
        prepared = [Prepared(row_name, onnx=src, seconds=0.0, note="given ONNX file")]
        del proto

    rows: list[BenchRow] = []
    runners: list[tuple[BenchRow, Any]] = []
    devices: dict[str, str] = {}
    torch_cache: dict[int, nn.Module] = {}
    for provider in provider_names:
        short = short_name(provider)
        ort_missing = _provider_unavailable(provider)
        torch_missing = _torch_unavailable(provider) if provider in TORCH_DEVICES else None
        if not ort_missing or (provider in TORCH_DEVICES and not torch_missing and mode == "checkpoint"):
            devices[short] = device_name(provider)
        if cuda_graph and provider not in GPU_PROVIDERS:
            notes.append(f"--cuda-graph has no effect on {short}")
        for batch in batches:
            for prep in prepared:
                is_torch = prep.row in TORCH_ROWS
                if is_torch and provider not in TORCH_DEVICES:
                    continue  # PyTorch eager has no counterpart on this provider
                row = BenchRow(prep.row, short, batch)
                rows.append(row)
                missing = torch_missing if is_torch else ort_missing
                if missing:
                    row.status, row.reason = "skipped", missing
                elif prep.failure:
                    row.status, row.reason = "failed", prep.failure
                elif is_torch:
                    runners.append((row, TorchRunner(f"{short} b{batch} {prep.row}", prep.model, inputs[batch],  # type: ignore[arg-type]
                                                     TORCH_DEVICES[provider], torch_cache)))
                else:
                    runners.append((row, OrtRunner(f"{short} b{batch} {prep.row}", prep.onnx, inputs[batch],  # type: ignore[arg-type]
                                                   provider, threads, cuda_graph)))

    try:
        measurements = measure_interleaved([r for _, r in runners], warmup=warmup, runs=runs, duration=duration,
                                           threads=threads, progress=report)
        for (row, runner), m in zip(runners, measurements):
            row.setup_s, row.cold_s, row.stats = m.setup_s, m.cold_s, m.stats
            if m.skipped:
                row.status = "skipped" if getattr(runner, "provider_failed", False) else "failed"
                row.reason = m.skipped
            elif refs and row.row != "static":
                out = runner.output()
                if out is not None:
                    row.max_rel_err = _relative_error(out, refs[row.batch])
    finally:
        for _, runner in runners:
            runner.close()
        torch_cache.clear()

    for row in rows:
        rtol = REDUCED_PRECISION_RTOL if provider_name(row.provider) in GPU_PROVIDERS else AGREEMENT_RTOL
        if row.max_rel_err is not None and not row.max_rel_err <= rtol:
            notes.append(f"{row.provider} batch {row.batch} {row.row}: output differs from the original network "
                         f"(max relative error {row.max_rel_err:.1e}); its time is not a like-for-like option")
    _ratios(rows)
    for prep in prepared:
        prep.model = prep.onnx = None  # the result keeps what was found, not the networks and graphs
    return BenchResult(
        source=src, mode=mode, model=name, input_size=tuple(hw), providers=[short_name(p) for p in provider_names],  # type: ignore[arg-type]
        batches=batches, threads=threads, warmup=warmup, runs=runs, duration=duration, cuda_graph=cuda_graph,
        rows=rows, prepared=prepared, devices=devices, versions=versions(), machine=machine(), notes=notes,
    )


def _ratios(rows: list[BenchRow]) -> None:
    """``vs_static`` and ``vs_eager``: median latency over the static / eager row's median, same provider and batch."""
    by_key: dict[tuple[str, int, str], BenchRow] = {(r.provider, r.batch, r.row): r for r in rows}
    for row in rows:
        if not row.stats:
            continue
        for attr, ref_name in (("vs_static", "static"), ("vs_eager", "eager")):
            ref = by_key.get((row.provider, row.batch, ref_name))
            if ref is not None and ref.stats is not None and ref.stats.p50 > 0:
                setattr(row, attr, row.stats.p50 / ref.stats.p50)


__all__ = [
    "NAIVE_EXPORTERS",
    "ROWS",
    "BenchResult",
    "BenchRow",
    "NothingMeasured",
    "Prepared",
    "bench",
    "naive_export",
    "onnx_input_size",
    "prepare_checkpoint_rows",
]
