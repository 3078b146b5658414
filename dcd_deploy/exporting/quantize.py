"""Int8 export stage: static QDQ quantization of the lowered graph with ONNX Runtime's quantizer.

The lowered graph makes the split between bulk and dynamic parts structural. Every node falls in
one role (:func:`node_roles`):

* ``conv``        a dense ``Conv`` with constant weights that is not next to the latent product:
                  the static kernels ``W0`` of factored layers, the stem, the downsample and plain
                  convolutions. This is the bulk of the arithmetic; it is quantized (int8 weights
                  per output channel, activations per tensor, calibrated).
* ``depthwise``   a grouped ``Conv`` (one group per input channel). Float32: ONNX Runtime's int8
                  depthwise kernels are no faster than its float ones on CPU, and on the digits
                  samples they cost accuracy (measured in BENCHMARKS.md).
* ``latent_conv`` the factored form's ``Q`` and ``P`` 1×1 convolutions, recognised as a ``Conv``
                  that feeds (through ``Reshape``) or is fed by a latent ``MatMul``. Thin (L ≈ √C
                  channels), but quantized by default: left in float32 they cost a dequantize /
                  quantize round trip around every factored layer (resnet18_dcd: 0.69× instead of
                  0.42× the float32 static twin), and the digits samples keep their accuracy.
* ``latent``      a ``MatMul`` whose two operands are both computed: ``Φ·z`` (factored form) or
                  ``K(x)·x`` with the per-sample kernel (merged form). Float32; ``dynamic_latent``
                  tries ONNX Runtime's dynamic quantization of these products instead.
* ``pool``        a ``GlobalAveragePool``, or a ``MatMul`` whose LEFT operand is constant: a
                  pooling-matrix product (the 2×2 attention pools of channels-last lowerings,
                  ``lowering/pooling.py``). Quantized with the int8 chain: ONNX Runtime then runs
                  them as ``QLinearGlobalAveragePool`` / ``QLinearMatMul`` on the int8 NHWC map
                  (with the channels-last latent product, resnet50_dcd batch 1 went from 1.18× to
                  0.93× of the float32 static twin, BENCHMARKS.md); 0 and ``1/|bin|`` are exact in int8.
* ``dense``       a ``Gemm``/``MatMul`` with a constant weight: the attention (``fc``, SE, ``Φ`` and
                  ``Λ`` heads, on pooled vectors) and the classifier. Float32: they are a fraction
                  of a percent of the arithmetic (a 2048→1000 classifier is 0.05 % of resnet50_dcd)
                  and the attention is what steers every dynamic kernel.
* ``other``       everything else (the per-sample scale ``Mul``, ``Add``, ``Relu``, ``Clip``, pooling,
                  shape ops). Float32, except the int8 chain below.

The int8 chain (:func:`chain_nodes`; ``chain=None``, the default, turns it on for graphs without
depthwise convolutions): a ``Mul``, ``Add``, ``Relu`` or ``MaxPool`` whose every consumer runs in
int8 (a quantized convolution, a pool, or another chain node) is quantized too, and so are the
``pool`` nodes. ONNX Runtime then runs the layer as ``QLinearConv`` → ``QLinearMul`` (per-sample
scale) → ``QLinearAdd`` (the low-rank branch, then the residual) with the ``Relu`` folded into the
requantization, and the attention pools as ``QLinearGlobalAveragePool`` / ``QLinearMatMul``, all in
its NHWC int8 layout, instead of dequantizing to float32 and transposing back to NCHW around every
convolution. With the channels-last lowering that int8 exports of such networks get
(``LowerOptions.channels_last``: pooling-matrix pools, the latent product on (B, HW, L)) no map
leaves that layout (resnet50_dcd batch 1: 1.19× → 0.94–0.99× of the float32 static twin,
BENCHMARKS.md). Nothing that a float32 convolution also reads is taken into the chain or the pools
(:func:`read_by_float_convs`): ONNX Runtime would quantize that convolution's weights itself, per
tensor (the w025 digits sample with the chain forced on fell to chance that way; an earlier note
blamed the fused pools). ``Clip`` (ReLU6) stays float32: the quantizer's ``Clip`` removal broke the
digits samples. Where depthwise convolutions stay float32 (MobileNetV2) the chain cannot span a
block and gains nothing (measured: 0.3 points of top-1 lost on w035), so ``auto`` leaves it off there.

Quantization is ``onnxruntime.quantization.quantize_static`` in QDQ format (QuantizeLinear /
DequantizeLinear pairs that ONNX Runtime fuses into int8 kernels), activations uint8 with
calibrated ranges (``minmax``, ``entropy`` or ``percentile``), weights int8 symmetric per channel.

The int8 file is checked like an accuracy measurement, not a parity test: see
:mod:`dcd_deploy.exporting.int8check`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx

from ..errors import InputError
from ..runtime.onnxfile import input_spec
from .int8check import (  # noqa: F401 - the int8 self-check, where callers of the int8 stage look for it
    INT8_TOLERANCE,
    Int8Check,
    check_inputs,
    compare_int8,
    cosine_per_sample,
    disagreements,
    run_int8_check,
)
from .loops import sort_nodes

METHODS = ("minmax", "entropy", "percentile")
ROLES = ("conv", "depthwise", "latent_conv", "latent", "pool", "dense", "other")
CALIBRATION_BATCH = 8


def _constants(model: onnx.ModelProto) -> set[str]:
    names = {i.name for i in model.graph.initializer}
    return names | {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}


def node_roles(model: onnx.ModelProto) -> dict[str, str]:
    """Each node's role (one of :data:`ROLES`, see the module docstring) by node name."""
    consts = _constants(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def through_reshape_up(tensor: str) -> onnx.NodeProto | None:
        node = producer.get(tensor)
        while node is not None and node.op_type == "Reshape":
            node = producer.get(node.input[0])
        return node

    def through_reshape_down(tensor: str) -> list[onnx.NodeProto]:
        found = []
        for node in consumers.get(tensor, []):
            found += through_reshape_down(node.output[0]) if node.op_type == "Reshape" else [node]
        return found

    roles: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and not any(i in consts for i in node.input):
            roles[node.name] = "latent"
        elif (node.op_type == "MatMul" and node.input[0] in consts and node.input[1] not in consts
              or node.op_type == "GlobalAveragePool"):
            roles[node.name] = "pool"
        elif node.op_type in ("Gemm", "MatMul"):
            roles[node.name] = "dense"
        elif node.op_type == "Conv":
            groups = next((a.i for a in node.attribute if a.name == "group"), 1)
            roles[node.name] = "depthwise" if groups > 1 else "conv"
        else:
            roles[node.name] = "other"
    for node in model.graph.node:
        if roles[node.name] != "latent":
            continue
        # factored form: Φ (a reshaped Gemm output) times z = Q(x); the product feeds P
        if (through_reshape_up(node.input[0]) or node).op_type != "Gemm":
            continue
        q = through_reshape_up(node.input[1])
        if q is not None and q.op_type == "Conv":
            roles[q.name] = "latent_conv"
        for p in through_reshape_down(node.output[0]):
            if p.op_type == "Conv":
                roles[p.name] = "latent_conv"
    return roles


CHAIN_OPS = ("Mul", "Add", "Relu", "MaxPool")
_FLOAT_READERS = ("AveragePool", "GlobalAveragePool")  # attention pools: a dequantized copy is all they need


def chain_nodes(model: onnx.ModelProto, roles: dict[str, str], quantized: set[str]) -> list[str]:
    """Names of the :data:`CHAIN_OPS` nodes whose every consumer runs in int8 (see the module docstring).

    ``quantized`` holds the roles quantized anyway. The set is the largest one that is closed: a
    candidate is dropped while one of its consumers is neither an int8 node, a kept candidate nor an
    attention pool, or its output is a graph output. A candidate that reads a tensor a float32
    convolution also reads is never taken (see :func:`read_by_float_convs`).
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in model.graph.output}
    int8 = {name for name, role in roles.items() if role in quantized}
    int8 |= _layout_readers(model, consumers, int8)
    float_read = read_by_float_convs(model, int8)
    kept = {n.name for n in model.graph.node if n.op_type in CHAIN_OPS and float_read.isdisjoint(n.input)}
    changed = True
    while changed:
        changed = False
        for node in model.graph.node:
            if node.name in kept and (node.output[0] in outputs or not all(
                    c.name in int8 or c.name in kept or c.op_type in _FLOAT_READERS for c in consumers.get(node.output[0], []))):
                kept.discard(node.name)
                changed = True
    return [n.name for n in model.graph.node if n.name in kept]


def read_by_float_convs(model: onnx.ModelProto, int8: set[str]) -> set[str]:
    """Tensors that a ``Conv`` left in float32 reads. Quantizing another reader of such a tensor puts a
    DequantizeLinear in front of that convolution, and ONNX Runtime (1.32, from its basic optimization
    level) then quantizes the float convolution's weights itself, per tensor: on the w025 digits
    sample (depthwise convolutions with folded BatchNorms) the top-1 fell to chance. So neither the
    chain nor the pools extend quantization to them."""
    return {n.input[0] for n in model.graph.node if n.op_type == "Conv" and n.name not in int8}


def _layout_readers(model: onnx.ModelProto, consumers: dict[str, list[onnx.NodeProto]], int8: set[str]) -> set[str]:
    """``Transpose``/``Reshape`` nodes that only lead (through more of them) to int8 nodes: the
    channels-last reads of a pooling matrix, which ONNX Runtime folds into its NHWC layout."""
    found: set[str] = set()

    def leads_to_int8(node: onnx.NodeProto) -> bool:
        users = consumers.get(node.output[0], [])
        return bool(users) and all(u.name in int8 or (u.op_type in ("Transpose", "Reshape") and leads_to_int8(u)) for u in users)

    for node in model.graph.node:
        if node.op_type in ("Transpose", "Reshape") and leads_to_int8(node):
            found.add(node.name)
    return found


def _named(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every node named (the quantizer selects nodes by name)."""
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)
    return model


class _Reader:
    """Feeds calibration samples to the quantizer ``batch`` at a time, with a progress bar."""

    def __init__(self, data: np.ndarray, input_name: str, batch: int, static_batch: int | None, progress: bool):
        from tqdm import tqdm

        self.data, self.input_name = data, input_name
        self.batch = static_batch or batch
        self.static = static_batch is not None
        starts = range(0, len(data), self.batch)
        self.bar = tqdm(total=len(data), desc="calibrating", unit="img", disable=not progress, leave=False)
        self._it = iter(starts)

    def get_next(self) -> dict[str, np.ndarray] | None:
        start = next(self._it, None)
        if start is None:
            self.bar.close()
            return None
        x = self.data[start:start + self.batch]
        self.bar.update(len(x))
        if self.static and len(x) < self.batch:  # a fixed batch axis: fill with the first samples
            x = np.concatenate([x, np.resize(self.data, (self.batch - len(x), *self.data.shape[1:]))])
        return {self.input_name: np.ascontiguousarray(x, dtype=np.float32)}

    def rewind(self) -> None:
        self._it = iter(range(0, len(self.data), self.batch))

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self.get_next, None)


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """The quantizer logs advice (pre-processing, opset) on the root logger: keep it off the terminal."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def check_calibration(data: np.ndarray, spec_model: onnx.ModelProto, min_samples: int = 1) -> np.ndarray:
    """The calibration array checked against the model's input (shape, dtype, finite values)."""
    from ..runtime.inputs import check_shape

    data = check_shape(np.asarray(data), input_spec(spec_model), "The calibration data")
    if len(data) < min_samples:
        raise InputError(f"The calibration data holds {len(data)} samples; int8 calibration needs at least {min_samples}.",
                         "Give more representative samples (a few dozen to a few hundred training images).")
    return np.ascontiguousarray(data, dtype=np.float32)


def quantize_int8(model: onnx.ModelProto, calibration: np.ndarray, method: str = "minmax", *,
                  latent_convs: bool = True, dynamic_latent: bool = False, activation: str = "uint8",
                  batch: int = CALIBRATION_BATCH, progress: bool = False, chain: bool | None = None) -> onnx.ModelProto:
    """A QDQ int8 copy of ``model`` (a float32 lowered graph) calibrated on ``calibration`` (N×C×H×W).

    Quantizes the ``conv`` and (unless ``latent_convs`` is false) ``latent_conv`` roles, and with
    ``chain`` the elementwise nodes between them (:func:`chain_nodes`; ``None``: when the graph has no
    depthwise convolution); see the module docstring.
    ``dynamic_latent`` additionally quantizes the latent MatMuls dynamically (ranges computed per
    run). The result's metadata says ``dcd_deploy.precision=int8`` with the method and the number of
    calibration samples.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    if method not in METHODS:
        raise InputError(f"Unknown calibration method {method!r}.", f"Choose one of: {', '.join(METHODS)}.")
    if activation not in ("uint8", "int8"):
        raise InputError(f"Unknown activation type {activation!r}.", "Choose uint8 or int8.")
    model = _named(onnx.ModelProto.FromString(model.SerializeToString()))
    data = check_calibration(calibration, model)
    roles = node_roles(model)
    wanted = {"conv", "latent_conv"} if latent_convs else {"conv"}
    nodes = [name for name, role in roles.items() if role in wanted]
    if chain is None:
        chain = "depthwise" not in roles.values()
    if chain:  # the pools read the int8 maps the chain keeps (channels-last lowerings have them)
        wanted |= {"pool"}
        float_read = read_by_float_convs(model, set(nodes))
        nodes += [n.name for n in model.graph.node if roles[n.name] == "pool" and float_read.isdisjoint(n.input)]
    chained = chain_nodes(model, roles, wanted) if chain else []
    by_name = {n.name: n.op_type for n in model.graph.node}
    op_types = sorted({"Conv", *(by_name[name] for name in nodes + chained)})
    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    spec = input_spec(model)
    reader = _Reader(data, spec.name, batch, spec.static_batch, progress)
    act = QuantType.QUInt8 if activation == "uint8" else QuantType.QInt8
    with tempfile.TemporaryDirectory(prefix="dcd-deploy-int8-") as tmp, _quiet_quantizer(), \
            contextlib.redirect_stdout(io.StringIO()):
        out = Path(tmp) / "int8.onnx"
        quantize_static(model, out, reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=op_types,
                        nodes_to_quantize=nodes + chained, per_channel=True, activation_type=act, weight_type=QuantType.QInt8,
                        calibrate_method=calibrate, extra_options={"WeightSymmetric": True})
        if dynamic_latent:
            latent = [name for name, role in roles.items() if role == "latent"]
            quantize_dynamic(out, out, op_types_to_quantize=["MatMul"], nodes_to_quantize=latent,
                             extra_options={"MatMulConstBOnly": False})
        quantized = onnx.load(os.fspath(out))
    sort_nodes(quantized.graph)  # the quantizer may place a Loop before a tensor its body reads
    _stamp(quantized, model, method, len(data), roles, wanted, activation, dynamic_latent, len(chained))
    return quantized


def _stamp(quantized: onnx.ModelProto, original: onnx.ModelProto, method: str, samples: int, roles: dict[str, str],
           wanted: set[str], activation: str, dynamic_latent: bool, chained: int) -> None:
    meta = {p.key: p.value for p in original.metadata_props}
    counts = {role: sum(1 for r in roles.values() if r == role) for role in ROLES}
    meta.update({
        "dcd_deploy.precision": "int8",
        "dcd_deploy.calibration_method": method,
        "dcd_deploy.calibration_samples": str(samples),
        "dcd_deploy.int8": json.dumps({"format": "QDQ", "weights": "int8 symmetric per channel",
                                       "activations": f"{activation} per tensor", "quantized_roles": sorted(wanted),
                                       "dynamic_latent": dynamic_latent, "nodes_by_role": counts,
                                       "int8_elementwise_nodes": chained}),
    })
    del quantized.metadata_props[:]
    for key, value in meta.items():
        quantized.metadata_props.add(key=key, value=value)
    quantized.producer_name = original.producer_name or quantized.producer_name
    quantized.producer_version = original.producer_version or quantized.producer_version


def describe_roles(roles: dict[str, str], quantized: Sequence[str] = ("conv",)) -> str:
    counts = {role: sum(1 for r in roles.values() if r == role) for role in ROLES}
    kept = ", ".join(f"{counts[r]} {r}" for r in ROLES if r not in quantized and counts[r] and r != "other")
    return f"{sum(counts[r] for r in quantized)} convolutions in int8; float32: {kept}"
