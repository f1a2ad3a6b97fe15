"""Tasks that stop at one stage of `reprotrain train`'s start-up until signalled (tests/test_train_misuse.py).

REPROTRAIN_TEST_STAGE names the stage (import, data, resume); when the trainer reaches it, it writes that
name to the file REPROTRAIN_TEST_READY and sleeps, so that the test signals it exactly there.
"""

from __future__ import annotations

import os
import time

from test_training_faults import _Delayed
from reprotrain.training.tasks import SmallCNN, digits

STAGE = os.environ.get("REPROTRAIN_TEST_STAGE")


def _wait_here(stage: str) -> None:
    if STAGE == stage:
        with open(os.environ["REPROTRAIN_TEST_READY"], "w") as f:
            f.write(stage)
        time.sleep(300)


_wait_here("import")  # while the user's task module is being imported


class _SlowToLoad(SmallCNN):
    def load_state_dict(self, *args, **kwargs):
        _wait_here("resume")  # while the checkpoint's state is being loaded
        return super().load_state_dict(*args, **kwargs)


def task(cfg):
    _wait_here("data")  # while the data is being loaded
    built = digits(cfg)
    model = _SlowToLoad(1, 10)
    built.model = model
    built.optimizer = type(built.optimizer)(model.parameters(), lr=cfg.lr)
    built.train_data = _Delayed(built.train_data, 0.001)  # slow enough to be signalled mid-epoch
    return built
