"""Training building blocks without the checkpoint layer: config resolution, data order, tasks, metrics log."""

from __future__ import annotations

import json

import pytest
import torch

from reprotrain.errors import ReprotrainError
from reprotrain.training import data
from reprotrain.training.config import TrainConfig, check_resume_config, load_config_file, resolve
from reprotrain.training.progress import MetricsLog
from reprotrain.training.tasks import SmallCNN, build_task, digits_arrays, load_task_factory


def test_resolve_precedence_defaults_file_options(tmp_path):
    cfg_file = tmp_path / "train.yaml"
    cfg_file.write_text("epochs: 3\nbatch-size: 16\nlr: 0.01\n")
    cfg = resolve({"epochs": 7, "seed": 5}, file=cfg_file, options={"lr": 0.5})
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.seed) == (3, 16, 0.5, 5)
    assert cfg.task == TrainConfig().task
    assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()  # plain JSON types


@pytest.mark.parametrize("text, message", [
    ("epochs: [1, 2]\n", "epochs: expected int"),
    ("bogus: 1\n", "unknown option 'bogus'"),
    ("epochs: 0\n", "epochs must be at least 1"),
    ("- a\n- b\n", "must be a mapping"),
    ("epochs: [\n", "not valid YAML"),
    ("download: yes-please\n", "download: expected bool"),
])
def test_bad_config_file_names_file_and_problem(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ReprotrainError) as exc:
        resolve(file=path)
    assert message in str(exc.value) and str(path) in str(exc.value)
    assert exc.value.exit_code == 2


def test_missing_config_file(tmp_path):
    with pytest.raises(ReprotrainError, match="cannot read config file"):
        load_config_file(tmp_path / "nope.yaml")


def test_resume_config_change_refused_for_shape_fields_reported_for_others():
    recorded = TrainConfig().to_dict()
    notes = check_resume_config(recorded, resolve(recorded, options={"epochs": 20, "lr": 0.1}), checkpoint="ck.pth")
    assert notes == [f"config changed on resume: epochs: {recorded['epochs']} -> 20",
                     f"config changed on resume: lr: {recorded['lr']!r} -> 0.1"]
    for field, value in [("batch_size", 64), ("model", "resnet18"), ("task", "mnist"), ("seed", 3)]:
        with pytest.raises(ReprotrainError) as exc:
            check_resume_config(recorded, resolve(recorded, options={field: value}), checkpoint="ck.pth")
        assert exc.value.exit_code == 1 and exc.value.path == "ck.pth"
        assert exc.value.message.startswith(f"config change refused on resume ({field}: {recorded[field]!r} -> "
                                            f"{value!r}): ")
        assert "start a new run with --fresh" in exc.value.message


def test_epoch_order_is_seeded_and_restartable():
    full = list(data.EpochBatchSampler(103, 10, seed=1, epoch=2))
    assert len(full) == 11 and sorted(i for b in full for i in b) == list(range(103))
    assert full == list(data.EpochBatchSampler(103, 10, seed=1, epoch=2))
    assert full != list(data.EpochBatchSampler(103, 10, seed=1, epoch=3))
    assert full != list(data.EpochBatchSampler(103, 10, seed=2, epoch=2))
    assert list(data.EpochBatchSampler(103, 10, seed=1, epoch=2, start_batch=4)) == full[4:]


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_does_not_consume_global_rng_and_restarts_exactly(workers):
    dataset = torch.utils.data.TensorDataset(torch.arange(50.0))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    whole = [b[0] for b in data.train_loader(dataset, batch_size=8, seed=0, epoch=1, start_batch=0,
                                             num_workers=workers)]
    assert torch.equal(torch.get_rng_state(), before)
    tail = [b[0] for b in data.train_loader(dataset, batch_size=8, seed=0, epoch=1, start_batch=3,
                                            num_workers=workers)]
    assert len(tail) == len(whole) - 3 and all(torch.equal(a, b) for a, b in zip(tail, whole[3:]))


def test_digits_task_shapes_and_fixed_split():
    a, b = build_task(resolve(options={"seed": 1})), build_task(resolve(options={"seed": 2}))
    assert len(a.train_data) + len(a.val_data) == 1797
    assert torch.equal(a.val_data.tensors[1], b.val_data.tensors[1])  # the seed never changes the split
    x, _ = a.train_data[0]
    assert x.shape == (1, 8, 8) and 0 <= x.min() and x.max() <= 1
    assert isinstance(a.model, SmallCNN) and a.model(x.unsqueeze(0)).shape == (1, 10)


def test_torchvision_model_by_name_on_digits():
    task = build_task(resolve(options={"model": "resnet18"}))
    x, _ = task.train_data[0]
    assert x.shape == (3, 8, 8)
    task.model.eval()
    assert task.model(x.unsqueeze(0)).shape == (1, 10)


def test_torchvision_dataset_missing_says_download(tmp_path):
    with pytest.raises(ReprotrainError) as exc:
        build_task(resolve(options={"task": "mnist", "data_dir": str(tmp_path)}))
    assert "--download" in str(exc.value) and str(tmp_path) in str(exc.value)
    with pytest.raises(ReprotrainError, match="needs --data-dir"):
        build_task(resolve(options={"task": "cifar10"}))


def test_imagefolder_task(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls, color in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (20, 12), color).save(tmp_path / split / cls / f"{i}.png")
    task = build_task(resolve(options={"task": "imagefolder", "data_dir": str(tmp_path)}))
    x, y = task.train_data[0]
    assert x.shape == (3, 64, 64) and len(task.train_data) == 4 and y in (0, 1)
    (tmp_path / "val").rename(tmp_path / "validation")
    with pytest.raises(ReprotrainError, match="needs a val/ folder"):
        build_task(resolve(options={"task": "imagefolder", "data_dir": str(tmp_path)}))


@pytest.mark.parametrize("spec, message", [
    ("nosuchtask", "unknown task"),
    ("no_such_module_xyz:make", "cannot import task module"),
    ("json:no_such_function", "has no callable"),
])
def test_bad_task_specs(spec, message):
    with pytest.raises(ReprotrainError, match=message):
        load_task_factory(spec)


def test_user_task_from_examples(monkeypatch):
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).resolve().parents[1] / "examples"))
    task = build_task(resolve(options={"task": "user_task:make_task"}))
    x, y = next(iter(torch.utils.data.DataLoader(task.train_data, batch_size=4)))
    assert task.loss(task.model(x), y).ndim == 0 and task.scheduler is not None


def test_metrics_log_appends_and_flushes_each_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    log.write("step", step=1, loss=0.5)
    assert json.loads(path.read_text())["step"] == 1  # readable before close: survives a crash
    log.write("step", step=2, loss=float("nan"))
    log.close()
    MetricsLog(path).write("resume", step=1)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["kind"] for r in lines] == ["step", "step", "resume"] and lines[1]["loss"] is None
