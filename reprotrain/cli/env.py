"""`reprotrain env`: verify a live environment against the lock, create one from it, export one (no torch import).

conda's conventions: `-p/--prefix` or `-n/--name` (resolved like conda: envs directories, the active
$CONDA_PREFIX), the lock file as conda-lock's `install` takes it (a positional argument; `--lockfile` too).
"""

from __future__ import annotations

import sys

import click

from reprotrain.cli import emit_json, quote


@click.group("env")
def env_group() -> None:
    """Verify, create or export a conda environment against a conda-lock.yml.

    \b
    Exit codes: 0 the environment matches the lock, 1 it does not (or an archive
    hash refused), 2 bad input (unreadable lock, not a conda prefix, platform not locked).
    """


def _print_differences(report) -> None:
    for diff in report.differences:
        if diff.kind in ("missing", "extra"):
            what = diff.locked if diff.kind == "missing" else diff.installed
            click.echo(quote(f"  {diff.kind:<13} {diff.manager:<5} {diff.name} {what or ''}".rstrip()))
        else:
            where = f" {diff.detail}" if diff.detail else ""
            click.echo(quote(f"  {diff.kind:<13} {diff.manager:<5} {diff.name}{where}: locked {diff.locked or '-'}, "
                             f"installed {diff.installed or '-'}"))


def _prefix_options(command):
    command = click.option("-n", "--name", default=None, help="Environment name, looked up in conda's envs "
                           "directories ($CONDA_ENVS_PATH, the root prefix's envs/, ~/.conda/envs).")(command)
    return click.option("-p", "--prefix", type=click.Path(file_okay=False), default=None,
                        help="Environment prefix [default: $CONDA_PREFIX, else this interpreter's prefix].")(command)


def _lockfile_options(command):
    command = click.option("--lockfile", "lockfile_option", default=None, type=click.Path(dir_okay=False),
                           help="The conda-lock.yml (same as the LOCKFILE argument).")(command)
    return click.argument("lockfile", required=False, type=click.Path(dir_okay=False))(command)


def _lockfile(positional, option) -> str:
    if positional and option and positional != option:
        raise click.UsageError("give the lock file once (LOCKFILE or --lockfile)")
    return positional or option or "conda-lock.yml"


@env_group.command("verify")
@_lockfile_options
@_prefix_options
@click.option("--platform", default=None, help="Lock platform to compare with [default: the prefix's own].")
@click.option("--category", "categories", multiple=True, help="Only the lock's entries in these categories "
              "(repeatable) [default: all].")
@click.option("--deep", is_flag=True, help="Also re-hash every installed file against conda-meta paths_data "
              "and pip RECORD.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def env_verify(lockfile, lockfile_option, prefix, name, platform, categories, deep, as_json) -> None:
    """Check that the live environment is exactly what LOCKFILE (default conda-lock.yml) pins for its platform."""
    from reprotrain.envlock.prefix import resolve_prefix
    from reprotrain.envlock.verify import verify_environment

    report = verify_environment(_lockfile(lockfile, lockfile_option), resolve_prefix(prefix, name),
                                platform=platform, deep=deep, categories=set(categories) or None)
    if as_json:
        emit_json(report.to_dict())
    else:
        state = "matches" if report.matches else f"DOES NOT MATCH ({len(report.differences)} differences)"
        files = f", {report.files_checked} files re-hashed" if deep else ""
        click.echo(quote(f"{report.prefix}: {state} {report.lockfile} [{report.platform}, {report.checked} locked "
                         f"packages{files}]"))
        _print_differences(report)
    sys.exit(0 if report.matches else 1)


@env_group.command("create")
@_lockfile_options
@_prefix_options
@click.option("--platform", default=None, help="Lock platform to install [default: this machine's].")
@click.option("--category", "categories", multiple=True, help="Only these categories (repeatable) [default: all].")
@click.option("--solver", type=click.Choice(["auto", "rattler"]), default="auto", show_default=True,
              help="auto: conda-lock install when a conda executable is installed, else py-rattler.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def env_create(lockfile, lockfile_option, prefix, name, platform, categories, solver, as_json) -> None:
    """Install the environment LOCKFILE pins into PREFIX, checking every archive hash."""
    from reprotrain.envlock.create import create_environment
    from reprotrain.envlock.prefix import resolve_prefix

    if prefix is None and name is None:
        raise click.UsageError("name the new environment: -p/--prefix PATH or -n/--name NAME")
    report = create_environment(_lockfile(lockfile, lockfile_option), resolve_prefix(prefix, name, must_exist=False),
                                platform=platform, categories=set(categories) or None, use_conda=solver == "auto")
    if as_json:
        emit_json(report.to_dict())
    else:
        click.echo(quote(f"{report.prefix}: installed {report.conda_packages} conda and {report.pip_packages} pip "
                         f"packages for {report.platform} with {report.installer}"))
        if not report.verify.matches:
            click.echo("but the result does not match the lock:")
            _print_differences(report.verify)
    sys.exit(0 if report.verify.matches else 1)


@env_group.command("export")
@_prefix_options
@click.option("--format", "fmt", type=click.Choice(["environment", "explicit", "conda-lock"]), default="environment",
              show_default=True, help="environment: an environment.yml; explicit: an @EXPLICIT per-platform lock "
              "(URL#md5); conda-lock: a unified conda-lock.yml for this platform.")
@click.option("--no-builds", is_flag=True, help="environment: name=version specs without build strings.")
@click.option("--from-history", is_flag=True, help="environment: only the explicitly requested specs "
              "(conda-meta/history and the records' requested specs).")
@click.option("--env-name", default=None, help="The `name:` written [default: the prefix's folder name].")
@click.option("-f", "--file", "output", type=click.Path(dir_okay=False), default=None,
              help="Write here (atomically) instead of stdout.")
def env_export(prefix, name, fmt, no_builds, from_history, env_name, output) -> None:
    """Export a live environment without any conda executable (`conda env export`'s conventions)."""
    from reprotrain.envlock.export import export_environment
    from reprotrain.envlock.prefix import resolve_prefix

    text = export_environment(resolve_prefix(prefix, name), fmt=fmt, no_builds=no_builds,
                              from_history=from_history, name=env_name or name)
    if output is None:
        click.echo(text, nl=False)
        return
    import os
    import tempfile

    target = os.path.abspath(output)
    handle, staged = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".reprotrain-export-")
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(text)
    os.replace(staged, target)
