"""When to save (SavePolicy) and what to keep (RetentionPolicy). Pure logic, no I/O, no torch.

Save policy specs (combine several with ``+``, e.g. ``epochs:1+seconds:1800``):

| spec | saves |
|---|---|
| ``epochs:N`` | when the count of completed epochs reaches a multiple of N |
| ``steps:N`` | when the count of optimizer steps reaches (or passes) a multiple of N |
| ``seconds:T`` | after the first step at least T seconds of wall time after the previous save |
| ``exp-steps`` / ``exp-epochs`` | after steps (epochs) 1, 2, 4, 8, ... |
| ``at-steps:1,5,10`` / ``at-epochs:1,5,10`` | after exactly those steps (epochs) |
| ``adaptive:M`` | every sqrt(2*C*M) seconds (Young/Daly), C = measured save cost, M = mean time between failures in seconds (suffixes s, m, h, d) |
| ``never`` | never (interrupted/emergency saves still happen) |

Step and epoch clauses look at the counts each ``step_done`` reports, whatever the call pattern (a call per
step, a call per epoch, both, one step per epoch): a clause is due at the first call whose count reached or
passed one of its points since the previous call, so no point is skipped and none is saved twice.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from reprotrain.errors import ReprotrainError

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    m = _DURATION.match(text.strip())
    if not m:
        raise ReprotrainError(f"invalid duration {text!r}: use a number of seconds with an optional s, m, h or d suffix")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _positive_int(text: str, spec: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ReprotrainError(f"invalid save policy {spec!r}: {text!r} is not a positive integer")
    return value


@dataclass
class Trigger:
    """One clause of a save policy."""

    unit: str  # "steps" | "epochs" | "seconds" | "adaptive"
    every: float | None = None  # for steps/epochs/seconds
    at: frozenset[int] | None = None  # explicit list
    exponential: bool = False
    mtbf: float | None = None  # adaptive

    def describe(self) -> str:
        if self.unit == "adaptive":
            return f"adaptive (Young/Daly, MTBF {self.mtbf:g} s)"
        if self.exponential:
            return f"exponentially spaced {self.unit} (1, 2, 4, ...)"
        if self.at is not None:
            return f"at {self.unit} {', '.join(str(v) for v in sorted(self.at))}"
        return f"every {self.every:g} {self.unit}"


@dataclass
class SavePolicy:
    triggers: list[Trigger] = field(default_factory=list)

    @classmethod
    def parse(cls, spec: str) -> "SavePolicy":
        spec = spec.strip()
        if spec in ("never", "none", ""):
            return cls([])
        triggers = []
        for clause in spec.split("+"):
            name, _, arg = clause.strip().partition(":")
            if name in ("epochs", "steps"):
                triggers.append(Trigger(name, every=_positive_int(arg, spec)))
            elif name == "seconds":
                triggers.append(Trigger("seconds", every=parse_duration(arg)))
            elif name in ("exp-steps", "exp-epochs") and not arg:
                triggers.append(Trigger(name[4:], exponential=True))
            elif name in ("at-steps", "at-epochs"):
                values = frozenset(_positive_int(v, spec) for v in arg.split(",") if v.strip())
                if not values:
                    raise ReprotrainError(f"invalid save policy {spec!r}: {name} needs a list such as {name}:1,5,10")
                triggers.append(Trigger(name[3:], at=values))
            elif name == "adaptive":
                triggers.append(Trigger("adaptive", mtbf=parse_duration(arg or "")))
            else:
                raise ReprotrainError(
                    f"invalid save policy {spec!r}: unknown clause {clause!r} (use epochs:N, steps:N, seconds:T, "
                    "exp-steps, exp-epochs, at-steps:LIST, at-epochs:LIST, adaptive:MTBF or never)")
        return cls(triggers)

    def describe(self) -> str:
        return " + ".join(t.describe() for t in self.triggers) or "never"

    def exhausted(self, *, step: int, epoch: int) -> bool:
        """True when no clause can ever be due again after (step, epoch): every clause is an explicit list whose
        points are all behind (a policy that never saves by choice, ``never``, is not exhausted)."""
        if not self.triggers:
            return False
        for t in self.triggers:
            if t.at is None:
                return False
            if max(t.at) > (step if t.unit == "steps" else epoch):
                return False
        return True


def _reached(t: Trigger, last: int, now: int) -> bool:
    """Did the count move past one of the trigger's points: is one in (last, now]?"""
    if now <= last:
        return False
    if t.exponential:
        return now.bit_length() > max(last, 0).bit_length()  # a power of two in (last, now]
    if t.at is not None:
        return any(last < v <= now for v in t.at)
    n = int(t.every)
    return now // n > max(last, 0) // n


@dataclass
class SaveClock:
    """Applies a SavePolicy to a stream of step/epoch events; remembers time and cost of saves."""

    policy: SavePolicy
    last_save_time: float
    save_cost: float | None = None  # seconds, smoothed
    messages: list[str] = field(default_factory=list)
    _announced_interval: float | None = None
    seen_step: int = 0   # the counts of the previous call (or of the resumed checkpoint)
    seen_epoch: int = 0

    def resume_at(self, *, step: int, epoch: int) -> None:
        self.seen_step, self.seen_epoch = step, epoch

    def adaptive_interval(self, trigger: Trigger) -> float | None:
        if self.save_cost is None:
            return None
        return math.sqrt(2.0 * self.save_cost * trigger.mtbf)

    def due(self, *, step: int, epoch: int, epoch_end: bool, now: float) -> bool:
        """Is a save due after this event? ``epoch`` counts completed epochs; ``step`` counts optimizer steps.

        ``epoch_end`` does not change the step and epoch clauses: they fire when the counts reach a point
        (a call per step, a call per epoch, both, or one step per epoch alike)."""
        last_step, last_epoch = self.seen_step, self.seen_epoch
        self.seen_step, self.seen_epoch = step, epoch
        due = False
        for t in self.policy.triggers:
            if t.unit == "epochs":
                if _reached(t, last_epoch, epoch):
                    due = True
            elif t.unit == "steps":
                if _reached(t, last_step, step):
                    due = True
            elif t.unit == "seconds":
                if now - self.last_save_time >= t.every:
                    due = True
            elif t.unit == "adaptive":
                interval = self.adaptive_interval(t)
                if interval is None:
                    due = due or step >= 1  # measure the cost with a first save as early as possible
                    continue
                # Announce the choice, and again only when it moves by more than a quarter (not on every save).
                last = self._announced_interval
                if last is None or abs(interval - last) > 0.25 * last:
                    self._announced_interval = interval
                    self.messages.append(
                        f"adaptive save interval: {interval:.1f} s (save cost {self.save_cost:.3f} s, "
                        f"MTBF {t.mtbf:g} s, Young/Daly sqrt(2*C*M))")
                if now - self.last_save_time >= interval:
                    due = True
        return due

    def saved(self, *, now: float, cost: float) -> None:
        self.last_save_time = now
        # Smooth the cost so that one slow save (cold cache) does not stretch the interval for good.
        self.save_cost = cost if self.save_cost is None else 0.5 * self.save_cost + 0.5 * cost


@dataclass(frozen=True)
class Candidate:
    """What retention needs to know about one committed checkpoint."""

    name: str
    kind: str
    step: int
    created: str
    resumable: bool
    metric: float | None  # the monitored metric, if recorded


@dataclass
class RetentionPolicy:
    """Which checkpoints to keep. Deletion happens only after a new checkpoint is committed.

    * keep_last: the K newest resumable checkpoints (latest, best, interrupted);
    * keep_best: the K best by the monitored metric (``mode`` min or max);
    * keep_every: every checkpoint saved at the end of an epoch divisible by N is written as kind
      ``periodic`` and kept forever;
    * never deleted: the checkpoint resume would pick, the best one, ``periodic`` and ``emergency`` ones.
    """

    keep_last: int = 2
    keep_best: int = 1
    keep_every: int | None = None

    def __post_init__(self):
        if self.keep_last < 1:
            raise ReprotrainError("retention keep_last must be at least 1 (the checkpoint resume would pick is always kept)")
        if self.keep_best < 0 or (self.keep_every is not None and self.keep_every < 1):
            raise ReprotrainError("retention keep_best must be >= 0 and keep_every >= 1")

    def to_delete(self, candidates: Sequence[Candidate], *, mode: str = "max",
                  resume_pick: str | None = None) -> list[str]:
        rolling = [c for c in candidates if c.kind not in ("periodic", "emergency")]
        newest_first = sorted(rolling, key=lambda c: (c.step, c.created), reverse=True)
        keep = {c.name for c in [c for c in newest_first if c.resumable][: self.keep_last]}
        scored = [c for c in rolling if c.metric is not None and math.isfinite(c.metric)]
        ranked = sorted(scored, key=lambda c: (c.metric if mode == "max" else -c.metric, c.step), reverse=True)
        keep.update(c.name for c in ranked[: max(self.keep_best, 1 if ranked else 0)])
        if resume_pick:
            keep.add(resume_pick)
        return [c.name for c in rolling if c.name not in keep]


def best_value(values: Iterable[float | None], mode: str) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None
    return max(finite) if mode == "max" else min(finite)
