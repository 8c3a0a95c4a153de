"""Loggers: the engine's metrics.jsonl and curves through one interface, TensorBoard events that hold the run."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from visattn.engine import TrainConfig, fit
from visattn.loggers import JsonlLogger, LoggerGroup, TensorBoardLogger, make_loggers
from visattn.tasks.classify import ClassifyTask


class Squares(Dataset):
    """A bright square whose column encodes the class."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 3, (n,), generator=g)
        self.noise = torch.rand(n, 3, 16, 16, generator=g) * 0.2

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        image, label = self.noise[i].clone(), int(self.labels[i])
        x = 2 + 4 * label
        image[:, 4:9, x: x + 4] = 1.0
        return {"image": image, "label": label, "boxes": torch.tensor([[x, 4, x + 4, 9]], dtype=torch.float32),
                "image_id": i}


def _events(log_dir):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def test_a_tiny_run_writes_its_scalars_and_attention_figures_to_tensorboard(tmp_path, tiny_classifier):
    pytest.importorskip("tensorboard")
    config = TrainConfig(epochs=2, batch_size=8, lr=5e-3, device="cpu", progress=False, seed=3, log_every=2,
                         tensorboard=True)
    result = fit(tiny_classifier(), ClassifyTask(), Squares(32, 0), Squares(8, 1), config, tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and (tmp_path / "curves.png").stat().st_size > 0
    events = _events(tmp_path / "tensorboard")
    tags = set(events.Tags()["scalars"])
    assert {"epoch/train_loss", "epoch/val_accuracy", "step/loss", "step/loss_ce", "step/lr"} <= tags
    for name in ("train_loss", "val_accuracy", "val_pointing_game"):  # the same numbers as metrics.jsonl
        logged = events.Scalars(f"epoch/{name}")
        assert [e.step for e in logged] == [1, 2]
        assert [e.value for e in logged] == pytest.approx([r[name] for r in lines], rel=1e-6)
    steps = [e.step for e in events.Scalars("step/loss")]
    assert steps == [2, 4, 6, 8]  # every log_every=2 of the 4 steps per epoch, at the global step
    assert [e.step for e in events.Images("attention")] == [1, 2]  # one figure per evaluation
    assert result["history"][-1]["train_loss"] == lines[-1]["train_loss"]


def test_without_tensorboard_the_run_folder_is_as_before(tmp_path, tiny_classifier):
    config = TrainConfig(epochs=1, batch_size=8, device="cpu", progress=False)
    fit(tiny_classifier(), ClassifyTask(), Squares(16, 0), Squares(8, 1), config, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.safetensors", "curves.png", "last.safetensors",
                                                          "metrics.jsonl", "train_config.json"]


def test_loggers_of_other_ranks_do_nothing(tmp_path):
    group = make_loggers(tmp_path / "run", tensorboard=True, main=False)
    group.log_step(1, {"loss": 1.0})
    group.log_epoch(1, {"epoch": 1, "train_loss": 1.0})
    group.log_figure("attention", Image.new("RGB", (4, 4)), 1)
    group.close()
    assert not (tmp_path / "run").exists() and not group.takes_figures


def test_jsonl_logger_appends_lines_and_draws_the_whole_history(tmp_path):
    earlier = [{"epoch": 1, "train_loss": 2.0}]
    logger = JsonlLogger(tmp_path, history=earlier)  # a resumed run: the curves start at epoch 1
    logger.log_epoch(2, {"epoch": 2, "train_loss": 1.5, "val_accuracy": 0.5})
    logger.log_epoch(3, {"epoch": 3, "train_loss": 1.0, "val_accuracy": 0.7})
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [2, 3] and [r["epoch"] for r in logger.history] == [1, 2, 3]
    assert (tmp_path / "curves.png").stat().st_size > 0 and not logger.takes_figures


def test_tensorboard_logger_takes_figures_in_every_form(tmp_path):
    pytest.importorskip("tensorboard")
    from matplotlib.figure import Figure

    png = tmp_path / "x.png"
    Image.new("RGB", (6, 4), (255, 0, 0)).save(png)
    figure = Figure(figsize=(1, 1), dpi=20)
    figure.subplots().plot([0, 1])
    logger = TensorBoardLogger(tmp_path / "tb")
    for step, item in enumerate([figure, Image.new("RGB", (6, 4)), png.read_bytes(), png], start=1):
        logger.log_figure("f", item, step)
    with pytest.raises(ValueError, match="log_figure takes"):
        logger.log_figure("f", 3, 5)
    logger.close()
    images = _events(tmp_path / "tb").Images("f")
    assert [e.step for e in images] == [1, 2, 3, 4]
    assert (images[0].width, images[0].height) == (20, 20) and (images[3].width, images[3].height) == (6, 4)


def test_group_fans_out_and_figures_go_only_to_takers(tmp_path):
    calls = []

    class Recorder:
        def __init__(self, name, takes):
            self.name, self.takes_figures = name, takes

        def log_step(self, step, scalars):
            calls.append((self.name, "step", step))

        def log_epoch(self, epoch, record):
            calls.append((self.name, "epoch", epoch))

        def log_figure(self, tag, figure, step):
            calls.append((self.name, "figure", step))

        def close(self):
            calls.append((self.name, "close", None))

    group = LoggerGroup([Recorder("a", False), Recorder("b", True)])
    assert group.takes_figures
    group.log_step(3, {"loss": 0.1})
    group.log_epoch(1, {})
    group.log_figure("attention", b"", 1)
    group.close()
    assert calls == [("a", "step", 3), ("b", "step", 3), ("a", "epoch", 1), ("b", "epoch", 1), ("b", "figure", 1),
                     ("a", "close", None), ("b", "close", None)]


def test_missing_tensorboard_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install 'visattn\[tensorboard\]'"):
        make_loggers(tmp_path, tensorboard=True)
