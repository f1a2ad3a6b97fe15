"""`reprotrain lock`: lock envs/ for every platform, check staleness, show a lock (no torch import)."""

from __future__ import annotations

import sys

import click

from reprotrain.cli import cell, emit_json, quote


@click.group("lock", invoke_without_command=True)
@click.option("-f", "--file", "env_files", multiple=True, type=click.Path(dir_okay=False),
              help="Environment file to lock (repeatable) [default with --check: the lock's own sources; "
                   "otherwise environment.yml].")
@click.option("-p", "--platform", "platforms", multiple=True,
              help="Platform to lock (repeatable) [default: the files' platforms: key, else linux-64, "
                   "osx-arm64, osx-64 and win-64 (conda-lock's set); with --check: the lock's platforms].")
@click.option("--lockfile", default="conda-lock.yml", show_default=True, type=click.Path(dir_okay=False),
              help="The unified conda-lock.yml to write or check.")
@click.option("--check", is_flag=True, help="Do not solve: exit 0 when the lock's content hashes match the "
              "inputs for every platform, 1 when stale, 2 on bad input. Offline.")
@click.option("--solver", type=click.Choice(["auto", "conda-lock", "rattler"]), default="auto", show_default=True,
              help="auto: conda-lock when a conda/mamba/micromamba executable is installed (never "
                   "downloaded), else py-rattler.")
@click.option("--virtual-package-spec", type=click.Path(dir_okay=False), default=None,
              help="conda-lock virtual-packages.yml [default: conda-lock's defaults].")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def lock_group(ctx, env_files, platforms, lockfile, check, solver, virtual_package_spec, as_json) -> None:
    """Lock environment files into one conda-lock.yml for every platform, or --check it.

    \b
    Exit codes: 0 written / fresh, 1 stale lock or no solution, 2 bad input
    (unreadable environment or lock file, pip section without a conda executable).
    """
    if ctx.invoked_subcommand is not None:
        return
    if check:
        from reprotrain.envlock.staleness import check as check_lock

        result = check_lock(lockfile, env_files or None, platforms or None, virtual_package_spec)
        if as_json:
            emit_json(result)
        else:
            for platform, entry in result["platforms"].items():
                click.echo(quote(f"{platform}: {entry['status']}"))
                for change in entry["changes"]:
                    click.echo(quote(f"  {change}"))
            stale = [p for p, e in result["platforms"].items() if e["status"] != "fresh"]
            click.echo(quote(f"{lockfile}: " + (f"STALE for {', '.join(stale)}" if stale else "up to date")))
        sys.exit(1 if result["stale"] else 0)
    from reprotrain.envlock.solve import lock as lock_environment

    result = lock_environment(env_files or ["environment.yml"], platforms or None, lockfile, solver,
                              virtual_package_spec)
    if as_json:
        emit_json(result)
    else:
        counts = ", ".join(f"{p} {n}" for p, n in result["packages"].items())
        click.echo(quote(f"{result['lockfile']}: locked with {result['solver']} ({counts} packages)"))


@lock_group.command("show")
@click.argument("lockfile", type=click.Path(dir_okay=False))
@click.option("--platform", default=None, help="Only this platform.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def lock_show(lockfile, platform, as_json) -> None:
    """Platforms, package counts and the Python / PyTorch / CUDA / cuDNN LOCKFILE pins."""
    from reprotrain.envlock.lockfile import load_lock, summarize

    summary = summarize(load_lock(lockfile), lockfile, platform)
    if as_json:
        emit_json(summary)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=cell(f"{lockfile}  (channels: {', '.join(summary['channels']) or '-'})"), title_justify="left")
    for column in ("platform", "conda", "pip", "python", "pytorch", "variant", "CUDA", "cuDNN"):
        table.add_column(column, justify="right" if column in ("conda", "pip") else "left")
    for name, entry in summary["per_platform"].items():
        torch = entry["torch"] and (entry["torch"] + (" (pip)" if entry["torch_manager"] == "pip" else ""))
        table.add_row(*(cell(value) for value in (
            name, entry["conda_packages"], entry["pip_packages"], entry["python"], torch or "-", entry["torch_variant"],
            entry["cuda"], entry["cudnn"])))
    Console(width=max(100, Console().width), highlight=False).print(table)
    if len(summary["categories"]) > 1:
        click.echo(quote(f"categories: {', '.join(summary['categories'])}"))
