"""Helpers for users' own test suites.

    from dcd_deploy.testing import assert_parity

    def test_deployed_model_matches_training():
        assert_parity("model.onnx", "checkpoint.pth", inputs="samples.npz")

``assert_parity`` runs the same comparison as ``dcd-deploy parity`` and raises
``AssertionError`` whose message is the rendered table, so a failing test shows every metric.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from .compare.parity import ParityResult, check_parity
from .errors import ProviderUnavailableError
from .load.model import LoadedModel


def assert_parity(onnx_path: str | os.PathLike, checkpoint_or_model: str | os.PathLike | LoadedModel | nn.Module,
                  skip_unavailable: bool = False, **options: Any) -> ParityResult:
    """Assert that ``onnx_path`` computes what ``checkpoint_or_model`` computes; returns the result.

    ``options`` are those of :func:`dcd_deploy.check_parity` (``providers``, ``inputs``,
    ``samples``, ``atol``, ``rtol``, ``reference_dtype``, ``load_options``, ...). With
    ``skip_unavailable=True`` a missing execution provider skips the pytest test instead of
    raising :class:`ProviderUnavailableError`. Unusable inputs raise
    :class:`dcd_deploy.errors.InputError`, never a silent pass.
    """
    try:
        result = check_parity(onnx_path, checkpoint_or_model, **options)
    except ProviderUnavailableError as exc:
        if not skip_unavailable:
            raise
        import pytest

        pytest.skip(exc.message)
    if not result:
        raise AssertionError("ONNX Runtime does not match the original PyTorch model.\n\n" + result.render())
    return result
