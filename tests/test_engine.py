"""The engine: exact resume, run-folder outputs, early stopping, non-finite loss, schedules."""

import json
import math

import pytest
import torch
from torch.utils.data import Dataset

from visattn.checkpoint import read_checkpoint
from visattn.engine import TrainConfig, fit, lr_factor, select_device
from visattn.models import build_model, load
from visattn.tasks.classify import ClassifyTask


class Blobs(Dataset):
    """A bright square whose position encodes the class: learnable in a few steps, deterministic."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 3, (n,), generator=g)
        self.noise = torch.rand(n, 3, 16, 16, generator=g) * 0.2

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        image = self.noise[i].clone()
        label = int(self.labels[i])
        x = 2 + 4 * label
        image[:, 4:9, x : x + 4] = 1.0
        box = torch.tensor([[x, 4, x + 4, 9]], dtype=torch.float32)
        return {"image": image, "label": label, "boxes": box, "image_id": i}


def tiny_model(seed=0):
    # (Not the tiny_classifier fixture: helpers below build models too.) Dropout, so that an exact resume
    # has to restore the random state as well as the weights.
    torch.manual_seed(seed)
    return build_model("tiny_classifier", dropout=0.2)


def cfg(**kw):
    base = dict(epochs=4, batch_size=8, lr=5e-3, device="cpu", progress=False, seed=3)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.slow
def test_fit_writes_run_folder_and_learns(tmp_path):
    result = fit(tiny_model(), ClassifyTask(), Blobs(64, 0), Blobs(32, 1), cfg(), tmp_path)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4]
    assert {"train_loss", "train_loss_ce", "val_accuracy", "val_pointing_game", "images_per_s"} <= set(lines[0])
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert (tmp_path / "curves.png").stat().st_size > 0
    best = read_checkpoint(tmp_path / "best.safetensors")
    assert best.training["epoch"] == result["best"]["epoch"] and not best.optimizer_tensors
    last = read_checkpoint(tmp_path / "last.safetensors")
    assert last.training["epoch"] == 4 and last.optimizer_tensors and "torch" in last.rng_tensors
    assert load(tmp_path / "best.safetensors").config.class_names == ["a", "b", "c"]


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path):
    full = fit(tiny_model(), ClassifyTask(), Blobs(64, 0), Blobs(16, 1), cfg(), tmp_path / "full")
    # The same run interrupted after epoch 2, then resumed from its last checkpoint by a differently seeded model.
    snapshot = _train_and_snapshot(tmp_path / "snap", stop_after=2)
    resumed = fit(tiny_model(seed=99), ClassifyTask(), Blobs(64, 0), Blobs(16, 1), cfg(),
                  tmp_path / "resumed", resume=snapshot)
    a = [r["train_loss"] for r in full["history"]]
    b = [r["train_loss"] for r in resumed["history"]]
    assert len(b) == 4
    assert a == pytest.approx(b, rel=1e-6, abs=1e-7)
    final_full = load(tmp_path / "full" / "last.safetensors").state_dict()
    final_resumed = load(tmp_path / "resumed" / "last.safetensors").state_dict()
    for key in final_full:
        torch.testing.assert_close(final_full[key], final_resumed[key], rtol=1e-5, atol=1e-6)


def _train_and_snapshot(run_dir, stop_after):
    """Run the 4-epoch config but stop after ``stop_after`` epochs via a task whose evaluation stops it."""
    calls = {"n": 0}

    class Stopping(ClassifyTask):
        def evaluate(self, model, loader, device):
            calls["n"] += 1
            metrics = super().evaluate(model, loader, device)
            if calls["n"] > stop_after:
                raise _Stop
            return metrics

    with pytest.raises(_Stop):
        fit(tiny_model(), Stopping(), Blobs(64, 0), Blobs(16, 1), cfg(), run_dir)
    assert read_checkpoint(run_dir / "last.safetensors").training["epoch"] == stop_after
    return run_dir / "last.safetensors"


class _Stop(Exception):
    pass


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    steps = {"n": 0}

    class Exploding(ClassifyTask):
        def criterion(self, model, batch, device):
            steps["n"] += 1
            terms = super().criterion(model, batch, device)
            if steps["n"] > 10:  # epoch 2 of 8 batches per epoch
                terms = {k: v * float("nan") for k, v in terms.items()}
            return terms

    result = fit(tiny_model(), Exploding(), Blobs(64, 0), Blobs(16, 1), cfg(), tmp_path)
    assert result["stopped"].startswith("non-finite loss at epoch 2")
    last = read_checkpoint(tmp_path / "last.safetensors")
    assert last.training["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in last.state_dict.values() if t.is_floating_point())


def test_early_stopping(tmp_path):
    class Flat(ClassifyTask):
        def evaluate(self, model, loader, device):
            return {"accuracy": 0.5}

    result = fit(tiny_model(), Flat(), Blobs(16, 0), Blobs(8, 1), cfg(epochs=10, early_stop_patience=2), tmp_path)
    assert len(result["history"]) == 3 and result["stopped"].startswith("early stop")


def test_schedule_and_config_validation():
    c = TrainConfig(warmup_steps=10, schedule="cosine")
    assert lr_factor(0, 110, c) == pytest.approx(0.1)
    assert lr_factor(10, 110, c) == pytest.approx(1.0)
    assert lr_factor(60, 110, c) == pytest.approx(0.5)
    assert lr_factor(110, 110, c) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(90, 100, TrainConfig(schedule="step")) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="dtype must be"):
        TrainConfig(dtype="int8")
    with pytest.raises(ValueError, match="schedule must be"):
        TrainConfig(schedule="linear")
    assert select_device("cpu").type == "cpu"
    assert math.isfinite(lr_factor(5, 1, TrainConfig()))


def test_asking_for_an_absent_gpu_is_a_clear_error(monkeypatch):
    # On every machine, GPU or not: the answer without CUDA is what a CPU-only user sees.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="'cuda' asked for, but CUDA is not available"):
        select_device("cuda")
    with pytest.raises(ValueError, match="'cuda:1' asked for, but CUDA is not available"):
        select_device("cuda:1")
    assert select_device("auto").type in ("cpu", "mps")
