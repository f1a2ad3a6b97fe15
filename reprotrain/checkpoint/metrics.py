"""metrics.jsonl: the run's metrics log (one JSON object per line), read by `reprotrain report`.

The bundled loop writes it; so does a CheckpointManager in your own loop (the metrics given to `step_done`).
"""

from __future__ import annotations

import json
import math
import os
import time

from reprotrain.checkpoint.format import json_safe
from reprotrain.checkpoint.storage.base import METRICS_FILE  # noqa: F401 (defined once, with the storage layer)


def plain(value):
    """A JSON-safe copy of one metric value: finite numbers, strings and booleans; 0-d tensors and numpy scalars
    as their number; anything else None."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):
        return plain(value.item())
    return None


class MetricsLog:
    """Append-only JSON lines; each line is flushed at once so a crash loses nothing already written.

    A resumed run appends a `resume` line; step lines after the resumed step are the ones that count.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._fh = open(self.path, "a", encoding="utf-8")

    def write(self, kind: str, **fields) -> None:
        record = {"kind": kind, "time": round(time.time(), 3)}
        # Top-level non-finite numbers (a diverged loss) are null; nested ones follow the manifest's convention.
        record.update({k: (None if isinstance(v, float) and not math.isfinite(v) else json_safe(v))
                       for k, v in fields.items()})
        self._fh.write(json.dumps(record, allow_nan=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()
