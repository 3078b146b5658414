"""Localise a parity failure: the first dynamic layer whose output diverges in ONNX Runtime.

The reference is the LOWERED PyTorch model (what the exporter traced), so the comparison is
between two computations of the same graph:

1. the original network is lowered with :func:`dcd_deploy.lowering.lower_model`; hooks on every
   lowered dynamic layer (DCD, CondConv, DyConv, ODConv: any family's lowered module) record its
   input (the first argument: the feature map, also for a layer that takes the block's routing as
   a second one) and output on the localisation samples, in execution order;
2. the ONNX file under test is copied with every intermediate floating-point tensor added as a
   graph output (only tensors whose size can be one of those layers' inputs or outputs, when
   shape inference knows it) and run on the failing provider with the same options;
3. each recorded tensor is matched to the ONNX tensor with the same number of elements that is
   closest to it, by ``max|onnx − torch| / max|torch|``: a faithful graph computes that very
   tensor, so the best match differs by rounding noise, while a layer whose best match is far
   off is where ONNX Runtime stops computing what PyTorch computes. Matching by value rather
   than by node name works on any exporter's naming;
4. the first layer over the threshold (the default atol factor of the precision the provider
   computes in) is reported with whether its INPUT already differed (the culprit is then in the
   static ops before it) or not (the layer itself), and its ONNX weights that carry the layer's
   name are compared with the weights lowered from the checkpoint.

The messages call the layers "DCD layers" when every dynamic layer of the network is a DCD one,
"dynamic layers" otherwise.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from ..errors import InputError
from ..lowering import FAMILIES, LayerFamily, LayerInfo, RewriteReport, lower_model, relative_error
from ..lowering.costmodel import TARGETS, CostChooser
from ..runtime.onnxfile import OnnxFile
from ..runtime.session import create_session, short_name
from .tolerance import relative_threshold

LOCALIZE_SAMPLES = 4
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


@dataclasses.dataclass
class LayerCheck:
    """One lowered dynamic layer: how far ONNX Runtime's closest tensors are from PyTorch's."""

    path: str
    kind: str | None
    summary: str | None
    input_error: float | None
    output_error: float | None
    input_tensor: str | None
    output_tensor: str | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Localization:
    provider: str
    samples: list[int]
    threshold: float
    layers: list[LayerCheck]
    first: LayerCheck | None
    previous: LayerCheck | None
    weight_diffs: list[dict[str, Any]]
    lowered_vs_original: float
    probe_output_error: float | None
    verdict: str
    notes: list[str] = dataclasses.field(default_factory=list)
    noun: str = "DCD"  # what the layers are called: "DCD" or "dynamic" (other families present)

    def render(self) -> str:
        lines = [(f"localisation on {short_name(self.provider)} (samples {', '.join(map(str, self.samples))}; "
                  f"lowered PyTorch vs ONNX Runtime per {self.noun} layer, threshold {self.threshold:.0e} of max|torch|):")]
        if self.first is not None:
            f = self.first
            lines.append(f"  first diverging {self.noun} layer: {f.path}" + (f" ({f.summary})" if f.summary else ""))
            lines.append(f"    output error {_fmt(f.output_error)}, input error {_fmt(f.input_error)}")
        lines.append(f"  {self.verdict}")
        for w in self.weight_diffs:
            lines.append(f"    ONNX weight {w['initializer']} differs from the lowered checkpoint weight by "
                         f"{_fmt(w['relative_difference'])} (max |Δ| / max |w|)")
        shown = [layer for layer in self.layers if layer.output_error is not None]
        if shown:
            worst = sorted(shown, key=lambda layer: -(layer.output_error or 0.0))[:3]
            lines.append("  largest layer errors: " + ", ".join(f"{layer.path} {_fmt(layer.output_error)}" for layer in worst))
        for note in self.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider, "samples": self.samples, "threshold": self.threshold,
            "first_diverging_layer": self.first.to_dict() if self.first else None,
            "previous_layer": self.previous.to_dict() if self.previous else None,
            "verdict": self.verdict, "weight_differences": self.weight_diffs,
            "lowered_vs_original_error": self.lowered_vs_original, "probe_output_error": self.probe_output_error,
            "layers": [layer.to_dict() for layer in self.layers], "notes": self.notes,
        }


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else ("non-finite" if not np.isfinite(x) else f"{x:.2e}")


def _error(candidate: np.ndarray, reference: np.ndarray, scale: float) -> float:
    d = np.abs(candidate.astype(np.float64).ravel() - reference.ravel())
    if not np.isfinite(d).all():
        return float("inf")
    m = float(d.max()) if d.size else 0.0
    return m / scale if scale > 0 else m


class _Matcher:
    """Best-matching ONNX tensor for a PyTorch tensor, among tensors with the same element count."""

    def __init__(self, tensors: dict[str, np.ndarray]):
        self.by_size: dict[int, list[tuple[str, np.ndarray]]] = {}
        for name, arr in tensors.items():
            self.by_size.setdefault(arr.size, []).append((name, arr))

    def best(self, reference: np.ndarray) -> tuple[str | None, float | None]:
        ref = reference.astype(np.float64)
        group = self.by_size.get(ref.size, [])
        if not group:
            return None, None
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        # screen on a strided subsample, then measure the closest few on every element
        step = max(1, ref.size // 4096)
        sub = ref.ravel()[::step]
        screened = sorted(group, key=lambda item: _error(item[1].ravel()[::step], sub, scale))[:3]
        errors = [(name, _error(arr, ref, scale)) for name, arr in screened]
        return min(errors, key=lambda item: item[1])


def _record(lowered: nn.Module, paths: list[str], x: torch.Tensor) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], np.ndarray]:
    """(path, input, output) of every lowered layer in execution order, and the model's output."""
    modules = dict(lowered.named_modules())
    calls: list[tuple[str, np.ndarray, np.ndarray]] = []
    handles = []
    for path in paths:
        def hook(_m, args, out, path=path):
            calls.append((path, args[0].detach().double().numpy(), out.detach().double().numpy()))
        handles.append(modules[path].register_forward_hook(hook))
    try:
        with torch.no_grad():
            out = lowered(x)
    finally:
        for h in handles:
            h.remove()
    out = out[0] if isinstance(out, (tuple, list)) else out
    return calls, out.detach().double().numpy()


def _probe_model(proto: onnx.ModelProto, sizes: set[int]) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``proto`` whose intermediate float tensors (of a wanted per-sample size) are outputs."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # noqa: BLE001 - shape inference is best effort
        inferred = proto
    infos = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    existing = {o.name for o in probe.graph.output}
    added = []
    for node in probe.graph.node:
        if node.op_type == "Constant":
            continue
        for name in node.output:
            if not name or name in existing or name not in infos:
                continue
            tensor = infos[name].type.tensor_type
            if tensor.elem_type not in _FLOAT_TYPES:
                continue
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
            if len(dims) > 1 and all(d is not None for d in dims[1:]) and int(np.prod(dims[1:])) not in sizes:
                continue
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, tensor.elem_type, None))
            existing.add(name)
            added.append(name)
    return probe, added


# The merged form keeps the factored form's weights as buffers under other names (see dcd_conv.py).
_CANONICAL = {"w0": "conv.weight", "q_w": "q.weight", "q_b": "q.bias", "p_w": "p.weight", "p_b": "p.bias"}


def _weight_diffs(proto: onnx.ModelProto, lowered_layer: nn.Module, path: str) -> list[dict[str, Any]]:
    """ONNX initializers named ``<path>.<weight>`` that differ from the lowered layer's weights.

    Compared flattened, so the factored and merged forms (same numbers, other shapes and names)
    can be compared with each other whichever form the file and this run lowered to.
    """
    state = {_CANONICAL.get(k, k): v for k, v in lowered_layer.state_dict().items()}
    diffs = []
    for init in proto.graph.initializer:
        if not init.name.startswith(path + ".") or init.data_location == onnx.TensorProto.EXTERNAL:
            continue
        key = init.name[len(path) + 1:]
        key = _CANONICAL.get(key, key)
        if key not in state:
            continue
        onnx_w = numpy_helper.to_array(init).astype(np.float64).ravel()
        torch_w = state[key].detach().double().numpy().ravel()
        if onnx_w.size != torch_w.size:
            continue
        scale = float(np.abs(torch_w).max()) or 1.0
        rel = float(np.abs(onnx_w - torch_w).max() / scale) if np.isfinite(onnx_w).all() else float("inf")
        limit = 1e-3 if init.data_type == onnx.TensorProto.FLOAT16 else 1e-6
        if rel > limit:
            diffs.append({"initializer": init.name, "relative_difference": rel})
    return diffs


@dataclasses.dataclass
class _Traced:
    """The lowered PyTorch model run on the localisation samples, every dynamic layer's input and output recorded."""

    lowered: nn.Module
    report: RewriteReport
    paths: list[str]
    calls: list[tuple[str, np.ndarray, np.ndarray]]
    output: np.ndarray
    vs_original: float  # relative error of the lowered model against the original

    @property
    def noun(self) -> str:
        """What to call the layers: DCD when every lowered layer is a DCD one, else dynamic."""
        return "DCD" if all(FAMILIES[layer.family].paper == "dcd" for layer in self.report.lowered) else "dynamic"


class _FileForms:
    """Each layer's form as the file's rewrite metadata records it, so that the lowered model has the
    file's weights under the file's names; the cost model of the file's target where it says nothing.

    ``lower_model`` asks for the forms in the order of the layers it lowers, the order the metadata
    lists them in; a recorded form is used only for a layer of the recorded kind that offers it.
    """

    def __init__(self, onnx_file: OnnxFile):
        meta = onnx_file.metadata
        try:
            layers = json.loads(meta.get("dcd_deploy.rewrite") or "{}").get("layers", [])
        except (ValueError, AttributeError):
            layers = []
        self.recorded = [(layer.get("kind"), layer.get("form")) for layer in layers
                         if isinstance(layer, dict) and layer.get("lowered") and layer.get("form")]
        target = meta.get("dcd_deploy.target")
        self.fallback = CostChooser(target if target in TARGETS else "cpu")

    def __call__(self, family: LayerFamily, info: LayerInfo, in_shape: tuple[int, ...], layer: nn.Module,
                 static_batch: int | None = None) -> str:
        if self.recorded:
            kind, form = self.recorded.pop(0)
            if kind == info.kind and form in family.forms(info, in_shape, static_batch):
                return form
        return self.fallback(family, info, in_shape, layer, static_batch)


def _trace_lowered(original: nn.Module, x: torch.Tensor, onnx_file: OnnxFile) -> _Traced:
    original = original.eval()
    dynamic_size = onnx_file.metadata.get("dcd_deploy.dynamic_size") == "true"
    lowered, report = lower_model(original, x[:1].float(), choose_form=_FileForms(onnx_file), dynamic_size=dynamic_size)
    original_run = original
    if x.dtype == torch.float64:
        lowered, original_run = lowered.double(), copy.deepcopy(original).double()
    paths = [layer.path for layer in report.lowered]
    calls, lowered_out = _record(lowered, paths, x)
    with torch.no_grad():
        original_out = original_run(x)
    original_out = original_out[0] if isinstance(original_out, (tuple, list)) else original_out
    vs_original = relative_error(torch.from_numpy(lowered_out), original_out.double())
    return _Traced(lowered, report, paths, calls, lowered_out, vs_original)


def _onnx_tensors(onnx_file: OnnxFile, provider: str, provider_options: dict[str, Any], x: np.ndarray,
                  sizes: set[int]) -> dict[str, np.ndarray]:
    """Every intermediate tensor of a wanted per-sample size, computed by ONNX Runtime on ``provider``."""
    spec = onnx_file.spec
    probe, _ = _probe_model(onnx_file.proto, sizes)
    session = create_session(probe.SerializeToString(), provider, provider_options=provider_options,
                             dynamic_shapes=spec.dynamic)
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {spec.name: x.astype(spec.dtype)})
    tensors = {n: np.asarray(v) for n, v in zip(names, values)}
    tensors.setdefault(spec.name, x)
    return tensors


def _layer_checks(traced: _Traced, tensors: dict[str, np.ndarray]) -> list[LayerCheck]:
    """Each lowered layer (its first call) against its closest ONNX tensors."""
    matcher = _Matcher(tensors)
    info = {layer.path: layer for layer in traced.report.lowered}
    layers: list[LayerCheck] = []
    seen = set()
    for path, inp, out in traced.calls:
        if path in seen:  # a layer called twice: keep its first call
            continue
        seen.add(path)
        in_name, in_err = matcher.best(inp)
        out_name, out_err = matcher.best(out)
        layer = info.get(path)
        layers.append(LayerCheck(path, layer.kind if layer else None, layer.info.summary() if layer and layer.info else None,
                                 in_err, out_err, in_name, out_name))
    return layers


def _verdict(layers: list[LayerCheck], first: LayerCheck | None, threshold: float, probe_output_error: float,
             noun: str) -> str:
    """Where the divergence starts, in one sentence."""
    if first is None:
        if probe_output_error > threshold:
            last = layers[-1].path if layers else "the network input"
            return f"every {noun} layer matches within {threshold:.0e}; the divergence is in the ops after {last}."
        return (f"every {noun} layer and the final output match within {threshold:.0e} in this run; the failure comes "
                "from small differences that add up, or does not reproduce when intermediate tensors are exposed "
                "(ONNX Runtime then fuses fewer ops).")
    idx = layers.index(first)
    previous = layers[idx - 1] if idx > 0 else None
    after = f"after {previous.path}, whose output still matched" if previous else "between the network input and this layer"
    if first.output_error is None:
        return (f"no tensor of the size of {first.path}'s output exists in the ONNX graph, so the graph does not "
                "compute this layer as exported by dcd-deploy.")
    if first.input_error is not None and first.input_error > threshold:
        return (f"the input of {first.path} already differs ({_fmt(first.input_error)}): the divergence starts in "
                f"the static (non-{noun}) ops {after}.")
    return f"{first.path} receives the same input but computes a different output: the layer itself diverges in ONNX Runtime."


def _notes(onnx_file: OnnxFile, traced: _Traced, threshold: float) -> list[str]:
    notes: list[str] = []
    changed = [p for p in traced.paths if _weight_diffs(onnx_file.proto, traced.lowered.get_submodule(p), p)]
    if changed:
        notes.append(f"the ONNX weights of {len(changed)} of {len(traced.paths)} {traced.noun} layers differ from the "
                     f"checkpoint's ({', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''})")
    if traced.vs_original > threshold:
        notes.append(f"the lowered PyTorch model itself differs from the original by {_fmt(traced.vs_original)} "
                     "(a lowering problem, not an ONNX Runtime one)")
    if not traced.report:
        notes.append("some dynamic layers were not lowered: " + traced.report.summary())
    return notes


def localize(onnx_file: OnnxFile, original: nn.Module, data: np.ndarray, order: list[int], provider: str,
             provider_options: dict[str, Any], precision: str, reference_dtype: str = "float32") -> Localization:
    """Find the first lowered dynamic layer whose output differs between PyTorch and ``provider``.

    ``order`` lists the samples from the worst to the best; the first few are used (the model's
    fixed batch size of them, when it has one). ``precision`` is what the provider computes in.
    """
    if onnx_file.has_external_data:
        raise InputError(f"{onnx_file.path} keeps its weights in external data files; --localize needs them inside the "
                         "ONNX file.", "Re-save it with onnx.save(model, path, save_as_external_data=False) to localise.")
    count = onnx_file.spec.static_batch or min(LOCALIZE_SAMPLES, len(order))
    picked = [order[i % len(order)] for i in range(count)]
    x_np = np.ascontiguousarray(data[picked])
    x = torch.from_numpy(x_np).to(torch.float64 if reference_dtype == "float64" else torch.float32)
    threshold = relative_threshold(precision)
    traced = _trace_lowered(original, x, onnx_file)
    sizes = {arr.size // count for _, a, b in traced.calls for arr in (a, b)}
    tensors = _onnx_tensors(onnx_file, provider, provider_options, x_np, sizes)
    final = tensors[onnx_file.proto.graph.output[0].name]
    probe_output_error = _error(final, traced.output, float(np.abs(traced.output).max()))
    layers = _layer_checks(traced, tensors)
    first = next((layer for layer in layers if layer.output_error is None or layer.output_error > threshold), None)
    previous = layers[layers.index(first) - 1] if first is not None and layers.index(first) > 0 else None
    verdict = _verdict(layers, first, threshold, probe_output_error, traced.noun)
    weight_diffs: list[dict[str, Any]] = []
    if first is not None:
        weight_diffs = _weight_diffs(onnx_file.proto, traced.lowered.get_submodule(first.path), first.path)
        if weight_diffs:
            verdict += (" Its weights in the ONNX file differ from the checkpoint's: the file was not exported from this "
                        "checkpoint, or was modified since.")
    return Localization(provider, picked, threshold, layers, first, previous, weight_diffs, traced.vs_original,
                        probe_output_error, verdict, _notes(onnx_file, traced, threshold), traced.noun)
