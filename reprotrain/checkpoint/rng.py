"""Capture and restore every random number generator a training step may draw from.

States are stored as tensors and plain Python values only, so the weights-only unpickler
reads them (no numpy or random-module objects are pickled).
"""

from __future__ import annotations

import random

import torch


def capture() -> dict:
    state: dict = {}
    version, internal, gauss_next = random.getstate()
    state["python"] = {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next}
    try:
        import numpy as np
    except ImportError:  # numpy is optional for torch; nothing to capture without it
        pass
    else:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {"bit_generator": name, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                          "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    state["torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return state


def restore(state: dict) -> list[str]:
    """Restore what was captured; return notes about generators that could not be restored exactly."""
    notes: list[str] = []
    py = state.get("python")
    if py is not None:
        random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    np_state = state.get("numpy")
    if np_state is not None:
        import numpy as np

        np.random.set_state((np_state["bit_generator"], np_state["keys"].numpy().astype("uint32"), np_state["pos"],
                             np_state["has_gauss"], np_state["cached_gaussian"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda")
    if cuda_states:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(cuda_states):
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            have = torch.cuda.device_count() if torch.cuda.is_available() else 0
            notes.append(f"CUDA RNG state of {len(cuda_states)} device(s) not restored: {have} device(s) present")
    return notes
