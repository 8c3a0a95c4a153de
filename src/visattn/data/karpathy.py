"""Karpathy split JSON (``dataset_coco.json``, ``dataset_flickr8k.json``, ``dataset_flickr30k.json``).

The format Karpathy's NeuralTalk made standard for caption training::

    {"images": [{"filepath": "val2014",            # optional; COCO only
                 "filename": "COCO_val2014_000000391895.jpg",
                 "imgid": 0, "cocoid": 391895,      # cocoid only in the COCO file
                 "split": "test",                   # train | val | test | restval
                 "sentences": [{"raw": "A man ...", "tokens": ["a", "man", ...]}, ...]},
                ...]}

:func:`read_karpathy` returns the records of each split (``restval`` joins ``train``, as in every paper that
uses the Karpathy split) and a :class:`ReadReport`. The image id is ``cocoid`` when present (so results can be
scored against the COCO annotation files), else ``imgid``. :func:`write_karpathy` writes the same format, so
procedural scenes can be exported and read back by the same code as the real data.

This module also holds what the caption readers share: :class:`CaptionDataError`, :class:`CaptionRecord`,
:class:`ReadReport` and :func:`load_json`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visattn.data.text import tokenize

__all__ = [
    "CaptionDataError",
    "CaptionRecord",
    "ReadReport",
    "KARPATHY_SPLITS",
    "load_json",
    "read_karpathy",
    "write_karpathy",
]

logger = logging.getLogger(__name__)

#: Split names in the file -> split they are returned under (``restval`` is training data).
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}

# Reasons a reader drops something without failing (each loses nothing the caller asked for).
EMPTY_SENTENCE = "empty sentence dropped"
NO_CAPTIONS = "image without captions skipped"
MISSING_IMAGE = "missing image file skipped"

_MAX_EXAMPLES = 5


class CaptionDataError(ValueError):
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


@dataclass
class ReadReport:
    """What a reader kept and what it dropped, with reasons.

    Attributes:
        source: the file read.
        num_images: images returned.
        num_captions: captions returned.
        skipped: reason -> how many things were dropped for it.
        examples: reason -> the first few records dropped for it (``images[12] (id 5) ...``).
    """

    source: str
    num_images: int = 0
    num_captions: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, where: str) -> None:
        """Count one dropped item and remember where it was (the first few per reason)."""
        self.skipped[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < _MAX_EXAMPLES:
            shown.append(where)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        """One line: what was kept, then each skip reason with its count and first examples."""
        line = f"{self.source}: {self.num_images} images, {self.num_captions} captions"
        for reason, count in sorted(self.skipped.items()):
            line += f"; {count} {reason} (e.g. {', '.join(self.examples.get(reason, []))})"
        return line

    def log(self) -> None:
        """Log the summary: a warning when anything was dropped, info otherwise."""
        (logger.warning if self.skipped else logger.info)(self.summary())


def load_json(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON file, turning encoding and syntax errors into :class:`CaptionDataError`.

    Raises:
        FileNotFoundError: no such file.
        CaptionDataError: bytes that are not UTF-8 (with byte offset, line and column), or invalid JSON (with
            line and column).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption file not found: {path}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise CaptionDataError(
            f"{path}: not valid UTF-8 at byte {err.start} (line {line}, column {column}): {err.reason}"
        ) from None
    text = text.removeprefix("\ufeff")  # a byte-order mark carries no data
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        where = f"line {err.lineno}, column {err.colno}"
        raise CaptionDataError(f"{path}: invalid JSON at {where}: {err.msg}") from None


def fail(source: str | os.PathLike[str], where: str, problem: str) -> CaptionDataError:
    """The error for a bad record: ``"<file>: <where>: <problem>"``."""
    return CaptionDataError(f"{source}: {where}: {problem}")


def get_field(entry: Mapping[str, Any], key: str, kind: type | tuple[type, ...], source: Any, where: str) -> Any:
    """``entry[key]`` checked to be of ``kind`` (bools never count as ints), else :class:`CaptionDataError`."""
    if key not in entry:
        raise fail(source, where, f"missing field {key!r} (fields present: {sorted(entry)})")
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise fail(source, where, f"field {key!r} must be {names}, got {type(value).__name__} {value!r:.60}")
    return value


def check_image(path: Path, *, skip_missing: bool, report: ReadReport, source: Any, where: str) -> bool:
    """True when the image file exists; otherwise count a skip or raise, as ``skip_missing`` says."""
    if path.is_file():
        return True
    if skip_missing:
        report.skip(MISSING_IMAGE, f"{where}: {path}")
        return False
    raise fail(source, where, f"image file not found: {path} (pass skip_missing=True to skip such images)")


def _read_sentences(entry: Mapping[str, Any], *, retokenize: bool, report: ReadReport, source: Any, where: str):
    """Validated (raw captions, token lists) of one image; blank sentences are dropped and counted."""
    sentences = get_field(entry, "sentences", list, source, where)
    captions: list[str] = []
    token_lists: list[list[str]] = []
    for j, sentence in enumerate(sentences):
        at = f"{where}: sentences[{j}]"
        if not isinstance(sentence, dict):
            raise fail(source, at, f"must be an object with 'raw', got {type(sentence).__name__}")
        raw = get_field(sentence, "raw", str, source, at)
        tokens = sentence.get("tokens")
        if tokens is not None and (not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens)):
            raise fail(source, at, f"field 'tokens' must be a list of str, got {tokens!r:.60}")
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
    skip_missing: bool = False,
    retokenize: bool = False,
) -> tuple[dict[str, list[CaptionRecord]], ReadReport]:
    """Read a Karpathy split file.

    Args:
        json_path: ``dataset_coco.json``, ``dataset_flickr8k.json``, ``dataset_flickr30k.json`` or a file
            written by :func:`write_karpathy`.
        image_root: folder the ``filepath``/``filename`` entries are relative to.
        skip_missing: skip (and count) images whose file does not exist instead of failing.
        retokenize: tokenize ``raw`` with :func:`~visattn.data.text.tokenize` instead of using the file's
            ``tokens`` (which are otherwise optional: computed when absent).

    Returns:
        ``(splits, report)``: ``splits`` maps ``"train"`` (including ``restval``), ``"val"`` and ``"test"`` to
        records in file order; ``report`` counts what was dropped: blank sentences, images left without a
        sentence, and (with ``skip_missing``) missing image files. The report is also logged.

    Raises:
        CaptionDataError: broken JSON or UTF-8, a missing or mistyped field, an unknown split, a duplicate
            image id, or a missing image file (without ``skip_missing``); the message names the file, the
            record (``images[i] (id N)``) and the field.
    """
    source, root = Path(json_path), Path(image_root)
    data = load_json(source)
    if not isinstance(data, dict):
        raise fail(source, "top level", f"must be an object with an 'images' list, got {type(data).__name__}")
    images = get_field(data, "images", list, source, "top level")
    report = ReadReport(source=str(source))
    splits: dict[str, list[CaptionRecord]] = {"train": [], "val": [], "test": []}
    first_index: dict[int, int] = {}
    for i, entry in enumerate(images):
        where = f"images[{i}]"
        if not isinstance(entry, dict):
            raise fail(source, where, f"must be an object, got {type(entry).__name__}")
        image_id = get_field(entry, "cocoid" if "cocoid" in entry else "imgid", int, source, where)
        where = f"images[{i}] (id {image_id})"
        if image_id in first_index:
            first = first_index[image_id]
            raise fail(source, where, f"duplicate image id {image_id}, first used by images[{first}]")
        first_index[image_id] = i
        filename = get_field(entry, "filename", str, source, where)
        filepath = get_field(entry, "filepath", str, source, where) if "filepath" in entry else ""
        split = get_field(entry, "split", str, source, where)
        if split not in KARPATHY_SPLITS:
            raise fail(source, where, f"field 'split' is {split!r}; valid: {sorted(KARPATHY_SPLITS)}")
        if not filename.strip():
            raise fail(source, where, "field 'filename' is empty")
        captions, tokens = _read_sentences(entry, retokenize=retokenize, report=report, source=source, where=where)
        if not captions:
            report.skip(NO_CAPTIONS, where)
            continue
        path = root / filepath / filename
        if not check_image(path, skip_missing=skip_missing, report=report, source=source, where=where):
            continue
        splits[KARPATHY_SPLITS[split]].append(CaptionRecord(str(path), image_id, captions, tokens))
        report.num_images += 1
        report.num_captions += len(captions)
    report.log()
    return splits, report


def relative_image_path(path: str, image_root: Path, where: str) -> Path:
    """``path`` relative to ``image_root``; ValueError when it lies outside."""
    try:
        return Path(path).resolve().relative_to(image_root.resolve())
    except ValueError:
        raise ValueError(f"{where}: image {path} is not under image_root {image_root}") from None


def write_json_atomic(data: Any, path: str | os.PathLike[str]) -> Path:
    """Write JSON (UTF-8) through a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(data, stream, ensure_ascii=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
    root = Path(image_root)
    images: list[dict[str, Any]] = []
    seen: set[int] = set()
    sent_id = 0
    for split, records in splits.items():
        if split not in KARPATHY_SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {sorted(KARPATHY_SPLITS)}")
        for k, sample in enumerate(records):
            record = CaptionRecord.from_sample(sample)
            where = f"split {split!r} record {k} (id {record.image_id})"
            if record.image_id in seen:
                raise ValueError(f"{where}: duplicate image id")
            seen.add(record.image_id)
            relative = relative_image_path(record.path, root, where)
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
