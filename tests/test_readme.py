"""The README's quick start is what CI runs, and its commands exist."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from reprotrain.cli import main

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands(readme: str) -> list[str]:
    block = readme.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_quick_start_has_two_commands_and_ci_runs_the_test_one():
    commands = quick_start_commands((ROOT / "README.md").read_text())
    assert len(commands) == 2
    install_and_train, install_and_test = commands
    assert install_and_train.endswith("reprotrain train")
    assert "pytest" in install_and_test
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install_and_test in ci_lines, ".ci/run must run exactly the README's test command"


def test_chinese_readme_gives_the_same_commands():
    english = quick_start_commands((ROOT / "README.md").read_text())
    chinese_text = (ROOT / "README.zh-CN.md").read_text()
    block = chinese_text.split("## 快速开始", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    chinese = [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert chinese == english


def test_every_command_in_the_tour_exists():
    readme = (ROOT / "README.md").read_text()
    tour = readme.split("## A tour of the commands", 1)[1].split("###", 1)[0]
    runner = CliRunner()
    for name in sorted(set(re.findall(r"`reprotrain ([a-z]+)", tour))):
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0, f"reprotrain {name} --help: {result.output}"
