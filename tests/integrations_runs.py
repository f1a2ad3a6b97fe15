"""A run interrupted twice (three lineage segments), written through CheckpointManager and MetricsLog."""

from __future__ import annotations

import torch

from reprotrain.checkpoint import CheckpointManager
from reprotrain.training.progress import MetricsLog


def run_interrupted_twice(run_dir, *, tracker_factory=None, steps_per_segment=5):
    """Segments 0 and 1 end with the process gone (no finish); segment 2 completes. Returns the tracker run ids."""
    run_ids = []
    for segment in range(3):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        mgr = CheckpointManager(run_dir, model, opt, save_policy="never", config={"lr": 0.1, "epochs": 3},
                                log=lambda m: None)
        info = mgr.resume()
        step = info.step if info else 0
        tracker = tracker_factory(mgr) if tracker_factory else None
        if tracker:
            run_ids.append(tracker.start())
        log = MetricsLog(mgr.run_dir.local_path("metrics.jsonl"))
        log.write("start" if info is None else "resume", step=step)
        for _ in range(steps_per_segment):
            step += 1
            loss = 2.0 / step
            log.write("step", epoch=segment, batch=step, step=step, loss=loss)
            if tracker:
                tracker.log_metrics(step, {"loss": loss})
        log.write("epoch", epoch=segment + 1, step=step, val_loss=1.0 / step, val_accuracy=step / 20)
        if tracker:
            tracker.log_metrics(step, {"val_loss": 1.0 / step})
        mgr.save("latest", epoch=segment + 1, step=step, samples_seen=step * 8, position={"batch": 0})
        log.close()
        if segment < 2:
            mgr.close()  # the process is gone without finishing: the next resume records the segment as lost
        else:
            mgr.finish("completed")
            if tracker:
                tracker.end("completed")
    return run_ids
