"""Your own training loop, made un-losable with reprotrain's CheckpointManager.

    python examples/own_loop.py --run-dir runs/own --epochs 3

Press Ctrl-C (or send SIGTERM) at any moment: an `interrupted` checkpoint is saved at the end of the
step in flight and the script exits with 130 (143). Run the same command again and it continues from
exactly where it stopped; the final weights are bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from reprotrain.checkpoint import CheckpointManager, RetentionPolicy


class EpochPosition:
    """Where the loop is inside an epoch, saved with every checkpoint as extra state."""

    def __init__(self):
        self.batch = 0

    def state_dict(self):
        return {"batch": self.batch}

    def load_state_dict(self, state):
        self.batch = state["batch"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/own-loop")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step-delay", type=float, default=0.0,
                        help="sleep this many seconds per step, to make Ctrl-C by hand easy to try")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    inputs = torch.randn(2048, 20)
    targets = (inputs[:, :5].sum(dim=1) > 0).long()
    dataset = TensorDataset(inputs, targets)
    # Dropout draws from torch's global generator: a resumed run is bit-identical only because the checkpoint
    # carries that generator's state and resume restores it.
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                torch.nn.Linear(64, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    position = EpochPosition()

    mgr = CheckpointManager(args.run_dir, model, optimizer, scheduler, extra_state={"position": position},
                            config=vars(args), save_policy="steps:20+epochs:1",
                            retention=RetentionPolicy(keep_last=2, keep_best=1), monitor="accuracy", mode="max")
    resumed = mgr.resume()  # the newest valid checkpoint, if any, under the environment policy
    epoch = resumed.epoch if resumed else 0
    step = resumed.step if resumed else 0

    with mgr.guard():  # SIGINT/SIGTERM -> `interrupted` checkpoint; an exception -> `emergency` checkpoint
        while epoch < args.epochs:
            # The order of an epoch depends only on (seed, epoch), so a resumed epoch replays it exactly.
            order = torch.Generator().manual_seed(args.seed * 1000 + epoch)
            batches = list(DataLoader(dataset, batch_size=64, shuffle=True, generator=order))
            for index in range(position.batch, len(batches)):
                x, y = batches[index]
                loss = torch.nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                position.batch = index + 1
                time.sleep(args.step_delay)
                mgr.step_done(epoch=epoch, step=step, samples_seen=step * 64, metrics={"loss": loss.item()})
            epoch += 1
            position.batch = 0
            scheduler.step()
            model.eval()
            with torch.no_grad():
                accuracy = (model(inputs).argmax(dim=1) == targets).float().mean().item()
            model.train()
            print(f"epoch {epoch}: accuracy {accuracy:.3f}")
            mgr.step_done(epoch=epoch, step=step, samples_seen=step * 64, metrics={"accuracy": accuracy},
                          epoch_end=True)
    mgr.finish()
    print(f"done: {mgr.checkpoints_written} checkpoints written in this process, last {mgr.last_saved}")


if __name__ == "__main__":
    main()
