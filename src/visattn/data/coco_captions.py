"""COCO caption annotation files (``captions_train2014.json``, ``captions_val2014.json``).

The format::

    {"images": [{"id": 391895, "file_name": "COCO_val2014_000000391895.jpg", ...}, ...],
     "annotations": [{"id": 770337, "image_id": 391895, "caption": "A man with a red helmet ..."}, ...]}

:func:`read_coco_captions` groups the annotations by image and returns one :class:`CaptionRecord` per image
(in ``images[]`` order) with the captions tokenized by :func:`~visattn.data.text.tokenize`, plus a
:class:`ReadReport`; errors follow the same rules as the Karpathy reader (:class:`CaptionDataError` naming file,
record and field). :func:`write_coco_captions` writes the format, e.g. to score procedural scenes with the COCO
caption tool or to test the reader.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from visattn.data.karpathy import (
    EMPTY_SENTENCE,
    NO_CAPTIONS,
    CaptionRecord,
    ReadReport,
    check_image,
    fail,
    get_field,
    load_json,
    relative_image_path,
    write_json_atomic,
)
from visattn.data.text import tokenize

__all__ = ["read_coco_captions", "write_coco_captions"]


def _read_images(images: list[Any], source: Path) -> dict[int, tuple[int, str]]:
    """image id -> (index in ``images[]``, file_name), validated."""
    by_id: dict[int, tuple[int, str]] = {}
    for i, entry in enumerate(images):
        where = f"images[{i}]"
        if not isinstance(entry, dict):
            raise fail(source, where, f"must be an object, got {type(entry).__name__}")
        image_id = get_field(entry, "id", int, source, where)
        where = f"images[{i}] (id {image_id})"
        if image_id in by_id:
            raise fail(source, where, f"duplicate image id {image_id}, first used by images[{by_id[image_id][0]}]")
        file_name = get_field(entry, "file_name", str, source, where)
        if not file_name.strip():
            raise fail(source, where, "field 'file_name' is empty")
        by_id[image_id] = (i, file_name)
    return by_id


def read_coco_captions(
    json_path: str | os.PathLike[str],
    image_root: str | os.PathLike[str],
    *,
    skip_missing: bool = False,
) -> tuple[list[CaptionRecord], ReadReport]:
    """Read a COCO caption annotation file.

    Args:
        json_path: e.g. ``annotations/captions_val2014.json``.
        image_root: folder the ``file_name`` entries are relative to (e.g. ``val2014``).
        skip_missing: skip (and count) images whose file does not exist instead of failing.

    Returns:
        ``(records, report)``: one record per image that has at least one non-blank caption, in ``images[]``
        order, with ``image_id`` = the COCO image id; ``report`` counts blank captions dropped, images without
        captions skipped and (with ``skip_missing``) missing image files. The report is also logged.

    Raises:
        CaptionDataError: broken JSON or UTF-8, a missing or mistyped field, a duplicate image or annotation id,
            an annotation for an image not in ``images[]``, or a missing image file (without ``skip_missing``).
    """
    source, root = Path(json_path), Path(image_root)
    data = load_json(source)
    if not isinstance(data, dict):
        got = type(data).__name__
        raise fail(source, "top level", f"must be an object with 'images' and 'annotations', got {got}")
    images = _read_images(get_field(data, "images", list, source, "top level"), source)
    annotations = get_field(data, "annotations", list, source, "top level")
    report = ReadReport(source=str(source))
    captions: dict[int, list[str]] = {image_id: [] for image_id in images}
    tokens: dict[int, list[list[str]]] = {image_id: [] for image_id in images}
    annotation_index: dict[int, int] = {}
    for k, entry in enumerate(annotations):
        where = f"annotations[{k}]"
        if not isinstance(entry, dict):
            raise fail(source, where, f"must be an object, got {type(entry).__name__}")
        if "id" in entry:
            ann_id = get_field(entry, "id", int, source, where)
            where = f"annotations[{k}] (id {ann_id})"
            if ann_id in annotation_index:
                first = annotation_index[ann_id]
                raise fail(source, where, f"duplicate annotation id {ann_id}, first used by annotations[{first}]")
            annotation_index[ann_id] = k
        image_id = get_field(entry, "image_id", int, source, where)
        if image_id not in images:
            raise fail(source, where, f"field 'image_id' is {image_id}, which no entry of images[] has")
        caption = get_field(entry, "caption", str, source, where)
        caption_tokens = tokenize(caption)
        if not caption_tokens:
            report.skip(EMPTY_SENTENCE, where)
            continue
        captions[image_id].append(caption)
        tokens[image_id].append(caption_tokens)

    records: list[CaptionRecord] = []
    for image_id, (i, file_name) in images.items():
        where = f"images[{i}] (id {image_id})"
        if not captions[image_id]:
            report.skip(NO_CAPTIONS, where)
            continue
        path = root / file_name
        if not check_image(path, skip_missing=skip_missing, report=report, source=source, where=where):
            continue
        records.append(CaptionRecord(str(path), image_id, captions[image_id], tokens[image_id]))
        report.num_images += 1
        report.num_captions += len(captions[image_id])
    report.log()
    return records, report


def write_coco_captions(
    records: Iterable[CaptionRecord | Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    image_root: str | os.PathLike[str],
    description: str = "visattn captions",
) -> Path:
    """Write records as a COCO caption annotation file, readable by :func:`read_coco_captions`,
    ``pycocotools.coco.COCO`` and the COCO caption evaluation tool.

    Args:
        records: records or sample dicts with ``path``, ``image_id`` and ``captions``.
        path: the JSON file to write (atomically).
        image_root: ``file_name`` is stored relative to this folder.
        description: the ``info.description`` field.

    Returns:
        ``path``.

    Raises:
        ValueError: a malformed record, an image outside ``image_root``, or a duplicate image id.
    """
    root = Path(image_root)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    seen: set[int] = set()
    for k, sample in enumerate(records):
        record = CaptionRecord.from_sample(sample)
        where = f"record {k} (id {record.image_id})"
        if record.image_id in seen:
            raise ValueError(f"{where}: duplicate image id")
        seen.add(record.image_id)
        file_name = relative_image_path(record.path, root, where).as_posix()
        images.append({"id": record.image_id, "file_name": file_name})
        for caption in record.captions:
            annotations.append({"id": len(annotations) + 1, "image_id": record.image_id, "caption": caption})
    data = {"info": {"description": description}, "licenses": [], "images": images, "annotations": annotations}
    return write_json_atomic(data, path)
