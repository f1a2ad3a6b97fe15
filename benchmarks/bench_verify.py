"""Verify speed: manifest-only verify of a 512 MiB checkpoint, full verify against raw read + CRC-32, and the static
pickle scan every reader runs against torch's weights-only unpickler of the same pickle.

Run: python benchmarks/bench_verify.py [--mib N] [--runs N]. Prints figure, value, target, baseline, ratio
(medians of --runs runs, baselines measured in the same run on the same file).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.timing import format_rows, median_seconds  # noqa: E402

CHUNK = 16 << 20



def _read_and_crc(path: Path) -> int:
    crc = 0
    buf = bytearray(CHUNK)
    with open(path, "rb", buffering=0) as handle:
        while True:
            n = handle.readinto(buf)
            if not n:
                return crc
            crc = zlib.crc32(memoryview(buf)[:n], crc)


def _make_checkpoint(folder: Path, mib: int) -> tuple[Path, Path]:
    import torch

    from reprotrain import fingerprint as fp
    from reprotrain.checkpoint import format as ckformat

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.audit_checkpoints import manifest_for

    state = {"model": {"weight": torch.randn(mib << 18)}}  # 4-byte floats: mib MiB
    recorded = fp.collect()
    path = folder / "big.pth"
    with open(path, "wb") as handle:
        ckformat.write(handle, manifest_for(state, recorded), state)
    against = folder / "fingerprint.json"
    against.write_text(json.dumps(recorded))
    return path, against


def _scan_row(runs: int) -> tuple[str, str, str, str, str]:
    """The static scan of a model's and optimizer's data.pkl (1040 tensors) against the weights-only unpickler's parse
    of the same pickle (its storages handed in ready-made: the pickle walk only, as a resume pays it)."""
    import io

    import torch
    from torch import _weights_only_unpickler

    from reprotrain.checkpoint import format as ckformat, pickle_scan

    model = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(130)])
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    pickled, storages = ckformat.serialize({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    by_key = dict(storages)

    def unpickle():
        unpickler = _weights_only_unpickler.Unpickler(io.BytesIO(pickled), encoding="utf-8")
        unpickler.persistent_load = lambda saved: torch.storage.TypedStorage(
            wrap_storage=by_key[saved[2]], dtype=saved[1].dtype if saved[1] is not torch.UntypedStorage else torch.uint8,
            _internal=True)
        unpickler.load()

    scan = median_seconds(lambda: pickle_scan.scan_pickle(pickled), runs * 4)
    parse = median_seconds(unpickle, runs * 4)
    opcodes = pickle_scan.scan_pickle(pickled).opcodes
    return (f"static pickle scan ({len(storages)} tensors, {opcodes} opcodes)", f"{scan * 1e3:.1f} ms", "-",
            f"weights-only unpickler {parse * 1e3:.1f} ms", f"{scan / parse:.2f}x")


def run(mib: int = 512, runs: int = 5) -> list[tuple[str, str, str, str, str]]:
    from reprotrain.audit import verify_paths

    rows = [_scan_row(runs)]
    with tempfile.TemporaryDirectory(prefix="reprotrain-bench-verify-") as tmp:
        path, against = _make_checkpoint(Path(tmp), mib)
        size = path.stat().st_size
        verify_paths([path], against=against, digest=True)  # warm the page cache and the imports

        fast = median_seconds(lambda: verify_paths([path], against=against, digest=False), runs)
        rows.append(("manifest-only verify, in process (--no-digest --against)", f"{fast * 1e3:.1f} ms",
                     "<= 50 ms", "-", "-"))
        command = [sys.executable, "-m", "reprotrain", "verify", "--no-digest", "--against", str(against), str(path)]
        bare = [sys.executable, "-c", "pass"]
        # Byte-code caching on, into a private folder: PYTHONDONTWRITEBYTECODE would time the compiler instead.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        subprocess.run(command, check=True, capture_output=True, env=env)
        process = median_seconds(lambda: subprocess.run(command, check=True, capture_output=True, env=env), runs)
        interpreter = median_seconds(lambda: subprocess.run(bare, check=True, capture_output=True, env=env), runs)
        rows.append(("manifest-only verify, whole process", f"{process * 1e3:.0f} ms", "-",
                     f"{interpreter * 1e3:.0f} ms (python -c pass)", f"{process / interpreter:.1f}x"))

        raw = median_seconds(lambda: _read_and_crc(path), runs)
        full = median_seconds(lambda: verify_paths([path], against=against, digest=True), runs)
        gib = size / (1 << 30)
        rows.append((f"full verify throughput ({size / (1 << 20):.0f} MiB file)", f"{gib / full:.2f} GiB/s",
                     ">= 0.8x baseline", f"{gib / raw:.2f} GiB/s (read + zlib.crc32)", f"{raw / full:.2f}x"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512, help="size of the checkpoint's state in MiB")
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (the median is shown)")
    args = parser.parse_args()
    print(format_rows(run(args.mib, args.runs)))


if __name__ == "__main__":
    main()
