"""A tiny Hugging Face Trainer run with every checkpoint sealed by reprotrain, offline, in seconds.

    python examples/hf_trainer_tiny.py --run-dir runs/hf --max-epochs 2

The model is a 1-layer BERT built from a config (no weights fetched, HF_HUB_OFFLINE=1) that reads each 8x8 digit
of scikit-learn's bundled digits as 64 tokens (pixel values 0..16). Press Ctrl-C (or send SIGTERM): the step in
flight finishes, `checkpoint-N/` is saved and sealed as `interrupted`, the script exits 130 (143). Run the same
command again: it resumes the newest *valid* checkpoint (a damaged or unsealed one is skipped), after checking the
environment. `reprotrain verify runs/hf/checkpoint-N` checks a sealed directory.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from reprotrain.errors import ReprotrainError  # noqa: E402
from reprotrain.integrations.huggingface import ReprotrainCallback  # noqa: E402
from reprotrain.training.tasks import digits_arrays  # noqa: E402


class DigitTokens(torch.utils.data.Dataset):
    def __init__(self, images, labels):
        self.ids = images.reshape(len(images), -1).round().long().clamp(0, 16)
        self.labels = labels.long()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


class StepDelay(TrainerCallback):
    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(self.seconds)


def main() -> None:
    try:
        run()
    except ReprotrainError as exc:  # refused resume (exit 1), unreadable input (2): one line, no traceback
        print(f"reprotrain: error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/hf-trainer-tiny")
    parser.add_argument("--max-epochs", type=int, default=2)
    parser.add_argument("--samples", type=int, default=512, help="training samples (the digits set has 1797)")
    parser.add_argument("--save-steps", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step-delay", type=float, default=0.0, help="seconds of sleep per step (to try Ctrl-C)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    images, labels = digits_arrays()
    data = DigitTokens(images[:args.samples], labels[:args.samples])
    config = BertConfig(vocab_size=17, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=10)
    torch.manual_seed(args.seed)
    model = BertForSequenceClassification(config)

    training = TrainingArguments(
        output_dir=args.run_dir, num_train_epochs=args.max_epochs, per_device_train_batch_size=32,
        learning_rate=5e-3, save_strategy="steps", save_steps=args.save_steps, save_total_limit=3,
        logging_steps=1, report_to=[], seed=args.seed, data_seed=args.seed, use_cpu=True,
        dataloader_num_workers=0, disable_tqdm=True)
    callback = ReprotrainCallback(config={"samples": args.samples, "seed": args.seed, "epochs": args.max_epochs})
    callbacks = [callback] + ([StepDelay(args.step_delay)] if args.step_delay else [])
    trainer = Trainer(model=model, args=training, train_dataset=data, callbacks=callbacks)
    trainer.train(resume_from_checkpoint=callback.resume_checkpoint(args.run_dir))
    callback.exit_if_interrupted()
    print(f"done: step {trainer.state.global_step}, last sealed checkpoint {callback.last_sealed}")


if __name__ == "__main__":
    main()
