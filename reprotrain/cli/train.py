"""`reprotrain train`: the bundled fault-tolerant training loop."""

from __future__ import annotations


import click

from reprotrain.cli import emit_json


# (option, TrainConfig field, click kwargs): the config options of `train`; each may also come from --config FILE.
_TRAIN_OPTIONS = [
    ("--task", "task", dict(help="digits (default, offline), mnist, fashionmnist, cifar10, imagefolder, "
                                 "or module:function for a user task.")),
    ("--model", "model", dict(help="cnn (default) or a torchvision model name such as resnet18.")),
    ("--data-dir", "data_dir", dict(type=click.Path(file_okay=False), help="Dataset root (torchvision, ImageFolder).")),
    ("--download/--no-download", "download", dict(default=None, help="Let torchvision download a missing dataset.")),
    ("--epochs", "epochs", dict(type=int)),
    ("--batch-size", "batch_size", dict(type=int)),
    ("--lr", "lr", dict(type=float, help="Learning rate.")),
    ("--seed", "seed", dict(type=int)),
    ("--num-workers", "num_workers", dict(type=int, help="DataLoader worker processes (resume is bit-exact either way).")),
    ("--device", "device", dict(help="auto (default), cpu, cuda, cuda:N, mps.")),
    ("--strategy", "strategy", dict(type=click.Choice(["ddp", "fsdp"]),
                                    help="Under torchrun: ddp (default; rank 0 writes one .pth) or fsdp (FSDP2; "
                                         "every rank writes its shards into one sharded .dcp checkpoint).")),
    ("--threads", "threads", dict(type=int, help="CPU intra-op threads (default 1: same numerics on any machine).")),
    ("--save", "save", dict(help="Save policy (default adaptive:1h): epochs:N, steps:N, seconds:T, exp-steps, exp-epochs, "
                                 "at-steps:LIST, at-epochs:LIST, adaptive:MTBF, never; combine with +.")),
    ("--keep-last", "keep_last", dict(type=int, help="Retention: newest checkpoints kept.")),
    ("--keep-best", "keep_best", dict(type=int, help="Retention: best checkpoints (by --monitor) kept; > 0 saves each new best.")),
    ("--keep-every", "keep_every", dict(type=int, help="Retention: also keep every N-th epoch checkpoint.")),
    ("--monitor", "monitor", dict(help="Metric ranking `best` checkpoints (default val_accuracy).")),
    ("--log-every", "log_every", dict(type=int, help="Steps between metrics.jsonl step lines.")),
    ("--sigterm-exit-code", "sigterm_exit_code", dict(type=int, help="Exit code after SIGTERM (default 143).")),
    ("--mlflow/--no-mlflow", "mlflow", dict(default=None, help="Track the run in MLflow (tracking URI from "
                                                              "MLFLOW_TRACKING_URI); resumes continue the same run.")),
    ("--mlflow-experiment", "mlflow_experiment", dict(help="MLflow experiment name (default reprotrain).")),
    ("--wandb/--no-wandb", "wandb", dict(default=None, help="Track the run in Weights & Biases (credentials from "
                                                            "W&B's own login; WANDB_MODE=offline works without one); "
                                                            "resumes continue the same W&B run.")),
    ("--wandb-project", "wandb_project", dict(help="W&B project name (default reprotrain).")),
]


def _train_options(func):
    for flag, field, kwargs in reversed(_TRAIN_OPTIONS):
        func = click.option(flag, field, **kwargs)(func)
    return func


@click.command()
@click.option("--run-dir", default="runs/default", show_default=True, type=click.Path(file_okay=False),
              help="Where checkpoints and metrics.jsonl go; the newest valid checkpoint there is resumed.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file of options (flags win).")
@_train_options
@click.option("--resume", is_flag=False, flag_value="", default=None, metavar="[PATH]",
              help="Require a checkpoint to resume (error if none); with PATH, resume that file.")
@click.option("--fresh", is_flag=True, help="Start over instead of resuming (refuses to clobber an existing run).")
@click.option("--overwrite", is_flag=True, help="With --fresh: delete the existing run in --run-dir first.")
@click.option("--on-env-mismatch", type=click.Choice(["refuse", "warn", "ignore"]),
              help="Override the policy for every fingerprint difference on resume.")
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False), help="Resume policy file (YAML).")
@click.option("--sign-key", type=click.Path(dir_okay=False), metavar="FILE",
              help="Ed25519 private key (reprotrain keygen): sign every checkpoint. Never recorded anywhere.")
@click.option("--trusted-key", "trusted_keys", multiple=True, type=click.Path(dir_okay=False), metavar="PUB",
              help="Resume only checkpoints signed by this public key (repeatable; --sign-key's own key counts).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary table.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def train(ctx: click.Context, run_dir, config_file, resume, fresh, overwrite, on_env_mismatch, policy_file, sign_key,
          trusted_keys, quiet, as_json, **config_options):
    """Train with checkpoints, fingerprint-checked resume and fault handling.

    With no arguments: a small CNN on scikit-learn's bundled digits, offline, in about a minute.
    Running the same command again resumes the newest valid checkpoint of --run-dir.

    \b
    Exit codes: 0 done, 1 resume refused (fingerprint policy, config change,
    --fresh over an existing run), 2 bad input, 4 training failed (error,
    crashed worker, non-finite loss; an `emergency` checkpoint was saved),
    5 --resume PATH not signed by a --trusted-key, 130 SIGINT, 143 SIGTERM
    (see --sigterm-exit-code).
    """
    from reprotrain.signals import StartupSignals, StoppedAtStartup

    # First, before torch is imported: a signal during start-up is a clean stop (exit 130/143, one line).
    startup = StartupSignals().install()
    try:
        from reprotrain.checkpoint import Interrupted
        from reprotrain.training import train as run_training

        options = {name: value for name, value in config_options.items()
                   if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT}
        try:
            result = run_training(run_dir, options=options, config_file=config_file,
                                  resume=True if resume == "" else resume, fresh=fresh, overwrite=overwrite,
                                  on_env_mismatch=on_env_mismatch, policy=policy_file, quiet=quiet or as_json,
                                  sign_key=sign_key, trusted_keys=trusted_keys, exit_on_second_interrupt=True)
        except Interrupted as exc:
            click.echo(f"reprotrain: {exc}; run the same command again to resume", err=True)
            ctx.exit(exc.exit_code)
    except StoppedAtStartup as exc:
        click.echo(f"reprotrain: {exc}", err=True)
        ctx.exit(exc.exit_code)
    finally:
        startup.release()
    if as_json:
        emit_json(result.to_dict())
        return
    if quiet:
        return
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    click.echo(f"{result.status}: {result.epochs_completed}/{result.config['epochs']} epochs, step {result.step}, "
               f"{metrics or 'no validation metrics'}")
    click.echo(f"time {result.wall_time_s:.1f} s, checkpoints written {result.checkpoints_written}, "
               f"resumes {result.resumes}, run directory {result.run_dir}")
