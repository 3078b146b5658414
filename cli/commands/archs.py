"""``dcd-deploy archs``: the registered architectures and their options."""

from __future__ import annotations

import json
import re

import click

from ..options import reports_user_errors


@click.command("archs")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@reports_user_errors
def command(as_json: bool) -> None:
    """List the registered DCD architectures (usable as --arch) with their options and defaults."""
    from dcd_deploy.zoo import get_arch, list_archs

    def natural(name: str) -> list:  # resnet18 before resnet101
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]

    specs = [get_arch(name) for name in sorted(list_archs(), key=natural)]
    if as_json:
        archs = [{"name": s.name, "family": s.family, "options": dict(s.defaults)} for s in specs]
        click.echo(json.dumps({"archs": archs}, indent=2))
        return
    width = max(len(s.name) for s in specs)
    click.echo(f"{'architecture'.ljust(width)}  options (defaults)")
    for s in specs:
        options = "  ".join(f"--{k.replace('_', '-')} {v}" for k, v in s.defaults.items())
        click.echo(f"{s.name.ljust(width)}  {options}")
