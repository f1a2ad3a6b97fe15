"""The documentation stays in sync with the code: every `reprotrain ...` command line in docs/ci.md's code blocks
parses with the real Click CLI (the command exists, every option exists and takes what it is given), and the
exit-code tables of README.md, README.zh-CN.md, docs/architecture.md and docs/ci.md list exactly the codes of
reprotrain.errors.ExitCode (tests/test_readme.py does the same for the README's quick start and tour)."""

from __future__ import annotations

import re
import shlex
import warnings
from pathlib import Path

import click
import pytest

from reprotrain.audit import worst_exit_code
from reprotrain.cli import main
from reprotrain.errors import NOT_YET_RETURNED, ExitCode

ROOT = Path(__file__).resolve().parents[1]
SHELL_OPERATORS = {">", ">>", "<", "|", "||", "&&", ";", "&", "2>", "2>&1"}
ALL_COMMANDS = {code for code in ExitCode if code not in NOT_YET_RETURNED}


def code_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```", markdown, flags=re.S | re.M)


def reprotrain_command_lines(markdown: str) -> list[list[str]]:
    """The argument lists of every `reprotrain ...` invocation in MARKDOWN's code blocks (shell tail cut off)."""
    commands = []
    for block in code_blocks(markdown):
        for line in block.splitlines():
            match = re.search(r"(?:^|[\s:|;&(])reprotrain\s+(.*)$", line)
            if match is None or line.lstrip().startswith("#"):
                continue
            lexer = shlex.shlex(match.group(1), posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            lexer.commenters = "#"
            args = []
            for token in lexer:
                if token in SHELL_OPERATORS:
                    break
                if token != "...":  # the docs' elision of further arguments
                    args.append(token)
            commands.append(args)
    return commands


def parse_with_click(args: list[str]) -> tuple[click.Command, dict]:
    """Parse ARGS exactly as `reprotrain ARGS` would, without running anything: (command, its parameters)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Click 8.2+: protected_args
        ctx = main.make_context("reprotrain", list(args))
        command: click.Command = main
        while isinstance(command, click.Group):
            rest = [*ctx.protected_args, *ctx.args]
            if not rest:
                break
            name, command, rest = command.resolve_command(ctx, rest)
            ctx = command.make_context(name, rest, parent=ctx)
    return command, ctx.params


def test_every_command_in_ci_md_parses_with_the_real_cli():
    commands = reprotrain_command_lines((ROOT / "docs" / "ci.md").read_text(encoding="utf-8"))
    assert len(commands) >= 8, commands  # the workflow and the signature gate
    for args in commands:
        try:
            parse_with_click(args)
        except click.ClickException as exc:
            pytest.fail(f"docs/ci.md: `reprotrain {' '.join(args)}`: {exc.format_message()}")
    verify = [parse_with_click(a)[1] for a in commands if a[0] == "verify"]
    assert any(params["lockfile"] == "conda-lock.yml" and params["against"] is None for params in verify), \
        "the CI workflow verifies checkpoints against the lock"


def test_the_command_check_catches_what_it_should():
    with pytest.raises(click.NoSuchOption):
        parse_with_click(["verify", "a.pth", "--lock-file", "conda-lock.yml"])
    with pytest.raises(click.UsageError):
        parse_with_click(["verfiy", "a.pth"])
    with pytest.raises(click.BadParameter):
        parse_with_click(["verify", "a.pth", "--on-mismatch", "sometimes"])
    assert reprotrain_command_lines("```bash\nx=1 && reprotrain verify \"a b.pth\" --json > out.json  # c\n```\n") \
        == [["verify", "a b.pth", "--json"]]


def exit_code_table(path: str, heading: str) -> dict[int, str]:
    """{code: meaning} of the table right under HEADING in PATH; a row "130 / 143" gives both codes."""
    text = (ROOT / path).read_text(encoding="utf-8")
    assert heading in text, f"{path}: no section {heading!r}"
    section = text.split(heading, 1)[1]
    rows = {}
    for line in section.splitlines()[1:]:
        if not line.strip():
            if rows:
                break
            continue
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not re.fullmatch(r"\d+(\s*/\s*\d+)*", cells[0]):
            continue  # the header and its rule
        for code in re.findall(r"\d+", cells[0]):
            assert int(code) not in rows, f"{path}: code {code} listed twice"
            rows[int(code)] = cells[1]
    assert rows, f"{path}: no exit-code table under {heading!r}"
    return rows


@pytest.mark.parametrize("path, heading", [
    ("README.md", "## Exit codes"),
    ("README.zh-CN.md", "## 退出码"),
    ("docs/architecture.md", "## Exit codes (all commands)"),
])
def test_exit_code_tables_list_exactly_the_codes_of_the_code(path, heading):
    table = exit_code_table(path, heading)
    assert set(table) == {int(code) for code in ALL_COMMANDS}, f"{path} lists {sorted(table)}"
    if not path.endswith("zh-CN.md"):
        for code, meaning in table.items():
            keyword = ExitCode(code).keyword
            assert keyword.lower() in meaning.lower(), f"{path}: exit code {code} ({meaning!r}) must say {keyword!r}"


def test_ci_md_lists_verify_exit_codes_in_the_order_verify_ranks_them():
    table = exit_code_table("docs/ci.md", "## Exit codes of `reprotrain verify`")
    assert set(table) <= {int(code) for code in ALL_COMMANDS} and ExitCode.TRAINING_FAILED not in table
    text = (ROOT / "docs" / "ci.md").read_text(encoding="utf-8")
    ranked = [int(code) for code in re.search(r"ranked \*\*([\d >]+)\*\*", text).group(1).split(">")]
    assert sorted(ranked) == sorted(table), "the ranking sentence and the table name the same codes"
    for worse, better in zip(ranked, ranked[1:]):
        assert worst_exit_code([better, worse]) == worse, f"verify ranks {better} above {worse}"


def test_every_exit_code_has_a_description_and_the_errors_use_them():
    from reprotrain.errors import EnvironmentRefused, InvalidDocumentError, ReprotrainError

    assert all(code.description and code.keyword for code in ExitCode)
    assert NOT_YET_RETURNED <= set(ExitCode)
    assert ReprotrainError("x").exit_code is ExitCode.BAD_INPUT and str(ReprotrainError("x").exit_code) == "2"
    assert InvalidDocumentError("x").exit_code is ExitCode.BAD_INPUT
    assert EnvironmentRefused("x").exit_code is ExitCode.REFUSED
