"""ImageFolder: classification data in ``root/<class>/<image>`` trees, and a writer for the same layout.

Reading. Class names are the sorted names of the sub-folders of ``root`` (hidden folders ignored), or the
``classes`` you pass (which fixes the label order, e.g. to match a trained model). Every file below a class
folder whose extension is in :data:`~visattn.data.images.IMAGE_EXTENSIONS` is a sample; other files are ignored
and counted.

Corrupt files. With ``validate=True`` (the default) every image is decoded once at construction, so that
``len(dataset)`` counts only loadable images and a training run never meets a bad file. A file that fails is
either recorded in ``dataset.skipped`` as ``(path, reason)`` and left out (``strict=False``, the shared
bad-data policy of :mod:`visattn.data.core`), or raises the :class:`~visattn.data.images.ImageLoadError` naming
it (``strict=True``). The counts and the first few skipped files are in ``dataset.report``
(a :class:`~visattn.data.core.SkipReport`), whose one-line summary is logged on
``logging.getLogger("visattn.data.imagefolder")``.

With ``validate=False`` construction only lists files (fast for big trees) and problems surface on access: with
``strict=False`` a bad file is recorded in ``skipped``, logged, and the next loadable file is returned in its
place (so an epoch sees some image twice); with ``strict=True`` the error is raised. In DataLoader worker
processes each worker records its own skips, so the parent's ``skipped`` list stays empty: validate up front
when you need the count.

Writing. :func:`export_imagefolder` writes classification samples as lossless PNGs
``out_dir/<split>/<class>/<image_id>.png`` (each file atomically); reading that folder back with
``classes=class_names`` gives bit-identical image tensors and the same labels.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from visattn.data.core import SkipReport, iter_samples
from visattn.data.images import IMAGE_EXTENSIONS, ImageLoadError, image_to_tensor, load_image, save_image

__all__ = ["ImageFolder", "export_imagefolder"]

logger = logging.getLogger(__name__)
UNREADABLE = "unreadable files skipped"


class ImageFolder(Dataset):
    """Classification samples from ``root/<class>/<image>`` (see the module docstring for skipping rules).

    Args:
        root: folder holding one sub-folder per class.
        size: None keeps each image's size; an int or ``(height, width)`` resizes (needed to batch images
            of different sizes).
        classes: label order; None uses the sorted sub-folder names. Every sub-folder must be listed.
        extensions: file name endings treated as images (compared in lower case).
        strict: raise on the first unreadable file instead of skipping it.
        validate: decode every image at construction (True) or only on access (False).
        max_pixels: decompression-bomb limit passed to :func:`~visattn.data.images.load_image`.
        transform: optional callable applied to each sample dict.

    Attributes:
        class_names: tuple of class names; label i is ``class_names[i]``.
        samples: list of ``(path, label)`` for the loadable (or, unvalidated, listed) images.
        skipped: list of ``(path, reason)`` for files left out.
        ignored: files under class folders whose extension is not an image extension.
        report: counts (images, classes, ignored files) and skips, with a one-line ``summary()``.

    A sample is ``{"image": float32 (3, H, W) in [0, 1], "label": int, "path": str, "image_id": int}``,
    where ``image_id`` is the sample's index.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        size: int | tuple[int, int] | None = None,
        classes: Sequence[str] | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        strict: bool = False,
        validate: bool = True,
        max_pixels: int | None = None,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.root = Path(root)
        self.size = size
        self.strict = strict
        self.max_pixels = max_pixels
        self.transform = transform
        self.skipped: list[tuple[str, str]] = []
        self.ignored: list[str] = []
        if not self.root.is_dir():
            what = "does not exist" if not self.root.exists() else "is not a folder"
            raise ValueError(f"{self.root}: ImageFolder root {what}")
        folders = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if classes is None:
            if not folders:
                raise ValueError(f"{self.root}: no class folders found (expected root/<class>/<image>)")
            classes = folders
        else:
            unknown = sorted(set(folders) - set(classes))
            if unknown:
                raise ValueError(f"{self.root}: class folder(s) {unknown} are not in the given classes {list(classes)}")
            if len(set(classes)) != len(classes):
                raise ValueError(f"{self.root}: duplicate names in classes {list(classes)}")
        self.class_names: tuple[str, ...] = tuple(classes)
        self.ignored.extend(str(p) for p in sorted(self.root.iterdir()) if p.is_file())
        suffixes = tuple(ext.lower() for ext in extensions)
        listed = []
        for label, name in enumerate(self.class_names):
            folder = self.root / name
            if not folder.is_dir():
                continue
            for directory, subdirs, files in os.walk(folder, followlinks=True):
                subdirs.sort()
                for file in sorted(files):
                    path = os.path.join(directory, file)
                    if file.lower().endswith(suffixes):
                        listed.append((path, label))
                    else:
                        self.ignored.append(path)
        if not listed:
            raise ValueError(
                f"{self.root}: no image files ({', '.join(suffixes)}) in any of the {len(self.class_names)} "
                "class folders"
            )
        self.report = SkipReport(f"ImageFolder {self.root}", strict=strict)
        self.samples = [(path, label) for path, label in listed if self._check(path)] if validate else listed
        counts = np.bincount([label for _, label in self.samples], minlength=len(self.class_names))
        self.report.keep("images", len(self.samples))
        self.report.keep("classes", len(self.class_names))
        if self.ignored:
            self.report.keep("non-image files ignored", len(self.ignored))
        empty = [name for name, count in zip(self.class_names, counts) if count == 0]
        if empty:
            self.report.notes.append(f"classes without images: {', '.join(empty)}")
        if not self.samples:
            raise ValueError(f"{self.root}: none of the {len(listed)} image files could be read; "
                             f"{self.report.summary()}")
        log = logger.warning if self.skipped or self.ignored else logger.info
        log("%s", self.report.summary())

    def _reject(self, error: ImageLoadError) -> None:
        """An unreadable file: raise it when strict, else record and count it."""
        self.report.reject(UNREADABLE, f"{error.path} ({error.reason})", error=error)
        self.skipped.append((error.path, error.reason))

    def _check(self, path: str) -> bool:
        """Decode ``path``; False (and recorded) when unreadable, unless strict."""
        try:
            load_image(path, max_pixels=self.max_pixels)
        except ImageLoadError as error:
            self._reject(error)
            return False
        return True

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int) -> dict[str, Any]:
        path, label = self.samples[index]
        image = image_to_tensor(load_image(path, max_pixels=self.max_pixels), self.size)
        sample = {"image": image, "label": label, "path": path, "image_id": index}
        return self.transform(sample) if self.transform is not None else sample

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"ImageFolder index {index} out of range for {len(self)} samples")
        index %= len(self)
        for offset in range(len(self)):
            current = (index + offset) % len(self)
            try:
                return self._load(current)
            except ImageLoadError as error:
                self._reject(error)
                logger.warning("skipping unreadable image %s (%s); using the next file", error.path, error.reason)
        raise ValueError(f"{self.root}: none of the {len(self)} image files could be read; {self.report.summary()}")


def export_imagefolder(
    samples: Iterable[dict[str, Any]],
    out_dir: str | os.PathLike[str],
    class_names: Sequence[str],
    *,
    split: str = "train",
) -> Path:
    """Write classification samples as ``out_dir/<split>/<class>/<image_id>.png`` (lossless).

    Args:
        samples: a data set or iterable of sample dicts with ``image`` (float (3, H, W) in [0, 1], uint8
            tensor, or PIL image), ``label`` (int) and ``image_id`` (int or str; file names are unique per id).
        out_dir: output folder (created).
        class_names: one folder per class, all created, so the tree keeps empty classes.
        split: sub-folder name, e.g. "train" or "test".

    Returns:
        The split folder, ready for ``ImageFolder(path, classes=class_names)``.
    """
    if not class_names:
        raise ValueError("export_imagefolder needs at least one class name")
    split_dir = Path(out_dir) / split
    for name in class_names:
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"export_imagefolder: class name {name!r} cannot be a folder name")
        (split_dir / name).mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    for position, sample in enumerate(iter_samples(samples)):
        image_id = sample.get("image_id", position)
        where = f"export_imagefolder sample {position} (image_id {image_id})"
        if "label" not in sample:
            raise ValueError(f"{where}: has no 'label'; only classification samples can be written as an ImageFolder")
        label = int(sample["label"])
        if not 0 <= label < len(class_names):
            raise ValueError(f"{where}: label {label} out of range for {len(class_names)} classes")
        stem = f"{int(image_id):06d}" if isinstance(image_id, (int, np.integer)) else str(image_id)
        if not stem or "/" in stem or "\\" in stem or stem.startswith("."):
            raise ValueError(f"{where}: image_id {image_id!r} cannot be a file name")
        if stem in seen:
            raise ValueError(f"{where}: duplicate image_id; file names must be unique")
        seen.add(stem)
        save_image(sample["image"], split_dir / class_names[label] / f"{stem}.png", source=where)
    return split_dir
