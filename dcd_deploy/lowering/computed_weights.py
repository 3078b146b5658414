"""Find convolutions whose weight is computed from the input, whatever module computes it.

The families recognise dynamic layers by their structure (``families/``); a layer of another
structure (a hypernetwork that generates its kernel with a Linear, say) is invisible to them, and
torch.onnx then fails deep inside the exporter ("kernel of unknown shape"). This scan finds such
layers by what they compute instead: one forward pass in which the input requires a gradient and
no parameter does, so a convolution's ``weight`` requires a gradient exactly when it depends on
the input. Each such call is attributed to the innermost module running it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

_CONVS = {F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
          torch.conv1d, torch.conv2d, torch.conv3d}

REASON = ("{name} computes its convolution weight from the input (a per-sample kernel), but matches no "
          "supported family (DCD, CondConv, DyConv, ODConv) as published, nor the batch-folded grouped convolution")


class _Recorder(TorchFunctionMode):
    """Records the module path running each convolution whose weight requires a gradient."""

    def __init__(self, stack: list[str]):
        super().__init__()
        self.stack, self.found = stack, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _CONVS:
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            if isinstance(weight, torch.Tensor) and weight.requires_grad and self.stack:
                self.found.append(self.stack[-1])
        return func(*args, **kwargs)


def _within(path: str, roots: Iterable[str]) -> bool:
    return any(path == r or path.startswith(r + ".") or r == "" for r in roots)


def computed_weight_modules(model: nn.Module, example: torch.Tensor, known: Iterable[str] = ()) -> dict[str, str]:
    """Path -> reason of each module that runs a convolution with an input-dependent weight, in call order.

    Modules at or under a path of ``known`` (the layers the families already found) are left out.
    Best effort: a network this pass cannot run (in-place ops on the input, say) gives ``[]``.
    """
    known = list(known)
    stack: list[str] = []

    def enter(_m: nn.Module, _args: object, path: str) -> None:
        stack.append(path)

    def leave(_m: nn.Module, _args: object, _out: object) -> None:
        stack.pop()  # returns None: a forward hook's return value would replace the output

    handles = []
    for path, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(lambda m, a, path=path: enter(m, a, path)))
        handles.append(module.register_forward_hook(leave))
    params = [(p, p.requires_grad) for p in model.parameters()]
    recorder, training = _Recorder(stack), model.training
    try:
        model.eval()
        for p, _ in params:
            p.requires_grad_(False)
        x = example.detach().clone().requires_grad_(True) * 1.0  # not a leaf: in-place ops stay allowed
        with torch.enable_grad(), recorder:
            model(x)
    except Exception:  # noqa: BLE001 - a best-effort scan; the exporter reports what it cannot do
        return []
    finally:
        for h in handles:
            h.remove()
        for p, flag in params:
            p.requires_grad_(flag)
        model.train(training)
    found: dict[str, str] = {}
    for path in recorder.found:
        if path not in found and not _within(path, known):
            found[path] = REASON.format(name=type(model.get_submodule(path)).__name__)
    return found
