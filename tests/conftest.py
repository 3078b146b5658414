"""Fixtures shared by the test modules.

Conventions: networks are randomly initialised and given realistic BatchNorm statistics with
``calibrate_batchnorm`` (outputs finite and non-trivial); forward passes use small inputs;
files go to ``tmp_path`` / ``tmp_path_factory``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner, Result
from torch import nn

from dcd_deploy.zoo import create_model
from dcd_deploy.zoo.calibration import calibrate_batchnorm

TESTS_DIR = Path(__file__).resolve().parent
SAMPLE_MODELS = TESTS_DIR.parent / "sample_models"


def sample_training_module():
    """``sample_models/train.py`` as a module (its ``preprocess`` is what the samples were trained on)."""
    sys.path.insert(0, str(SAMPLE_MODELS))
    try:
        import train
    finally:
        sys.path.remove(str(SAMPLE_MODELS))
    return train

# The test machines are small and shared: several intra-op threads on two busy cores spin against
# each other and make a forward pass 50x slower. Tests that measure speed set their own threads.
torch.set_num_threads(1)

# A small published-style network: the options of sample_models' w035 model (48×48 digits).
SMALL_ARCH = "mobilenetv2_dcd"
SMALL_OPTIONS = {"num_classes": 10, "width_mult": 0.35, "fc_squeeze": 16, "dropout": 0.2}
SMALL_INPUT = 48

# The metadata the reference training script (main.py) stores next to the state dict.
REFERENCE_METADATA = {"epoch": 30, "best_prec1": 71.25}


def build_calibrated(arch: str, input_size: int = 64, seed: int = 0, **options: Any) -> nn.Module:
    """A registered network, randomly initialised (seeded), with calibrated BatchNorms, in eval mode."""
    torch.manual_seed(seed)
    return calibrate_batchnorm(create_model(arch, **options), input_size=input_size, batch_size=4, seed=seed)


def write_checkpoint(model: nn.Module, path: Path, fmt: str = "reference", arch: str | None = None) -> Path:
    """Save ``model`` the way users' files hold it.

    ``reference``: the DCD training script's dict (DataParallel ``module.`` prefixes, arch, epoch,
    best_prec1, optimizer); ``bare`` / ``bare_prefixed``: a state dict without / with prefixes;
    ``model`` / ``state_dict``: a dict holding the state dict under that key; ``module``: the whole
    pickled module.
    """
    sd = model.state_dict()
    prefixed = {f"module.{k}": v for k, v in sd.items()}
    if fmt == "reference":
        obj: Any = {"epoch": REFERENCE_METADATA["epoch"], "arch": arch or "unknown", "state_dict": prefixed,
                    "best_prec1": REFERENCE_METADATA["best_prec1"],
                    "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}}
    elif fmt == "bare":
        obj = sd
    elif fmt == "bare_prefixed":
        obj = prefixed
    elif fmt in ("model", "state_dict"):
        obj = {fmt: sd}
    elif fmt == "module":
        obj = model
    else:
        raise ValueError(f"unknown checkpoint format {fmt!r}")
    torch.save(obj, path)
    return path


@pytest.fixture
def calibrated_model() -> Callable[..., nn.Module]:
    """``calibrated_model(arch, input_size=64, seed=0, **options)``: see :func:`build_calibrated`."""
    return build_calibrated


@pytest.fixture
def save_checkpoint() -> Callable[..., Path]:
    """``save_checkpoint(model, path, fmt='reference', arch=None)``: see :func:`write_checkpoint`."""
    return write_checkpoint


@pytest.fixture
def small_options() -> dict[str, Any]:
    return dict(SMALL_OPTIONS)


@pytest.fixture(scope="session")
def small_model() -> nn.Module:
    """mobilenetv2_dcd with SMALL_OPTIONS, calibrated at 48×48. Shared: do not modify it."""
    return build_calibrated(SMALL_ARCH, SMALL_INPUT, **SMALL_OPTIONS)


@pytest.fixture(scope="session")
def small_checkpoint(small_model: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``small_model`` saved in the reference training format. Shared: do not modify the file."""
    return write_checkpoint(small_model, tmp_path_factory.mktemp("ckpt") / "small_ref.pth", arch=SMALL_ARCH)


@pytest.fixture
def small_input() -> torch.Tensor:
    return torch.randn(2, 3, SMALL_INPUT, SMALL_INPUT, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def custom_models_importable(monkeypatch: pytest.MonkeyPatch) -> str:
    """Make ``tests/custom_models.py`` importable as ``custom_models``; returns its module name."""
    monkeypatch.syspath_prepend(str(TESTS_DIR))
    return "custom_models"


@pytest.fixture
def run_cli() -> Callable[..., Result]:
    """Invoke ``dcd-deploy`` in-process: ``run_cli('inspect', path, '--json')`` -> click Result."""
    from dcd_deploy_cli.main import cli

    def invoke(*args: Any) -> Result:
        return CliRunner().invoke(cli, [str(a) for a in args], prog_name="dcd-deploy")

    return invoke


@pytest.fixture
def expect_user_error() -> Callable[..., str]:
    """``expect_user_error(result, *fragments, code=2)``: see :func:`assert_user_error`."""
    return assert_user_error


def assert_user_error(result: Result, *fragments: str, code: int = 2) -> str:
    """A failed command: exit ``code``, one 'error:' paragraph naming ``fragments``, no traceback."""
    text = result.output
    assert result.exit_code == code, f"exit {result.exit_code}, output:\n{text}\n{result.exception!r}"
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in text
    assert text.lstrip().startswith(("error:", "Usage:")), text
    flat = " ".join(text.split())
    for fragment in fragments:
        assert fragment in flat, f"{fragment!r} not in message:\n{text}"
    return flat


@pytest.fixture
def dcd_deploy_executable() -> str:
    """The installed ``dcd-deploy`` console script next to this interpreter."""
    exe = Path(sys.executable).parent / "dcd-deploy"
    if not exe.exists():
        pytest.skip("dcd-deploy is not installed next to this interpreter")
    return str(exe)
