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

def _fingerprint_lines(doc: dict) -> list[str]:
    """The human view of a fingerprint: one `section  field  value` line per scalar, package lists summarised."""
    rows = []
    for section, values in doc.items():
        if not isinstance(values, dict) or section == "sources":
            continue
        source = doc["sources"].get(section, "")
        stack = [("", values)]
        while stack:
            prefix, node = stack.pop(0)
            for key, value in node.items():
                name = f"{prefix}{key}"
                if isinstance(value, dict):
                    stack.append((f"{name}.", value))
                elif isinstance(value, list) and key == "packages":
                    rows.append((section, name, f"{len(value)} listed", source))
                elif isinstance(value, list):
                    shown = "; ".join(", ".join(f"{v}" for v in item.values()) if isinstance(item, dict) else str(item)
                                      for item in value)
                    rows.append((section, name, shown or "none", source))
                else:
                    shown = "null" if value is None else (str(value).lower() if isinstance(value, bool) else str(value))
                    rows.append((section, name, shown, source))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip() for r in rows]
    return [f"fingerprint schema v{doc['schema_version']}, collected {doc['collected_at']}"] + lines


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

# --- checkpoints: verify, inspect, ls, diff -------------------------------------------------

# --- training ------------------------------------------------------------------------------

# --- integrations: report -------------------------------------------------------------------


if __name__ == "__main__":  # pragma: no cover
    main()
