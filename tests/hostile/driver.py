"""Run every reprotrain CLI command on every hostile input and count what went wrong.

Commands are enumerated from the Click group itself (``reprotrain.cli.main``, subgroups included), so a
command added later is covered or the driver fails (``UNMAPPED``): ``ARGV`` maps each command to how it
takes file inputs. Invocations run in batches, each batch in one subprocess (torch imported once) under a
memory limit and a per-invocation timeout:

* the address-space limit (RLIMIT_AS) is set after the imports, to what the process has mapped by then plus
  ``--memory`` (1 GiB): torch's CUDA build alone maps ~3 GiB of libraries, so an absolute 1 GiB would not
  even import it; the 1 GiB is what handling a hostile input may add;
* each invocation gets ``--timeout`` seconds (SIGALRM); a batch that dies is restarted after the
  invocation it died in, which is counted.

Counts (all must be 0): tracebacks (an exception other than a clean exit, or "Traceback" in the output),
hangs, memory (MemoryError or the batch killed), undocumented exit codes, payloads executed (canary files
created), exit-0 verdicts on hostile inputs (verify, inspect, diff, sign, lock show, lock --check, env
verify, env create, fingerprint --compare), and hostile checkpoints that `ls` would resume from.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

DOCUMENTED_EXIT_CODES = {0, 1, 2, 3, 4, 5, 6, 130, 143}
# Commands whose exit 0 is a verdict of "good": never allowed on a hostile input.
VERDICTS = {"verify", "inspect", "diff", "sign", "lock show", "lock", "env verify", "env create", "fingerprint"}

# command path -> [(input kind, argv template)]. {in}: the hostile input; {good}: a genuine checkpoint;
# {goodfp}: its fingerprint; {lock}: a real conda-lock.yml; {prefix}: an empty conda prefix; {key}: a signing
# key; {scratch}: a fresh directory for this invocation; {copy}: a copy of the input in {scratch}.
ARGV: dict[str, list[tuple[str, list[str]]]] = {
    "verify": [("file", ["verify", "--against", "{goodfp}", "{in}"]),
               ("file", ["verify", "--no-digest", "--against", "{goodfp}", "{in}"]),
               ("fingerprint", ["verify", "--against", "{in}", "{good}"]),
               ("policy", ["verify", "--against", "{goodfp}", "--policy", "{in}", "{good}"]),
               ("lock", ["verify", "--against", "{goodfp}", "--lock", "{in}", "{good}"]),
               ("key", ["verify", "--against", "{goodfp}", "--trusted-key", "{in}", "{good}"])],
    "inspect": [("file", ["inspect", "{in}"])],
    "diff": [("file", ["diff", "{in}", "{good}"])],
    "ls": [("run-dir", ["ls", "--json", "{in}"]), ("run-dir", ["ls", "--no-digest", "{in}"])],
    "report": [("run-dir", ["report", "{in}", "-o", "{scratch}/report.html"])],
    "train": [("config", ["train", "--config", "{in}", "--run-dir", "{scratch}/run", "--epochs", "1"]),
              ("policy", ["train", "--policy", "{in}", "--run-dir", "{scratch}/run", "--epochs", "1"]),
              ("key", ["train", "--sign-key", "{in}", "--run-dir", "{scratch}/run", "--epochs", "1"])],
    "fingerprint": [("fingerprint", ["fingerprint", "--compare", "{in}"]),
                    ("policy", ["fingerprint", "--compare", "{goodfp}", "--policy", "{in}"])],
    "lock": [("lock", ["lock", "--check", "--lockfile", "{in}"]),
             ("env-file", ["lock", "--check", "-f", "{in}", "--lockfile", "{lock}"])],
    "lock show": [("lock", ["lock", "show", "{in}"])],
    "env create": [("lock", ["env", "create", "{in}", "-p", "{scratch}/env"])],
    "env export": [("prefix", ["env", "export", "-p", "{in}"])],
    "env verify": [("lock", ["env", "verify", "{in}", "-p", "{prefix}"]),
                   ("prefix", ["env", "verify", "{lock}", "-p", "{in}", "--platform", "linux-64", "--deep"])],
    "sign": [("file", ["sign", "{copy}", "--key", "{key}"]), ("key", ["sign", "{copy_good}", "--key", "{in}"])],
    "keygen": [("key", ["keygen", "{in}"])],
}
# Slow commands (they train or collect the live environment): only the inputs of the CI subset run them in CI.
SLOW = {"train"}


@dataclass
class Outcome:
    command: str
    kind: str
    input: str
    argv: list[str]
    exit_code: int | None = None
    problem: str | None = None  # traceback | hang | memory | undocumented-exit | exit-0-verdict | resumes-hostile
    detail: str = ""
    seconds: float = 0.0
    benign: bool = False  # exit 0 is right for this input and command


@dataclass
class Counts:
    invocations: int = 0
    commands: int = 0
    inputs: int = 0
    tracebacks: int = 0
    hangs: int = 0
    memory: int = 0
    undocumented_exit: int = 0
    payloads_executed: int = 0
    exit_0_verdicts: int = 0
    resumes_hostile: int = 0
    failures: list[dict] = field(default_factory=list)

    def bad(self) -> int:
        return (self.tracebacks + self.hangs + self.memory + self.undocumented_exit + self.payloads_executed
                + self.exit_0_verdicts + self.resumes_hostile)


def command_paths() -> list[str]:
    """Every command of the CLI, as space-joined paths ("verify", "lock show", "env verify", ...)."""
    import click

    from reprotrain.cli import main

    found = []

    def walk(cmd, path, ctx):
        if isinstance(cmd, click.Group):
            if path and cmd.invoke_without_command:
                found.append(" ".join(path))
            for name in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, name), path + [name], ctx)
        else:
            found.append(" ".join(path))

    walk(main, [], click.Context(main))
    return found


def unmapped() -> list[str]:
    return [c for c in command_paths() if c not in ARGV]


def _fixtures(root: Path) -> dict[str, str]:
    """The genuine inputs the argv templates refer to."""
    from reprotrain import fingerprint as fp

    good = root / "genuine.pth"
    goodfp = root / "genuine-fingerprint.json"
    import reprotrain.checkpoint.reader as reader

    goodfp.write_text(json.dumps(reader.read_info(good).manifest["fingerprint"]))
    fp.load(goodfp)
    prefix = root / "empty-prefix"
    (prefix / "conda-meta").mkdir(parents=True, exist_ok=True)
    key = root / "signing-key"
    if not key.exists():
        from reprotrain.checkpoint import signing

        signing.write_key_pair(key)
    realworld = Path(__file__).resolve().parents[2].parent / "shared" / "realworld" / "conda-lock"
    lock = next(iter(sorted(realworld.glob("*nlp-research-template__conda-lock.yml"))), None) or \
        next(iter(sorted(realworld.glob("*.yml"))))
    return {"good": os.fspath(good), "goodfp": os.fspath(goodfp), "prefix": os.fspath(prefix),
            "key": os.fspath(key), "lock": os.fspath(lock)}


def plan(inputs: dict, fixtures: dict, root: Path, *, size: str) -> list[Outcome]:
    plans = []
    counter = 0
    for command, templates in ARGV.items():
        for kind, template in templates:
            for item in inputs.get(kind, []):
                if size == "ci" and (not item.ci or (command in SLOW and item.name not in _SLOW_CI)):
                    continue
                counter += 1
                scratch = root / "scratch" / str(counter)
                values = {**fixtures, "in": item.path, "scratch": os.fspath(scratch),
                          "copy": os.fspath(scratch / (Path(item.path).name or "copy")),
                          "copy_good": os.fspath(scratch / "good.pth")}
                argv = [part.format(**values) if "{" in part else part for part in template]
                plans.append(Outcome(command, kind, item.name, argv, benign=command in item.benign_for))
    return plans


_SLOW_CI = {"fifo", "symlink-dev-zero", "task-is-code", "python-tag"}


def _prepare(outcome: Outcome, fixtures: dict) -> None:
    """Create the scratch directory and copies an invocation needs (copies of special files are not made)."""
    for part in outcome.argv:
        if "/scratch/" in part:
            scratch = Path(part.split("/scratch/")[0]) / "scratch" / part.split("/scratch/")[1].split("/")[0]
            scratch.mkdir(parents=True, exist_ok=True)
    if outcome.command == "sign":
        target = Path(outcome.argv[1])
        source = fixtures["good"] if target.name == "good.pth" else None
        if source is None:
            original = [p for p in _INPUT_PATHS.get(outcome.input, []) if Path(p).name == target.name]
            source = original[0] if original else None
        if source and os.path.isfile(source) and not os.path.islink(source) and os.path.getsize(source) < (64 << 20):
            shutil.copyfile(source, target)


_INPUT_PATHS: dict[str, list[str]] = {}


def run(size: str = "ci", *, root: str | os.PathLike | None = None, memory: int = 1 << 30, timeout: float = 30,
        batch: int = 400, progress=None) -> Counts:
    """Generate the hostile inputs, run every command on them, return the counts."""
    from tests.hostile.generate import generate

    own = root is None
    root = Path(tempfile.mkdtemp(prefix="reprotrain-hostile-")) if own else Path(root)
    try:
        inputs = generate(root, size)
        for items in inputs.values():
            for item in items:
                _INPUT_PATHS.setdefault(item.name, []).append(item.path)
        fixtures = _fixtures(root)
        plans = plan(inputs, fixtures, root, size=size)
        for outcome in plans:
            _prepare(outcome, fixtures)
        counts = Counts(invocations=len(plans), commands=len({p.command for p in plans}),
                        inputs=sum(len(v) for v in inputs.values()))
        todo = list(plans)
        while todo:
            chunk, todo = todo[:batch], todo[batch:]
            done, restart = _run_batch(chunk, memory=memory, timeout=timeout, cwd=root)
            if restart:  # the runner stopped after a hang it reported: the rest goes to a fresh process
                todo = chunk[done:] + todo
            elif done < len(chunk):  # the batch died in chunk[done]: count it, go on after it
                chunk[done].problem, chunk[done].detail = "memory", "the batch process was killed"
                todo = chunk[done + 1:] + todo
            if progress:
                progress(len(plans) - len(todo), len(plans))
        for outcome in plans:
            _judge(outcome)
            if outcome.problem:
                setattr(counts, _FIELD[outcome.problem], getattr(counts, _FIELD[outcome.problem]) + 1)
                counts.failures.append(asdict(outcome))
        executed = sorted(p.name for p in (root / "canary").iterdir())
        counts.payloads_executed = len(executed)
        counts.failures += [{"problem": "payload executed", "canary": name} for name in executed]
        return counts
    finally:
        if own:
            _remove(root)


_FIELD = {"traceback": "tracebacks", "hang": "hangs", "memory": "memory", "undocumented-exit": "undocumented_exit",
          "exit-0-verdict": "exit_0_verdicts", "resumes-hostile": "resumes_hostile"}


def _judge(outcome: Outcome) -> None:
    if outcome.problem:
        return
    if outcome.exit_code not in DOCUMENTED_EXIT_CODES:
        outcome.problem = "undocumented-exit"
    elif outcome.exit_code == 0 and outcome.command in VERDICTS and not outcome.benign:
        outcome.problem = "exit-0-verdict"
    elif outcome.command == "ls" and outcome.exit_code == 0 and "--json" in outcome.argv:
        try:
            pick = json.loads(outcome.detail).get("resume")
        except ValueError:
            pick = None
        if pick and os.path.basename(pick) != "step0000000005-latest.pth":
            outcome.problem = "resumes-hostile"
    if outcome.problem is None:
        outcome.detail = ""


def _run_batch(chunk: list[Outcome], *, memory: int, timeout: float, cwd: Path) -> tuple[int, bool]:
    """Run CHUNK in one subprocess; fill in each outcome; return how many completed and whether the runner asked
    to be restarted (after a hang)."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as results:
        results_path = results.name
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2])]
                                                       + [p for p in [os.environ.get("PYTHONPATH")] if p]),
           "REPROTRAIN_HOSTILE_MEMORY": str(memory), "REPROTRAIN_HOSTILE_TIMEOUT": str(timeout),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "120"}
    spec = json.dumps([o.argv for o in chunk])
    from tests.hostile.runner import RESTART

    restart = False
    try:
        proc = subprocess.run([sys.executable, "-m", "tests.hostile.runner", results_path], input=spec, text=True,
                              capture_output=True, env=env, cwd=cwd, timeout=timeout * len(chunk) + 120)
        restart = proc.returncode == RESTART
    except subprocess.TimeoutExpired:
        pass
    done = 0
    with open(results_path, encoding="utf-8") as handle:
        for line, outcome in zip(handle, chunk):
            record = json.loads(line)
            outcome.exit_code, outcome.problem = record["exit_code"], record["problem"]
            outcome.detail, outcome.seconds = record["detail"], record["seconds"]
            done += 1
    os.unlink(results_path)
    return done, restart


def _remove(root: Path) -> None:
    for dirpath, _, _ in os.walk(root):
        try:
            os.chmod(dirpath, 0o755)
        except OSError:
            pass
    shutil.rmtree(root, ignore_errors=True)


def format_counts(counts: Counts, seconds: float) -> str:
    lines = [f"{counts.invocations} invocations of {counts.commands} commands on {counts.inputs} hostile inputs "
             f"in {seconds:.0f} s",
             f"tracebacks {counts.tracebacks}", f"hangs {counts.hangs}", f"memory {counts.memory}",
             f"undocumented exit codes {counts.undocumented_exit}", f"payloads executed {counts.payloads_executed}",
             f"exit-0 verdicts on hostile inputs {counts.exit_0_verdicts}",
             f"ls would resume from a hostile file {counts.resumes_hostile}"]
    for failure in counts.failures[:40]:
        lines.append("  FAIL " + json.dumps(failure)[:400])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.hostile", description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("ci", "full"), default="full")
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--memory", type=int, default=1 << 30, help="bytes of address space above the imports")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    missing = unmapped()
    if missing:
        print(f"commands without a hostile-input mapping in tests/hostile/driver.py ARGV: {', '.join(missing)}")
        return 2
    start = time.monotonic()
    counts = run(args.size, memory=args.memory, timeout=args.timeout,
                 progress=lambda done, total: print(f"\r{done}/{total}", end="", file=sys.stderr, flush=True))
    print(file=sys.stderr)
    print(json.dumps(asdict(counts), indent=1) if args.json else format_counts(counts, time.monotonic() - start))
    return 1 if counts.bad() else 0
