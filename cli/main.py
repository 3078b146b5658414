"""``dcd-deploy``: each command parses its options, calls one library function, prints a summary.

Exit codes (all commands): 0 success, 1 parity failure, 2 usage or input error, 3 a requested
execution provider is unavailable.
"""

from __future__ import annotations

import warnings

import click

import dcd_deploy

from .commands import archs, bench, export, inspect, parity


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(dcd_deploy.__version__, prog_name="dcd-deploy")
def cli() -> None:
    """Ship Dynamic Convolution Decomposition (DCD) networks through ONNX.

    Load a trained DCD checkpoint, lower its dynamic layers into static ONNX-friendly subgraphs,
    export ONNX, prove parity on ONNX Runtime, and measure latency.
    """
    warnings.filterwarnings("ignore", category=DeprecationWarning)


for _module in (archs, inspect, export, parity, bench):
    cli.add_command(_module.command)


def main() -> None:
    cli(prog_name="dcd-deploy")


if __name__ == "__main__":
    main()
