"""The `reprotrain` command line: parse, call the library, format the result.

One module per command group (`reprotrain/cli/<group>.py`), loaded only when its command runs or help
lists it: the table `COMMANDS` below is the whole registry. Heavy modules (torch above all) are imported
inside the commands that need them, never at module level: `reprotrain --help` and the lock commands
stay instant. Library code never lives here.
"""

from __future__ import annotations

import importlib
import json

import click

from reprotrain import __version__
from reprotrain.errors import ReprotrainError, escape_control


# command name -> "module:attribute" under reprotrain.cli, in the order `--help` lists them.
COMMANDS = {
    "train": "train:train",
    "fingerprint": "fingerprint:fingerprint_command",
    "lock": "lock:lock_group",
    "env": "env:env_group",
    "verify": "audit:verify_command",
    "inspect": "audit:inspect_command",
    "ls": "audit:ls_command",
    "diff": "audit:diff_command",
    "sign": "sign:sign_command",
    "keygen": "sign:keygen_command",
    "report": "report:report",
}


class _Group(click.Group):
    """The top-level group: loads each command's module on first use, and turns ReprotrainError into one
    line on stderr and its exit code."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        return getattr(importlib.import_module(f"reprotrain.cli.{module_name}"), attribute)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ReprotrainError as exc:
            click.echo(f"reprotrain: error: {quote(str(exc))}", err=True)
            ctx.exit(exc.exit_code)


def quote(text) -> str:
    """The one quoting function for everything the CLI prints that reprotrain did not write itself: paths,
    member and package names, messages that carry them. Control and format characters are escaped (a file
    name with a newline cannot forge an output line, an escape sequence cannot drive the terminal)."""
    return escape_control(str(text))  # str(): a Path or a Location (an s3:// URL has no fspath) as written


def cell(text):
    """A rich table cell of untrusted text: quoted, and never parsed as rich markup ("[red]" stays literal)."""
    from rich.text import Text

    return Text(quote("-" if text is None else text))


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
    checkpoint (verify), 5 signature verdict failed (verify, sign, train).
    Training also exits 130 on SIGINT and 143 on SIGTERM.
    """
