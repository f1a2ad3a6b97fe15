"""`reprotrain train` misused or fed hostile input (issue 11): a checkpoint never chooses code, recorded values are
checked, non-finite values never stop a save, foreign files given to --resume are bad input, and a signal during
start-up is a clean stop. Real subprocesses, really signalled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import PROJECT_ROOT, REALWORLD, run_cli
from reprotrain.checkpoint import CheckpointManager, list_checkpoints, reader
from reprotrain.checkpoint.manifest import CorruptCheckpoint, validate_manifest
from reprotrain.checkpoint.format import json_safe
from reprotrain.errors import ReprotrainError
from reprotrain.training.config import TrainConfig, resolve
from reprotrain.training.tasks import build_task

TESTS_DIR = Path(__file__).resolve().parent
ENV = {"PYTHONPATH": os.pathsep.join([str(TESTS_DIR), str(PROJECT_ROOT)])}


def _one_line_error(result, code: int, *, alone: bool = True) -> str:
    """The one error line (with ``alone=False``, progress lines such as "resuming from" may come before it)."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr and "Aborted!" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("reprotrain: error: ")]
    assert errors == [lines[-1]] and (len(lines) == 1 or not alone), result.stderr
    return lines[-1]


def _plant(run_dir: Path, *, config: dict | None = None, position: dict | None = None, task="digits") -> Path:
    """A genuine reprotrain checkpoint of the default task (the state fits the model), with chosen recorded values."""
    cfg = TrainConfig(task="digits")
    built = build_task(cfg)
    recorded = {**cfg.to_dict(), "task": task, **(config or {})}
    mgr = CheckpointManager(run_dir, built.model, built.optimizer, config=recorded, save_policy="never",
                            log=lambda m: None)
    path = mgr.save("latest", epoch=0, step=3, samples_seen=96, position=position or {"epoch": 0, "batch": 3})
    mgr.close()
    return path


# ---------------------------------------------------------------------------------- a checkpoint chooses code

CANARY_MODULE = '''
import os
open(os.environ["REPROTRAIN_CANARY"], "w").write("the checkpoint chose code")

def make(cfg):
    raise SystemExit("payload ran")
'''


def test_a_planted_checkpoint_never_chooses_the_module_train_imports(tmp_path):
    """Issue 11: the recorded `task` (module:function) decided what `train` imported. Now code locations come only
    from the command line or --config; a recorded one that differs is a refused config change, before any import."""
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "planted_payload.py").write_text(CANARY_MODULE)
    run_dir = tmp_path / "run"
    planted = _plant(run_dir, task="planted_payload:make")
    canary = tmp_path / "canary"
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(modules), ENV["PYTHONPATH"]]), "REPROTRAIN_CANARY": str(canary)}
    in_run_dir = run_cli("train", "--run-dir", str(run_dir), "--epochs", "1", "--quiet", env=env)
    given = run_cli("train", "--run-dir", str(tmp_path / "other"), "--resume", str(planted), "--epochs", "1",
                    "--quiet", env=env)
    for result in (in_run_dir, given):
        line = _one_line_error(result, 1)
        assert "task: 'planted_payload:make' -> 'digits'" in line and "never from a checkpoint" in line
    assert not canary.exists()
    # The same module given on the command line by the user is the user's choice: it runs.
    chosen = run_cli("train", "--run-dir", str(run_dir), "--task", "planted_payload:make", "--quiet", env=env)
    assert chosen.returncode == 1 and "payload ran" in chosen.stderr and canary.exists()


RECORDED_CASES = {
    "lr": ({"config": {"lr": -1.0}}, "lr must be a positive finite number, got -1.0"),
    "epochs-type": ({"config": {"epochs": "many"}}, "epochs: expected int, got 'many'"),
    "batch-size-range": ({"config": {"batch_size": 10**12}}, "batch_size must be at most"),
    "threads": ({"config": {"extra": {"x": "NaN"}, "threads": 0}}, "threads must be at least 1, got 0"),
    "batch-range": ({"position": {"epoch": 0, "batch": 10**6}},
                    "recorded position is invalid: batch must be an integer in 0..45"),
    "no-epoch": ({"position": {"batch": 3}}, "recorded position has no 'epoch'"),
}


def test_recorded_values_used_on_resume_are_checked(tmp_path):
    """Every recorded value the loop uses is checked (type, range, finite): exit 2 naming the checkpoint."""
    from reprotrain.training import train

    for name, (recorded, message) in RECORDED_CASES.items():
        run_dir = tmp_path / name
        planted = _plant(run_dir, **recorded)
        with pytest.raises(ReprotrainError) as exc:
            train(run_dir, options={"epochs": 1}, quiet=True, log=lambda m: None)
        assert exc.value.exit_code == 2 and message in exc.value.message and exc.value.path == str(planted), name
        assert [p.name for p in run_dir.glob("*.pth")] == [planted.name], name  # nothing written or deleted
    # Through the command line: the same refusal is one line with exit code 2.
    result = run_cli("train", "--run-dir", str(tmp_path / "lr"), "--epochs", "1", "--quiet", env=ENV)
    assert RECORDED_CASES["lr"][1] in _one_line_error(result, 2)


def test_the_manifest_schema_types_the_loop_position_and_the_loader_refuses_nan(tmp_path):
    path = _plant(tmp_path)
    manifest = reader.read_info(path).manifest
    with pytest.raises(CorruptCheckpoint, match=r"invalid at position/batch: 'x' is not of type 'integer'"):
        validate_manifest({**manifest, "position": {"epoch": 0, "batch": "x"}})
    for bad in (float("nan"), float("inf")):  # what Python's json makes of `NaN` and `1e999` in a forged manifest
        with pytest.raises(CorruptCheckpoint, match="invalid at metrics/loss: NaN or infinity"):
            validate_manifest({**manifest, "metrics": {"loss": bad}})


# ---------------------------------------------------------------------------------- non-finite values

def test_a_non_finite_or_zero_learning_rate_is_one_line_before_anything_runs(tmp_path):
    """Issue 11: `--lr nan` crashed in the optimizer; `--lr inf` passed and then every save failed on JSON."""
    for value in ("nan", "inf"):
        line = _one_line_error(run_cli("train", "--run-dir", str(tmp_path / "run"), "--lr", value, "--quiet"), 2)
        assert line == f"reprotrain: error: --lr: lr must be a positive finite number, got {value}"
        assert not (tmp_path / "run").exists()  # bad input touches nothing, not even the run directory
    for value in (float("-inf"), 0.0, -1e-3):
        with pytest.raises(ReprotrainError, match="lr must be a positive finite number") as exc:
            resolve(options={"lr": value})
        assert exc.value.path == "--lr"


def test_non_finite_values_in_a_config_file_are_one_line(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("lr: .nan\n")
    line = _one_line_error(run_cli("train", "--run-dir", str(tmp_path / "run"), "--config", str(config)), 2)
    assert line == f"reprotrain: error: {config}: lr must be a positive finite number, got nan"
    for text, message in (("lr: .inf\n", "lr must be a positive finite number, got inf"),
                          ("extra: {scale: -.inf}\n", "extra.scale is -inf: non-finite numbers are not accepted"),
                          ("extra: {a: [1, .nan]}\n", "extra.a[1] is nan")):
        config.write_text(text)
        with pytest.raises(ReprotrainError, match=message.replace("[", r"\[").replace("]", r"\]")) as exc:
            resolve(file=config)
        assert exc.value.path == str(config)


def test_non_finite_values_never_stop_a_checkpoint_from_being_written(tmp_path):
    """Config, position and metrics with NaN and infinities: every save (the emergency one included) is written;
    strict JSON stores them as the strings "NaN", "Infinity", "-Infinity" (docs/checkpoint-format.md)."""
    model = torch.nn.Linear(2, 2)
    mgr = CheckpointManager(tmp_path, model, config={"scale": float("inf"), "nested": [float("nan"), 1.5]},
                            save_policy="never", log=lambda m: None)
    path = mgr.save("latest", epoch=0, step=1, samples_seen=1, position={"offset": float("-inf")},
                    metrics={"loss": float("nan")})
    emergency = mgr.emergency("test", resumable=False)
    mgr.close()
    assert emergency is not None
    for p in (path, emergency):
        manifest = reader.read_valid(p).manifest
        assert manifest["config"]["scale"] == "Infinity" and manifest["config"]["nested"] == ["NaN", 1.5]
        assert manifest["position"] == {"offset": "-Infinity"} and manifest["metrics"] == {"loss": None}
    assert json_safe({1: (2, float("nan")), "n": torch.tensor(3).item()}) == {"1": [2, "NaN"], "n": 3}
    assert all(e.valid for e in list_checkpoints(tmp_path, deep=True))


# ---------------------------------------------------------------------------------- --resume with a foreign file

def test_resume_of_a_foreign_empty_or_unsafe_file_is_bad_input_and_says_unsafe(tmp_path):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    plain = tmp_path / "plain.pth"
    torch.save({"w": torch.zeros(2)}, plain)
    cases = {empty: "empty file", plain: "readable PyTorch file without a reprotrain manifest"}
    malicious = REALWORLD / "malicious-pickles" / "picklescan__tests_data_malicious1.zip"
    if malicious.exists():
        cases[malicious] = "unsafe pickle in data.pkl: imports builtins.eval"
    for path, reason in cases.items():
        line = _one_line_error(run_cli("train", "--run-dir", str(tmp_path / "run"), "--resume", str(path)), 2)
        assert line == f"reprotrain: error: {path}: cannot resume from this file: " + line.split(
            "cannot resume from this file: ")[1] and reason in line, line
    assert not list((tmp_path / "run").glob("*.pth"))


# ---------------------------------------------------------------------------------- signals at start-up

def _start(run_dir: Path, stage: str | None, ready: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, **ENV, "REPROTRAIN_TEST_READY": str(ready), "PYTHONFAULTHANDLER": "1"}
    env.pop("REPROTRAIN_TEST_STAGE", None)
    if stage:
        env["REPROTRAIN_TEST_STAGE"] = stage
    return subprocess.Popen([sys.executable, "-m", "reprotrain", "train", "--run-dir", str(run_dir), "--task",
                             "startup_tasks:task", "--epochs", "1", "--batch-size", "64", "--save", "steps:5",
                             "--quiet", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 240
    while not condition():
        assert proc.poll() is None, (what, proc.communicate())
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """A run stopped by SIGTERM mid-epoch: the message names no key to press, the exit code is 143."""
    run_dir = tmp_path_factory.mktemp("startup") / "run"
    proc = _start(run_dir, None, run_dir.parent / "unused")
    _wait_for(lambda: list(run_dir.glob("*.pth")), proc, "a first checkpoint")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, err
    assert "SIGTERM received: saving an interrupted checkpoint at the end of this step\n" in err
    assert "press Ctrl-C" not in err  # issue 11: the SIGTERM message told a batch scheduler to press Ctrl-C
    return run_dir


@pytest.mark.parametrize("stage, sig, extra, code", [
    ("import", signal.SIGINT, [], 130),
    ("data", signal.SIGTERM, ["--sigterm-exit-code", "75"], 75),
    ("resume", signal.SIGTERM, [], 143),
    ("resume", signal.SIGINT, [], 130),
], ids=["import-SIGINT", "data-SIGTERM-code", "resume-SIGTERM", "resume-SIGINT"])
def test_a_signal_during_start_up_is_a_clean_stop(interrupted_run, tmp_path, stage, sig, extra, code):
    """Issue 11: SIGINT during start-up gave Click's `Aborted!` and exit 1, SIGTERM killed the process. Now: the
    documented code and one line saying nothing was lost; the run directory is untouched."""
    run_dir = tmp_path / "run"
    if stage == "resume":
        import shutil

        shutil.copytree(interrupted_run, run_dir)
    before = {p.name: p.read_bytes() for p in run_dir.glob("*")} if run_dir.exists() else {}
    ready = tmp_path / "ready"
    proc = _start(run_dir, stage, ready, *extra)
    _wait_for(ready.exists, proc, f"the {stage} stage")
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack: what is it waiting for?
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"the trainer did not exit after {signal.Signals(sig).name} at the {stage} stage:\n{err[-6000:]}")
    name = signal.Signals(sig).name
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1] == (f"reprotrain: stopped by {name} during start-up, before training "
                                            "began: nothing to save, nothing lost"), err
    assert "Traceback" not in err and "Aborted!" not in err
    after = {p.name: p.read_bytes() for p in run_dir.glob("*")} if run_dir.exists() else {}
    assert {k: v for k, v in after.items() if k != ".reprotrain.lock"} == \
        {k: v for k, v in before.items() if k != ".reprotrain.lock"}
    if stage == "resume":
        assert all(e.valid for e in list_checkpoints(run_dir, deep=True))


def test_a_failing_emergency_save_never_hides_the_error_that_called_it(tmp_path):
    class Broken:
        def state_dict(self):
            raise ValueError("state_dict broke")

        def load_state_dict(self, state):
            pass

    messages = []
    mgr = CheckpointManager(tmp_path, torch.nn.Linear(2, 2), extra_state={"broken": Broken()}, save_policy="never",
                            log=messages.append)
    with pytest.raises(RuntimeError, match="^the original error$"):
        with mgr.guard():
            raise RuntimeError("the original error")
    mgr.close()
    assert "could not save an emergency checkpoint: ValueError: state_dict broke" in messages


def test_more_inputs_that_gave_tracebacks_or_surprises(tmp_path):
    """Found by running `train` on wrong-typed, empty, directory and non-UTF-8 inputs."""
    from reprotrain.training import train
    from reprotrain.training.tasks import load_task_factory

    config = tmp_path / "config.yaml"
    config.write_bytes(b"\xff\xfe: 1\n")
    with pytest.raises(ReprotrainError, match=r"config file is not UTF-8 text") as exc:
        resolve(file=config)
    assert exc.value.path == str(config) and exc.value.exit_code == 2
    config.write_text("[" * 100000 + "]" * 100000 + "\n")
    with pytest.raises(ReprotrainError, match="nested too deeply|not valid YAML|must be a mapping"):
        resolve(file=config)
    for spec in (":make", "os:", "a..b:f", "mod:f-g"):
        with pytest.raises(ReprotrainError, match="not a task") as exc:
            load_task_factory(spec)
        assert exc.value.path == "--task"
    # An empty --run-dir would have been the current directory (and --fresh --overwrite would clear it).
    with pytest.raises(ReprotrainError, match="must not be empty") as exc:
        train("", fresh=True, overwrite=True, quiet=True, log=lambda m: None)
    assert exc.value.path == "--run-dir"


def test_a_task_name_that_is_not_a_task_factory_is_one_line(tmp_path):
    """Found by the hostile driver: `task: os:system` in the user's own config file gave a TypeError traceback."""
    config = tmp_path / "task.yml"
    config.write_text("task: os:system\nepochs: 1\n")
    with pytest.raises(ReprotrainError, match=r"task 'os:system' failed while building the task: TypeError") as exc:
        build_task(resolve(file=config))
    assert exc.value.path == "--task" and exc.value.exit_code == 2
