"""``dcd-deploy archs``: the registered architectures and their options (read without importing torch)."""

from __future__ import annotations

import json

import click

from ..options import reports_user_errors


@click.command("archs")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@reports_user_errors
def command(as_json: bool) -> None:
    """List the registered DCD architectures (usable as --arch) with their options and defaults."""
    from dcd_deploy.zoo.catalog import catalog, natural_key

    entries = [catalog()[name] for name in sorted(catalog(), key=natural_key)]
    if as_json:
        archs = [{"name": e.name, "family": e.family, "options": dict(e.defaults)} for e in entries]
        click.echo(json.dumps({"archs": archs}, indent=2))
        return
    width = max(len(e.name) for e in entries)
    click.echo(f"{'architecture'.ljust(width)}  options (defaults)")
    for e in entries:
        options = "  ".join(f"--{k.replace('_', '-')} {v}" for k, v in e.defaults.items())
        click.echo(f"{e.name.ljust(width)}  {options}")
