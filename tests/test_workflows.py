"""The GitHub Actions workflows a user of this repository gets: valid against SchemaStore's workflow schema
(vendored by check-jsonschema: no network), running the README's test command and the lock cycle."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import yaml
from test_readme import quick_start_commands

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"


def _schema() -> dict:
    text = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("github-workflows.json").read_text()
    return json.loads(text)


def _load(name: str) -> dict:
    # YAML 1.1 reads the key `on` as True; GitHub reads it as "on".
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    if True in doc:
        doc["on"] = doc.pop(True)
    return doc


@pytest.mark.parametrize("name", ["ci.yml", "lock.yml"])
def test_workflow_is_valid_against_the_schema(name):
    schema = _schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(_load(name)), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors[:5]]


def test_schema_rejects_a_broken_workflow():
    schema = _schema()
    broken = {"on": "push", "jobs": {"test": {"steps": [{"run": "true"}]}}}  # no runs-on
    assert list(jsonschema.validators.validator_for(schema)(schema).iter_errors(broken))
    typo = _load("ci.yml")
    typo["jobs"]["test"]["step"] = typo["jobs"]["test"].pop("steps")
    assert list(jsonschema.validators.validator_for(schema)(schema).iter_errors(typo))


def test_ci_runs_the_readme_test_command_on_three_systems():
    ci = _load("ci.yml")
    job = ci["jobs"]["test"]
    assert set(job["strategy"]["matrix"]["os"]) == {"ubuntu-latest", "macos-latest", "windows-latest"}
    readme_test = quick_start_commands((ROOT / "README.md").read_text())[1]
    runs = [step.get("run") for step in job["steps"]]
    assert readme_test in runs
    windows = next(step["run"] for step in job["steps"] if step.get("if") == "runner.os == 'Windows'")
    assert windows == readme_test.replace("python3 -m venv", "python -m venv").replace(".venv/bin/", ".venv/Scripts/")


def test_lock_workflow_locks_on_a_change_to_envs_and_checks_every_system():
    lock = _load("lock.yml")
    assert lock["on"]["push"]["paths"] == ["envs/**"] and lock["on"]["pull_request"]["paths"] == ["envs/**"]
    commands = {name: "\n".join(step.get("run", "") for step in job["steps"]) for name, job in lock["jobs"].items()}
    assert "reprotrain lock -f envs/environment-cpu.yml --lockfile conda-lock.yml" in commands["lock"]
    check = lock["jobs"]["check"]
    assert check["needs"] == "lock"
    assert set(check["strategy"]["matrix"]["os"]) == {"ubuntu-latest", "macos-latest", "windows-latest"}
    for command in ("reprotrain lock --check", "reprotrain env create", "reprotrain env verify"):
        assert command in commands["check"]
    assert lock["jobs"]["propose"]["needs"] == "check"
    assert any("create-pull-request" in step.get("uses", "") for step in lock["jobs"]["propose"]["steps"])
    # every environment file the workflow locks exists
    for env in ("envs/environment-cpu.yml", "envs/environment-cuda.yml"):
        assert (ROOT / env).is_file() and env in commands["lock"]
