"""A plain Accelerate training loop on the bundled 8x8 digits with sealed, resumable checkpoints, offline.

    python examples/accelerate_loop.py --run-dir runs/accelerate --max-epochs 3

`accelerator.save_state` writes `checkpoint_<step>/`; reprotrain seals it (fingerprint, lineage, a SHA-256 per
file) and Accelerate's load-state hook refuses a directory that is unsealed, damaged or from an environment the
policy refuses. Press Ctrl-C (or send SIGTERM): the step in flight finishes, an `interrupted` checkpoint is sealed,
the script exits 130 (143). Run the same command again: it continues from the newest valid checkpoint at the batch
where it stopped, and ends bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from accelerate import Accelerator
from torch.utils.data import TensorDataset

from reprotrain.errors import ReprotrainError
from reprotrain.integrations.accelerate import ReprotrainAccelerate
from reprotrain.training.data import train_loader
from reprotrain.training.tasks import digits_arrays


def main() -> None:
    try:
        run()
    except ReprotrainError as exc:  # refused resume (exit 1), damaged explicit input (2): one line, no traceback
        print(f"reprotrain: error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/accelerate-loop")
    parser.add_argument("--max-epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=1024, help="training samples (the digits set has 1797)")
    parser.add_argument("--save-every", type=int, default=4, help="optimizer steps between checkpoints")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step-delay", type=float, default=0.0, help="seconds of sleep per step (to try Ctrl-C)")
    parser.add_argument("--wandb", action="store_true", help="track the run in Weights & Biases (one run across "
                                                             "resumes; WANDB_MODE=offline works without an account)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    images, labels = digits_arrays()
    data = TensorDataset(images[:args.samples].float() / 16.0, labels[:args.samples].long())
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                                torch.nn.Linear(64, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.9)
    accelerator = Accelerator(cpu=True)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    config = {"samples": args.samples, "seed": args.seed, "batch_size": args.batch_size}
    rt = ReprotrainAccelerate(accelerator, args.run_dir, save_every=args.save_every, config=config)
    if args.wandb:
        from reprotrain.integrations.wandb_tracking import WandbTracker

        rt.trackers.append(WandbTracker(rt.history, project="reprotrain-examples", directory=args.run_dir))
    resumed = rt.resume()
    epoch, batch = (int(resumed.position["epoch"]), int(resumed.position["batch"])) if resumed else (0, 0)
    step = resumed.step if resumed else 0
    last_loss = None

    with rt.guard():
        while epoch < args.max_epochs:
            model.train()
            # The order depends only on (seed, epoch) and can start at any batch: a resumed epoch replays it exactly.
            loader = train_loader(data, batch_size=args.batch_size, seed=args.seed, epoch=epoch, start_batch=batch,
                                  num_workers=0)
            for x, y in loader:
                loss = torch.nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad()
                accelerator.backward(loss)
                optimizer.step()
                step, batch, last_loss = step + 1, batch + 1, loss.item()
                if args.step_delay:
                    time.sleep(args.step_delay)
                rt.step_done(step=step, epoch=epoch, position={"epoch": epoch, "batch": batch},
                             metrics={"loss": last_loss})
            epoch, batch = epoch + 1, 0
            scheduler.step()
            # (a run resumed from a checkpoint taken after the last batch of an epoch trains no batch here)
            accelerator.print(f"epoch {epoch}: last loss {last_loss if last_loss is None else round(last_loss, 4)}")
    final = rt.finish(step=step, epoch=epoch, position={"epoch": epoch, "batch": 0})
    accelerator.print(f"done: step {step}, last checkpoint {final}")


if __name__ == "__main__":
    main()
