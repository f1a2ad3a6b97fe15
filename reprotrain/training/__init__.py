"""The bundled training loop and its built-in tasks (`reprotrain train`).

Nothing else in reprotrain imports this package; it imports torch.
"""

from reprotrain.training.config import SHAPE_OR_DATA_FIELDS, TrainConfig, resolve
from reprotrain.training.loop import TrainingFailed, TrainResult, train
from reprotrain.training.tasks import BUILTIN_TASKS, SmallCNN, Task

__all__ = ["BUILTIN_TASKS", "SHAPE_OR_DATA_FIELDS", "SmallCNN", "Task", "TrainConfig", "TrainResult",
           "TrainingFailed", "resolve", "train"]
