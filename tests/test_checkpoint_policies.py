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
