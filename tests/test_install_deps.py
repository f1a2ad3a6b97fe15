"""What `pip install reprotrain` pulls in: every imported package declared, no scikit-learn or scipy, the
digits data shipped inside the package."""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata as metadata
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
# Optional packages the [test] environment does not install (no GPU here): module -> distribution.
NOT_INSTALLED_HERE = {"pynvml": {"nvidia-ml-py"}}


def _imported_top_level_modules() -> set[str]:
    """Every absolute import in reprotrain/ (module level and inside functions)."""
    found: set[str] = set()
    for path in (ROOT / "reprotrain").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def _declared(extras: bool) -> set[str]:
    requirements = list(PROJECT["dependencies"])
    if extras:
        for name, extra in PROJECT["optional-dependencies"].items():
            if name != "test":
                requirements += extra
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def test_every_imported_third_party_package_is_declared():
    distributions = metadata.packages_distributions()
    third_party = {m for m in _imported_top_level_modules()
                   if m not in sys.stdlib_module_names and m not in ("reprotrain", "__future__")}
    assert {"torch", "conda_lock", "rattler", "packaging", "fsspec"} <= third_party
    declared = _declared(extras=True)
    undeclared = {}
    for module in sorted(third_party):
        owners = {canonicalize_name(d) for d in distributions.get(module, [])} or NOT_INSTALLED_HERE.get(module)
        assert owners, f"{module}: imported by reprotrain but not installed here"
        if not owners & declared:
            undeclared[module] = sorted(owners)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def _closure(requirements: list[str]) -> set[str]:
    """Names pip would install for REQUIREMENTS (no extras), walking the installed distributions' metadata."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # not installed here (a platform-specific dependency): nothing further to walk
        for extra_name in requirement.extras:
            for line in dist.requires or ():
                dep = Requirement(line)
                if dep.marker is not None and dep.marker.evaluate({"extra": extra_name}):
                    todo.append(Requirement(str(dep).split(";")[0]))
        todo += [Requirement(line) for line in dist.requires or ()]
    return seen


def test_base_install_pulls_neither_scikit_learn_nor_scipy():
    closure = _closure(PROJECT["dependencies"])
    assert {"torch", "conda-lock", "numpy", "py-rattler"} <= closure  # the walk really follows the graph
    assert "scikit-learn" not in closure and "scipy" not in closure, sorted(closure)
    # The walk itself would find them if a base dependency pulled them in.
    assert {"scikit-learn", "scipy"} <= _closure(["scikit-learn"])
    assert not Marker("extra == 'mlflow'").evaluate({"extra": ""})


def test_digits_data_ships_inside_the_package_with_its_licence():
    from reprotrain.training.tasks import DIGITS_CSV, digits_arrays

    assert DIGITS_CSV.is_relative_to(ROOT / "reprotrain")
    assert hashlib.sha256(DIGITS_CSV.read_bytes()).hexdigest() == \
        "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
    notes = (DIGITS_CSV.parent / "README.md").read_text()
    assert "BSD 3-Clause License" in notes and "Alpaydin" in notes
    package_data = PYPROJECT["tool"]["setuptools"]["package-data"]["reprotrain"]
    assert "training/data/digits.csv.gz" in package_data
    images, labels = digits_arrays()
    assert images.shape == (1797, 8, 8) and images.dtype == torch.float64
    assert labels.dtype == torch.int64 and set(labels.tolist()) == set(range(10))


def test_bundled_digits_equal_scikit_learns_loader():
    sklearn_datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn is a [test] extra only")
    from reprotrain.training.tasks import digits_arrays

    images, labels = digits_arrays()
    bunch = sklearn_datasets.load_digits()
    assert torch.equal(images, torch.from_numpy(bunch.images)) and torch.equal(labels, torch.from_numpy(bunch.target))
