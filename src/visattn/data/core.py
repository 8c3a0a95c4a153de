"""What every data-format reader and writer shares: one error family, one skip report, JSON fields, atomic writes.

**Errors.** Bad data raises a :class:`DataError` (a ``ValueError``) whose one-line message names the file, the
record and the field: ``DataError(path, "images[3] (id 7)", "split", "is 'dev'; valid: [...]")`` reads
``data.json: images[3] (id 7): field 'split' is 'dev'; valid: [...]``. Each format keeps its own subclass
(``CocoDataError``, ``CaptionDataError``, ``ImageLoadError``, ``FeatureCacheError``, ``CheckpointError``) so a
caller can tell them apart, but they are built and read alike.

**The bad-data policy** is the same in every reader. Some problems always fail (a broken file, a malformed
record, a duplicate id: the file is wrong and guessing would hide it). Others lose one record and nothing
else (a box outside its image, a missing or corrupt image file): by default the reader skips the record and
counts it in a :class:`SkipReport`, whose one-line :meth:`~SkipReport.summary` is logged; with
``strict=True`` the first such problem raises instead (:meth:`SkipReport.reject`). Things the format allows
(a blank caption, an image left without captions) are dropped and counted whatever ``strict`` says
(:meth:`SkipReport.skip`).

**Reading JSON.** :func:`load_json` turns a missing file, bytes that are not UTF-8 and invalid JSON into the
reader's error, with line and column; :func:`get_field` checks one field's presence and type.

**Writing.** :func:`write_atomic` writes through a temporary file in the target's folder, flushes it to disk and
renames it over the target, so a reader (or a crash) never sees half a file. Checkpoints, the feature cache
and every exporter write through it; :func:`write_json_atomic` is the JSON case.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DataError", "SkipReport", "load_json", "get_field", "iter_samples", "write_atomic", "write_json_atomic"]

_MAX_EXAMPLES = 5  # records named per skip reason in a report


class DataError(ValueError):
    """Bad data, naming the file, the record and the field in a one-line message.

    ``str(error)`` joins the parts given with ``": "``: ``"<path>: <record>: field '<field>' <reason>"``, so
    ``reason`` completes a sentence about the field (``"must be int, got str"``, ``"is empty"``). Without a
    field the reason stands alone (``"<path>: <record>: duplicate image id 7"``). With one argument only,
    that argument is the whole message (for messages composed elsewhere) and ``path`` is None.

    Args:
        path: the file (or folder) the data came from.
        record: which record, as the file numbers it (``"images[12] (id 5)"``, ``"annotation 17"``).
        field: the field's name inside the record.
        reason: what is wrong.

    Attributes:
        path, record, field, reason: as given (``path`` as a string).
    """

    def __init__(self, path: str | os.PathLike[str] | None, record: str | None = None, field: str | None = None,
                 reason: str | None = None) -> None:
        if record is None and field is None and reason is None:
            message, path = (None if path is None else os.fspath(path)), None
        else:
            about_field = f"field {field!r}" + (f" {reason}" if reason else "") if field is not None else reason
            parts = [None if path is None else os.fspath(path), record, about_field]
            message = ": ".join(str(part) for part in parts if part)
        super().__init__(message)
        self.path = None if path is None else os.fspath(path)
        self.record = record
        self.field = field
        self.reason = reason


@dataclass
class SkipReport:
    """What a reader kept and what it skipped, with reasons; also the reader's bad-data policy.

    Attributes:
        source: the file or folder read (the summary starts with it).
        kept: what was kept, in summary order: ``{"images": 5, "captions": 12}``.
        strict: :meth:`reject` raises instead of skipping.
        error: the :class:`DataError` subclass :meth:`reject` raises.
        skipped: reason -> how many records were skipped for it.
        examples: reason -> the first few records skipped for it (``"images[12] (id 5)"``).
        notes: further remarks for the summary (``"classes without images: cat"``).
    """

    source: str
    kept: dict[str, int] = field(default_factory=dict)
    strict: bool = False
    error: type[DataError] = DataError
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def keep(self, what: str, count: int = 1) -> None:
        """Count ``count`` kept things of kind ``what`` ("images", "captions", ...)."""
        self.kept[what] = self.kept.get(what, 0) + count

    def skip(self, reason: str, where: str) -> None:
        """Count one dropped record under ``reason`` and remember where it was (the first few per reason)."""
        self.skipped[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < _MAX_EXAMPLES:
            shown.append(where)

    def reject(self, reason: str, where: str, problem: str | None = None, *,
               error: BaseException | None = None) -> None:
        """A record that cannot be used: raise when ``strict``, else skip and count it.

        Args:
            reason: the skip reason it is counted under.
            where: the record, as named in the error and listed among the examples.
            problem: the error's reason when it differs from ``reason`` (e.g. with the file name); the
                example then reads ``"<where>: <problem>"``.
            error: raised as it is when ``strict`` (e.g. the :class:`~visattn.data.images.ImageLoadError`
                that found the problem); by default an :attr:`error` naming :attr:`source` and ``where``.
        """
        if self.strict:
            if error is not None:
                raise error
            hint = "strict: stopped here; without strict such records are skipped and counted"
            raise self.error(self.source, where, reason=f"{problem or reason} ({hint})")
        self.skip(reason, where if problem is None else f"{where}: {problem}")

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    # The counts the readers keep, by the names their callers use.
    num_images = property(lambda self: self.kept.get("images", 0), doc="images kept")
    num_captions = property(lambda self: self.kept.get("captions", 0), doc="captions kept")
    num_annotations = property(lambda self: self.kept.get("annotations", 0), doc="annotations kept")
    num_crowd = property(lambda self: self.kept.get("crowd annotations", 0), doc="crowd annotations kept")
    num_empty_images = property(lambda self: self.kept.get("images without objects", 0),
                                doc="images kept without any object (valid: they teach 'no object')")

    def summary(self) -> str:
        """One line: the source, what was kept, the notes, then each skip reason with its count and examples."""
        kept = ", ".join(f"{count} {what}" for what, count in self.kept.items())
        line = f"{self.source}: {kept or 'nothing kept'}"
        for note in self.notes:
            line += f"; {note}"
        for reason, count in sorted(self.skipped.items()):
            shown = self.examples.get(reason, [])
            more = ", ..." if count > len(shown) else ""
            line += f"; {count} {reason} (e.g. {', '.join(shown)}{more})"
        return line

    def log(self, logger: logging.Logger) -> None:
        """Log the summary on ``logger``: a warning when anything was skipped, info otherwise."""
        (logger.warning if self.skipped else logger.info)("%s", self.summary())


def load_json(path: str | os.PathLike[str], *, what: str = "file", error: type[DataError] = DataError) -> Any:
    """Parse a UTF-8 JSON file (a leading byte-order mark is allowed).

    Args:
        path: the file.
        what: what the file is, for the not-found message ("caption file", "COCO annotation file").
        error: the :class:`DataError` subclass to raise.

    Raises:
        DataError: (``error``) no such file; bytes that are not UTF-8 (with byte offset, line and column);
            invalid JSON (with line and column).
    """
    path = Path(path)
    if not path.is_file():
        raise error(path, reason=f"{what} not found")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise error(path, reason=f"not valid UTF-8 at byte {err.start} (line {line}, column {column}): "
                                 f"{err.reason}") from None
    text = text.removeprefix("\ufeff")  # a byte-order mark carries no data
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(path, reason=f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None


def get_field(entry: Any, key: str, kind: type | tuple[type, ...], *, path: str | os.PathLike[str], record: str,
              error: type[DataError] = DataError) -> Any:
    """``entry[key]``, checked to be present and of ``kind`` (a bool never counts as an int).

    Raises:
        DataError: (``error``) ``entry`` is not an object, ``key`` is missing, or its value has another type;
            the message names ``path``, ``record`` and the field.
    """
    if not isinstance(entry, Mapping):
        raise error(path, record, reason=f"must be an object, got {type(entry).__name__}")
    if key not in entry:
        raise error(path, record, reason=f"missing field {key!r} (fields present: {sorted(entry)})")
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise error(path, record, key, f"must be {names}, got {type(value).__name__} {value!r:.60}")
    return value


def iter_samples(samples: Iterable[Any]) -> Iterator[Any]:
    """The items of a map-style data set (indices ``0..len-1``) or of any iterable, for the writers."""
    if hasattr(samples, "__getitem__") and hasattr(samples, "__len__") and not isinstance(samples, Mapping):
        return (samples[i] for i in range(len(samples)))  # a torch Dataset need not define __iter__
    return iter(samples)


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """Write a file so that readers see the old content or the new, never half of it.

    ``write(tmp)`` fills a temporary file beside ``path`` (same folder, so the rename stays on one file
    system); it is then flushed to disk (fsync), renamed over ``path``, and the folder entry is synced too.
    On any failure the temporary file is removed and ``path`` is left as it was.

    Args:
        path: the target; its parent folders are created.
        write: called with the temporary path; must create and fill that file.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")  # created by write(): normal permissions
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # POSIX: make the rename itself durable
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    return path


def write_json_atomic(data: Any, path: str | os.PathLike[str], *, indent: int | None = None) -> Path:
    """Write ``data`` as UTF-8 JSON with :func:`write_atomic`; returns ``path``."""
    text = json.dumps(data, ensure_ascii=False, indent=indent)
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
