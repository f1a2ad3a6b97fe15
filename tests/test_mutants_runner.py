"""`python -m benchmarks.mutants`: the curated mutants still apply, and the runner tells killed, survived and stale
apart (on a tiny project of its own, so that this test does not pay for the real mutation run, which CI does)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from benchmarks import mutants
from conftest import PROJECT_ROOT


def test_every_curated_mutant_applies_to_the_current_tree():
    result = subprocess.run([sys.executable, "-m", "benchmarks.mutants", "--list"], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "STALE" not in result.stdout, result.stdout
    listed = mutants.discover()
    assert len([m for m in listed if m.source == "benchmarks/mutants/m_core.py"]) >= 25
    assert result.stdout.splitlines()[-1] == f"{len(listed)} mutants"


@pytest.fixture
def tiny_project(tmp_path):
    root = tmp_path / "project"
    (root / "calc").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "calc" / "__init__.py").write_text("def add(a, b):\n    return a + b\n\n\ndef unused():\n    return 1\n")
    (root / "tests" / "test_calc.py").write_text("from calc import add\n\n\n"
                                                "def test_add():\n    assert add(2, 3) == 5\n")
    return root


def _mutant(**changes):
    spec = dict(name="m", path="calc/__init__.py", old="a + b", new="a - b", tests=["tests/test_calc.py::test_add"],
                source="test")
    spec.update(changes)
    return mutants.Mutant(**spec)


def test_killed_survived_stale_and_missing_tests(tiny_project):
    files = mutants.tree_files(tiny_project)
    assert files == ["calc/__init__.py", "tests/test_calc.py"]

    def run(**changes):
        return mutants.run_mutant(_mutant(**changes), tiny_project, files, timeout=120)

    killed = run()
    assert killed.status == "killed" and "test_add" in killed.detail
    survived = run(old="return 1", new="return 2")
    assert survived.status == "survived"
    assert run(old="a * b").status == "stale" and "occurs 0 times" in run(old="a * b").detail
    assert run(old="return").status == "stale"  # occurs twice: ambiguous, refused
    assert run(path="calc/gone.py").status == "stale"
    missing = run(tests=["tests/test_calc.py::test_nothing"])
    assert missing.status == "error" and "pytest exited 4" in missing.detail
    # The real tree was never touched.
    assert (tiny_project / "calc" / "__init__.py").read_text().count("a + b") == 1


@pytest.mark.parametrize("body, message", [
    ("MUTANTS = {}", "must define MUTANTS"),
    ("MUTANTS = [dict(name='x', path='p.py', old='a', new='b')]", "missing keys ['tests']"),
    ("MUTANTS = [dict(name='x', path='p.py', old='a', new='b', tests=[], why='')]", "unknown keys ['why']"),
    ("MUTANTS = [dict(name='x', path='p.py', old='a', new='b', tests=[])]", "tests must be a non-empty list"),
    ("MUTANTS = [dict(name='x', path='p.py', old='a', new='a', tests=['t'])]", "new is the same as old"),
    ("MUTANTS = [dict(name='x', path='/etc/p.py', old='a', new='b', tests=['t'])]", "relative to the repository"),
    ("MUTANTS = [dict(name='x', path='p.py', old='a', new='b', tests=['t'])] * 2", "name 'x' is already used"),
    ("import nonexistent_module_xyz", "cannot import"),
])
def test_malformed_mutant_files_stop_the_run_before_anything_runs(tmp_path, monkeypatch, body, message):
    package = tmp_path / "fake_mutants_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "m_area.py").write_text(textwrap.dedent(body) + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(mutants.MutantSpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        mutants.discover(package, "fake_mutants_pkg")
    for name in [n for n in sys.modules if n.startswith("fake_mutants_pkg")]:
        del sys.modules[name]
