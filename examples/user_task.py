"""A user task for `reprotrain train --task user_task:make_task` (run from this folder, or put it on PYTHONPATH).

A task factory receives the resolved `TrainConfig` (cfg.lr, cfg.seed, cfg.extra, ...) and returns a
`reprotrain.training.Task` (or a dict with the same keys). The model is built after reprotrain seeds every RNG
with cfg.seed, so its initial weights are reproducible. Here: logistic-regression-sized MLP on scikit-learn's
bundled breast-cancer table, with a step learning-rate schedule (stepped once per epoch).
"""

import torch
from sklearn.datasets import load_breast_cancer
from torch import nn

from reprotrain.training import Task


def make_task(cfg):
    features, labels = load_breast_cancer(return_X_y=True)
    x = torch.tensor(features, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    y = torch.tensor(labels, dtype=torch.long)
    # A fixed split, independent of cfg.seed, so changing the seed never changes what is validated on.
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    val, train = order[:100], order[100:]
    hidden = int(cfg.extra.get("hidden", 32))
    model = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Dropout(0.1), nn.Linear(hidden, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)
    return Task(model=model, optimizer=optimizer,
                train_data=torch.utils.data.TensorDataset(x[train], y[train]),
                val_data=torch.utils.data.TensorDataset(x[val], y[val]),
                loss=nn.CrossEntropyLoss(),
                scheduler=torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5))
