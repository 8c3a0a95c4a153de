"""COCO caption annotation files (``captions_train2014.json``, ``captions_val2014.json``).

The format::

    {"images": [{"id": 391895, "file_name": "COCO_val2014_000000391895.jpg", ...}, ...],
     "annotations": [{"id": 770337, "image_id": 391895, "caption": "A man with a red helmet ..."}, ...]}

:func:`read_coco_captions` groups the annotations by image and returns one :class:`CaptionRecord` per image
(in ``images[]`` order) with the captions tokenized by :func:`~visattn.data.text.tokenize`, plus a
:class:`~visattn.data.core.SkipReport`; errors and skips follow the same rules as the Karpathy reader
(:class:`~visattn.data.karpathy.CaptionDataError` naming file, record and field; missing images skipped and
counted unless ``strict``). :func:`write_coco_captions` writes the format, e.g. to score procedural scenes with the COCO
caption tool or to test the reader.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from visattn.data.core import SkipReport, load_json, write_json_atomic
from visattn.data.karpathy import (
    EMPTY_SENTENCE,
    NO_CAPTIONS,
    CaptionDataError,
    CaptionRecord,
    caption_field,
    caption_report,
    check_image,
    numbered,
    records_to_write,
)
from visattn.data.text import tokenize

logger = logging.getLogger(__name__)

__all__ = ["read_coco_captions", "write_coco_captions"]


def _read_images(images: list[Any], source: Path) -> dict[int, tuple[int, str]]:
    """image id -> (index in ``images[]``, file_name), validated."""
    by_id: dict[int, tuple[int, str]] = {}
    for i, where, entry, image_id in numbered(images, "images", "id", source, noun="image"):
        file_name = caption_field(entry, "file_name", str, source, where)
        if not file_name.strip():
            raise CaptionDataError(source, where, "file_name", "is empty")
        by_id[image_id] = (i, file_name)
    return by_id


def read_coco_captions(
    json_path: str | os.PathLike[str],
    image_root: str | os.PathLike[str],
    *,
    strict: bool = False,
) -> tuple[list[CaptionRecord], SkipReport]:
    """Read a COCO caption annotation file.

    Args:
        json_path: e.g. ``annotations/captions_val2014.json``.
        image_root: folder the ``file_name`` entries are relative to (e.g. ``val2014``).
        strict: raise on the first missing image file instead of skipping and counting it.

    Returns:
        ``(records, report)``: one record per image that has at least one non-blank caption, in ``images[]``
        order, with ``image_id`` = the COCO image id; ``report`` counts blank captions dropped, images without
        captions skipped and missing image files. The report is also logged.

    Raises:
        CaptionDataError: a missing file, broken JSON or UTF-8, a missing or mistyped field, a duplicate image
            or annotation id, an annotation for an image not in ``images[]``, or (``strict``) a missing image
            file.
    """
    source, root = Path(json_path), Path(image_root)
    data = load_json(source, what="caption file", error=CaptionDataError)
    if not isinstance(data, dict):
        got = type(data).__name__
        raise CaptionDataError(source, "top level", reason=f"must be an object with 'images' and 'annotations', "
                                                           f"got {got}")
    images = _read_images(caption_field(data, "images", list, source, "top level"), source)
    annotations = caption_field(data, "annotations", list, source, "top level")
    report = caption_report(source, strict=strict)
    captions: dict[int, list[str]] = {image_id: [] for image_id in images}
    tokens: dict[int, list[list[str]]] = {image_id: [] for image_id in images}
    for _, where, entry, _ in numbered(annotations, "annotations", "id", source, noun="annotation", required=False):
        image_id = caption_field(entry, "image_id", int, source, where)
        if image_id not in images:
            raise CaptionDataError(source, where, "image_id", f"is {image_id}, which no entry of images[] has")
        caption = caption_field(entry, "caption", str, source, where)
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
        if not check_image(path, report=report, where=where):
            continue
        records.append(CaptionRecord(str(path), image_id, captions[image_id], tokens[image_id]))
        report.keep("images")
        report.keep("captions", len(captions[image_id]))
    report.log(logger)
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
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for record, relative in records_to_write(records, Path(image_root), set(), "record"):
        images.append({"id": record.image_id, "file_name": relative.as_posix()})
        for caption in record.captions:
            annotations.append({"id": len(annotations) + 1, "image_id": record.image_id, "caption": caption})
    data = {"info": {"description": description}, "licenses": [], "images": images, "annotations": annotations}
    return write_json_atomic(data, path)
