"""``dcd-deploy``: each command parses its options, calls one library function, prints a summary.

Exit codes (all commands): 0 success, 1 parity or accuracy failure, 2 usage or input error, 3 a
requested execution provider is unavailable, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import sys
import warnings

import click

import dcd_deploy

from .commands import archs, bench, evaluate, export, inspect, loadtest, parity, repo, serve


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(dcd_deploy.__version__, prog_name="dcd-deploy")
def cli() -> None:
    """Ship Dynamic Convolution Decomposition (DCD) networks through ONNX.

    Load a trained DCD checkpoint, lower its dynamic layers into static ONNX-friendly subgraphs,
    export ONNX, prove parity on ONNX Runtime, and measure latency.
    """
    warnings.filterwarnings("ignore", category=DeprecationWarning)


for _module in (archs, inspect, export, parity, evaluate, bench, serve, loadtest, repo):
    cli.add_command(_module.command)


def main() -> None:
    """Run the command line; Ctrl-C anywhere (also while click parses) exits 130, not click's 1."""
    from dcd_deploy.errors import Interrupted, watch_interrupts

    watch_interrupts()
    try:
        status = cli.main(prog_name="dcd-deploy", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo(Interrupted().render(), err=True)
        sys.exit(Interrupted.exit_code)
    except click.ClickException as exc:  # usage errors: click's message, exit 2
        exc.show()
        sys.exit(exc.exit_code)
    sys.exit(status if isinstance(status, int) else 0)


if __name__ == "__main__":
    main()
