"""What a signature costs: signed against unsigned durable save, and verify with a trusted key against plain verify.

A format-2 signature binds a SHA-256 of every tensor byte (docs/checkpoint-format.md, "Signature"): a signed save
hashes on its CRC-32 thread while it writes, and a check hashes in the pass that checks the CRC-32s.

Run: python benchmarks/bench_signing.py [--mib N] [--runs N]. Prints figure, value, target, baseline, ratio
(medians of --runs runs; both sides of each ratio measured in the same run on the same state).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.timing import format_rows, median_seconds  # noqa: E402


def run(mib: int = 256, runs: int = 5) -> list[tuple[str, str, str, str, str]]:
    import torch

    from reprotrain import fingerprint as fp
    from reprotrain.audit import verify_paths
    from reprotrain.checkpoint import format as ckformat, signing

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.audit_checkpoints import manifest_for

    state = {"model": {"weight": torch.randn(mib << 18)}}  # 4-byte floats: mib MiB
    manifest = manifest_for(state, fp.collect())
    with tempfile.TemporaryDirectory(prefix="reprotrain-bench-signing-", dir=os.environ.get("BENCH_DIR")) as tmp:
        tmp = Path(tmp)
        key = signing.write_key_pair(tmp / "key")

        def save(path: Path, signer) -> None:
            with open(path, "wb") as handle:
                ckformat.write(handle, manifest, state, signer=signer)
                handle.flush()
                os.fsync(handle.fileno())

        unsigned, signed = tmp / "unsigned.pth", tmp / "signed.pth"
        plain_save = median_seconds(lambda: save(unsigned, None), runs)
        signed_save = median_seconds(lambda: save(signed, key), runs)
        plain_verify = median_seconds(lambda: verify_paths([signed], digest=True), runs)
        trusted = signing.TrustedKeys([tmp / "key.pub"])
        checked = median_seconds(lambda: verify_paths([signed], digest=True, trusted_keys=trusted), runs)
        assert verify_paths([signed], digest=True, trusted_keys=trusted)[0].exit_code == 0
    return [
        (f"signed durable save ({mib} MiB)", f"{signed_save * 1e3:.0f} ms", "-",
         f"{plain_save * 1e3:.0f} ms (unsigned)", f"{signed_save / plain_save:.2f}x"),
        (f"verify --trusted-key ({mib} MiB)", f"{checked * 1e3:.0f} ms", "-",
         f"{plain_verify * 1e3:.0f} ms (verify, integrity only)", f"{checked / plain_verify:.2f}x"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="size of the checkpoint's state in MiB")
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (the median is shown)")
    args = parser.parse_args()
    print(format_rows(run(args.mib, args.runs)))


if __name__ == "__main__":
    main()
