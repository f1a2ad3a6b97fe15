"""Compare two fingerprints and decide, field by field, whether a difference refuses, warns or informs.

The default table (DEFAULT_RULES) is documented in docs/fingerprint.md; a policy file overrides it per
field and ``on_mismatch`` overrides everything globally. The same machinery gates `train --resume`
and `verify`.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from dataclasses import asdict, dataclass, field

from reprotrain.errors import InvalidDocumentError, ReprotrainError

SEVERITIES = ("refuse", "warn", "info")
FILE_ACTIONS = SEVERITIES + ("ignore",)
ON_MISMATCH = ("refuse", "warn", "ignore")

# Not compared: when and how a document was collected, and the long package lists (their digests are).
_NOT_COMPARED = ("collected_at", "schema_version", "sources.*", "packages.*.packages", "packages.*.packages.*")
# Values a fingerprint collected without a running torch cannot know (null there means "unknown").
_RUNTIME_ONLY = {f"determinism.{name}" for name in ("cudnn_deterministic", "cudnn_benchmark",
                                                    "deterministic_algorithms", "deterministic_algorithms_warn_only",
                                                    "tf32_matmul", "tf32_cudnn", "float32_matmul_precision")}

# (field pattern, decision, why). Decisions: a severity, or "major"/"minor": refuse when that part of the
# version differs (or one side has none), warn on any other difference.
DEFAULT_RULES: tuple[tuple[str, str, str], ...] = (
    ("python.version", "minor", "a different Python minor changes bytecode, pickles and numerics"),
    ("python.implementation", "refuse", "a different interpreter"),
    ("platform.os", "refuse", "a different operating system"),
    ("platform.machine", "refuse", "a different CPU architecture"),
    ("platform.conda_subdir", "refuse", "a different conda platform: the lock does not apply"),
    ("platform.*", "warn", "libc differences rarely change results"),
    ("torch.version", "minor", "a different torch minor changes kernels and checkpoint formats"),
    ("torch.cuda", "major", "CUDA major versions (or CUDA versus none) give different kernels"),
    ("torch.cudnn", "major", "cuDNN major versions give different convolution algorithms"),
    ("torch.hip", "major", "HIP major versions (or HIP versus none) give different kernels"),
    ("torch.*", "warn", "another build of the same torch release"),
    ("libraries.*", "warn", "torchvision and numpy versions can change data pipelines"),
    ("accelerators.devices.*.memory_bytes", "info", "reported memory varies with driver and tooling"),
    ("accelerators.*", "warn", "another GPU model, count or driver can change numerics"),
    ("determinism.*", "warn", "a determinism switch changes which kernels run"),
    ("packages.conda.prefix", "info", "the same packages may live at another path"),
    ("packages.*", "warn", "the installed packages differ"),
    ("lock.file", "info", "the lock may be read from another path (its sha256 says whether it differs)"),
    ("lock.*", "warn", "the lock file or its match differs"),
    ("code.repository", "info", "the code may be checked out at another path"),
    ("code.*", "warn", "the training code is at another revision or has local changes"),
    ("host.*", "info", "another machine"),
    ("*", "warn", "any other difference"),
)


@dataclass(frozen=True)
class Difference:
    """One field that differs between the recorded and the live fingerprint."""

    field: str
    recorded: object
    live: object
    severity: str  # "refuse" | "warn" | "info"
    rule: str  # what decided the severity


@dataclass
class Comparison:
    differences: list[Difference] = field(default_factory=list)
    flag: str = "--on-mismatch"  # the command's flag that overrides every severity (train: --on-env-mismatch)

    @property
    def refused(self) -> bool:
        return any(d.severity == "refuse" for d in self.differences)

    @property
    def warned(self) -> bool:
        return any(d.severity == "warn" for d in self.differences)

    def table(self) -> str:
        """An aligned plain-text table: field, recorded, live, severity."""
        if not self.differences:
            return "no differences"
        rows = [("FIELD", "RECORDED", "LIVE", "SEVERITY")]
        rows += [(d.field, show_value(d.recorded), show_value(d.live), d.severity) for d in self.differences]
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows)

    def to_json(self) -> dict:
        return {"refused": self.refused, "warned": self.warned,
                "differences": [asdict(d) for d in self.differences]}

    def allow_hint(self) -> str:
        """The flag or policy-file entries that would let a refused comparison through ("" if none refused)."""
        refused = [d.field for d in self.differences if d.severity == "refuse"]
        if not refused:
            return ""
        entries = ", ".join(f"`{name}: warn`" for name in refused)
        return f"{self.flag} warn, or a policy file with {entries}"


def show_value(value) -> str:
    """A recorded or live value as one short line (null, true/false, compact JSON)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _specificity(pattern: str) -> tuple:
    # An exact field beats any glob; among globs the one with more literal text wins.
    wildcard = any(ch in pattern for ch in "*?[")
    literal = len(re.sub(r"[*?\[\]]", "", pattern))
    return (0 if wildcard else 1, literal)


def _version_parts(value) -> tuple[int, ...] | None:
    match = re.match(r"\s*v?(\d+)(?:\.(\d+))?", str(value)) if value is not None else None
    if match is None:
        return None
    return tuple(int(part) for part in match.groups() if part is not None)


class Policy:
    """Decides the severity of each difference: per-field overrides, then the default table, then
    the global ``on_mismatch`` override."""

    def __init__(self, overrides: dict[str, str] | None = None, on_mismatch: str | None = None,
                 source: str | None = None, *, flag: str = "--on-mismatch"):
        if on_mismatch is not None and on_mismatch not in ON_MISMATCH:
            raise ReprotrainError(f"{flag} must be one of {', '.join(ON_MISMATCH)}, not {on_mismatch!r}")
        self.overrides = dict(overrides or {})
        self.on_mismatch = on_mismatch
        self.source = source
        self.flag = flag  # how the command spells on_mismatch (messages and hints name it)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, on_mismatch: str | None = None, *,
             flag: str = "--on-mismatch") -> "Policy":
        """The policy in PATH (YAML or JSON mapping of field or glob -> refuse|warn|info|ignore), if any.

        ``flag``: the option that sets ``on_mismatch`` in the calling command, named in messages and hints.
        """
        if path is None:
            return cls(on_mismatch=on_mismatch, flag=flag)
        path = os.fspath(path)
        from reprotrain import safeio

        try:  # a regular file only, at most the policy limit
            text = safeio.read_text(path, limit=safeio.LIMITS["policy"], what="policy file")
        except ReprotrainError as exc:
            raise InvalidDocumentError(exc.message, path=path) from None
        import yaml

        try:
            doc = safeio.load_yaml(text)  # YAML is a superset of JSON
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise InvalidDocumentError(f"policy file is not valid YAML or JSON{where}", path=path) from exc
        if doc is None:
            doc = {}
        if not isinstance(doc, dict):
            raise InvalidDocumentError("policy file must be a mapping of field -> refuse|warn|info|ignore",
                                       path=path)
        for key, value in doc.items():
            if not isinstance(key, str) or not key:
                raise InvalidDocumentError(f"policy key {key!r} is not a field name or glob", path=path)
            if value not in FILE_ACTIONS:
                raise InvalidDocumentError(f"policy entry `{key}: {value}` must be one of {', '.join(FILE_ACTIONS)}",
                                           path=path)
        return cls(doc, on_mismatch=on_mismatch, source=path, flag=flag)

    def decide(self, field_name: str, recorded, live) -> tuple[str, str] | None:
        """(severity, rule) for one differing field; None when the policy ignores the field."""
        matching = [p for p in self.overrides if fnmatch.fnmatchcase(field_name, p)]
        if matching:
            pattern = max(matching, key=_specificity)
            action = self.overrides[pattern]
            if action == "ignore":
                return None
            severity, rule = action, f"policy {self.source or 'overrides'}: `{pattern}: {action}`"
        else:
            severity, rule = self._default(field_name, recorded, live)
        if self.on_mismatch is not None:
            severity = {"refuse": "refuse", "warn": "warn", "ignore": "info"}[self.on_mismatch]
            rule = f"{self.flag} {self.on_mismatch} (was: {rule})"
        return severity, rule

    @staticmethod
    def _default(field_name: str, recorded, live) -> tuple[str, str]:
        pattern, decision, why = max((r for r in DEFAULT_RULES if fnmatch.fnmatchcase(field_name, r[0])),
                                     key=lambda r: _specificity(r[0]))
        if decision in SEVERITIES:
            return decision, f"default `{pattern}`: {why}"
        old, new = _version_parts(recorded), _version_parts(live)
        width = 1 if decision == "major" else 2
        if old is None or new is None or old[:width] != new[:width]:
            return "refuse", f"default `{pattern}`: different {decision} version: {why}"
        return "warn", f"default `{pattern}`: same {decision} version, another release or build"


def _flatten(value, prefix: str, out: dict) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else key, out)
    elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        for index, item in enumerate(value):
            _flatten(item, f"{prefix}.{index}", out)
    else:
        out[prefix] = value


def _fields(doc: dict) -> dict:
    flat: dict = {}
    _flatten(doc, "", flat)
    return {k: v for k, v in flat.items() if not any(fnmatch.fnmatchcase(k, p) for p in _NOT_COMPARED)}


def _unknown_reason(name: str, side: dict) -> str | None:
    """Why SIDE could not observe field NAME (its null means "unknown", not "none"), or None if it could."""
    if name in _RUNTIME_ONLY and side["sources"]["determinism"] == "static":
        return "not known without a running torch (static fingerprint)"
    if name.startswith("accelerators.") and side["accelerators"]["cuda_available"] is None:
        return "devices not known (static fingerprint without NVML bindings, or a ROCm build)"
    return None


def compare(recorded: dict, live: dict, policy: Policy | None = None) -> Comparison:
    """Every field that differs between RECORDED and LIVE with the severity POLICY gives it."""
    from reprotrain.fingerprint.document import validate

    validate(recorded, source="<recorded fingerprint>")
    validate(live, source="<live fingerprint>")
    policy = policy or Policy()
    old, new = _fields(recorded), _fields(live)
    differences = []
    # Recorded order, then fields only the live side has, grouped by section (stable, so deterministic).
    names = list(dict.fromkeys([*old, *new]))
    section_rank = {section: rank for rank, section in enumerate(dict.fromkeys(n.split(".")[0] for n in names))}
    for name in sorted(names, key=lambda n: section_rank[n.split(".")[0]]):
        a, b = old.get(name), new.get(name)
        if a == b:
            continue
        unknown = _unknown_reason(name, recorded if a is None else live) if a is None or b is None else None
        if unknown is not None:
            differences.append(Difference(name, a, b, "info", unknown))
            continue
        decided = policy.decide(name, a, b)
        if decided is not None:
            differences.append(Difference(name, a, b, *decided))
    return Comparison(differences, flag=policy.flag)
