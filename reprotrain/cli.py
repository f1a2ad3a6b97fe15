"""The `reprotrain` command line: parse, call the library, format the result.

Heavy modules (torch above all) are imported inside the commands that need
them, never at module level: `reprotrain --help` and the lock commands stay instant.
Each area of the CLI lives in its own section below; library code never lives here.
"""

from __future__ import annotations

import json
import sys

import click

from reprotrain import __version__
from reprotrain.errors import ReprotrainError


class _Group(click.Group):
    """A group that turns ReprotrainError into one line on stderr and its exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ReprotrainError as exc:
            click.echo(f"reprotrain: error: {exc}", err=True)
            ctx.exit(exc.exit_code)


def emit_json(doc) -> None:
    """Write one JSON document to stdout (the `--json` output of every command)."""
    click.echo(json.dumps(doc, indent=2, sort_keys=False, default=str))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="reprotrain")
def main() -> None:
    """Reproducible, auditable, un-losable PyTorch training.

    \b
    Exit codes (all commands): 0 ok, 1 refused or mismatch (policy, stale lock),
    2 bad input (unreadable, corrupt or invalid file), 3 not a reprotrain
    checkpoint (verify). Training also exits 130 on SIGINT and 143 on SIGTERM.
    """


# --- fingerprint -------------------------------------------------------------------------

def _fingerprint_value(name: str, value) -> str:
    """One value as a person reads it: digests and commits shortened (the JSON keeps them whole)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if name == "packages" and isinstance(value, list):
        return f"{len(value)} listed"
    if name == "devices" and isinstance(value, list):
        return "; ".join(f"{d['index']}: {d['name']} (sm {d['compute_capability']}, {d['memory_bytes'] / 2**30:.0f} GiB)"
                         for d in value) or "none"
    text = str(value)
    if text.startswith("sha256:") and len(text) == 71:
        return text[:19] + "…"
    if name in ("git_version", "git_commit", "sha256", "content_hash") and len(text) >= 40:
        return text[:12] + "…"
    return text


def _fingerprint_lines(doc: dict, width: int = 100) -> list[str]:
    """The human view of a fingerprint: one wrapped `section  name=value ...  (source)` line per section."""
    import textwrap

    rows = []
    for section, values in doc.items():
        if not isinstance(values, dict) or section == "sources":
            continue
        parts, stack = [], [("", values)]
        while stack:
            prefix, node = stack.pop(0)
            for key, value in node.items():
                if isinstance(value, dict):
                    stack.append((f"{prefix}{key}.", value))
                else:
                    parts.append(f"{prefix}{key}={_fingerprint_value(key, value)}")
        rows.append((section, "  ".join(parts), doc["sources"].get(section, "")))
    label = max(len(section) for section, _, _ in rows) + 2
    lines = [f"fingerprint schema v{doc['schema_version']}, collected {doc['collected_at']}"]
    for section, text, source in rows:
        wrapped = textwrap.wrap(f"{text}  [{source}]", width=width - label, break_long_words=False,
                                break_on_hyphens=False) or [""]
        lines += [f"{section if i == 0 else '':<{label}}{chunk}" for i, chunk in enumerate(wrapped)]
    return lines


def _package_listing(packages: dict) -> list[str]:
    """--full in the human view: every conda package and Python distribution, one per line."""
    lines = []
    for kind, title, columns in (("conda", "conda packages", ("name", "version", "build")),
                                 ("pip", "python distributions", ("name", "version"))):
        listed = packages[kind].get("packages") or []
        lines.append(f"{title} ({len(listed)}):")
        lines += ["  " + "  ".join(str(item.get(c) or "") for c in columns) for item in listed]
    return lines


@main.command("fingerprint")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Also write the fingerprint JSON here (atomically).")
@click.option("--full", is_flag=True, help="List every conda package and Python distribution, not only digests.")
@click.option("--compare", "compare_path", metavar="OTHER.json",
              help="Compare OTHER.json (recorded) with this environment; exit 1 if the policy refuses.")
@click.option("--policy", "policy_path", metavar="FILE", help="Per-field policy overrides (YAML or JSON), with --compare.")
@click.option("--on-mismatch", type=click.Choice(["refuse", "warn", "ignore"]),
              help="Global override, with --compare: every difference refuses, warns, or only informs.")
@click.option("--code-dir", type=click.Path(file_okay=False), default=None,
              help="Directory of the training code whose git commit is recorded (default: working directory).")
def fingerprint_command(as_json, output, full, compare_path, policy_path, on_mismatch, code_dir):
    """Fingerprint this environment, or compare it with a recorded fingerprint.

    \b
    Exit codes: 0 ok (differences allowed by policy), 1 refused by policy (--compare),
    2 unreadable or invalid fingerprint or policy file.
    """
    import os

    from reprotrain import fingerprint as fp

    if compare_path is None and (policy_path is not None or on_mismatch is not None):
        raise click.UsageError("--policy and --on-mismatch apply only with --compare")
    policy = fp.Policy.load(policy_path, on_mismatch=on_mismatch) if compare_path is not None else None
    recorded = fp.load(compare_path) if compare_path is not None else None
    live = fp.collect(full=full, code_dir=code_dir or os.getcwd())
    if output:
        fp.write(live, output)
    if recorded is None:
        if as_json:
            emit_json(live)
        else:
            click.echo("\n".join(_fingerprint_lines(live)))
            if full:
                click.echo("\n".join(_package_listing(live["packages"])))
            click.echo(f"digest {fp.digest(live)}")
        return
    result = fp.compare(recorded, live, policy)
    if as_json:
        emit_json(result.to_json())
    else:
        click.echo(result.table())
    if result.refused:
        click.echo(f"reprotrain: refused by policy; to allow: {result.allow_hint()}", err=True)
        sys.exit(1)

# --- environment lock and verification (no torch import) ----------------------------------

@main.group("lock", invoke_without_command=True)
@click.option("-f", "--file", "env_files", multiple=True, type=click.Path(dir_okay=False),
              help="Environment file to lock (repeatable) [default with --check: the lock's own sources; "
                   "otherwise environment.yml].")
@click.option("-p", "--platform", "platforms", multiple=True,
              help="Platform to lock (repeatable) [default: the files' platforms: key, else linux-64, "
                   "osx-arm64 and win-64; with --check: the lock's platforms].")
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
                click.echo(f"{platform}: {entry['status']}")
                for change in entry["changes"]:
                    click.echo(f"  {change}")
            stale = [p for p, e in result["platforms"].items() if e["status"] != "fresh"]
            click.echo(f"{lockfile}: " + (f"STALE for {', '.join(stale)}" if stale else "up to date"))
        sys.exit(1 if result["stale"] else 0)
    from reprotrain.envlock.solve import lock as lock_environment

    result = lock_environment(env_files or ["environment.yml"], platforms or None, lockfile, solver,
                              virtual_package_spec)
    if as_json:
        emit_json(result)
    else:
        counts = ", ".join(f"{p} {n}" for p, n in result["packages"].items())
        click.echo(f"{result['lockfile']}: locked with {result['solver']} ({counts} packages)")


@lock_group.command("show")
@click.argument("lockfile", type=click.Path(dir_okay=False))
@click.option("--platform", default=None, help="Only this platform.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def lock_show(lockfile, platform, as_json) -> None:
    """Platforms, package counts and the Python / PyTorch / CUDA / cuDNN LOCKFILE pins."""
    from reprotrain.envlock.lockfile import read_lockfile, summarize

    summary = summarize(read_lockfile(lockfile), lockfile, platform)
    if as_json:
        emit_json(summary)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{lockfile}  (channels: {', '.join(summary['channels']) or '-'})", title_justify="left")
    for column in ("platform", "conda", "pip", "python", "pytorch", "variant", "CUDA", "cuDNN"):
        table.add_column(column, justify="right" if column in ("conda", "pip") else "left")
    for name, entry in summary["per_platform"].items():
        torch = entry["torch"] and (entry["torch"] + (" (pip)" if entry["torch_manager"] == "pip" else ""))
        table.add_row(name, str(entry["conda_packages"]), str(entry["pip_packages"]), entry["python"] or "-",
                      torch or "-", entry["torch_variant"] or "-", entry["cuda"] or "-", entry["cudnn"] or "-")
    Console(width=max(100, Console().width), highlight=False).print(table)
    if len(summary["categories"]) > 1:
        click.echo(f"categories: {', '.join(summary['categories'])}")


@main.group("env")
def env_group() -> None:
    """Verify or create the live conda environment against a conda-lock.yml.

    \b
    Exit codes: 0 the environment matches the lock, 1 it does not (or an archive
    hash refused), 2 bad input (unreadable lock, not a conda prefix, platform not locked).
    """


def _print_differences(report) -> None:
    for diff in report.differences:
        if diff.kind in ("missing", "extra"):
            what = diff.locked if diff.kind == "missing" else diff.installed
            click.echo(f"  {diff.kind:<13} {diff.manager:<5} {diff.name} {what or ''}".rstrip())
        else:
            where = f" {diff.detail}" if diff.detail else ""
            click.echo(f"  {diff.kind:<13} {diff.manager:<5} {diff.name}{where}: locked {diff.locked or '-'}, "
                       f"installed {diff.installed or '-'}")


@env_group.command("verify")
@click.option("--lockfile", default="conda-lock.yml", show_default=True, type=click.Path(dir_okay=False),
              help="The conda-lock.yml to verify against.")
@click.option("--prefix", type=click.Path(file_okay=False), default=None,
              help="Environment prefix [default: $CONDA_PREFIX, else this interpreter's prefix].")
@click.option("--platform", default=None, help="Lock platform to compare with [default: the prefix's own].")
@click.option("--category", "categories", multiple=True, help="Only the lock's entries in these categories "
              "(repeatable) [default: all].")
@click.option("--deep", is_flag=True, help="Also re-hash every installed file against conda-meta paths_data "
              "and pip RECORD.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def env_verify(lockfile, prefix, platform, categories, deep, as_json) -> None:
    """Check that the live environment is exactly what LOCKFILE pins for its platform."""
    from reprotrain.envlock.verify import verify_environment

    report = verify_environment(lockfile, prefix, platform=platform, deep=deep, categories=set(categories) or None)
    if as_json:
        emit_json(report.to_dict())
    else:
        state = "matches" if report.matches else f"DOES NOT MATCH ({len(report.differences)} differences)"
        files = f", {report.files_checked} files re-hashed" if deep else ""
        click.echo(f"{report.prefix}: {state} {report.lockfile} [{report.platform}, {report.checked} locked "
                   f"packages{files}]")
        _print_differences(report)
    sys.exit(0 if report.matches else 1)


@env_group.command("create")
@click.option("--lockfile", default="conda-lock.yml", show_default=True, type=click.Path(dir_okay=False))
@click.option("--prefix", required=True, type=click.Path(file_okay=False), help="New environment directory.")
@click.option("--platform", default=None, help="Lock platform to install [default: this machine's].")
@click.option("--category", "categories", multiple=True, help="Only these categories (repeatable) [default: all].")
@click.option("--solver", type=click.Choice(["auto", "rattler"]), default="auto", show_default=True,
              help="auto: conda-lock install when a conda executable is installed, else py-rattler.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def env_create(lockfile, prefix, platform, categories, solver, as_json) -> None:
    """Install the environment LOCKFILE pins into PREFIX, checking every archive hash."""
    from reprotrain.envlock.create import create_environment

    report = create_environment(lockfile, prefix, platform=platform, categories=set(categories) or None,
                                use_conda=solver == "auto")
    if as_json:
        emit_json(report.to_dict())
    else:
        click.echo(f"{report.prefix}: installed {report.conda_packages} conda and {report.pip_packages} pip "
                   f"packages for {report.platform} with {report.installer}")
        if not report.verify.matches:
            click.echo("but the result does not match the lock:")
            _print_differences(report.verify)
    sys.exit(0 if report.verify.matches else 1)


# --- checkpoints: verify, inspect, ls, diff -------------------------------------------------

def _console():
    from rich.console import Console

    return Console(width=max(100, Console().width), highlight=False)


def _human_size(size) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024


@main.command("verify")
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document with every result.")
@click.option("--against", metavar="FINGERPRINT.json", type=click.Path(dir_okay=False),
              help="Compare recorded fingerprints with this one instead of the live environment.")
@click.option("--lock", "lockfile", metavar="conda-lock.yml", type=click.Path(dir_okay=False),
              help="Also check the recorded Python/torch/CUDA/cuDNN against what this lock pins.")
@click.option("--policy", "policy_path", metavar="FILE", type=click.Path(dir_okay=False),
              help="Per-field fingerprint policy (YAML or JSON).")
@click.option("--on-mismatch", type=click.Choice(["refuse", "warn", "ignore"]),
              help="Global override: every environment difference refuses, warns, or only informs.")
@click.option("--no-digest", is_flag=True, help="Manifest only: skip re-hashing the file (fast; no torch import).")
def verify_command(paths, as_json, against, lockfile, policy_path, on_mismatch, no_digest):
    """Verify checkpoints: integrity, manifest schema, and the recorded environment.

    Any file is accepted: files that are not reprotrain checkpoints are classified
    without executing anything in them (unsafe pickles are refused).

    \b
    Exit codes (several files: the worst, ranked 2 > 3 > 1 > 0):
      0  ok (warnings allowed)
      1  environment refused by policy (fingerprint or lock)
      2  corrupt, unreadable or invalid (unsafe pickles included)
      3  a readable PyTorch file that is not a reprotrain checkpoint (legacy format included)
    """
    from reprotrain.checkpoint.audit import verify_paths, worst_exit_code

    results = verify_paths(paths, against=against, lock=lockfile, policy=policy_path, on_mismatch=on_mismatch,
                           digest=not no_digest)
    code = worst_exit_code(r.exit_code for r in results)
    if as_json:
        emit_json({"exit_code": code, "results": [r.to_dict() for r in results]})
    else:
        labels = {0: "OK", 1: "REFUSED", 2: "CORRUPT", 3: "FOREIGN"}
        for r in results:
            click.echo(f"{labels.get(r.exit_code, r.exit_code):<8} {r.path}: {r.reason}")
            for warning in r.warnings:
                click.echo(f"         warning: {warning}")
    sys.exit(code)


@main.command("inspect")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON (manifest included).")
def inspect_command(path, as_json):
    """Manifest, lineage, tensor summary and model-state digest of checkpoint PATH.

    The state digest is equal exactly when the model weights are bit-identical.

    \b
    Exit codes: 0 shown, 2 corrupt, unreadable or invalid, 3 not a reprotrain checkpoint.
    """
    from reprotrain.checkpoint.audit import inspect_path

    report = inspect_path(path)
    if as_json:
        emit_json(report)
        return
    from rich.table import Table

    m = report["manifest"]
    monitor = m.get("monitor") or {}
    metrics = ", ".join(f"{k} {v}" for k, v in m["metrics"].items()) or "-"
    lines = [f"{path}: reprotrain checkpoint, {_human_size(report['size'])}, integrity ok",
             f"run {m['run_id']}  kind {m['kind']}  epoch {m['epoch']}  step {m['step']}  samples {m['samples_seen']}",
             f"created {m['created']}  resumable {str(m['resumable']).lower()}"
             + (f"  reason {m['reason']}" if m.get("reason") else ""),
             f"metrics {metrics}" + (f"  (monitor {monitor.get('name')} {monitor.get('mode')})" if monitor else ""),
             f"fingerprint {m['fingerprint_digest']}  torch {m['fingerprint'].get('torch', {}).get('version')}  "
             f"python {m['fingerprint'].get('python', {}).get('version')}",
             f"writer reprotrain {m['writer'].get('reprotrain')}  torch {m['writer'].get('torch') or '-'}"]
    click.echo("\n".join(lines))
    console = _console()
    lineage = Table(title="lineage", title_justify="left")
    for column in ("segment", "steps", "fingerprint", "started", "ended", "end", "world", "host"):
        lineage.add_column(column)
    for seg in report["lineage"]:
        lineage.add_row(str(seg["segment"]), f"{seg['first_step']}-{seg['last_step']}",
                        seg["fingerprint_digest"][7:19], seg["started"], seg["ended"] or "-",
                        seg["end_reason"] or "-", str(seg["world_size"]), seg.get("host") or "-")
    console.print(lineage)
    t = report["tensors"]
    dtypes = ", ".join(f"{k} {v}" for k, v in t["dtypes"].items()) or "-"
    click.echo(f"tensors {t['count']}, {_human_size(t['bytes'])}; dtypes {dtypes}")
    largest = Table(title="largest tensors", title_justify="left")
    for column in ("name", "dtype", "shape", "size"):
        largest.add_column(column, justify="right" if column == "size" else "left")
    for row in t["largest"]:
        largest.add_row(row["name"], row["dtype"], "x".join(map(str, row["shape"])) or "scalar",
                        _human_size(row["bytes"]))
    console.print(largest)
    click.echo(f"model state digest {report['state_digest'] or '- (no model state)'}")
    click.echo(f"model+optimizer digest {report['training_state_digest']}")


@main.command("ls")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the listing as JSON.")
@click.option("--no-digest", is_flag=True, help="Do not re-hash every file (faster; damage inside tensor "
              "data goes unnoticed).")
def ls_command(run_dir, as_json, no_digest):
    """Every checkpoint of RUN_DIR: kind, epoch, step, metric, size, created, valid, and resume's pick.

    \b
    Exit codes: 0 listed, 2 RUN_DIR missing or unreadable.
    """
    from reprotrain.checkpoint.audit import list_run

    listing = list_run(run_dir, deep=not no_digest)
    if as_json:
        emit_json(listing)
        return
    from rich.table import Table

    table = Table(title=f"{run_dir}", title_justify="left")
    for column in ("", "name", "kind", "epoch", "step", "metric", "size", "created", "valid"):
        table.add_column(column, justify="right" if column in ("epoch", "step", "size") else "left")
    for row in listing["checkpoints"]:
        monitor = row["monitor"]
        metric = f"{monitor['name']} {monitor['value']}" if monitor else "-"
        table.add_row("*" if row["resume"] else "", row["name"], row["kind"] or "-",
                      "-" if row["epoch"] is None else str(row["epoch"]), "-" if row["step"] is None else str(row["step"]),
                      metric, _human_size(row["size"]), row["created"] or "-",
                      "yes" if row["valid"] else f"NO: {row['problem']}")
    _console().print(table)
    click.echo(f"resume would pick: {listing['resume'] or 'nothing (start fresh)'}")


@main.command("diff")
@click.argument("a", type=click.Path(dir_okay=False))
@click.argument("b", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON.")
def diff_command(a, b, as_json):
    """Fingerprint, lineage and manifest differences between checkpoints A and B.

    \b
    Exit codes: 0 same environment and lineage (other manifest fields may differ),
    1 they differ, 2 unreadable or corrupt, 3 one is not a reprotrain checkpoint.
    """
    from reprotrain.checkpoint.audit import diff_paths

    result = diff_paths(a, b)
    if as_json:
        emit_json(result)
    else:
        from reprotrain.fingerprint.policy import show_value

        differences = result["fingerprint"]["differences"]
        click.echo(f"environment: {len(differences)} differences" if differences else "environment: identical")
        for d in differences:
            click.echo(f"  {d['field']}: {show_value(d['recorded'])} -> {show_value(d['live'])} ({d['severity']} on resume)")
        lineage = result["lineage"]
        click.echo(f"lineage: {'same run' if lineage['same_run'] else 'different runs'}, "
                   f"{lineage['common_segments']} common segments")
        for side in ("a", "b"):
            for seg in lineage[f"only_{side}"]:
                click.echo(f"  only {side.upper()}: segment {seg['segment']} steps {seg['first_step']}-"
                           f"{seg['last_step']} ({seg['end_reason'] or '-'})")
        for row in result["manifest"]:
            click.echo(f"  {row['field']}: {show_value(row['a'])} -> {show_value(row['b'])}")
    sys.exit(0 if result["identical_environment_and_lineage"] else 1)


# --- training ------------------------------------------------------------------------------

# (option, TrainConfig field, click kwargs): the config options of `train`; each may also come from --config FILE.
_TRAIN_OPTIONS = [
    ("--task", "task", dict(help="digits (default, offline), mnist, fashionmnist, cifar10, imagefolder, "
                                 "or module:function for a user task.")),
    ("--model", "model", dict(help="cnn (default) or a torchvision model name such as resnet18.")),
    ("--data-dir", "data_dir", dict(type=click.Path(file_okay=False), help="Dataset root (torchvision, ImageFolder).")),
    ("--download/--no-download", "download", dict(default=None, help="Let torchvision download a missing dataset.")),
    ("--epochs", "epochs", dict(type=int)),
    ("--batch-size", "batch_size", dict(type=int)),
    ("--lr", "lr", dict(type=float, help="Learning rate.")),
    ("--seed", "seed", dict(type=int)),
    ("--num-workers", "num_workers", dict(type=int, help="DataLoader worker processes (resume is bit-exact either way).")),
    ("--device", "device", dict(help="auto (default), cpu, cuda, cuda:N, mps.")),
    ("--threads", "threads", dict(type=int, help="CPU intra-op threads (default 1: same numerics on any machine).")),
    ("--save", "save", dict(help="Save policy (default adaptive:1h): epochs:N, steps:N, seconds:T, exp-steps, exp-epochs, "
                                 "at-steps:LIST, at-epochs:LIST, adaptive:MTBF, never; combine with +.")),
    ("--keep-last", "keep_last", dict(type=int, help="Retention: newest checkpoints kept.")),
    ("--keep-best", "keep_best", dict(type=int, help="Retention: best checkpoints (by --monitor) kept; > 0 saves each new best.")),
    ("--keep-every", "keep_every", dict(type=int, help="Retention: also keep every N-th epoch checkpoint.")),
    ("--monitor", "monitor", dict(help="Metric ranking `best` checkpoints (default val_accuracy).")),
    ("--log-every", "log_every", dict(type=int, help="Steps between metrics.jsonl step lines.")),
    ("--sigterm-exit-code", "sigterm_exit_code", dict(type=int, help="Exit code after SIGTERM (default 143).")),
    ("--mlflow/--no-mlflow", "mlflow", dict(default=None, help="Track the run in MLflow (tracking URI from "
                                                              "MLFLOW_TRACKING_URI); resumes continue the same run.")),
    ("--mlflow-experiment", "mlflow_experiment", dict(help="MLflow experiment name (default reprotrain).")),
]


def _train_options(func):
    for flag, field, kwargs in reversed(_TRAIN_OPTIONS):
        func = click.option(flag, field, **kwargs)(func)
    return func


@main.command()
@click.option("--run-dir", default="runs/default", show_default=True, type=click.Path(file_okay=False),
              help="Where checkpoints and metrics.jsonl go; the newest valid checkpoint there is resumed.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file of options (flags win).")
@_train_options
@click.option("--resume", is_flag=False, flag_value="", default=None, metavar="[PATH]",
              help="Require a checkpoint to resume (error if none); with PATH, resume that file.")
@click.option("--fresh", is_flag=True, help="Start over instead of resuming (refuses to clobber an existing run).")
@click.option("--overwrite", is_flag=True, help="With --fresh: delete the existing run in --run-dir first.")
@click.option("--on-env-mismatch", type=click.Choice(["refuse", "warn", "ignore"]),
              help="Override the policy for every fingerprint difference on resume.")
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False), help="Resume policy file (YAML).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary table.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def train(ctx: click.Context, run_dir, config_file, resume, fresh, overwrite, on_env_mismatch, policy_file, quiet,
          as_json, **config_options):
    """Train with checkpoints, fingerprint-checked resume and fault handling.

    With no arguments: a small CNN on scikit-learn's bundled digits, offline, in about a minute.
    Running the same command again resumes the newest valid checkpoint of --run-dir.

    \b
    Exit codes: 0 done, 1 resume refused (fingerprint policy, config change,
    --fresh over an existing run), 2 bad input, 4 training failed (error,
    crashed worker, non-finite loss; an `emergency` checkpoint was saved),
    130 SIGINT, 143 SIGTERM (see --sigterm-exit-code).
    """
    from reprotrain.checkpoint import Interrupted
    from reprotrain.training import train as run_training

    options = {name: value for name, value in config_options.items()
               if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT}
    try:
        result = run_training(run_dir, options=options, config_file=config_file,
                              resume=True if resume == "" else resume, fresh=fresh, overwrite=overwrite,
                              on_env_mismatch=on_env_mismatch, policy=policy_file, quiet=quiet or as_json)
    except Interrupted as exc:
        click.echo(f"reprotrain: {exc}; run the same command again to resume", err=True)
        ctx.exit(exc.exit_code)
    if as_json:
        emit_json(result.to_dict())
        return
    if quiet:
        return
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    click.echo(f"{result.status}: {result.epochs_completed}/{result.config['epochs']} epochs, step {result.step}, "
               f"{metrics or 'no validation metrics'}")
    click.echo(f"time {result.wall_time_s:.1f} s, checkpoints written {result.checkpoints_written}, "
               f"resumes {result.resumes}, run directory {result.run_dir}")


# --- integrations: report -------------------------------------------------------------------

@main.command("report")
@click.argument("run_dir")
@click.option("-o", "--output", default="report.html", show_default=True, type=click.Path(dir_okay=False),
              help="The self-contained HTML page to write.")
@click.option("--png", type=click.Path(dir_okay=False), default=None, help="Also a PNG of the page (headless Chromium).")
@click.option("--json", "as_json", is_flag=True, help="Print what the report shows as JSON.")
def report(run_dir, output, png, as_json) -> None:
    """Loss and metric curves across all lineage segments of RUN_DIR (a path or an fsspec URL such as
    s3://bucket/run), with interruption, resume and environment-change markers, as one HTML page.

    \b
    Exit codes: 0 written, 2 bad input (no metrics.jsonl, unreadable run directory, no Chromium for --png).
    """
    from reprotrain.integrations.report import write_report

    history = write_report(run_dir, output, png)
    if as_json:
        emit_json({**history.to_dict(), "output": output, "png": png})
        return
    click.echo(f"{output}: {len(history.lineage)} segment(s), {len(history.steps)} steps, "
               f"{len(history.env_changes)} environment change(s)" + (f"; PNG {png}" if png else ""))



if __name__ == "__main__":  # pragma: no cover
    main()
