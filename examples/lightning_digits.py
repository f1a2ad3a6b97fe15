"""Lightning on the bundled 8x8 digits with reprotrain checkpoints: Ctrl-C safe, resume bit-identical, offline.

    python examples/lightning_digits.py --run-dir runs/lightning --max-epochs 3

Every checkpoint Lightning writes is a reprotrain checkpoint (fingerprint, lineage, integrity, atomic commit).
Press Ctrl-C (or send SIGTERM): the batch in flight finishes, an `interrupted` checkpoint is committed and the script
exits 130 (143). Run the same command again: `ckpt_path="last"` resolves to the newest *valid* checkpoint (damaged
ones are skipped), the environment is checked, and training continues at the batch where it stopped. The data
loader is resumable (state_dict/load_state_dict), so the finished run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

import lightning as L

from reprotrain.errors import ReprotrainError
from reprotrain.integrations.lightning import ReprotrainCheckpointIO, ReprotrainModelCheckpoint
from reprotrain.training.data import derive_seed
from reprotrain.training.tasks import digits_arrays


class EpochBatches(Sampler):
    """Batches of a permutation that depends only on (seed, epoch); can start mid-epoch after a resume."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls it at each epoch start
        if epoch != self.epoch:
            self.epoch, self.start = epoch, 0

    def __len__(self) -> int:  # always the whole epoch: Lightning counts the batches it already ran
        return -(-self.n // self.batch_size)

    def __iter__(self):
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(derive_seed(self.seed, self.epoch)))
        start, self.start = self.start, 0
        for b in range(start, len(self)):
            yield order[b * self.batch_size:(b + 1) * self.batch_size].tolist()


class ResumableLoader(DataLoader):
    """A DataLoader with state_dict/load_state_dict: Lightning saves it in each checkpoint and restores it."""

    def __init__(self, dataset, sampler: EpochBatches):
        # Its own generator: creating an iterator would otherwise draw from the global RNG, which the checkpoint
        # restores, so a resumed run would consume one draw more than the uninterrupted one.
        super().__init__(dataset, batch_sampler=sampler, generator=torch.Generator().manual_seed(sampler.seed))
        self.batches_done = 0  # counted by the module when a batch is trained (not when it is prefetched)

    def state_dict(self) -> dict:
        return {"epoch": self.batch_sampler.epoch, "batch": self.batches_done}

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.epoch, self.batch_sampler.start = int(state["epoch"]), int(state["batch"])
        self.batches_done = int(state["batch"])


class Digits(L.LightningModule):
    def __init__(self, lr: float = 0.05, hidden: int = 64, step_delay: float = 0.0):
        super().__init__()
        self.save_hyperparameters()  # plain values: stored in the checkpoint as a dict
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                                       torch.nn.Dropout(0.1), torch.nn.Linear(hidden, 10))
        self.loader: ResumableLoader | None = None

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("loss", loss, prog_bar=False)
        if self.loader is not None:
            # Counted here, not in on_train_batch_end: checkpoint callbacks save in their on_train_batch_end, which
            # Lightning calls before the module's, and Lightning's own batch counter (batch_idx) restarts at the
            # batches it had *completed*, one less than the optimizer steps taken when the save came mid-batch-end.
            self.loader.batches_done += 1
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.hparams.step_delay:
            time.sleep(self.hparams.step_delay)

    def on_train_epoch_end(self):
        if self.loader is not None:
            self.loader.batches_done = 0

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, step_size=1,
                                                                                         gamma=0.9)}


def main() -> None:
    try:
        run()
    except ReprotrainError as exc:  # refused resume (exit 1), damaged explicit input (2): one line, no traceback
        print(f"reprotrain: error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/lightning-digits")
    parser.add_argument("--max-epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=1024, help="training samples (the digits set has 1797)")
    parser.add_argument("--save-every", type=int, default=4, help="optimizer steps between checkpoints")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step-delay", type=float, default=0.0, help="seconds of sleep per step (to try Ctrl-C)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    L.seed_everything(args.seed, verbose=False)
    images, labels = digits_arrays()
    data = TensorDataset(images[:args.samples].float() / 16.0, labels[:args.samples].long())
    model = Digits(step_delay=args.step_delay)
    model.loader = ResumableLoader(data, EpochBatches(len(data), 32, args.seed))

    checkpoint = ReprotrainModelCheckpoint(dirpath=args.run_dir, every_n_train_steps=args.save_every, save_top_k=2,
                                           monitor="step", mode="max", save_last=True,
                                           config={"samples": args.samples, "seed": args.seed})
    trainer = L.Trainer(max_epochs=args.max_epochs, accelerator="cpu", devices=1, callbacks=[checkpoint],
                        plugins=[ReprotrainCheckpointIO(config={"samples": args.samples, "seed": args.seed})],
                        logger=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, deterministic=True, default_root_dir=args.run_dir)
    trainer.fit(model, train_dataloaders=model.loader, ckpt_path="last")
    print(f"done: epoch {trainer.current_epoch}, step {trainer.global_step}, last {checkpoint.last_model_path}")


if __name__ == "__main__":
    main()
