"""Karpathy split JSON (``dataset_coco.json``, ``dataset_flickr8k.json``, ``dataset_flickr30k.json``).

The format Karpathy's NeuralTalk made standard for caption training::

    {"images": [{"filepath": "val2014",            # optional; COCO only
                 "filename": "COCO_val2014_000000391895.jpg",
                 "imgid": 0, "cocoid": 391895,      # cocoid only in the COCO file
                 "split": "test",                   # train | val | test | restval
                 "sentences": [{"raw": "A man ...", "tokens": ["a", "man", ...]}, ...]},
                ...]}

:func:`read_karpathy` returns the records of each split (``restval`` joins ``train``, as in every paper that
uses the Karpathy split) and a :class:`~visattn.data.core.SkipReport`. The image id is ``cocoid`` when present
(so results can be scored against the COCO annotation files), else ``imgid``. :func:`write_karpathy` writes the
same format and :func:`export_karpathy` writes samples (images and captions) in it, so procedural scenes can be
exported and read back by the same code as the real data.

This module also holds what the caption readers share: :class:`CaptionDataError`, :class:`CaptionRecord` and
the record checks; the error family, the skip report and the JSON helpers are :mod:`visattn.data.core`'s.
Bad data follows the shared policy: a missing image file is skipped and counted (``strict=True`` raises);
blank sentences and images left without a sentence are always dropped and counted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visattn.data.core import DataError, SkipReport, get_field, iter_samples, load_json, write_json_atomic
from visattn.data.images import save_image
from visattn.data.text import tokenize

__all__ = [
    "CaptionDataError",
    "CaptionRecord",
    "KARPATHY_SPLITS",
    "read_karpathy",
    "write_karpathy",
    "export_karpathy",
]

logger = logging.getLogger(__name__)

#: Split names in the file -> split they are returned under (``restval`` is training data).
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}

# Reasons a reader drops something (each loses nothing the caller asked for, or only a missing image).
EMPTY_SENTENCE = "empty sentence dropped"
NO_CAPTIONS = "image without captions skipped"
MISSING_IMAGE = "missing image file skipped"


class CaptionDataError(DataError):
    """A caption file is malformed; the message names the file, the record and the field."""


@dataclass
class CaptionRecord:
    """One image with its reference captions.

    Attributes:
        path: image file path (``image_root`` joined with the file's relative path).
        image_id: integer id (``cocoid``/``imgid`` in Karpathy files, ``id`` in COCO files).
        captions: raw caption strings, as written in the file.
        tokens: one token list per caption, lower-case words.
    """

    path: str
    image_id: int
    captions: list[str]
    tokens: list[list[str]]

    @classmethod
    def from_sample(cls, sample: CaptionRecord | Mapping[str, Any]) -> CaptionRecord:
        """A record from a record or a sample dict with ``path``, ``image_id``, ``captions`` and optional
        ``tokens`` (computed with :func:`~visattn.data.text.tokenize` when absent).

        Raises:
            ValueError: a missing key, a non-int id, a missing path, or captions that are not a list of str.
        """
        if isinstance(sample, CaptionRecord):
            return sample
        missing = [key for key in ("path", "image_id", "captions") if key not in sample]
        if missing:
            raise ValueError(f"caption sample lacks {missing}; it needs 'path', 'image_id' and 'captions'")
        image_id, path, captions = sample["image_id"], sample["path"], sample["captions"]
        if isinstance(image_id, bool) or not isinstance(image_id, int):
            raise ValueError(f"caption sample image_id must be an int, got {image_id!r}")
        if not path:
            raise ValueError(f"caption sample {image_id} has no image path; write the image to disk first")
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise ValueError(f"caption sample {image_id}: 'captions' must be a list of str, got {captions!r:.80}")
        tokens = sample.get("tokens")
        if tokens is None:
            tokens = [tokenize(c) for c in captions]
        elif len(tokens) != len(captions):
            raise ValueError(f"caption sample {image_id}: {len(tokens)} token lists for {len(captions)} captions")
        return cls(path=str(path), image_id=image_id, captions=list(captions), tokens=[list(t) for t in tokens])


def caption_report(source: str | os.PathLike[str], *, strict: bool) -> SkipReport:
    """The skip report of a caption reader: counts images and captions; ``strict`` rejects missing images."""
    return SkipReport(os.fspath(source), {"images": 0, "captions": 0}, strict=strict, error=CaptionDataError)


def caption_field(entry: Any, key: str, kind: type | tuple[type, ...], source: Any, where: str) -> Any:
    """``entry[key]`` checked for presence and type, else a :class:`CaptionDataError` naming the record."""
    return get_field(entry, key, kind, path=source, record=where, error=CaptionDataError)


def numbered(entries: list[Any], name: str, key: str | tuple[str, ...], source: Any, *, noun: str,
             required: bool = True) -> Iterator[tuple[int, str, Mapping[str, Any], int | None]]:
    """The entries of list ``name``, each an object with a unique integer id.

    Args:
        entries: the list (e.g. ``data["images"]``).
        name: its field name, for messages (``images[3] (id 7)``).
        key: the id field; a tuple means the first one present (the last when none is).
        source: the file, for messages.
        noun: what the id identifies ("image", "annotation").
        required: without it, an entry without the id field gets the id None (and is not checked).

    Yields:
        ``(index, where, entry, id)``, ``where`` naming the record for messages.

    Raises:
        CaptionDataError: an entry that is not an object, a missing or mistyped id, or a duplicate id.
    """
    first_index: dict[int, int] = {}
    for i, entry in enumerate(entries):
        where = f"{name}[{i}]"
        if not isinstance(entry, dict):
            raise CaptionDataError(source, where, reason=f"must be an object, got {type(entry).__name__}")
        keys = (key,) if isinstance(key, str) else key
        field = next((k for k in keys if k in entry), keys[-1])
        if not required and field not in entry:
            yield i, where, entry, None
            continue
        entry_id = caption_field(entry, field, int, source, where)
        where = f"{name}[{i}] (id {entry_id})"
        if entry_id in first_index:
            raise CaptionDataError(source, where, reason=f"duplicate {noun} id {entry_id}, first used by "
                                                          f"{name}[{first_index[entry_id]}]")
        first_index[entry_id] = i
        yield i, where, entry, entry_id


def check_image(path: Path, *, report: SkipReport, where: str) -> bool:
    """True when the image file exists; otherwise reject it (skip and count, or raise when strict)."""
    if path.is_file():
        return True
    report.reject(MISSING_IMAGE, where, f"image file not found: {path}")
    return False


def _read_sentences(entry: Mapping[str, Any], *, retokenize: bool, report: SkipReport, source: Any, where: str):
    """Validated (raw captions, token lists) of one image; blank sentences are dropped and counted."""
    sentences = caption_field(entry, "sentences", list, source, where)
    captions: list[str] = []
    token_lists: list[list[str]] = []
    for j, sentence in enumerate(sentences):
        at = f"{where}: sentences[{j}]"
        if not isinstance(sentence, dict):
            raise CaptionDataError(source, at, reason=f"must be an object with 'raw', got {type(sentence).__name__}")
        raw = caption_field(sentence, "raw", str, source, at)
        tokens = sentence.get("tokens")
        if tokens is not None and (not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens)):
            raise CaptionDataError(source, at, "tokens", f"must be a list of str, got {tokens!r:.60}")
        if retokenize or tokens is None:
            tokens = tokenize(raw)
        if not raw.strip() or not tokens:
            report.skip(EMPTY_SENTENCE, at)
            continue
        captions.append(raw)
        token_lists.append(list(tokens))
    return captions, token_lists


def read_karpathy(
    json_path: str | os.PathLike[str],
    image_root: str | os.PathLike[str],
    *,
    strict: bool = False,
    retokenize: bool = False,
) -> tuple[dict[str, list[CaptionRecord]], SkipReport]:
    """Read a Karpathy split file.

    Args:
        json_path: ``dataset_coco.json``, ``dataset_flickr8k.json``, ``dataset_flickr30k.json`` or a file
            written by :func:`write_karpathy`.
        image_root: folder the ``filepath``/``filename`` entries are relative to.
        strict: raise on the first missing image file instead of skipping and counting it.
        retokenize: tokenize ``raw`` with :func:`~visattn.data.text.tokenize` instead of using the file's
            ``tokens`` (which are otherwise optional: computed when absent).

    Returns:
        ``(splits, report)``: ``splits`` maps ``"train"`` (including ``restval``), ``"val"`` and ``"test"`` to
        records in file order; ``report`` counts what was dropped: blank sentences, images left without a
        sentence, and missing image files. The report is also logged.

    Raises:
        CaptionDataError: a missing file, broken JSON or UTF-8, a missing or mistyped field, an unknown split,
            a duplicate image id, or (``strict``) a missing image file; the message names the file, the
            record (``images[i] (id N)``) and the field.
    """
    source, root = Path(json_path), Path(image_root)
    data = load_json(source, what="caption file", error=CaptionDataError)
    if not isinstance(data, dict):
        raise CaptionDataError(source, "top level",
                               reason=f"must be an object with an 'images' list, got {type(data).__name__}")
    images = caption_field(data, "images", list, source, "top level")
    report = caption_report(source, strict=strict)
    splits: dict[str, list[CaptionRecord]] = {"train": [], "val": [], "test": []}
    for _, where, entry, image_id in numbered(images, "images", ("cocoid", "imgid"), source, noun="image"):
        filename = caption_field(entry, "filename", str, source, where)
        filepath = caption_field(entry, "filepath", str, source, where) if "filepath" in entry else ""
        split = caption_field(entry, "split", str, source, where)
        if split not in KARPATHY_SPLITS:
            raise CaptionDataError(source, where, "split", f"is {split!r}; valid: {sorted(KARPATHY_SPLITS)}")
        if not filename.strip():
            raise CaptionDataError(source, where, "filename", "is empty")
        captions, tokens = _read_sentences(entry, retokenize=retokenize, report=report, source=source, where=where)
        if not captions:
            report.skip(NO_CAPTIONS, where)
            continue
        path = root / filepath / filename
        if not check_image(path, report=report, where=where):
            continue
        splits[KARPATHY_SPLITS[split]].append(CaptionRecord(str(path), image_id, captions, tokens))
        report.keep("images")
        report.keep("captions", len(captions))
    report.log(logger)
    return splits, report


def records_to_write(records: Iterable[CaptionRecord | Mapping[str, Any]], image_root: Path, seen: set[int],
                     name: str) -> Iterator[tuple[CaptionRecord, Path]]:
    """What the caption writers write: each record (or sample dict) with its image path relative to
    ``image_root``; ids go into ``seen``.

    Raises:
        ValueError: a malformed record, a duplicate image id (one in ``seen``), or an image outside
            ``image_root``; the message names the record as ``"<name> <k> (id <image_id>)"``.
    """
    for k, sample in enumerate(records):
        record = CaptionRecord.from_sample(sample)
        where = f"{name} {k} (id {record.image_id})"
        if record.image_id in seen:
            raise ValueError(f"{where}: duplicate image id")
        seen.add(record.image_id)
        try:
            relative = Path(record.path).resolve().relative_to(image_root.resolve())
        except ValueError:
            raise ValueError(f"{where}: image {record.path} is not under image_root {image_root}") from None
        yield record, relative


def write_karpathy(
    splits: Mapping[str, Iterable[CaptionRecord | Mapping[str, Any]]],
    path: str | os.PathLike[str],
    *,
    image_root: str | os.PathLike[str],
    dataset: str = "visattn",
) -> Path:
    """Write records in the Karpathy split format, readable by :func:`read_karpathy`.

    Args:
        splits: split name (``train``, ``val``, ``test`` or ``restval``) -> records or sample dicts with
            ``path``, ``image_id``, ``captions`` and optional ``tokens``.
        path: the JSON file to write (atomically).
        image_root: image paths are stored relative to this folder (``filepath``/``filename``).
        dataset: value of the top-level ``dataset`` field.

    Returns:
        ``path``.

    Raises:
        ValueError: an unknown split, a malformed record, an image outside ``image_root``, or a duplicate id.
    """
    images: list[dict[str, Any]] = []
    seen: set[int] = set()
    sent_id = 0
    for split, records in splits.items():
        if split not in KARPATHY_SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {sorted(KARPATHY_SPLITS)}")
        for record, relative in records_to_write(records, Path(image_root), seen, f"split {split!r} record"):
            sent_ids = list(range(sent_id, sent_id + len(record.captions)))
            sent_id += len(record.captions)
            entry: dict[str, Any] = {"filename": relative.name, "imgid": record.image_id, "split": split}
            if relative.parent != Path("."):
                entry["filepath"] = relative.parent.as_posix()
            entry["sentids"] = sent_ids
            entry["sentences"] = [
                {"raw": raw, "tokens": tokens, "imgid": record.image_id, "sentid": sid}
                for raw, tokens, sid in zip(record.captions, record.tokens, sent_ids)
            ]
            images.append(entry)
    return write_json_atomic({"dataset": dataset, "images": images}, path)


def export_karpathy(splits: Mapping[str, Iterable[Mapping[str, Any]]], out_dir: str | os.PathLike[str], *,
                    file_name: str = "dataset_visattn.json", dataset: str = "visattn") -> Path:
    """Write caption samples as images plus a Karpathy split file, readable by :func:`read_karpathy`.

    Args:
        splits: split name -> a data set or iterable of sample dicts with ``image`` (anything
            :func:`~visattn.data.images.tensor_to_image` takes), ``image_id`` and ``captions``.
        out_dir: output folder: images go to ``out_dir/images/<split>_<image_id>.png``, the JSON to
            ``out_dir/<file_name>`` (every file written atomically).
        file_name: the JSON's name.
        dataset: value of the top-level ``dataset`` field.

    Returns:
        The JSON's path. Ids in the file run on across splits (the format keys images by id), so the
        ``k``-th image overall gets id ``k``.
    """
    out = Path(out_dir)
    records: dict[str, list[dict[str, Any]]] = {}
    offset = 0
    for split, samples in splits.items():
        records[split] = []
        for i, sample in enumerate(iter_samples(samples)):
            path = out / "images" / f"{split}_{sample['image_id']}.png"
            save_image(sample["image"], path, source=f"export_karpathy {split} sample {i}")
            records[split].append({"path": str(path), "image_id": offset + i, "captions": sample["captions"]})
        offset += len(records[split])
    return write_karpathy(records, out / file_name, image_root=out, dataset=dataset)
