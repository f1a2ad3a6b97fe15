"""Built-in tasks and the loader for user tasks (`--task module:function`).

A task factory takes the resolved TrainConfig and returns a Task. Built-ins:

- `digits` (the default): the 8x8 handwritten digits shipped in `data/` (UCI optdigits via scikit-learn), no
  download, fixed 80/20 split;
- `mnist`, `fashionmnist`, `cifar10`: torchvision datasets under `data_dir` (`download` fetches them);
- `imagefolder`: `data_dir/train/<class>/*` and `data_dir/val/<class>/*`.

`model` is `cnn` (a small CNN that adapts to any input size) or any torchvision classification model name.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from reprotrain.errors import ReprotrainError
from reprotrain.training.config import TrainConfig

# The digits split never depends on the training seed: changing the seed must not change what is validated on.
_DIGITS_SPLIT_SEED = 20240229


@dataclass
class Task:
    """What a training run needs. `loss(outputs, targets)` returns a scalar tensor.

    Validation reports `val_loss` and, when outputs are (N, classes) logits and targets class indices,
    `val_accuracy`.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    train_data: torch.utils.data.Dataset
    val_data: torch.utils.data.Dataset | None
    loss: Callable[[Any, Any], torch.Tensor]
    scheduler: Any = None  # stepped once per epoch, after validation


class SmallCNN(nn.Module):
    """Two conv blocks, adaptive pooling to 4x4 and a dropout classifier: works from 8x8 digits to 32x32 CIFAR."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.AdaptiveMaxPool2d(4),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.25), nn.Linear(64 * 16, 128), nn.ReLU(),
                                        nn.Linear(128, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def build_model(name: str, in_channels: int, num_classes: int) -> nn.Module:
    if name == "cnn":
        return SmallCNN(in_channels, num_classes)
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ReprotrainError(f"unknown model {name!r}: use `cnn` or a torchvision classification model name "
                              "such as resnet18", path="--model")
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def _classification_task(cfg: TrainConfig, train_data, val_data, in_channels: int, num_classes: int) -> Task:
    model = build_model(cfg.model, in_channels, num_classes)
    return Task(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=cfg.lr),
                train_data=train_data, val_data=val_data, loss=nn.CrossEntropyLoss())


DIGITS_CSV = Path(__file__).with_name("data") / "digits.csv.gz"


def digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1797 digits (images N x 8 x 8 with values 0..16, labels) shipped with reprotrain.

    `data/digits.csv.gz` is scikit-learn's copy of the UCI optdigits test set (origin and BSD-3-Clause
    licence in `data/README.md`): the file `sklearn.datasets.load_digits` parses, without scikit-learn.
    """
    try:
        table = torch.from_numpy(np.loadtxt(DIGITS_CSV, delimiter=",", dtype=np.int64))
    except (OSError, ValueError) as exc:
        raise ReprotrainError(f"the bundled digits data is unreadable: {exc}", path=DIGITS_CSV) from None
    return table[:, :-1].reshape(-1, 8, 8).double(), table[:, -1]


def digits(cfg: TrainConfig) -> Task:
    """The 1797 bundled 8x8 digit images, scaled to [0, 1]: trains offline in seconds."""
    raw_images, labels = digits_arrays()
    images = raw_images.float().unsqueeze(1) / 16.0
    channels = 3 if cfg.model != "cnn" else 1  # torchvision models expect RGB input
    images = images.expand(-1, channels, -1, -1).contiguous()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(_DIGITS_SPLIT_SEED))
    n_val = len(labels) // 5
    val_idx, train_idx = order[:n_val], order[n_val:]
    train = torch.utils.data.TensorDataset(images[train_idx], labels[train_idx])
    val = torch.utils.data.TensorDataset(images[val_idx], labels[val_idx])
    return _classification_task(cfg, train, val, channels, 10)


def _require_data_dir(cfg: TrainConfig) -> str:
    if not cfg.data_dir:
        raise ReprotrainError(f"task {cfg.task!r} needs --data-dir (the dataset root)", path="--data-dir")
    return cfg.data_dir


def _torchvision_dataset(cls_name: str, in_channels: int):
    def factory(cfg: TrainConfig) -> Task:
        import torchvision
        from torchvision import transforms

        root = _require_data_dir(cfg)
        steps = [transforms.ToTensor()]
        channels = in_channels
        if cfg.model != "cnn" and in_channels == 1:
            steps.insert(0, transforms.Grayscale(num_output_channels=3))
            channels = 3
        transform = transforms.Compose(steps)
        cls = getattr(torchvision.datasets, cls_name)
        try:
            train = cls(root, train=True, transform=transform, download=cfg.download)
            val = cls(root, train=False, transform=transform, download=cfg.download)
        except RuntimeError as exc:  # torchvision: "Dataset not found. You can use download=True ..."
            hint = "" if cfg.download else "; pass --download to fetch it (needs network)"
            raise ReprotrainError(f"{cls_name} not found or incomplete ({exc}){hint}", path=root) from None
        return _classification_task(cfg, train, val, channels, len(train.classes))

    factory.__name__ = cls_name.lower()
    factory.__doc__ = f"torchvision {cls_name} from --data-dir."
    return factory


def imagefolder(cfg: TrainConfig) -> Task:
    """`data_dir/train/<class>/*.png|jpg` and `data_dir/val/<class>/*`, resized to 64x64 RGB."""
    import torchvision
    from torchvision import transforms

    root = _require_data_dir(cfg)
    transform = transforms.Compose([transforms.Resize((64, 64)), transforms.ToTensor()])
    splits = {}
    for split in ("train", "val"):
        path = os.path.join(root, split)
        if not os.path.isdir(path):
            raise ReprotrainError(f"ImageFolder layout needs a {split}/ folder with one subfolder per class",
                                  path=path)
        try:
            splits[split] = torchvision.datasets.ImageFolder(path, transform=transform)
        except (FileNotFoundError, RuntimeError) as exc:
            raise ReprotrainError(f"not a usable ImageFolder: {exc}", path=path) from None
    if splits["train"].classes != splits["val"].classes:
        raise ReprotrainError("train/ and val/ have different class folders", path=root)
    return _classification_task(cfg, splits["train"], splits["val"], 3, len(splits["train"].classes))


BUILTIN_TASKS: dict[str, Callable[[TrainConfig], Task]] = {
    "digits": digits,
    "mnist": _torchvision_dataset("MNIST", 1),
    "fashionmnist": _torchvision_dataset("FashionMNIST", 1),
    "cifar10": _torchvision_dataset("CIFAR10", 3),
    "imagefolder": imagefolder,
}


def load_task_factory(spec: str) -> Callable[[TrainConfig], Task]:
    """A built-in name, or `package.module:function` importable from the current directory or sys.path."""
    if spec in BUILTIN_TASKS:
        return BUILTIN_TASKS[spec]
    if ":" not in spec:
        raise ReprotrainError(f"unknown task {spec!r}: use one of {', '.join(BUILTIN_TASKS)} or module:function",
                              path="--task")
    module_name, _, func_name = spec.partition(":")
    if not all(part.isidentifier() for part in module_name.split(".")) or not func_name.isidentifier():
        raise ReprotrainError(f"not a task: {spec!r}: use module:function (a dotted module name, a function name)",
                              path="--task")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ReprotrainError(f"cannot import task module {module_name!r}: {exc}", path="--task") from None
    factory = getattr(module, func_name, None)
    if not callable(factory):
        raise ReprotrainError(f"module {module_name!r} has no callable {func_name!r}", path="--task")
    return factory


def build_task(cfg: TrainConfig) -> Task:
    """Call the task factory and check what it returned (a Task, or a mapping with Task's field names)."""
    factory = load_task_factory(cfg.task)
    try:
        result = factory(cfg)
    except ReprotrainError:
        raise
    except Exception as exc:  # a name that is not a task factory (`os:system`), or a factory that failed
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ReprotrainError(f"task {cfg.task!r} failed while building the task: {type(exc).__name__}"
                              + (f": {first}" if first else "") + " (call it yourself to see the traceback)",
                              path="--task") from exc
    if isinstance(result, dict):
        unknown = set(result) - {"model", "optimizer", "train_data", "val_data", "loss", "scheduler"}
        missing = {"model", "optimizer", "train_data", "loss"} - set(result)
        if unknown or missing:
            raise ReprotrainError(f"task {cfg.task!r} returned a mapping with missing keys {sorted(missing)} "
                                  f"or unknown keys {sorted(unknown)}", path="--task")
        result = Task(**{"val_data": None, **result})
    if not isinstance(result, Task):
        raise ReprotrainError(f"task {cfg.task!r} must return reprotrain.training.Task or a mapping, "
                              f"got {type(result).__name__}", path="--task")
    if not isinstance(result.model, nn.Module) or not isinstance(result.optimizer, torch.optim.Optimizer):
        raise ReprotrainError(f"task {cfg.task!r}: model must be a torch.nn.Module and optimizer a "
                              "torch.optim.Optimizer", path="--task")
    return result
