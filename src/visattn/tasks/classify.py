"""The classification task: data, loss, evaluation and prediction around the attention classifier.

:class:`ClassifyTask` is what the engine and :class:`visattn.Predictor` drive; the functions around it build
its data (procedural scenes or an ImageFolder tree) and train it.

Library functions only (no argument parsing): ``visattn.cli`` builds the pieces from the command line
and calls these, and so can a script.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from visattn import distributed as dist
from visattn.data.scenes import SceneConfig, SceneDataset
from visattn.engine import TrainConfig, fit
from visattn.heads.classifier import ClassifierConfig
from visattn.metrics.localisation import LocalisationMeter
from visattn.models import build_model
from visattn.results import ClassifyResult
from visattn.tasks.base import Task, register_task

__all__ = ["ClassifyData", "ClassifyTask", "scene_data", "imagefolder_data", "collate", "train_classifier",
           "evaluate_classifier"]

log = logging.getLogger("visattn")


@dataclass
class ClassifyData:
    """Datasets of one classification problem.

    Attributes:
        train, val: datasets of sample dicts (``image`` (3, H, W) in [0, 1], ``label``, optional ``boxes``).
        class_names: names in label order.
        image_size: (H, W) of every image.
        source: a one-line description (for logs and the run folder).
    """

    train: Dataset
    val: Dataset
    class_names: list[str]
    image_size: tuple[int, int]
    source: str


def scene_data(*, num_train: int = 5000, num_val: int = 1000, image_size: int = 64, seed: int = 0,
               clutter: int | None = None, num_workers: int = 0) -> ClassifyData:
    """Cluttered single-object procedural scenes, rendered once into memory.

    Train and validation sets are drawn from the seeds ``2·seed`` and ``2·seed + 1``, so no image is in both and
    no two values of ``seed`` share a set.
    """
    config = SceneConfig(kind="single", image_size=image_size, clutter=clutter)
    train = SceneDataset(config, num_samples=num_train, seed=2 * seed).materialize(num_workers=num_workers)
    val = SceneDataset(config, num_samples=num_val, seed=2 * seed + 1).materialize(num_workers=num_workers)
    return ClassifyData(train, val, list(train.class_names), (image_size, image_size),
                        f"procedural single-object scenes {image_size}px, clutter={config.num_clutter}, seed={seed}")


def imagefolder_data(root: str | Path, *, image_size: int = 64, strict: bool = False) -> ClassifyData:
    """An ImageFolder tree with ``train/`` and ``val/`` splits (``root/<split>/<class>/<image>``).

    Corrupt images are skipped and reported (``strict=True`` stops at the first one instead).
    """
    from visattn.data.imagefolder import ImageFolder

    root = Path(root)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise ValueError(f"{root}: expected an ImageFolder tree with a {split!r} folder (root/{split}/<class>/...)")
    train = ImageFolder(root / "train", size=image_size, strict=strict)
    val = ImageFolder(root / "val", size=image_size, strict=strict, classes=train.class_names)
    skipped = len(train.skipped) + len(val.skipped)
    if skipped:
        log.warning("%s: skipped %d unreadable image(s) (train %d, val %d); strict=True (--strict) stops instead",
                    root, skipped, len(train.skipped), len(val.skipped))
    return ClassifyData(train, val, list(train.class_names), (image_size, image_size), f"ImageFolder {root} ({len(train)} train, {len(val)} val, {skipped} skipped)")


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Samples -> ``{"images" (B, 3, H, W), "labels" (B,), "boxes" (B, 4) or None, "image_ids"}``.

    ``boxes`` is each image's labelled object (its first box) when every sample has one.
    """
    images = torch.stack([s["image"] for s in samples])
    labels = torch.tensor([int(s["label"]) for s in samples], dtype=torch.long)
    has_boxes = all(s.get("boxes") is not None and len(s["boxes"]) > 0 for s in samples)
    boxes = torch.stack([torch.as_tensor(s["boxes"])[0] for s in samples]).float() if has_boxes else None
    return {"images": images, "labels": labels, "boxes": boxes, "image_ids": [s.get("image_id") for s in samples]}


def evaluate_classifier(model: nn.Module, loader: DataLoader, device: torch.device, *, topk: int = 5) -> dict[str, float]:
    """Accuracy, error, top-k accuracy and, when boxes exist, pointing game / energy in box / uniform energy."""
    model.eval()
    correct = correct_k = total = 0
    meter = LocalisationMeter()
    with torch.no_grad():
        for batch in loader:
            images = batch["images"].to(device, non_blocking=True)
            labels = batch["labels"].to(device, non_blocking=True)
            out = model(images)
            k = min(topk, out["pred_logits"].shape[-1])
            top = out["pred_logits"].topk(k, dim=-1).indices  # (B, k)
            correct += int((top[:, 0] == labels).sum())
            correct_k += int((top == labels[:, None]).any(dim=-1).sum())
            total += len(labels)
            if batch["boxes"] is not None:
                meter.update(out["attention"], batch["boxes"], tuple(images.shape[-2:]))
    # under torchrun with a sharded loader: the sums over every rank's share (see Task.sharded_eval)
    correct, correct_k, total = dist.merge_shards((correct, correct_k, total), loader,
                                                  lambda a, b: tuple(x + y for x, y in zip(a, b)))
    meter = dist.merge_shards(meter, loader, LocalisationMeter.merge)
    metrics = {"accuracy": correct / max(total, 1), "error": 1 - correct / max(total, 1),
               f"top{topk}_accuracy": correct_k / max(total, 1)}
    if meter.count:
        metrics.update(meter.compute())
    return metrics


@register_task
class ClassifyTask(Task):
    """Classification: cross entropy (``loss_ce``), best checkpoint by validation accuracy.

    Args:
        topk: the k of the ``top<k>_accuracy`` metric.
    """

    name = "classify"
    model_name = "classifier"
    monitor = "accuracy"
    predict_options = {"top_k": 5}

    def __init__(self, *, topk: int = 5) -> None:
        self.topk = topk
        self.weight_dict = {"loss_ce": 1.0}

    def collate(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return collate(samples)

    def criterion(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, Tensor]:
        images = batch["images"].to(device, non_blocking=True)
        labels = batch["labels"].to(device, non_blocking=True)
        return {"loss_ce": F.cross_entropy(model(images)["pred_logits"].float(), labels)}

    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        return evaluate_classifier(model, loader, device, topk=self.topk)

    def predict(self, model: nn.Module, images: Tensor, sizes: Sequence[tuple[int, int]], sources: Sequence[str],
                *, top_k: int = 5) -> list[ClassifyResult]:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
        out = model(images)
        probs = out["pred_logits"].float().softmax(dim=-1).cpu()  # (B, K)
        attention = out["attention"].float().cpu()  # (B, G, H', W')
        names = model.config.class_names
        values, indices = probs.topk(min(top_k, probs.shape[-1]), dim=-1)  # (B, k) each
        results = []
        for i, source in enumerate(sources):
            top = [(names[j], float(v)) for v, j in zip(values[i].tolist(), indices[i].tolist())]
            results.append(ClassifyResult(source=str(source), label=top[0][0], score=top[0][1], top_k=top,
                                          attention=attention[i], image_size=tuple(sizes[i])))
        return results


def train_classifier(model_config: ClassifierConfig, data: ClassifyData, train_config: TrainConfig,
                     run_dir: str | Path, *, resume: str | Path | None = None) -> dict[str, Any]:
    """Build the classifier for ``data``'s classes and train it; returns :func:`visattn.engine.fit`'s result."""
    model_config = replace(model_config, class_names=list(data.class_names), image_size=data.image_size[0])
    model = build_model("classifier", model_config)
    log.info("training %s classifier on %s", model_config.pooling, data.source)
    return fit(model, ClassifyTask(), data.train, data.val, train_config, run_dir, resume=resume)
