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

# --- environment lock and verification (no torch import) ----------------------------------

# --- checkpoints: verify, inspect, ls, diff -------------------------------------------------

# --- training ------------------------------------------------------------------------------

# --- integrations: report -------------------------------------------------------------------


if __name__ == "__main__":  # pragma: no cover
    main()
