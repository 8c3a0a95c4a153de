"""COCO detection format: read an instances JSON into samples, write samples back out.

The COCO instances file holds ``images`` (``id``, ``file_name``, ``width``, ``height``), ``annotations``
(``id``, ``image_id``, ``category_id``, ``bbox`` as pixel ``x, y, w, h``, ``iscrowd``, ``area``) and
``categories`` (``id``, ``name``). Category ids are arbitrary (COCO's own run 1..90 with gaps), so the reader
maps them to contiguous labels ``0..K-1`` in increasing id order; :attr:`CocoDetection.category_ids` maps back
for export and evaluation.

What happens to bad input:

* **always an error** (:class:`CocoDataError`, naming the file and the record): unreadable or broken JSON,
  missing top-level keys, a malformed record (missing field, ``bbox`` not four numbers), duplicate ids;
* **skipped, counted and reported** (or an error with ``strict=True``): an annotation whose box is non-finite,
  has zero/negative width or height, or lies outside its image; an annotation with an unknown ``category_id``
  or ``image_id``; an image whose file is missing. Skips go to :class:`CocoReport`, and one warning is logged;
* **valid**: an image without annotations (empty targets: it teaches the detector to say "no object").

Crowd annotations (``iscrowd=1``) are kept out of the training targets (``boxes``/``labels``) but kept in
``crowd_boxes``/``crowd_labels``, which evaluation passes to COCOeval so detections on crowds are ignored.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from visattn.boxes import validate_box, xyxy_to_xywh
from visattn.data.images import ImageLoadError, image_to_tensor, load_image

__all__ = ["CocoDataError", "CocoDetection", "CocoDetectionDataset", "CocoReport", "read_coco", "write_coco"]

logger = logging.getLogger(__name__)


class CocoDataError(ValueError):
    """A COCO file that cannot be used; the message names the file and the record."""


@dataclass
class CocoReport:
    """What the reader kept and what it skipped.

    Attributes:
        num_images: images kept.
        num_annotations: non-crowd annotations kept as training targets.
        num_crowd: crowd annotations kept for evaluation only.
        num_empty_images: kept images without any annotation (valid).
        skipped: reason -> number of skipped records.
        examples: up to a few ``"annotation 17: outside the image (64x64)"`` lines per reason.
    """

    num_images: int = 0
    num_annotations: int = 0
    num_crowd: int = 0
    num_empty_images: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, record: str) -> None:
        """Count one skipped record under ``reason`` and remember a few examples."""
        self.skipped[reason] += 1
        listed = self.examples.setdefault(reason, [])
        if len(listed) < 5:
            listed.append(record)

    def summary(self) -> str:
        """One human-readable paragraph: counts kept and every skip reason with examples."""
        lines = [
            f"{self.num_images} images ({self.num_empty_images} without objects), "
            f"{self.num_annotations} annotations, {self.num_crowd} crowd"
        ]
        for reason, count in sorted(self.skipped.items()):
            lines.append(f"skipped {count} x {reason}: " + "; ".join(self.examples.get(reason, [])))
        return "\n".join(lines)


@dataclass
class CocoDetection:
    """A parsed COCO instances file.

    Attributes:
        samples: per image ``image_id``, ``path``, ``height``, ``width``, ``boxes`` (N, 4) float32 xyxy pixels,
            ``labels`` (N,) int64 contiguous, ``crowd_boxes`` (C, 4), ``crowd_labels`` (C,).
        class_names: K names, index = contiguous label.
        category_ids: K COCO category ids, index = contiguous label.
        report: counts and skips.
    """

    samples: list[dict[str, Any]]
    class_names: list[str]
    category_ids: list[int]
    report: CocoReport


def _load_json(path: Path) -> dict:
    try:
        with path.open("r", encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError as err:
        raise CocoDataError(f"{path}: annotation file not found") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CocoDataError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise CocoDataError(f"{path}: top level must be an object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise CocoDataError(f"{path}: missing or non-list top-level key {key!r}")
    return data


def _field(record: Any, key: str, kind: type | tuple, path: Path, what: str) -> Any:
    """``record[key]`` checked for presence and type, or a CocoDataError naming the record."""
    if not isinstance(record, dict) or key not in record:
        raise CocoDataError(f"{path}: {what} has no field {key!r}")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise CocoDataError(f"{path}: {what} field {key!r} has the wrong type ({type(value).__name__})")
    return value


def read_coco(
    annotation_file: str | Path,
    image_dir: str | Path | None = None,
    *,
    strict: bool = False,
    check_images: bool = True,
    box_tolerance: float = 1.0,
) -> CocoDetection:
    """Read a COCO instances JSON.

    Args:
        annotation_file: path of the JSON.
        image_dir: folder that ``file_name`` is relative to; the JSON's folder when ``None``.
        strict: raise :class:`CocoDataError` on the first skippable problem instead of skipping it.
        check_images: check that every image file exists (skip or raise when missing).
        box_tolerance: pixels a box may extend past its image before it counts as outside.

    Returns:
        The samples, the class names and category ids (contiguous order) and the report.

    Raises:
        CocoDataError: for broken files and malformed records, and for skippable problems when ``strict``.
    """
    path = Path(annotation_file)
    root = Path(image_dir) if image_dir is not None else path.parent
    data = _load_json(path)
    report = CocoReport()

    def problem(reason: str, record: str) -> None:
        if strict:
            raise CocoDataError(f"{path}: {record}: {reason}")
        report.skip(reason, record)

    categories: dict[int, str] = {}
    for i, cat in enumerate(data["categories"]):
        cat_id = _field(cat, "id", int, path, f"category #{i}")
        if cat_id in categories:
            raise CocoDataError(f"{path}: duplicate category id {cat_id}")
        categories[cat_id] = str(_field(cat, "name", str, path, f"category {cat_id}"))
    category_ids = sorted(categories)
    label_of = {cat_id: label for label, cat_id in enumerate(category_ids)}

    images: dict[int, dict[str, Any]] = {}
    for i, img in enumerate(data["images"]):
        image_id = _field(img, "id", int, path, f"image #{i}")
        what = f"image {image_id}"
        if image_id in images:
            raise CocoDataError(f"{path}: duplicate image id {image_id}")
        file_name = _field(img, "file_name", str, path, what)
        width = _field(img, "width", int, path, what)
        height = _field(img, "height", int, path, what)
        if width <= 0 or height <= 0:
            raise CocoDataError(f"{path}: {what} has a non-positive size {width}x{height}")
        images[image_id] = {"image_id": image_id, "path": str(root / file_name), "height": height,
                            "width": width, "boxes": [], "labels": [], "crowd_boxes": [], "crowd_labels": []}

    seen_annotations: set[int] = set()
    for i, ann in enumerate(data["annotations"]):
        ann_id = _field(ann, "id", int, path, f"annotation #{i}")
        what = f"annotation {ann_id}"
        if ann_id in seen_annotations:
            raise CocoDataError(f"{path}: duplicate annotation id {ann_id}")
        seen_annotations.add(ann_id)
        image_id = _field(ann, "image_id", int, path, what)
        category_id = _field(ann, "category_id", int, path, what)
        bbox = _field(ann, "bbox", list, path, what)
        if len(bbox) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
            raise CocoDataError(f"{path}: {what} field 'bbox' must be four numbers [x, y, w, h], got {bbox!r}")
        crowd = bool(ann.get("iscrowd", 0))
        if image_id not in images:
            problem(f"unknown image_id {image_id}", what)
            continue
        if category_id not in label_of:
            problem(f"unknown category_id {category_id}", what)
            continue
        image = images[image_id]
        x, y, w, h = (float(v) for v in bbox)
        box = [x, y, x + w, y + h]  # plain floats: a tensor per annotation is slow on COCO's 860k boxes
        reason = validate_box(box, (image["height"], image["width"]), tolerance=box_tolerance)
        if reason is not None:
            problem(f"invalid box: {reason}",
                    f"{what} (image {image_id}, {image['width']}x{image['height']}, bbox {bbox})")
            continue
        prefix = "crowd_" if crowd else ""
        image[prefix + "boxes"].append(box)
        image[prefix + "labels"].append(label_of[category_id])

    samples = []
    for image in images.values():
        if check_images and not Path(image["path"]).is_file():
            problem("missing image file", f"image {image['image_id']} ({image['path']})")
            continue
        for prefix in ("", "crowd_"):
            image[prefix + "boxes"] = torch.tensor(image[prefix + "boxes"], dtype=torch.float32).reshape(-1, 4)
            image[prefix + "labels"] = torch.tensor(image[prefix + "labels"], dtype=torch.int64)
        report.num_images += 1
        report.num_annotations += len(image["labels"])
        report.num_crowd += len(image["crowd_labels"])
        report.num_empty_images += int(len(image["labels"]) + len(image["crowd_labels"]) == 0)
        samples.append(image)
    if report.skipped:
        logger.warning("%s: %s", path, report.summary())
    class_names = [categories[cat_id] for cat_id in category_ids]
    return CocoDetection(samples=samples, class_names=class_names, category_ids=category_ids, report=report)


def _to_pil(image: Any) -> Image.Image:
    """A sample image (PIL, or float tensor (3, H, W) in [0, 1]) as an RGB PIL image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, Tensor) and image.dim() == 3 and image.shape[0] == 3:
        array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)  # (3, H, W)
        return Image.fromarray(array.permute(1, 2, 0).cpu().numpy())  # (H, W, 3)
    raise ValueError(f"sample image must be a PIL image or a (3, H, W) tensor, got {type(image).__name__}")


def write_coco(
    samples: Any,
    out_dir: str | Path,
    class_names: list[str],
    *,
    category_ids: list[int] | None = None,
    file_name: str = "instances.json",
) -> Path:
    """Write samples as PNG images plus a COCO instances JSON that :func:`read_coco` reads back.

    Args:
        samples: iterable of sample dicts with ``image`` (PIL or (3, H, W) tensor in [0, 1]), ``image_id``,
            ``boxes`` (N, 4) xyxy pixels, ``labels`` (N,) contiguous, optionally ``crowd_boxes``/``crowd_labels``.
        out_dir: folder to create; images go to ``out_dir/images/<image_id>.png``.
        class_names: K names, index = contiguous label.
        category_ids: K COCO ids to write for the labels (e.g. non-contiguous); ``1..K`` when ``None``.
        file_name: name of the JSON inside ``out_dir``.

    Returns:
        The path of the JSON. Annotation ``area`` is the box area (``w * h``).
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    ids = list(category_ids) if category_ids is not None else list(range(1, len(class_names) + 1))
    if len(ids) != len(class_names) or len(set(ids)) != len(ids):
        raise ValueError(f"category_ids must be {len(class_names)} distinct ids, got {ids}")
    images, annotations = [], []
    for sample in samples:
        image_id = int(sample["image_id"])
        pil = _to_pil(sample["image"])
        name = f"images/{image_id:08d}.png"
        pil.save(out / name)
        images.append({"id": image_id, "file_name": name, "width": pil.width, "height": pil.height})
        for prefix, crowd in (("", 0), ("crowd_", 1)):
            boxes = torch.as_tensor(sample.get(prefix + "boxes", np.zeros((0, 4))), dtype=torch.float64)
            labels = torch.as_tensor(sample.get(prefix + "labels", np.zeros(0)), dtype=torch.int64)
            for box, label in zip(xyxy_to_xywh(boxes.reshape(-1, 4)).tolist(), labels.tolist(), strict=True):
                if not 0 <= label < len(ids):
                    raise ValueError(f"image {image_id}: label {label} outside [0, {len(ids)})")
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": ids[label],
                    "bbox": [round(v, 3) for v in box], "area": round(box[2] * box[3], 3), "iscrowd": crowd,
                })
    categories = [{"id": cat_id, "name": name} for cat_id, name in zip(ids, class_names, strict=True)]
    json_path = out / file_name
    tmp = json_path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    tmp.replace(json_path)
    return json_path


class CocoDetectionDataset(Dataset):
    """A torch Dataset over a COCO instances file.

    Items are sample dicts: ``image`` float tensor (3, H, W) in [0, 1], ``image_id``, ``path``, ``boxes``
    (N, 4) float32 xyxy pixels, ``labels`` (N,) int64 contiguous, ``crowd_boxes``, ``crowd_labels``.

    Args:
        annotation_file: path of the JSON.
        image_dir: folder ``file_name`` is relative to; the JSON's folder when ``None``.
        strict: see :func:`read_coco`.
        transform: optional callable applied to the sample dict after loading (must keep boxes consistent).
    """

    def __init__(self, annotation_file: str | Path, image_dir: str | Path | None = None, *,
                 strict: bool = False, transform: Any = None) -> None:
        self.coco = read_coco(annotation_file, image_dir, strict=strict)
        self.annotation_file = Path(annotation_file)
        self.transform = transform

    @property
    def class_names(self) -> list[str]:
        return self.coco.class_names

    @property
    def category_ids(self) -> list[int]:
        return self.coco.category_ids

    @property
    def report(self) -> CocoReport:
        return self.coco.report

    def __len__(self) -> int:
        return len(self.coco.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.coco.samples[index]
        try:
            rgb = load_image(record["path"])
        except ImageLoadError as err:
            raise CocoDataError(f"{self.annotation_file}: image {record['image_id']}: {err}") from err
        if (rgb.height, rgb.width) != (record["height"], record["width"]):
            raise CocoDataError(
                f"{self.annotation_file}: image {record['image_id']}: {record['path']} is "
                f"{rgb.width}x{rgb.height} but the JSON says {record['width']}x{record['height']}"
            )
        sample = {key: record[key] for key in ("image_id", "path", "boxes", "labels", "crowd_boxes",
                                               "crowd_labels")}
        sample["image"] = image_to_tensor(rgb)  # (3, H, W) in [0, 1]
        return self.transform(sample) if self.transform is not None else sample
