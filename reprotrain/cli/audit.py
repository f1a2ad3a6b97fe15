"""`reprotrain verify`, `inspect`, `ls`, `diff`: audit checkpoints and run directories."""

from __future__ import annotations

import sys

import click

from reprotrain.cli import cell, emit_json, quote


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


@click.command("verify")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document with every result.")
@click.option("--against", metavar="FINGERPRINT.json", type=click.Path(dir_okay=False),
              help="Compare recorded fingerprints with this one (not with the live environment).")
@click.option("--lock", "lockfile", metavar="conda-lock.yml", type=click.Path(dir_okay=False),
              help="Compare the recorded Python/torch/CUDA/cuDNN with what this lock pins for the recorded "
                   "platform (not with the live environment). With neither --against nor --lock: the live "
                   "environment.")
@click.option("--policy", "policy_path", metavar="FILE", type=click.Path(dir_okay=False),
              help="Per-field fingerprint policy (YAML or JSON).")
@click.option("--on-mismatch", type=click.Choice(["refuse", "warn", "ignore"]),
              help="Global override: every environment difference refuses, warns, or only informs.")
@click.option("--no-digest", is_flag=True, help="Manifest only: skip re-hashing the file (fast; no torch import).")
@click.option("--trusted-key", "trusted_keys", multiple=True, metavar="PUB", type=click.Path(dir_okay=False),
              help="A public key whose signatures are accepted (repeatable). A signed file must be signed by one of "
                   "them, with a matching signature.")
@click.option("--require-signature", is_flag=True, help="Unsigned files fail too (needs --trusted-key).")
def verify_command(paths, as_json, against, lockfile, policy_path, on_mismatch, no_digest, trusted_keys,
                   require_signature):
    """Verify checkpoints: integrity, manifest schema, and the recorded environment.

    Any file is accepted: files that are not reprotrain checkpoints are classified
    without executing anything in them (unsafe pickles are refused).

    \b
    Exit codes (several files: the worst, ranked 2 > 5 > 3 > 1 > 0):
      0  ok (warnings allowed)
      1  environment refused by policy (fingerprint or lock)
      2  corrupt, unreadable or invalid (unsafe pickles included)
      3  a readable PyTorch file that is not a reprotrain checkpoint (legacy format included)
      5  signature: signed by no trusted key, signature does not match,
         or unsigned with --require-signature
    """
    from reprotrain.audit import verify_paths, worst_exit_code

    results = verify_paths(paths, against=against, lock=lockfile, policy=policy_path, on_mismatch=on_mismatch,
                           digest=not no_digest, trusted_keys=trusted_keys, require_signature=require_signature)
    code = worst_exit_code(r.exit_code for r in results)
    if as_json:
        emit_json({"exit_code": code, "results": [r.to_dict() for r in results]})
    else:
        labels = {0: "OK", 1: "REFUSED", 2: "CORRUPT", 3: "FOREIGN", 5: "REJECTED"}
        for r in results:
            label = "UNSAFE" if r.category == "unsafe-pickle" else labels.get(r.exit_code, r.exit_code)
            click.echo(f"{label:<8} {quote(r.path)}: {quote(r.reason)}")
            for warning in r.warnings:
                click.echo(f"         warning: {quote(warning)}")
    sys.exit(code)


@click.command("inspect")
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON (manifest included).")
def inspect_command(path, as_json):
    """Manifest, lineage, tensor summary and model-state digest of checkpoint PATH.

    The state digest is equal exactly when the model weights are bit-identical.

    \b
    Exit codes: 0 shown, 2 corrupt, unreadable or invalid, 3 not a reprotrain checkpoint.
    """
    from reprotrain.audit import inspect_path

    report = inspect_path(path)
    if as_json:
        emit_json(report)
        return
    from rich.table import Table

    m = report["manifest"]
    monitor = m.get("monitor") or {}
    metrics = ", ".join(f"{k} {v}" for k, v in m["metrics"].items()) or "-"
    lines = [f"{quote(path)}: reprotrain checkpoint, {_human_size(report['size'])}, integrity ok",
             f"run {m['run_id']}  kind {m['kind']}  epoch {m['epoch']}  step {m['step']}  samples {m['samples_seen']}",
             f"created {m['created']}  resumable {str(m['resumable']).lower()}"
             + (f"  reason {m['reason']}" if m.get("reason") else ""),
             f"metrics {metrics}" + (f"  (monitor {monitor.get('name')} {monitor.get('mode')})" if monitor else ""),
             f"fingerprint {m['fingerprint_digest']}  torch {m['fingerprint'].get('torch', {}).get('version')}  "
             f"python {m['fingerprint'].get('python', {}).get('version')}",
             f"writer reprotrain {m['writer'].get('reprotrain')}  torch {m['writer'].get('torch') or '-'}",
             (f"signed by key {report['signature']['key_id']} at {report['signature']['time']}, signature format "
              f"{report['signature']['format']} (not checked here: reprotrain verify --trusted-key PUB)"
              if report.get("signature") else "unsigned")]
    click.echo("\n".join(quote(line) for line in lines))
    console = _console()
    lineage = Table(title="lineage", title_justify="left")
    for column in ("segment", "steps", "fingerprint", "started", "ended", "end", "world", "host"):
        lineage.add_column(column)
    for seg in report["lineage"]:
        lineage.add_row(*(cell(value) for value in (
            seg["segment"], f"{seg['first_step']}-{seg['last_step']}", seg["fingerprint_digest"][7:19], seg["started"],
            seg["ended"] or "-", seg["end_reason"] or "-", seg["world_size"], seg.get("host") or "-")))
    console.print(lineage)
    if report["tensors"] is None:  # a sealed framework directory (Hugging Face, Accelerate)
        files = Table(title="sealed files", title_justify="left")
        for column in ("file", "size", "sha256"):
            files.add_column(column, justify="right" if column == "size" else "left")
        for row in report["files"]:
            files.add_row(row["path"], _human_size(row["size"]), row["sha256"][:16] + "…")
        console.print(files)
        return
    t = report["tensors"]
    dtypes = ", ".join(f"{k} {v}" for k, v in t["dtypes"].items()) or "-"
    click.echo(f"tensors {t['count']}, {_human_size(t['bytes'])}; dtypes {dtypes}")
    largest = Table(title="largest tensors", title_justify="left")
    for column in ("name", "dtype", "shape", "size"):
        largest.add_column(column, justify="right" if column == "size" else "left")
    for row in t["largest"]:
        largest.add_row(cell(row["name"]), cell(row["dtype"]), cell("x".join(map(str, row["shape"])) or "scalar"),
                        cell(_human_size(row["bytes"])))
    console.print(largest)
    click.echo(f"model state digest {report['state_digest'] or '- (no model state)'}")
    click.echo(f"model+optimizer digest {report['training_state_digest']}")


@click.command("ls")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the listing as JSON.")
@click.option("--no-digest", is_flag=True, help="Do not re-hash every file (faster; damage inside tensor "
              "data goes unnoticed).")
def ls_command(run_dir, as_json, no_digest):
    """Every checkpoint of RUN_DIR: kind, epoch, step, metric, size, created, valid, and resume's pick.

    \b
    Exit codes: 0 listed, 2 RUN_DIR missing or unreadable.
    """
    from reprotrain.audit import list_run

    listing = list_run(run_dir, deep=not no_digest)
    if as_json:
        emit_json(listing)
        return
    click.echo("\n".join(ls_lines(listing, str(run_dir))))
    click.echo(f"resume would pick: {quote(listing['resume'] or 'nothing (start fresh)')}")


def _metric_value(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def ls_lines(listing: dict, title: str, width: int = 100) -> list[str]:
    """The human view of `ls`: one line per checkpoint, fitting ``width`` columns without cutting a name.

    The monitored metric's name heads its column (values only below it); `*` marks resume's pick; `created` is
    MM-DD HH:MM UTC and a signer its key id's first 8 hex digits (`--json` has both in full); the reason a file is
    not valid goes on its own line under the table, where it may be as long as it needs.
    """
    import io

    from rich.console import Console
    from rich.table import Table

    rows = listing["checkpoints"]
    metric_names = {row["monitor"]["name"] for row in rows if row["monitor"]}
    metric_header = metric_names.pop() if len(metric_names) == 1 else "metric"
    signed = any(row["signer"] for row in rows)
    table = Table(title=cell(title), title_justify="left", box=None, pad_edge=False, padding=(0, 1), collapse_padding=True,
                  header_style="bold")
    columns = ("  name", "kind", "epoch", "step", metric_header, "size", "created", *(("signer",) if signed else ()),
               "valid")
    for column in columns:
        table.add_column(column, justify="right" if column in ("epoch", "step", "size") else "left", no_wrap=True)
    problems = []
    for row in rows:
        monitor = row["monitor"]
        if monitor is None:
            metric = "-"
        elif metric_header == "metric":
            metric = f"{monitor['name']} {_metric_value(monitor['value'])}"
        else:
            metric = _metric_value(monitor["value"])
        created = (row["created"] or "-").replace("T", " ")[5:16] if row["created"] else "-"  # MM-DD HH:MM UTC
        if not row["valid"]:
            problems.append(f"  {quote(row['name'])}: {quote(row['problem'])}")
        table.add_row(*(cell(value) for value in (
            ("* " if row["resume"] else "  ") + row["name"], row["kind"], row["epoch"], row["step"], metric,
            _human_size(row["size"]), created, *((row["signer"][:8] if row["signer"] else None,) if signed else ()),
            "yes" if row["valid"] else "NO")))
    console = Console(width=max(width, Console().width), highlight=False, record=True, file=io.StringIO())
    console.print(table)
    lines = [line.rstrip() for line in console.export_text().splitlines()]
    if problems:
        lines += ["not valid:", *problems]
    return lines


@click.command("diff")
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON.")
@click.option("--no-tensors", is_flag=True, help="Manifests only: do not load and compare the tensors (no torch).")
def diff_command(a, b, as_json, no_tensors):
    """Tensor, fingerprint, lineage and manifest differences between checkpoints A and B.

    \b
    Exit codes: 0 the model and optimizer tensors are bit-identical and the
    environments match (lineage and other manifest fields may differ),
    1 the environments differ (with --no-tensors: environment or lineage),
    2 unreadable or corrupt, 3 one is not a reprotrain checkpoint,
    6 the tensors differ.
    """
    from reprotrain.audit.diff import diff_paths, exit_code

    result = diff_paths(a, b, tensors=not no_tensors)
    if as_json:
        emit_json(result)
    else:
        from reprotrain.fingerprint.policy import show_value

        if "tensors_skipped" in result:
            click.echo(result["tensors_skipped"])
        if "tensors" in result:
            t = result["tensors"]
            for label, group in (("model", t["model"]), ("model+optimizer", t["model_and_optimizer"])):
                state = "identical" if group["identical"] else f"DIFFER ({group['differing']} differing)"
                click.echo(f"tensors, {label}: {state} ({group['tensors']} tensors)")
            for label in ("model", "optimizer"):
                group = t[label]
                for name in group["differing_names"]:
                    click.echo(quote(f"  differs: {name}"))
                for side in ("a", "b"):
                    for name in group[f"only_{side}"]:
                        click.echo(quote(f"  only in {side.upper()}: {name}"))

        differences = result["fingerprint"]["differences"]
        click.echo(f"environment: {len(differences)} differences" if differences else "environment: identical")
        for d in differences:
            click.echo(quote(f"  {d['field']}: {show_value(d['recorded'])} -> {show_value(d['live'])} "
                             f"({d['severity']} on resume)"))
        lineage = result["lineage"]
        click.echo(f"lineage: {'same run' if lineage['same_run'] else 'different runs'}, "
                   f"{lineage['common_segments']} common segments")
        for side in ("a", "b"):
            for seg in lineage[f"only_{side}"]:
                click.echo(quote(f"  only {side.upper()}: segment {seg['segment']} steps {seg['first_step']}-"
                                 f"{seg['last_step']} ({seg['end_reason'] or '-'})"))
        for row in result["manifest"]:
            click.echo(quote(f"  {row['field']}: {show_value(row['a'])} -> {show_value(row['b'])}"))
    sys.exit(exit_code(result))
