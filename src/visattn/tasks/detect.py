"""The detection task: data, set loss, COCO evaluation and prediction around the DETR-style detector.

Library functions only (no argument parsing): ``visattn.cli`` builds the pieces from the command line and
calls these, and so can a script.

Images of any size are resized to the model's square input (``DetectorConfig.image_size``); ground-truth and
predicted boxes stay in the pixels of the original image, which is safe because the detector predicts boxes
normalised by the image size.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from visattn import distributed as dist
from visattn.data.coco import CocoDetectionDataset
from visattn.data.scenes import SceneConfig, SceneDataset
from visattn.engine import TrainConfig, fit
from visattn.heads.detection_loss import SetCriterion, targets_from_samples
from visattn.heads.detector import DetectorConfig
from visattn.metrics.detection import attention_localization, coco_map
from visattn.models import build_model
from visattn.results import DetectResult
from visattn.tasks.base import Task, register_task

__all__ = ["DetectData", "DetectTask", "ResizeImage", "coco_data", "collate", "eval_data", "evaluate_detector",
           "format_detection", "scene_data", "train_detector"]

log = logging.getLogger("visattn")


@dataclass
class DetectData:
    """Datasets of one detection problem.

    Attributes:
        train, val: datasets of sample dicts (``image`` (3, S, S) in [0, 1], ``boxes`` (N, 4) xyxy pixels of the
            original image, ``labels`` (N,), ``orig_size`` (H, W), optional ``crowd_boxes``/``crowd_labels``).
        class_names: names in label order.
        image_size: side S of the square model input.
        source: a one-line description (for logs and the run folder).
        category_ids: COCO ids of the classes (None for procedural scenes).
    """

    train: Dataset
    val: Dataset
    class_names: list[str]
    image_size: int
    source: str
    category_ids: list[int] | None = None


class ResizeImage:
    """Sample transform: resize ``image`` to ``size x size`` and record the original ``orig_size`` (H, W)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        image = sample["image"]
        sample = dict(sample, orig_size=(int(image.shape[-2]), int(image.shape[-1])))
        if tuple(image.shape[-2:]) != (self.size, self.size):
            sample["image"] = F.interpolate(image[None], size=(self.size, self.size), mode="bilinear",
                                            align_corners=False, antialias=True)[0].clamp_(0, 1)
        return sample


def scene_data(*, num_train: int = 5000, num_val: int = 500, image_size: int = 64, seed: int = 0,
               num_objects: tuple[int, int] = (1, 3), clutter: int | None = None,
               num_workers: int = 0) -> DetectData:
    """Procedural multi-object scenes with boxes, rendered once into memory (val from a different seed)."""
    config = SceneConfig(kind="multi", image_size=image_size, num_objects=num_objects, clutter=clutter)
    resize = ResizeImage(image_size)
    train = SceneDataset(config, num_samples=num_train, seed=2 * seed, transform=resize)
    val = SceneDataset(config, num_samples=num_val, seed=2 * seed + 1, transform=resize)
    train.materialize(num_workers=num_workers)
    val.materialize(num_workers=num_workers)
    return DetectData(train, val, list(train.class_names), image_size,
                      f"procedural multi-object scenes {image_size}px, {num_objects[0]}-{num_objects[1]} objects, "
                      f"clutter={config.num_clutter}, seed={seed}")


def coco_data(train_file: str | Path, val_file: str | Path, *, image_dir: str | Path | None = None,
              val_image_dir: str | Path | None = None, image_size: int = 64, strict: bool = False) -> DetectData:
    """COCO instances files for training and validation (same categories); images resized to ``image_size``.

    Invalid annotations and missing images are skipped and reported (see :mod:`visattn.data.coco`);
    ``strict=True`` stops at the first one instead.
    """
    resize = ResizeImage(image_size)
    train = CocoDetectionDataset(train_file, image_dir, strict=strict, transform=resize)
    val = CocoDetectionDataset(val_file, val_image_dir, strict=strict, transform=resize)
    if train.category_ids != val.category_ids or train.class_names != val.class_names:
        raise ValueError(f"{val_file}: categories {list(zip(val.category_ids, val.class_names))} differ from "
                         f"{train_file}: {list(zip(train.category_ids, train.class_names))}")
    for name, dataset in (("train", train), ("val", val)):
        log.info("COCO %s %s: %s", name, dataset.annotation_file, dataset.report.summary())
    return DetectData(train, val, train.class_names, image_size, f"COCO {train_file} / {val_file}",
                      category_ids=train.category_ids)


def eval_data(model_config: DetectorConfig, *, coco_file: str | Path | None = None,
              image_dir: str | Path | None = None, num_samples: int = 1000, seed: int = 12345,
              strict: bool = False) -> tuple[Dataset, list[int] | None]:
    """A held-out set for a trained detector: a COCO instances file (its categories must be the model's), or
    ``num_samples`` procedural scenes from ``seed``; resized to the model's input side.

    Returns:
        ``(dataset, category_ids)``: the COCO ids of the classes for a file, None for procedural scenes.

    Raises:
        ValueError: the file's categories differ from the model's, naming the file.
    """
    size = model_config.image_size
    if coco_file is None:
        return scene_data(num_train=0, num_val=num_samples, image_size=size, seed=seed).val, None
    dataset = CocoDetectionDataset(coco_file, image_dir, strict=strict, transform=ResizeImage(size))
    if list(dataset.class_names) != list(model_config.class_names):
        raise ValueError(f"{coco_file}: categories {list(dataset.class_names)} differ from the "
                         f"checkpoint's {list(model_config.class_names)}")
    return dataset, list(dataset.category_ids)


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Samples -> a batch.

    Returns:
        ``images`` (B, 3, S, S); ``targets`` (per image normalised cxcywh ``boxes`` and ``labels``, what the
        criterion takes); per image ``boxes`` (N, 4) xyxy pixels, ``labels``, ``crowd_boxes``, ``crowd_labels``
        (evaluation); ``image_sizes`` (per image original (H, W)); ``image_ids``.
    """
    images = torch.stack([s["image"] for s in samples])  # (B, 3, S, S)
    sizes = [tuple(s.get("orig_size", s["image"].shape[-2:])) for s in samples]
    boxes = [torch.as_tensor(s["boxes"], dtype=torch.float32).reshape(-1, 4) for s in samples]
    labels = [torch.as_tensor(s["labels"], dtype=torch.int64).reshape(-1) for s in samples]
    return {
        "images": images,
        "targets": targets_from_samples(boxes, labels, sizes),
        "boxes": boxes,
        "labels": labels,
        "crowd_boxes": [torch.as_tensor(s.get("crowd_boxes", torch.zeros(0, 4))).reshape(-1, 4) for s in samples],
        "crowd_labels": [torch.as_tensor(s.get("crowd_labels", torch.zeros(0)), dtype=torch.int64) for s in samples],
        "image_sizes": sizes,
        "image_ids": [s.get("image_id") for s in samples],
    }


@torch.no_grad()
def evaluate_detector(model: nn.Module, loader: DataLoader, device: torch.device, *, score_threshold: float = 0.0,
                      top_k: int = 100, category_ids: Sequence[int] | None = None) -> dict[str, float]:
    """COCO mAP (``map``, ``map_50``, ``map_75``, by size, ``ap/<class>``) and attention localisation.

    mAP is computed over every query (``score_threshold=0``: the precision-recall curve needs the low scores);
    the attention numbers (``energy_in_pred_box``, ``energy_in_gt_box`` and their uniform baselines) over the
    detections scoring at least 0.5.
    """
    model.eval()
    predictions, targets, sizes = [], [], []
    for batch in loader:
        out = model(batch["images"].to(device, non_blocking=True))
        predictions += [{k: v.cpu() for k, v in p.items()} for p in
                        model.postprocess(out, batch["image_sizes"], score_threshold=score_threshold, top_k=top_k)]
        targets += [{"boxes": b, "labels": lab, "crowd_boxes": cb, "crowd_labels": cl} for b, lab, cb, cl in
                    zip(batch["boxes"], batch["labels"], batch["crowd_boxes"], batch["crowd_labels"])]
        sizes += batch["image_sizes"]
    # under torchrun with a sharded loader: every rank's images, in dataset order, before scoring
    predictions, targets, sizes = (dist.gather_shards(items, loader) for items in (predictions, targets, sizes))
    metrics = coco_map(predictions, targets, model.config.class_names, category_ids=category_ids)
    confident = [{k: v[p["scores"] >= 0.5] for k, v in p.items()} for p in predictions]
    metrics.update(attention_localization(confident, targets, sizes))
    return metrics


@register_task
class DetectTask(Task):
    """Detection: Hungarian-matched set loss (``loss_ce``, ``loss_bbox``, ``loss_giou`` and their auxiliary
    ``_<layer>`` copies, weighted by :attr:`weight_dict`), best checkpoint by validation mAP.

    Args:
        num_classes: K object classes (the criterion adds "no object"); None until the data is known
            (enough for prediction and evaluation, which need no criterion).
        eos_coef: weight of the no-object class inside ``loss_ce``.
        loss_ce, loss_bbox, loss_giou: the terms' weights in the total (DETR's 1, 5, 2).
        category_ids: COCO ids of the classes, so that mAP is reported against the file's ids.
    """

    name = "detect"
    model_name = "detector"
    monitor = "map"
    predict_options = {"score_threshold": 0.5, "top_k": 100}

    def __init__(self, num_classes: int | None = None, *, eos_coef: float = 0.1, loss_ce: float = 1.0,
                 loss_bbox: float = 5.0, loss_giou: float = 2.0, category_ids: Sequence[int] | None = None) -> None:
        self.criterion_module = None if num_classes is None else SetCriterion(
            num_classes, eos_coef=eos_coef, loss_ce=loss_ce, loss_bbox=loss_bbox, loss_giou=loss_giou)
        self.weight_dict = {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}
        self.category_ids = category_ids

    def collate(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return collate(samples)

    def criterion(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, Tensor]:
        if self.criterion_module is None:
            raise ValueError("DetectTask(num_classes=None) has no criterion: pass num_classes to train")
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in batch["targets"]]
        # Under DDP the box and class-weight counts are the means over ranks: the averaged gradient is then
        # the gradient of the loss over the global batch, whatever each rank's share of objects.
        terms = self.criterion_module(model(batch["images"].to(device, non_blocking=True)), targets,
                                      reduce_counts=dist.all_reduce_mean)
        terms.pop("loss")  # the engine weighs the terms itself (the same weight_dict)
        return terms

    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        return evaluate_detector(model, loader, device, category_ids=self.category_ids)

    def predict(self, model: nn.Module, images: Tensor, sizes: Sequence[tuple[int, int]], sources: Sequence[str],
                *, score_threshold: float = 0.5, top_k: int = 100) -> list[DetectResult]:
        if isinstance(score_threshold, bool) or not isinstance(score_threshold, (int, float)) \
                or not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be a number in [0, 1], got {score_threshold!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
        kept = model.postprocess(model(images), [tuple(s) for s in sizes], score_threshold=float(score_threshold),
                                 top_k=top_k)
        names = model.config.class_names
        return [DetectResult(source=str(source), boxes=d["boxes"].cpu(), scores=d["scores"].cpu(),
                             labels=[names[i] for i in d["labels"].tolist()], label_ids=d["labels"].cpu(),
                             query_index=d["query_index"].cpu(), attention=d["attention"].float().cpu(),
                             image_size=tuple(size))
                for source, size, d in zip(sources, sizes, kept)]


def train_detector(model_config: DetectorConfig, data: DetectData, train_config: TrainConfig, run_dir: str | Path,
                   *, resume: str | Path | None = None, eos_coef: float = 0.1) -> dict[str, Any]:
    """Build the detector for ``data``'s classes and input size and train it; returns the engine's result."""
    model_config = replace(model_config, num_classes=len(data.class_names), class_names=list(data.class_names),
                           image_size=data.image_size)
    model = build_model("detector", model_config)
    log.info("training detector (%d queries, %d layers) on %s", model_config.num_queries, model_config.num_layers,
             data.source)
    task = DetectTask(len(data.class_names), eos_coef=eos_coef, category_ids=data.category_ids)
    return fit(model, task, data.train, data.val, train_config, run_dir, resume=resume)


def format_detection(result: DetectResult, figure: str | Path | None = None) -> str:
    """Lines for the terminal: the file, then one ``label score x1 y1 x2 y2`` line per detection."""
    lines = [f"{result.source}: {len(result.labels)} detection(s)" + (f" -> {figure}" if figure else "")]
    for label, score, box in zip(result.labels, result.scores.tolist(), result.boxes.tolist()):
        lines.append(f"  {label:<12} {score:.3f}  " + " ".join(f"{v:7.1f}" for v in box))
    return "\n".join(lines)
