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
  or ``image_id``; an image whose file is missing. Skips go to the :class:`~visattn.data.core.SkipReport`,
  whose summary is logged;
* **valid**: an image without annotations (empty targets: it teaches the detector to say "no object").

Crowd annotations (``iscrowd=1``) are kept out of the training targets (``boxes``/``labels``) but kept in
``crowd_boxes``/``crowd_labels``, which evaluation passes to COCOeval so detections on crowds are ignored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from visattn.boxes import validate_box, xyxy_to_xywh
from visattn.data.core import DataError, SkipReport, get_field, iter_samples, load_json, write_json_atomic
from visattn.data.images import ImageLoadError, image_to_tensor, load_image, save_image, tensor_to_image

__all__ = ["CocoDataError", "CocoDetection", "CocoDetectionDataset", "read_coco", "write_coco"]

logger = logging.getLogger(__name__)


class CocoDataError(DataError):
    """A COCO file that cannot be used; the message names the file, the record and the field."""


@dataclass
class CocoDetection:
    """A parsed COCO instances file.

    Attributes:
        samples: per image ``image_id``, ``path``, ``height``, ``width``, ``boxes`` (N, 4) float32 xyxy pixels,
            ``labels`` (N,) int64 contiguous, ``crowd_boxes`` (C, 4), ``crowd_labels`` (C,).
        class_names: K names, index = contiguous label.
        category_ids: K COCO category ids, index = contiguous label.
        report: counts (``images``, ``images without objects``, ``annotations``, ``crowd annotations``) and
            skips.
    """

    samples: list[dict[str, Any]]
    class_names: list[str]
    category_ids: list[int]
    report: SkipReport


def _field(entry: Any, key: str, kind: type | tuple, path: Path, record: str) -> Any:
    return get_field(entry, key, kind, path=path, record=record, error=CocoDataError)


def _categories(data: dict, path: Path) -> dict[int, str]:
    """COCO category id -> name, validated."""
    categories: dict[int, str] = {}
    for i, cat in enumerate(_field(data, "categories", list, path, "top level")):
        cat_id = _field(cat, "id", int, path, f"category #{i}")
        if cat_id in categories:
            raise CocoDataError(path, f"category #{i}", reason=f"duplicate category id {cat_id}")
        categories[cat_id] = str(_field(cat, "name", str, path, f"category {cat_id}"))
    return categories


def _images(data: dict, path: Path, root: Path) -> dict[int, dict[str, Any]]:
    """COCO image id -> sample under construction (empty target lists), validated."""
    images: dict[int, dict[str, Any]] = {}
    for i, img in enumerate(_field(data, "images", list, path, "top level")):
        image_id = _field(img, "id", int, path, f"image #{i}")
        what = f"image {image_id}"
        if image_id in images:
            raise CocoDataError(path, what, reason=f"duplicate image id {image_id}")
        file_name = _field(img, "file_name", str, path, what)
        width = _field(img, "width", int, path, what)
        height = _field(img, "height", int, path, what)
        if width <= 0 or height <= 0:
            raise CocoDataError(path, what, reason=f"has a non-positive size {width}x{height}")
        images[image_id] = {"image_id": image_id, "path": str(root / file_name), "height": height,
                            "width": width, "boxes": [], "labels": [], "crowd_boxes": [], "crowd_labels": []}
    return images


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
    data = load_json(path, what="COCO annotation file", error=CocoDataError)
    if not isinstance(data, dict):
        raise CocoDataError(path, "top level", reason=f"must be an object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        _field(data, key, list, path, "top level")
    report = SkipReport(str(path), {"images": 0, "images without objects": 0, "annotations": 0,
                                    "crowd annotations": 0}, strict=strict, error=CocoDataError)
    categories = _categories(data, path)
    images = _images(data, path, root)
    category_ids = sorted(categories)
    label_of = {cat_id: label for label, cat_id in enumerate(category_ids)}

    seen_annotations: set[int] = set()
    for i, ann in enumerate(_field(data, "annotations", list, path, "top level")):
        ann_id = _field(ann, "id", int, path, f"annotation #{i}")
        what = f"annotation {ann_id}"
        if ann_id in seen_annotations:
            raise CocoDataError(path, what, reason=f"duplicate annotation id {ann_id}")
        seen_annotations.add(ann_id)
        image_id = _field(ann, "image_id", int, path, what)
        category_id = _field(ann, "category_id", int, path, what)
        bbox = _field(ann, "bbox", list, path, what)
        if len(bbox) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
            raise CocoDataError(path, what, "bbox", f"must be four numbers [x, y, w, h], got {bbox!r}")
        crowd = bool(ann.get("iscrowd", 0))
        if image_id not in images:
            report.reject(f"unknown image_id {image_id}", what)
            continue
        if category_id not in label_of:
            report.reject(f"unknown category_id {category_id}", what)
            continue
        image = images[image_id]
        x, y, w, h = (float(v) for v in bbox)
        box = [x, y, x + w, y + h]  # plain floats: a tensor per annotation is slow on COCO's 860k boxes
        reason = validate_box(box, (image["height"], image["width"]), tolerance=box_tolerance)
        if reason is not None:
            report.reject(f"invalid box: {reason}",
                          f"{what} (image {image_id}, {image['width']}x{image['height']}, bbox {bbox})")
            continue
        prefix = "crowd_" if crowd else ""
        image[prefix + "boxes"].append(box)
        image[prefix + "labels"].append(label_of[category_id])

    samples = []
    for image in images.values():
        if check_images and not Path(image["path"]).is_file():
            report.reject("missing image file", f"image {image['image_id']} ({image['path']})")
            continue
        for prefix in ("", "crowd_"):
            image[prefix + "boxes"] = torch.tensor(image[prefix + "boxes"], dtype=torch.float32).reshape(-1, 4)
            image[prefix + "labels"] = torch.tensor(image[prefix + "labels"], dtype=torch.int64)
        report.keep("images")
        report.keep("images without objects", int(len(image["labels"]) + len(image["crowd_labels"]) == 0))
        report.keep("annotations", len(image["labels"]))
        report.keep("crowd annotations", len(image["crowd_labels"]))
        samples.append(image)
    if report.skipped:
        report.log(logger)
    class_names = [categories[cat_id] for cat_id in category_ids]
    return CocoDetection(samples=samples, class_names=class_names, category_ids=category_ids, report=report)


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
        samples: a data set or iterable of sample dicts with ``image`` (PIL or (3, H, W) tensor in [0, 1]),
            ``image_id``, ``boxes`` (N, 4) xyxy pixels, ``labels`` (N,) contiguous, optionally
            ``crowd_boxes``/``crowd_labels``.
        out_dir: folder to create; images go to ``out_dir/images/<image_id>.png``.
        class_names: K names, index = contiguous label.
        category_ids: K COCO ids to write for the labels (e.g. non-contiguous); ``1..K`` when ``None``.
        file_name: name of the JSON inside ``out_dir``.

    Returns:
        The path of the JSON (every file is written atomically). Annotation ``area`` is the box area (``w * h``).
    """
    out = Path(out_dir)
    ids = list(category_ids) if category_ids is not None else list(range(1, len(class_names) + 1))
    if len(ids) != len(class_names) or len(set(ids)) != len(ids):
        raise ValueError(f"category_ids must be {len(class_names)} distinct ids, got {ids}")
    images, annotations = [], []
    for sample in iter_samples(samples):
        image_id = int(sample["image_id"])
        name = f"images/{image_id:08d}.png"
        picture = tensor_to_image(sample["image"], source=f"write_coco image {image_id}")
        save_image(picture, out / name)
        images.append({"id": image_id, "file_name": name, "width": picture.width, "height": picture.height})
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
    return write_json_atomic({"images": images, "annotations": annotations, "categories": categories},
                             out / file_name)


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
    def report(self) -> SkipReport:
        return self.coco.report

    def __len__(self) -> int:
        return len(self.coco.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.coco.samples[index]
        try:
            rgb = load_image(record["path"])
        except ImageLoadError as err:
            raise CocoDataError(self.annotation_file, f"image {record['image_id']}", reason=str(err)) from err
        if (rgb.height, rgb.width) != (record["height"], record["width"]):
            raise CocoDataError(self.annotation_file, f"image {record['image_id']}",
                                reason=f"{record['path']} is {rgb.width}x{rgb.height} but the JSON says "
                                       f"{record['width']}x{record['height']}")
        sample = {key: record[key] for key in ("image_id", "path", "boxes", "labels", "crowd_boxes",
                                               "crowd_labels")}
        sample["image"] = image_to_tensor(rgb)  # (3, H, W) in [0, 1]
        return self.transform(sample) if self.transform is not None else sample
