"""One exception family for user errors.

Anything raised as a :class:`DcdDeployError` is a problem with the user's input or environment:
the command line prints its message as one paragraph and exits with ``exit_code``. Anything else
is a bug in dcd-deploy and surfaces with its traceback.
"""

from __future__ import annotations

import textwrap


class DcdDeployError(Exception):
    """A user-facing error: says what is wrong and how to fix it."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem.strip()
        self.fix = fix.strip() if fix else None
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return f"{self.problem} {self.fix}" if self.fix else self.problem

    def render(self, width: int = 100) -> str:
        return textwrap.fill(f"error: {self.message}", width=width, break_on_hyphens=False)


class CheckpointError(DcdDeployError):
    """The checkpoint file cannot be read or does not hold what was expected."""


class ArchitectureError(DcdDeployError):
    """The architecture (given or inferred) does not fit the checkpoint."""


class InputError(DcdDeployError):
    """Input data or an input shape is unusable."""


class LoweringError(DcdDeployError):
    """A model could not be lowered or exported."""


class ProviderUnavailableError(DcdDeployError):
    """A requested ONNX Runtime execution provider is not available here."""

    exit_code = 3


class ParityFailure(DcdDeployError):
    """ONNX Runtime does not compute what the PyTorch model computes."""

    exit_code = 1
