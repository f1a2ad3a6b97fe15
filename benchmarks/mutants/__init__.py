"""Curated mutation testing: plant one deliberate bug at a time in a copy of the tree and prove the tests see it.

Every ``benchmarks/mutants/m_<area>.py`` holds ``MUTANTS = [dict(name=, path=, old=, new=, tests=[...]), ...]``:
``path`` is a file of the repository, ``old`` source text that occurs in it exactly once, ``new`` the buggy
replacement, ``tests`` the pytest node ids (or files) that must fail on it. For each mutant the runner

1. copies the working tree (tracked and untracked-but-not-ignored files; never the tree itself, other processes
   import it) into a temporary directory, with ``shared/`` linked beside it as the tests expect;
2. replaces ``old`` by ``new`` there; a mutant whose ``old`` is not found exactly once is **stale**, an error;
3. runs ``python -m pytest -p no:xdist -x -q TESTS`` in the copy with ``PYTHONPATH`` set to the copy;
4. reports it **killed** (the tests failed), **survived** (they passed: a bug the tests let through) or an
   **error** (the test ids do not exist, the run timed out...).

The command exits 0 only when every mutant is killed. Options: ``--list``, ``--only NAME`` (repeatable, globs),
``-j N`` (mutants in parallel), ``--baseline`` (first run every listed test on the unmutated copy: it must pass,
or a "killed" mutant proves nothing; CI skips it because the whole suite has just passed), ``--json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fnmatch
import importlib
import json
import os
import pkgutil
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("name", "path", "old", "new", "tests")
# Never copied when the tree is walked without git (git's own ignore rules apply otherwise).
_IGNORED = {".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".hypothesis", ".mypy_cache", "build", "dist",
            "runs", "node_modules", ".whl", ".gl"}
DEFAULT_TIMEOUT_S = 600


class MutantSpecError(Exception):
    """A mutant file breaks the announced format (the run stops before anything is executed)."""


@dataclass
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: list[str]
    source: str  # the m_*.py file that defines it

    def stale_reason(self, root: Path) -> str | None:
        """Why this mutant cannot be applied to ROOT's tree (None when ``old`` occurs exactly once)."""
        target = root / self.path
        if not target.is_file():
            return f"{self.path} does not exist"
        count = target.read_text(encoding="utf-8").count(self.old)
        if count != 1:
            return f"`old` occurs {count} times in {self.path} (must be exactly once)"
        return None


@dataclass
class Result:
    name: str
    source: str
    path: str
    status: str  # killed | survived | stale | error
    detail: str = ""
    seconds: float = 0.0
    tests: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- discovery


def discover(package_dir: Path = Path(__file__).resolve().parent, package: str = __name__) -> list[Mutant]:
    """Every mutant of every ``m_*.py`` file, in file then list order; MutantSpecError on a malformed one."""
    mutants: list[Mutant] = []
    seen: dict[str, str] = {}
    for info in sorted(pkgutil.iter_modules([str(package_dir)]), key=lambda i: i.name):
        if not info.name.startswith("m_"):
            continue
        source = f"benchmarks/mutants/{info.name}.py"
        try:
            module = importlib.import_module(f"{package}.{info.name}")
        except Exception as exc:  # a broken mutant file is the author's error, reported in one line
            raise MutantSpecError(f"{source}: cannot import: {type(exc).__name__}: {exc}") from None
        specs = getattr(module, "MUTANTS", None)
        if not isinstance(specs, list):
            raise MutantSpecError(f"{source}: must define MUTANTS = [dict(name=, path=, old=, new=, tests=[...])]")
        for index, spec in enumerate(specs):
            where = f"{source}: MUTANTS[{index}]"
            if not isinstance(spec, dict):
                raise MutantSpecError(f"{where} is not a dict")
            missing = [k for k in KEYS if k not in spec]
            extra = sorted(set(spec) - set(KEYS))
            if missing or extra:
                raise MutantSpecError(f"{where}: missing keys {missing}, unknown keys {extra}; "
                                      f"use exactly {', '.join(KEYS)}")
            for key in ("name", "path", "old", "new"):
                if not isinstance(spec[key], str) or (key != "new" and not spec[key]):
                    raise MutantSpecError(f"{where}: {key} must be a non-empty string")
            tests = spec["tests"]
            if not isinstance(tests, list) or not tests or not all(isinstance(t, str) and t for t in tests):
                raise MutantSpecError(f"{where} ({spec['name']}): tests must be a non-empty list of pytest ids")
            if spec["old"] == spec["new"]:
                raise MutantSpecError(f"{where} ({spec['name']}): new is the same as old")
            if Path(spec["path"]).is_absolute() or ".." in Path(spec["path"]).parts:
                raise MutantSpecError(f"{where} ({spec['name']}): path must be relative to the repository root")
            if spec["name"] in seen:
                raise MutantSpecError(f"{where}: name {spec['name']!r} is already used in {seen[spec['name']]}")
            seen[spec["name"]] = source
            mutants.append(Mutant(spec["name"], spec["path"], spec["old"], spec["new"], list(tests), source))
    return mutants


# --------------------------------------------------------------------------- the copy


def tree_files(root: Path) -> list[str]:
    """Relative paths of the working tree: git's tracked and untracked-not-ignored files, or a filtered walk."""
    if (root / ".git").exists() and shutil.which("git"):
        listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                                 "--exclude-standard"], capture_output=True)
        if listed.returncode == 0:
            names = [n for n in listed.stdout.decode("utf-8", "surrogateescape").split("\0") if n]
            return sorted({n for n in names if (root / n).is_file() and "__pycache__" not in Path(n).parts})
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _IGNORED and not d.endswith(".egg-info")]
        for name in filenames:
            if not name.endswith((".pyc", ".pyo")):
                files.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(files)


def make_copy(root: Path, files: list[str], workdir: Path) -> Path:
    """WORKDIR/repo: a copy of FILES of ROOT, with WORKDIR/shared linking ROOT's sibling shared/ (test material)."""
    repo = workdir / "repo"
    for name in files:
        target = repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target, follow_symlinks=False)
    shared = root.parent / "shared"
    if shared.is_dir():
        (workdir / "shared").symlink_to(shared, target_is_directory=True)
    return repo


def _child_env(repo: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(repo)  # the copy, and only the copy, provides reprotrain, tests and benchmarks
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a same-size mutant written in the same second must not reuse a .pyc
    env.pop("PYTEST_ADDOPTS", None)
    return env


def pytest_command(tests: list[str]) -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "no:xdist", "-x", "-q", "-p", "no:cacheprovider", *tests]


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# --------------------------------------------------------------------------- running


def run_mutant(mutant: Mutant, root: Path, files: list[str], *, timeout: float) -> Result:
    started = time.monotonic()
    result = Result(mutant.name, mutant.source, mutant.path, "error", tests=mutant.tests)
    reason = mutant.stale_reason(root)
    if reason is not None:
        result.status, result.detail = "stale", reason
        return result
    with tempfile.TemporaryDirectory(prefix=f"reprotrain-mutant-{mutant.name}-") as tmp:
        repo = make_copy(root, files, Path(tmp))
        target = repo / mutant.path
        text = target.read_text(encoding="utf-8")
        target.write_text(text.replace(mutant.old, mutant.new, 1), encoding="utf-8")
        try:
            proc = subprocess.run(pytest_command(mutant.tests), cwd=repo, env=_child_env(repo), capture_output=True,
                                  text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            result.detail = f"the tests ran longer than {timeout:g} s"
        else:
            output = proc.stdout + proc.stderr
            if proc.returncode == 1:
                result.status = "killed"
                failed = [line for line in output.splitlines() if line.startswith(("FAILED", "ERROR"))]
                result.detail = failed[0] if failed else "tests failed"
            elif proc.returncode == 2 and "error" in output.lower():
                result.status = "killed"
                result.detail = "collection error (the mutated code does not even import)"
            elif proc.returncode == 0:
                result.status = "survived"
                result.detail = _tail(output, 3)
            else:  # 3 internal error, 4 usage error (a test id that does not exist), 5 nothing collected
                result.detail = f"pytest exited {proc.returncode}:\n{_tail(output)}"
    result.seconds = time.monotonic() - started
    return result


def run_baseline(mutants: list[Mutant], root: Path, files: list[str], *, timeout: float) -> str | None:
    """Run every listed test once, unmutated; return why it failed (None when it passed)."""
    tests = list(dict.fromkeys(t for m in mutants for t in m.tests))
    with tempfile.TemporaryDirectory(prefix="reprotrain-mutant-baseline-") as tmp:
        repo = make_copy(root, files, Path(tmp))
        check = subprocess.run([sys.executable, "-c", "import reprotrain; print(reprotrain.__file__)"], cwd=repo,
                               env=_child_env(repo), capture_output=True, text=True)
        if not check.stdout.strip().startswith(str(repo)):
            return f"the copy does not provide reprotrain (imported {check.stdout.strip() or check.stderr.strip()})"
        try:
            proc = subprocess.run(pytest_command(tests), cwd=repo, env=_child_env(repo), capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return f"the unmutated tests ran longer than {timeout:g} s"
    if proc.returncode != 0:
        return f"the listed tests fail WITHOUT any mutant (pytest exited {proc.returncode}):\n" \
               f"{_tail(proc.stdout + proc.stderr)}"
    return None


def select(mutants: list[Mutant], patterns: list[str] | None) -> list[Mutant]:
    if not patterns:
        return mutants
    chosen = [m for m in mutants if any(fnmatch.fnmatchcase(m.name, p) for p in patterns)]
    unknown = [p for p in patterns if not any(fnmatch.fnmatchcase(m.name, p) for m in mutants)]
    if unknown:
        raise MutantSpecError(f"--only: no mutant named {', '.join(unknown)} (see --list)")
    return chosen


def _line(result: Result, width: int) -> str:
    return f"{result.status:<9} {result.name:<{width}} {result.seconds:6.1f}s  {result.path}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mutants", description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the mutants (and whether each still applies)")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this mutant (repeatable; globs)")
    parser.add_argument("-j", "--jobs", type=int, default=1, metavar="N", help="mutants run in parallel (default 1)")
    parser.add_argument("--baseline", action="store_true",
                        help="first run every listed test unmutated (must pass); CI skips it after the full suite")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per mutant (default 600)")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout instead of the table")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("-j must be at least 1")
    root = args.root.resolve()
    try:
        mutants = select(discover(), args.only)
    except MutantSpecError as exc:
        print(f"mutants: error: {exc}", file=sys.stderr)
        return 2
    if not mutants:
        print("mutants: error: no mutants found (benchmarks/mutants/m_*.py)", file=sys.stderr)
        return 2
    width = max(len(m.name) for m in mutants)
    if args.list:
        for m in mutants:
            stale = m.stale_reason(root)
            print(f"{m.name:<{width}}  {m.source:<32} {m.path}  [{len(m.tests)} test(s)]"
                  + (f"  STALE: {stale}" if stale else ""))
        print(f"{len(mutants)} mutants")
        return 0
    started = time.monotonic()
    files = tree_files(root)
    if args.baseline:
        problem = run_baseline(mutants, root, files, timeout=args.timeout)
        if problem:
            print(f"mutants: error: baseline: {problem}", file=sys.stderr)
            return 2
        if not args.json:
            print(f"baseline: the listed tests pass unmutated ({time.monotonic() - started:.1f} s)", flush=True)
    results: list[Result] = []
    lock = threading.Lock()

    def one(mutant: Mutant) -> Result:
        res = run_mutant(mutant, root, files, timeout=args.timeout)
        with lock:
            results.append(res)
            if not args.json:
                print(_line(res, width), flush=True)
                if res.status not in ("killed",):
                    print("    " + res.detail.replace("\n", "\n    "), flush=True)
        return res

    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(one, mutants))
    order = {m.name: i for i, m in enumerate(mutants)}
    results.sort(key=lambda r: order[r.name])
    counts = {status: sum(r.status == status for r in results) for status in ("killed", "survived", "stale", "error")}
    wall = time.monotonic() - started
    if args.json:
        print(json.dumps({"mutants": len(results), **counts, "seconds": round(wall, 1),
                          "results": [asdict(r) for r in results]}, indent=2))
    else:
        print(f"{len(results)} mutants: {counts['killed']} killed, {counts['survived']} survived, "
              f"{counts['stale']} stale, {counts['error']} errors ({wall:.0f} s, -j {args.jobs})")
        for r in results:
            if r.status != "killed":
                print(f"  {r.status.upper()}: {r.name} ({r.source}): {r.path}; tests: {' '.join(r.tests)}")
    return 0 if counts["killed"] == len(results) else 1
