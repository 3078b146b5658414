"""Localise a parity failure: the first DCD layer whose output diverges in ONNX Runtime.

The reference is the LOWERED PyTorch model (what the exporter traced), so the comparison is
between two computations of the same graph:

1. the original network is lowered with :func:`dcd_deploy.lowering.lower_model`; hooks on every
   lowered DCD layer record its input and output on the localisation samples, in execution order;
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
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from .parity import DEFAULT_TOLERANCES, OnnxFile

LOCALIZE_SAMPLES = 4
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


@dataclasses.dataclass
class LayerCheck:
    """One lowered DCD layer: how far ONNX Runtime's closest tensors are from PyTorch's."""

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

    def render(self) -> str:
        from ..runtime.session import short_name

        lines = [(f"localisation on {short_name(self.provider)} (samples {', '.join(map(str, self.samples))}; "
                  f"lowered PyTorch vs ONNX Runtime per DCD layer, threshold {self.threshold:.0e} of max|torch|):")]
        if self.first is not None:
            f = self.first
            lines.append(f"  first diverging DCD layer: {f.path}" + (f" ({f.summary})" if f.summary else ""))
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
    from onnx import numpy_helper

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


def localize(onnx_file: OnnxFile, original: nn.Module, data: np.ndarray, order: list[int], provider: str,
             provider_options: dict[str, Any], precision: str, reference_dtype: str = "float32") -> Localization:
    """Find the first lowered DCD layer whose output differs between PyTorch and ``provider``."""
    from ..lowering import lower_model, relative_error
    from ..runtime.session import create_session

    spec = onnx_file.spec
    count = spec.static_batch or min(LOCALIZE_SAMPLES, len(order))
    picked = [order[i % len(order)] for i in range(count)]
    x_np = np.ascontiguousarray(data[picked])
    dtype = torch.float64 if reference_dtype == "float64" else torch.float32
    x = torch.from_numpy(x_np).to(dtype)
    threshold = DEFAULT_TOLERANCES.get(precision, DEFAULT_TOLERANCES["float32"])[1]
    dynamic_size = onnx_file.metadata.get("dcd_deploy.dynamic_size") == "true"

    if any(i.data_location == onnx.TensorProto.EXTERNAL for i in onnx_file.proto.graph.initializer):
        from ..errors import InputError

        raise InputError(f"{onnx_file.path} keeps its weights in external data files; --localize needs them inside the "
                         "ONNX file.", "Re-save it with onnx.save(model, path, save_as_external_data=False) to localise.")
    original = original.eval()
    lowered, report = lower_model(original, x[:1].float(), dynamic_size=dynamic_size)
    original_run = original
    if dtype == torch.float64:
        lowered, original_run = lowered.double(), copy.deepcopy(original).double()
    paths = [layer.path for layer in report.lowered]
    calls, lowered_out = _record(lowered, paths, x)
    with torch.no_grad():
        original_out = original_run(x)
    original_out = original_out[0] if isinstance(original_out, (tuple, list)) else original_out
    lowered_vs_original = relative_error(torch.from_numpy(lowered_out), original_out.double())

    sizes = {arr.size // count for _, a, b in calls for arr in (a, b)}
    probe, _ = _probe_model(onnx_file.proto, sizes)
    notes: list[str] = []
    session = create_session(probe.SerializeToString(), provider, provider_options=provider_options,
                             dynamic_shapes=spec.dynamic)
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {spec.name: x_np.astype(spec.dtype)})
    tensors = {n: np.asarray(v) for n, v in zip(names, values)}
    tensors.setdefault(spec.name, x_np)
    final_name = onnx_file.proto.graph.output[0].name
    probe_output_error = _error(tensors[final_name], lowered_out, float(np.abs(lowered_out).max()))

    matcher = _Matcher({n: v for n, v in tensors.items()})
    info = {layer.path: layer for layer in report.lowered}
    layers: list[LayerCheck] = []
    seen = set()
    for path, inp, out in calls:
        if path in seen:  # a layer called twice: keep its first call
            continue
        seen.add(path)
        in_name, in_err = matcher.best(inp)
        out_name, out_err = matcher.best(out)
        layer = info.get(path)
        layers.append(LayerCheck(path, layer.kind if layer else None, layer.info.summary() if layer and layer.info else None,
                                 in_err, out_err, in_name, out_name))

    first = next((layer for layer in layers if layer.output_error is None or layer.output_error > threshold), None)
    previous = None
    weight_diffs: list[dict[str, Any]] = []
    if first is not None:
        idx = layers.index(first)
        previous = layers[idx - 1] if idx > 0 else None
        after = f"after {previous.path}, whose output still matched" if previous else "between the network input and this layer"
        if first.output_error is None:
            verdict = (f"no tensor of the size of {first.path}'s output exists in the ONNX graph, so the graph does not "
                       "compute this layer as exported by dcd-deploy.")
        elif first.input_error is not None and first.input_error > threshold:
            verdict = (f"the input of {first.path} already differs ({_fmt(first.input_error)}): the divergence starts in "
                       f"the static (non-DCD) ops {after}.")
        else:
            verdict = (f"{first.path} receives the same input but computes a different output: the layer itself "
                       "diverges in ONNX Runtime.")
        weight_diffs = _weight_diffs(onnx_file.proto, lowered.get_submodule(first.path), first.path)
        if weight_diffs:
            verdict += (" Its weights in the ONNX file differ from the checkpoint's: the file was not exported from this "
                        "checkpoint, or was modified since.")
    elif probe_output_error > threshold:
        last = layers[-1].path if layers else "the network input"
        verdict = f"every DCD layer matches within {threshold:.0e}; the divergence is in the ops after {last}."
    else:
        verdict = (f"every DCD layer and the final output match within {threshold:.0e} in this run; the failure comes "
                   "from small differences that add up, or does not reproduce when intermediate tensors are exposed "
                   "(ONNX Runtime then fuses fewer ops).")
    changed = [path for path in paths if _weight_diffs(onnx_file.proto, lowered.get_submodule(path), path)]
    if changed:
        notes.append(f"the ONNX weights of {len(changed)} of {len(paths)} DCD layers differ from the checkpoint's "
                     f"({', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''})")
    if lowered_vs_original > threshold:
        notes.append(f"the lowered PyTorch model itself differs from the original by {_fmt(lowered_vs_original)} "
                     "(a lowering problem, not an ONNX Runtime one)")
    if not report:
        notes.append("some dynamic layers were not lowered: " + report.summary())
    return Localization(provider, picked, threshold, layers, first, previous, weight_diffs, lowered_vs_original,
                        probe_output_error, verdict, notes)
