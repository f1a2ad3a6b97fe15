"""A full-batch LBFGS loop (one optimizer step per epoch) under every save policy, SIGKILLed at a random step.

The promise of a save policy: a crash loses at most one interval. The child (tests/scripts/lbfgs_child.py)
trains one model per policy in lockstep; it is a real process, really killed (SIGKILL: no handler runs) at a
random step, and each policy's newest checkpoint on disk must be no older than the policy's last point at or
before the step the child had reported. Then every run resumes to the end and matches an uninterrupted run
bit for bit (weights and LBFGS's history).
"""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reprotrain.checkpoint import list_checkpoints, load, select_for_resume

CHILD = Path(__file__).parent / "scripts" / "lbfgs_child.py"
EPOCHS = 16
SECONDS = 0.3  # the seconds:T policy's interval
PAUSE = 0.1    # per step in the child, so the kill lands mid-run


def last_point(points, k):
    return max([p for p in points if p <= k], default=0)


# policy -> the oldest step the newest checkpoint may have once the child reported step k (one step per epoch).
BOUNDS = {
    "steps:1": lambda k: k,
    "steps:3": lambda k: 3 * (k // 3),
    "epochs:1": lambda k: k,
    "epochs:4": lambda k: 4 * (k // 4),
    "exp-steps": lambda k: last_point([1, 2, 4, 8, 16], k),
    "exp-epochs": lambda k: last_point([1, 2, 4, 8, 16], k),
    "at-steps:2,5,9,14": lambda k: last_point([2, 5, 9, 14], k),
    "at-epochs:3,7,11": lambda k: last_point([3, 7, 11], k),
    "steps:5+epochs:3": lambda k: max(5 * (k // 5), 3 * (k // 3)),
    "adaptive:1": lambda k: 1,  # its first save comes at once; later ones follow the measured cost
    f"seconds:{SECONDS}": None,  # checked against the child's clock below
}
POLICIES = sorted(BOUNDS)


ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))


def command(root, pause):
    return [sys.executable, str(CHILD), str(root), str(EPOCHS), str(pause), *POLICIES]


def newest(run_dir):
    return select_for_resume(list_checkpoints(run_dir))


@pytest.mark.slow
@pytest.mark.timeout(900)  # two child interpreters with eleven managers each; about 70 s of CPU
def test_sigkill_at_a_random_step_loses_at_most_one_interval_then_resumes_bit_exactly(tmp_path):
    kill_at = random.randint(6, 12)
    proc = subprocess.Popen(command(tmp_path, PAUSE), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV)
    reported = []
    try:
        for line in proc.stdout:
            _, step, at = line.split()
            reported.append((int(step), float(at)))
            if int(step) == kill_at:
                proc.send_signal(signal.SIGKILL)
                killed_at = float(at)
                break
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err
    for index, policy in enumerate(POLICIES):
        pick = newest(tmp_path / str(index))
        saved = pick.info.manifest["step"] if pick is not None else 0
        if BOUNDS[policy] is None:
            # Every step reported at least one interval before the last report is covered by a save.
            bound = max([s for s, t in reported if t <= killed_at - SECONDS - PAUSE], default=0)
        else:
            bound = BOUNDS[policy](kill_at)
        assert saved >= bound, (policy, kill_at, saved, sorted(os.listdir(tmp_path / str(index))))

    # Resume every run to the end (a partial file the kill may have left is removed at start).
    done = subprocess.run(command(tmp_path, 0), capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("resuming from") == len(POLICIES)
    spec = importlib.util.spec_from_file_location("lbfgs_child", CHILD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected, expected_optimizer = module.reference(EPOCHS)
    for index, policy in enumerate(POLICIES):
        pick = newest(tmp_path / str(index))
        assert pick.info.manifest["step"] == EPOCHS, policy
        state = load(pick.path)["state"]
        for name, value in expected.items():
            assert torch.equal(state["model"][name], value), (policy, name)
        for key, value in expected_optimizer["state"][0].items():  # LBFGS's own history came back exactly
            got = state["optimizer"]["state"][0][key]
            if isinstance(value, torch.Tensor):
                assert torch.equal(got, value), (policy, key)
            elif isinstance(value, list):
                assert len(got) == len(value) and all(torch.equal(u, v) for u, v in zip(got, value)), (policy, key)
            else:
                assert got == value, (policy, key)
