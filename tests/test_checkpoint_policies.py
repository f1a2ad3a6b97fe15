"""Save and retention policies, table-driven."""

from __future__ import annotations

import math

import pytest

from reprotrain.checkpoint.policies import Candidate, RetentionPolicy, SaveClock, SavePolicy, parse_duration
from reprotrain.errors import ReprotrainError


def saves(spec: str, events, *, cost: float | None = None) -> list:
    """Run a policy over (step, epoch, epoch_end, time) events; return the events at which it saved."""
    clock = SaveClock(SavePolicy.parse(spec), last_save_time=0.0, save_cost=cost)
    hits = []
    for step, epoch, epoch_end, now in events:
        if clock.due(step=step, epoch=epoch, epoch_end=epoch_end, now=now):
            hits.append((step, epoch, epoch_end))
            clock.saved(now=now, cost=clock.save_cost if clock.save_cost is not None else 1.0)
    return hits


def run_of(epochs: int, steps_per_epoch: int, seconds_per_step: float = 1.0):
    """Events of a run: a step_done per step, then an epoch_end per epoch."""
    events, step, now = [], 0, 0.0
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            step += 1
            now += seconds_per_step
            events.append((step, epoch, False, now))
        events.append((step, epoch + 1, True, now))
    return events


RUN = run_of(epochs=8, steps_per_epoch=4)  # steps 1..32, epochs 1..8


@pytest.mark.parametrize("spec, expected", [
    ("epochs:1", [(4 * e, e, True) for e in range(1, 9)]),
    ("epochs:3", [(12, 3, True), (24, 6, True)]),
    ("steps:10", [(10, 2, False), (20, 4, False), (30, 7, False)]),
    ("exp-steps", [(1, 0, False), (2, 0, False), (4, 0, False), (8, 1, False), (16, 3, False), (32, 7, False)]),
    ("exp-epochs", [(4, 1, True), (8, 2, True), (16, 4, True), (32, 8, True)]),
    ("at-steps:3,17", [(3, 0, False), (17, 4, False)]),
    ("at-epochs:2,5", [(8, 2, True), (20, 5, True)]),
    ("seconds:9", [(9, 2, False), (18, 4, False), (27, 6, False)]),
    ("epochs:4+steps:14", [(14, 3, False), (16, 4, True), (28, 6, False), (32, 8, True)]),
    ("never", []),
])
def test_save_policy_schedule(spec, expected):
    assert saves(spec, RUN) == expected


def test_adaptive_policy_uses_young_daly_interval():
    # C = 2 s, M = 400 s: interval sqrt(2*2*400) = 40 s; with 1 s steps that is every 40 steps.
    events = [(s, 0, False, float(s)) for s in range(1, 130)]
    clock = SaveClock(SavePolicy.parse("adaptive:400"), last_save_time=0.0)
    hits = []
    for step, epoch, end, now in events:
        if clock.due(step=step, epoch=epoch, epoch_end=end, now=now):
            hits.append(step)
            clock.saved(now=now, cost=2.0)
    assert hits == [1, 41, 81, 121]  # first save at once to measure the cost
    assert any("adaptive save interval: 40.0 s" in m and "Young/Daly" in m for m in clock.messages)


@pytest.mark.parametrize("text, seconds", [("90", 90), ("1.5m", 90), ("2h", 7200), ("1d", 86400), ("30s", 30)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("spec, message", [
    ("epochs:0", "not a positive integer"),
    ("steps:x", "not a positive integer"),
    ("hourly", "unknown clause"),
    ("at-steps:", "needs a list"),
    ("adaptive:soon", "invalid duration"),
    ("seconds:-1", "invalid duration"),
])
def test_bad_save_policy_is_a_clear_error(spec, message):
    with pytest.raises(ReprotrainError, match=message):
        SavePolicy.parse(spec)


def cand(name, step, kind="latest", metric=None, resumable=True):
    return Candidate(name, kind, step, f"2026-01-01T00:00:{step:02d}Z", resumable, metric)


@pytest.mark.parametrize("policy, candidates, mode, pick, deleted", [
    # keep the last K
    (RetentionPolicy(keep_last=2, keep_best=0), [cand("a", 1), cand("b", 2), cand("c", 3)], "max", "c", ["a"]),
    # the best one survives although it is old (max mode)
    (RetentionPolicy(keep_last=1, keep_best=1),
     [cand("a", 1, "best", 0.9), cand("b", 2, metric=0.5), cand("c", 3, metric=0.7)], "max", "c", ["b"]),
    # min mode picks the lowest
    (RetentionPolicy(keep_last=1, keep_best=1),
     [cand("a", 1, metric=0.9), cand("b", 2, metric=0.1), cand("c", 3, metric=0.7)], "min", "c", ["a"]),
    # best K = 2
    (RetentionPolicy(keep_last=1, keep_best=2),
     [cand("a", 1, metric=0.9), cand("b", 2, metric=0.8), cand("c", 3, metric=0.1), cand("d", 4, metric=0.2)],
     "max", "d", ["c"]),
    # periodic and emergency are never deleted
    (RetentionPolicy(keep_last=1, keep_best=0),
     [cand("p", 1, "periodic"), cand("e", 2, "emergency", resumable=False), cand("a", 3), cand("b", 4)],
     "max", "b", ["a"]),
    # the resume pick is kept even when keep_last would drop it (a newer one is not resumable)
    (RetentionPolicy(keep_last=1, keep_best=0), [cand("a", 1), cand("b", 2), cand("x", 3, "interrupted")],
     "max", "b", ["a"]),
    # non-finite metrics never count as best
    (RetentionPolicy(keep_last=1, keep_best=1),
     [cand("a", 1, metric=math.nan), cand("b", 2, metric=0.3), cand("c", 3, metric=0.2)], "max", "c", ["a"]),
])
def test_retention(policy, candidates, mode, pick, deleted):
    assert sorted(policy.to_delete(candidates, mode=mode, resume_pick=pick)) == deleted


@pytest.mark.parametrize("kwargs", [{"keep_last": 0}, {"keep_best": -1}, {"keep_every": 0}])
def test_bad_retention_is_a_clear_error(kwargs):
    with pytest.raises(ReprotrainError):
        RetentionPolicy(**kwargs)


# Every call pattern a loop may use (docs/library.md, "Save policies"), 8 epochs of 4 steps, 1 s per step:
# A: a step_done per step only (``epoch`` = completed epochs), B: one step_done per epoch (epoch_end=True) only,
# C: both (RUN above), D: one optimizer step per epoch (full-batch LBFGS), one call per epoch with epoch_end=True.
PATTERN = {
    "per-step": [(s, (s - 1) // 4, False, float(s)) for s in range(1, 33)],
    "per-epoch": [(4 * e, e, True, float(4 * e)) for e in range(1, 9)],
    "both": RUN,
    "one-step-per-epoch": [(e, e, True, float(e)) for e in range(1, 9)],
}
SAVED_STEPS = {  # spec -> {pattern: steps at which a save is due}
    "steps:1": {"per-step": list(range(1, 33)), "per-epoch": [4, 8, 12, 16, 20, 24, 28, 32],
                "both": list(range(1, 33)), "one-step-per-epoch": list(range(1, 9))},
    "steps:10": {"per-step": [10, 20, 30], "per-epoch": [12, 20, 32], "both": [10, 20, 30],
                 "one-step-per-epoch": []},
    "steps:3": {"per-step": list(range(3, 33, 3)), "per-epoch": [4, 8, 12, 16, 20, 24, 28, 32],
                "both": list(range(3, 33, 3)), "one-step-per-epoch": [3, 6]},
    "epochs:1": {"per-step": [5, 9, 13, 17, 21, 25, 29], "per-epoch": [4, 8, 12, 16, 20, 24, 28, 32],
                 "both": [4, 8, 12, 16, 20, 24, 28, 32], "one-step-per-epoch": list(range(1, 9))},
    "epochs:3": {"per-step": [13, 25], "per-epoch": [12, 24], "both": [12, 24], "one-step-per-epoch": [3, 6]},
    "exp-steps": {"per-step": [1, 2, 4, 8, 16, 32], "per-epoch": [4, 8, 16, 32], "both": [1, 2, 4, 8, 16, 32],
                  "one-step-per-epoch": [1, 2, 4, 8]},
    "exp-epochs": {"per-step": [5, 9, 17], "per-epoch": [4, 8, 16, 32], "both": [4, 8, 16, 32],
                   "one-step-per-epoch": [1, 2, 4, 8]},
    "at-steps:3,17": {"per-step": [3, 17], "per-epoch": [4, 20], "both": [3, 17], "one-step-per-epoch": [3]},
    "at-epochs:2,5": {"per-step": [9, 21], "per-epoch": [8, 20], "both": [8, 20], "one-step-per-epoch": [2, 5]},
    "seconds:9": {"per-step": [9, 18, 27], "per-epoch": [12, 24], "both": [9, 18, 27], "one-step-per-epoch": []},
    "epochs:4+steps:14": {"per-step": [14, 17, 28], "per-epoch": [16, 28, 32], "both": [14, 16, 28, 32],
                          "one-step-per-epoch": [4, 8]},
    "never": {"per-step": [], "per-epoch": [], "both": [], "one-step-per-epoch": []},
}


@pytest.mark.parametrize("pattern", sorted(PATTERN))
@pytest.mark.parametrize("spec", sorted(SAVED_STEPS))
def test_save_policy_for_every_call_pattern(spec, pattern):
    assert [step for step, _, _ in saves(spec, PATTERN[pattern])] == SAVED_STEPS[spec][pattern]


@pytest.mark.parametrize("pattern", sorted(PATTERN))
def test_no_point_of_a_step_policy_is_skipped_or_saved_twice(pattern):
    # Whatever the pattern, steps:N saves once per multiple of N reached (at the first call at or past it).
    hits = [step for step, _, _ in saves("steps:2", PATTERN[pattern])]
    assert len(hits) == len(set(hits))
    reached = {2 * (step // 2) for step, *_ in PATTERN[pattern]}
    assert {2 * (h // 2) for h in hits} == {r for r in reached if r}


def test_a_resumed_clock_does_not_save_again_at_the_points_behind_it():
    clock = SaveClock(SavePolicy.parse("steps:10+epochs:1"), last_save_time=0.0)
    clock.resume_at(step=20, epoch=5)
    assert not clock.due(step=21, epoch=5, epoch_end=False, now=1.0)
    assert clock.due(step=30, epoch=5, epoch_end=False, now=2.0)
    assert clock.due(step=30, epoch=6, epoch_end=True, now=3.0)


@pytest.mark.parametrize("spec, step, epoch, exhausted", [
    ("at-steps:3,17", 17, 4, True), ("at-steps:3,17", 16, 4, False), ("at-epochs:2", 9, 2, True),
    ("at-steps:5+at-epochs:9", 5, 3, False), ("never", 100, 100, False), ("steps:5", 10**6, 9, False),
    ("seconds:1", 1, 0, False),
])
def test_exhausted_policies(spec, step, epoch, exhausted):
    assert SavePolicy.parse(spec).exhausted(step=step, epoch=epoch) is exhausted
