"""Row runners: one model on one runtime and device, ready to be timed by :func:`~.timing.measure_interleaved`.

A runner is set up once (ONNX Runtime session creation, or placing a PyTorch module on its
device), then ``run()`` performs one inference and returns only when its result is ready, and
``output()`` gives the last result as a float32 array for an agreement check.

* :class:`OrtRunner`: one ONNX Runtime session for one provider and batch size. CPU (and other
  non-GPU providers) call ``session.run`` on a NumPy input, with intra-op spinning off so an idle
  session does not keep cores busy while another row is timed. GPU providers (CUDA, TensorRT) use
  IO binding: the input is copied to the device once, input and output are bound once, and each
  run synchronises its outputs; with ``cuda_graph`` a CUDA graph is captured (static shapes).
* :class:`TorchRunner`: PyTorch eager on CPU or CUDA, the input on the device before timing.

A runner that cannot run here raises :class:`~.timing.RowUnavailable` with the reason.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import DcdDeployError, ProviderUnavailableError, summarize_exception
from .session import check_available, create_session
from .timing import RowUnavailable

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
TORCH_DEVICES = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda"}
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def ort_missing(provider: str) -> str | None:
    """Why ONNX Runtime cannot use ``provider`` (full name) here, or None when it can."""
    try:
        check_available(provider)
        return None
    except ProviderUnavailableError as exc:
        return exc.message


def torch_missing(provider: str) -> str | None:
    """Why PyTorch cannot run on ``provider``'s device here, or None when it can (``provider`` in TORCH_DEVICES)."""
    if TORCH_DEVICES[provider] == "cuda" and not torch.cuda.is_available():
        return f"PyTorch {torch.__version__} here cannot use CUDA (a CPU-only build, or no NVIDIA GPU or driver)."
    return None


class TorchRunner:
    """PyTorch eager on CPU or CUDA; the input is on the device before timing starts.

    ``cache`` (shared by the runners of one measurement) holds one device copy per module, so the
    batch sizes of one row share their CUDA weights.
    """

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
            raise RowUnavailable(f"PyTorch failed to run it: {summarize_exception(exc)}") from None

    def output(self) -> np.ndarray | None:
        return None if self.out is None else self.out.float().cpu().numpy()

    def close(self) -> None:
        self.model = self.out = None


class OrtRunner:
    """One ONNX Runtime session for one provider (full name) and batch size.

    ``model`` is a serialized ONNX model or a path to one. ``provider_failed`` is set when the
    provider itself could not start (a skip, not a failure of the model).
    """

    def __init__(self, label: str, model: bytes | str, x: np.ndarray, provider: str, threads: int | None,
                 cuda_graph: bool = False):
        self.label, self.batch = label, x.shape[0]
        self._model, self._x, self.provider, self.threads, self.cuda_graph = model, x, provider, threads, cuda_graph
        self.session: Any = None
        self.binding: Any = None
        self.outputs: list[Any] | None = None
        self.provider_failed = False

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
        x = self._check_input()
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.feed = {self.input_name: x}
        if self.on_gpu:
            self._bind(x)

    def _check_input(self) -> np.ndarray:
        """The input in the session's dtype; RowUnavailable when the model does not take one image batch."""
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise RowUnavailable(f"the model has {len(inputs)} inputs; bench feeds one image tensor (N×3×H×W)")
        spec = inputs[0]
        dtype = ORT_DTYPES.get(spec.type)
        if dtype is None:
            raise RowUnavailable(f"the model input is {spec.type}; bench feeds float images")
        shape = list(spec.shape)
        if len(shape) != self._x.ndim or any(isinstance(d, int) and d != s for d, s in zip(shape, self._x.shape)):
            size = "×".join(map(str, self._x.shape[2:]))  # (a layer timed alone by --tune may take a 1-D map)
            raise RowUnavailable(f"the model input has shape {shape}; a batch of {self._x.shape[0]} images "
                                 f"{size} does not fit it")
        self.input_name = spec.name
        return self._x.astype(dtype, copy=False)

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
            raise RowUnavailable(f"ONNX Runtime failed to run it: {summarize_exception(exc)}") from None

    def output(self) -> np.ndarray | None:
        if self.binding is not None:
            return np.asarray(self.binding.copy_outputs_to_cpu()[0], dtype=np.float32)
        return None if self.outputs is None else np.asarray(self.outputs[0], dtype=np.float32)

    def close(self) -> None:
        self.session = self.binding = self.outputs = None


__all__ = ["GPU_PROVIDERS", "ORT_DTYPES", "TORCH_DEVICES", "OrtRunner", "TorchRunner", "ort_missing", "torch_missing"]
