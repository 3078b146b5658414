"""ONNX Runtime sessions: provider names, availability checks and session options in one place."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import onnxruntime as ort

from ..errors import InputError, ProviderUnavailableError, summarize_exception

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "dml": "DmlExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}
SHORT_NAMES = {v: k for k, v in PROVIDER_ALIASES.items() if k != "trt"}

INSTALL_HINTS = {
    "CUDAExecutionProvider": (
        "Install the GPU build on a machine with an NVIDIA GPU: `pip uninstall -y onnxruntime && pip install "
        "onnxruntime-gpu[cuda,cudnn]` (both provide the same module, so only one may be installed; the extras "
        "bring the CUDA and cuDNN libraries that build was made for)."
    ),
    "TensorrtExecutionProvider": "Install onnxruntime-gpu together with TensorRT on a machine with an NVIDIA GPU.",
}


def provider_name(alias: str) -> str:
    alias = alias.strip()
    return PROVIDER_ALIASES.get(alias.lower(), alias)


def short_name(provider: str) -> str:
    return SHORT_NAMES.get(provider, provider)


def parse_providers(spec: str | Sequence[str]) -> list[str]:
    """``'cpu,cuda'`` (aliases or full names) → full ONNX Runtime names, in order, without repeats.

    Raises :class:`InputError` (a usage error) for an empty list or a name ONNX Runtime does not
    know; whether a known provider is installed here is :func:`check_available`'s question.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = list(dict.fromkeys(provider_name(p) for p in items if p.strip()))
    if not names:
        raise InputError("No execution provider was given.", "Pass e.g. --providers cpu (or cpu,cuda).")
    known = set(PROVIDER_ALIASES.values()) | set(ort.get_all_providers())
    unknown = [n for n in names if n not in known]
    if unknown:
        aliases = ", ".join(a for a in PROVIDER_ALIASES if a != "trt")
        offered = ", ".join(short_name(p) for p in ort.get_available_providers())
        raise InputError(
            f"Unknown execution provider{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}.",
            f"Valid names: {aliases} (trt = tensorrt), or a full ONNX Runtime name such as CUDAExecutionProvider; "
            f"installed here: {offered}.")
    return names


def parse_provider_options(items: Iterable[str]) -> dict[str, dict[str, str]]:
    """``['cuda:use_tf32=0', ...]`` → ``{'CUDAExecutionProvider': {'use_tf32': '0'}}``."""
    options: dict[str, dict[str, str]] = {}
    for item in items:
        prov, sep, rest = item.partition(":")
        key, eq, value = rest.partition("=")
        if not sep or not eq or not prov.strip() or not key.strip():
            raise InputError(f"--provider-option {item!r} is not PROVIDER:KEY=VALUE.",
                             "Write it as e.g. --provider-option cuda:use_tf32=0.")
        options.setdefault(provider_name(prov), {})[key.strip()] = value.strip()
    return options


def check_available(provider: str) -> None:
    available = ort.get_available_providers()
    if provider not in available:
        hint = INSTALL_HINTS.get(provider, f"Install an onnxruntime build that includes {provider}.")
        raise ProviderUnavailableError(
            f"ONNX Runtime execution provider {short_name(provider)!r} ({provider}) is not available here "
            f"(this onnxruntime {ort.__version__} offers: {', '.join(short_name(p) for p in available)}).",
            hint,
        )


def default_provider_options(provider: str, dynamic_shapes: bool) -> dict[str, Any]:
    """Sane defaults: on CUDA, exhaustive cuDNN algorithm search only when shapes are static."""
    if provider == "CUDAExecutionProvider":
        return {
            "device_id": 0,
            "cudnn_conv_algo_search": "HEURISTIC" if dynamic_shapes else "EXHAUSTIVE",
            "do_copy_in_default_stream": True,
        }
    return {}


def session_options(threads: int | None = None, spinning: bool = True, graph_optimization: str = "all",
                    profile_prefix: str | None = None) -> ort.SessionOptions:
    """``spinning=False`` turns intra-op thread spinning off: needed when sessions are interleaved,
    otherwise an idle session's spinning threads steal cores from the one being timed."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[graph_optimization]
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


_PRELOADED: list[bool] = []


def _preload_cuda_libraries() -> None:
    """Load CUDA/cuDNN from the nvidia-* pip packages when onnxruntime-gpu can (``pip install
    onnxruntime-gpu[cuda,cudnn]``); a no-op where the libraries are on the system path already."""
    if _PRELOADED or not hasattr(ort, "preload_dlls"):
        return
    _PRELOADED.append(True)
    import contextlib
    import io

    with contextlib.suppress(Exception), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        ort.preload_dlls()


def create_session(model: str | os.PathLike | bytes, provider: str = "cpu", threads: int | None = None,
                   spinning: bool = True, provider_options: dict[str, Any] | None = None,
                   dynamic_shapes: bool = True, graph_optimization: str = "all",
                   profile_prefix: str | None = None) -> ort.InferenceSession:
    """A session on exactly ``provider`` (CPU as fallback only for ops the provider lacks).

    Raises :class:`ProviderUnavailableError` when the provider is missing or failed to load (ONNX
    Runtime itself would silently fall back to the CPU).
    """
    name = provider_name(provider)
    check_available(name)
    if name in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        _preload_cuda_libraries()
    options = {**default_provider_options(name, dynamic_shapes), **(provider_options or {})}
    providers: list[Any] = [(name, options)] if options else [name]
    if name != "CPUExecutionProvider":
        providers.append("CPUExecutionProvider")
    so = session_options(threads, spinning, graph_optimization, profile_prefix)
    source = model if isinstance(model, bytes) else os.fspath(model)
    try:
        session = ort.InferenceSession(source, sess_options=so, providers=providers)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        text = summarize_exception(exc)
        if name != "CPUExecutionProvider" and ("CUDA" in text or "cuda" in text or "provider" in text.lower()):
            raise ProviderUnavailableError(f"{name} failed to start: {text}.", INSTALL_HINTS.get(name, "")) from None
        raise InputError(f"ONNX Runtime cannot load {source if isinstance(source, str) else 'the model'}: {text}.",
                         "Check that the file is an ONNX model written by `dcd-deploy export` and not truncated.") from None
    if name not in session.get_providers():
        raise ProviderUnavailableError(
            f"{name} is installed but did not load (ONNX Runtime fell back to {session.get_providers()}); "
            "usually the CUDA or cuDNN libraries are missing or do not match this onnxruntime-gpu build.",
            INSTALL_HINTS.get(name, ""),
        )
    return session


def device_name(provider: str) -> str:
    """A readable name of the device a provider runs on."""
    name = provider_name(provider)
    if name == "CPUExecutionProvider":
        from ..sysinfo import cpu_model

        return cpu_model()
    if name in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        try:
            import torch

            if torch.cuda.is_available():
                return torch.cuda.get_device_name(0)
        except Exception:  # noqa: BLE001, S110 - torch without CUDA support: ask nvidia-smi instead
            pass
        from ..sysinfo import nvidia_smi_name

        return nvidia_smi_name() or "NVIDIA GPU (name unknown)"
    return name
