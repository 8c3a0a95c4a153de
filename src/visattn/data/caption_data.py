"""Captioning data: image sources, the vocabulary from the training split, caption items and their batches.

Three layers:

1. an **image source** (:class:`SceneSource`, :class:`RecordSource`): per image a sample dict with ``image``
   (3, H, W) in [0, 1], ``image_id``, ``path``, ``captions`` (raw strings) and, for procedural scenes,
   ``masks`` (N, H, W) and ``alignment``; plus ``tokens`` (per caption, the tokenized words), a
   ``transform`` description and a data ``identity`` (what the feature cache keys on). A
   :class:`~visattn.data.feature_cache.FeatureCache` built from a source replaces ``image`` by ``features``.
2. :class:`CaptionDataset`: what the engine iterates. ``mode="pairs"`` (training default) has one item per
   (image, reference caption) pair, so an epoch sees every caption once; ``mode="random"`` has one item per
   image with a caption drawn afresh at every access from the global torch RNG (the engine seeds it; under
   DataLoader workers PyTorch seeds each worker from it, so runs repeat exactly); ``mode="images"``
   (validation) has one item per image carrying its first caption for teacher forcing and all its
   references for scoring.
3. :func:`collate`: items -> a batch dict with padded ``tokens`` (B, T) and their ``lengths``.

The vocabulary is built from the training source's captions only (:func:`build_vocabulary`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from visattn.data.feature_cache import files_fingerprint
from visattn.data.images import image_to_tensor, load_image
from visattn.data.scenes import SceneConfig, SceneDataset
from visattn.data.text import tokenize
from visattn.data.vocab import Vocabulary

__all__ = ["SceneSource", "RecordSource", "CaptionDataset", "CaptionData", "collate", "build_vocabulary",
           "scene_data", "karpathy_data", "coco_data", "MODES"]

log = logging.getLogger("visattn")

MODES = ("pairs", "random", "images")
_META_KEYS = ("image_id", "path", "captions", "alignment", "masks", "boxes", "labels", "objects")


class SceneSource(Dataset):
    """Procedural caption scenes, rendered once into memory.

    Args:
        config: a ``SceneConfig`` of kind "caption".
        num_samples: number of images.
        seed: data seed; train, validation and test sources must use different seeds.
        num_workers: processes used to render (results are identical either way).
    """

    def __init__(self, config: SceneConfig, *, num_samples: int, seed: int, num_workers: int = 0) -> None:
        if config.kind != "caption":
            raise ValueError(f"SceneSource needs SceneConfig(kind='caption'), got kind={config.kind!r}")
        self.scenes = SceneDataset(config, num_samples=num_samples, seed=seed).materialize(num_workers=num_workers)
        self._meta = [{k: v for k, v in self.scenes[i].items() if k in _META_KEYS} for i in range(num_samples)]
        self.tokens = [[tokenize(c) for c in m["captions"]] for m in self._meta]
        self.transform = f"procedural {config.image_size}x{config.image_size}"
        self.identity = {"scenes": repr(config), "num_samples": num_samples, "seed": seed}
        self.image_size = config.image_size

    def __len__(self) -> int:
        return len(self._meta)

    def meta(self, index: int) -> dict[str, Any]:
        """The sample without its image."""
        return self._meta[index]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self._meta[index], "image": self.scenes[index]["image"]}


class RecordSource(Dataset):
    """Images on disk with their captions (records of the Karpathy or COCO readers).

    Images are loaded completely and resized to ``image_size`` × ``image_size`` (bilinear) at each access;
    a missing or corrupt file raises :class:`~visattn.data.images.ImageLoadError` naming it.

    Args:
        records: ``CaptionRecord``-like objects with ``path``, ``image_id``, ``captions`` and ``tokens``.
        image_size: square side the images are resized to.
        name: what the records are (for logs), e.g. "dataset_coco.json train".
    """

    def __init__(self, records: Sequence[Any], *, image_size: int, name: str) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.records = list(records)
        self.tokens = [list(map(list, r.tokens)) for r in self.records]
        self.transform = f"load RGB, resize {image_size}x{image_size} bilinear"
        self.identity = {"records": name, "files": files_fingerprint([r.path for r in self.records])}
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.records)

    def meta(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        return {"image_id": record.image_id, "path": record.path, "captions": list(record.captions)}

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = image_to_tensor(load_image(self.records[index].path), size=self.image_size)  # (3, S, S)
        return {**self.meta(index), "image": image}


def build_vocabulary(train: SceneSource | RecordSource | Sequence[Sequence[Sequence[str]]], *,
                     min_count: int = 1) -> Vocabulary:
    """The vocabulary of the training captions only (a source, or per image its token lists)."""
    tokens = train.tokens if hasattr(train, "tokens") else train
    return Vocabulary.build((caption for image in tokens for caption in image), min_count=min_count)


class CaptionDataset(Dataset):
    """(image or cached features, caption tokens) items over an image-level data set.

    Args:
        items: the image-level data set (a source, or a feature cache over it); item ``i`` holds ``image``
            (3, H, W) or ``features`` (L, C) plus ``grid``, and the metadata of image ``i``.
        tokens: per image, per reference caption, its tokens (``source.tokens``).
        vocab: encodes the tokens (``<start> ... <end>``; unknown words become ``<unk>``).
        mode: "pairs", "random" or "images" (module docstring).
        max_len: keep at most this many words per caption (None keeps all).
    """

    def __init__(self, items: Dataset, tokens: Sequence[Sequence[Sequence[str]]], vocab: Vocabulary, *,
                 mode: str = "pairs", max_len: int | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"caption dataset mode must be one of {', '.join(MODES)}, got {mode!r}")
        if len(items) != len(tokens):
            raise ValueError(f"caption dataset: {len(items)} images but token lists for {len(tokens)}")
        if max_len is not None and max_len < 1:
            raise ValueError(f"max_len must be >= 1 (or None), got {max_len}")
        empty = [i for i, image in enumerate(tokens) if not image]
        if empty:
            raise ValueError(f"caption dataset: images {empty[:5]} have no caption")
        self.items, self.vocab, self.mode, self.max_len = items, vocab, mode, max_len
        self.encoded = [[torch.tensor(vocab.encode(list(c), max_len), dtype=torch.long) for c in image]
                        for image in tokens]
        self.index = ([(i, j) for i, image in enumerate(self.encoded) for j in range(len(image))]
                      if mode == "pairs" else [(i, 0) for i in range(len(self.encoded))])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, caption = self.index[index]
        if self.mode == "random":
            caption = int(torch.randint(len(self.encoded[image]), ()))
        item = dict(self.items[image])
        item["tokens"] = self.encoded[image][caption]
        item["caption_index"] = caption
        return item


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Caption items -> a batch.

    Returns:
        ``tokens`` (B, T) int64: ``<start> w1 .. wn <end>`` then ``<pad>`` (id 0) to the longest;
        ``lengths`` (B,) int64: ids before the padding (n + 2); ``images`` (B, 3, H, W) or, from a feature
        cache, ``features`` (B, L, C) with ``grid`` (H', W'); ``image_ids``, ``captions`` (all references of
        each image), ``caption_index`` (which reference ``tokens`` holds) and, when every item has them,
        ``alignment``, ``masks``, ``boxes`` and ``objects`` (the scene's objects with class, colour and size;
        lists, one entry per image).
    """
    if not samples:
        raise ValueError("collate: empty batch")
    lengths = torch.tensor([len(s["tokens"]) for s in samples], dtype=torch.long)
    tokens = torch.zeros(len(samples), int(lengths.max()), dtype=torch.long)  # 0 = <pad>
    for row, sample in enumerate(samples):
        tokens[row, : len(sample["tokens"])] = sample["tokens"]
    batch: dict[str, Any] = {
        "tokens": tokens, "lengths": lengths, "image_ids": [s.get("image_id") for s in samples],
        "captions": [s.get("captions") for s in samples], "caption_index": [s.get("caption_index", 0) for s in samples],
    }
    if "features" in samples[0]:
        batch["features"] = torch.stack([s["features"] for s in samples])  # (B, L, C)
        batch["grid"] = tuple(samples[0]["grid"])
        # The engine counts the batch with len(batch["images"]); cached batches carry no images.
        batch["images"] = batch["features"]
    else:
        batch["images"] = torch.stack([s["image"] for s in samples])  # (B, 3, H, W)
    for key in ("alignment", "masks", "boxes", "objects"):
        if all(s.get(key) is not None for s in samples):
            batch[key] = [s[key] for s in samples]
    return batch


@dataclass
class CaptionData:
    """The image sources of one captioning problem and its vocabulary (built from ``train`` only).

    Attributes:
        train, val: image sources; ``test`` may be None.
        vocab: the training vocabulary.
        image_size: square side of every image.
        source: a one-line description.
    """

    train: Dataset
    val: Dataset
    test: Dataset | None
    vocab: Vocabulary
    image_size: int
    source: str


def scene_data(*, num_train: int = 10000, num_val: int = 500, num_test: int = 0, image_size: int = 64,
               num_objects: tuple[int, int] = (1, 3), seed: int = 0, min_count: int = 1,
               num_workers: int = 0, **scene_options: Any) -> CaptionData:
    """Procedural caption scenes; train, val and test drawn from seeds ``3·seed``, ``3·seed+1``, ``3·seed+2``.

    ``scene_options`` are further ``SceneConfig`` fields (clutter, background, ...).
    """
    config = SceneConfig(kind="caption", image_size=image_size, num_objects=num_objects, **scene_options)
    train = SceneSource(config, num_samples=num_train, seed=3 * seed, num_workers=num_workers)
    val = SceneSource(config, num_samples=num_val, seed=3 * seed + 1, num_workers=num_workers)
    test = SceneSource(config, num_samples=num_test, seed=3 * seed + 2, num_workers=num_workers) if num_test else None
    vocab = build_vocabulary(train, min_count=min_count)
    return CaptionData(train, val, test, vocab, image_size,
                       f"procedural caption scenes {image_size}px, {num_objects[0]}-{num_objects[1]} objects, "
                       f"seed={seed}")


def karpathy_data(json_path: str | Path, image_root: str | Path, *, image_size: int = 224, min_count: int = 5,
                  strict: bool = False,
                  max_images: int | None = None) -> CaptionData:
    """A Karpathy split file: ``train`` (with ``restval``) for training and the vocabulary, ``val``, ``test``.

    Missing image files are skipped and counted (``strict=True`` stops at the first); ``max_images`` keeps
    the first images of each split (for quick runs).
    """
    from visattn.data.karpathy import read_karpathy

    splits, report = read_karpathy(json_path, image_root, strict=strict)
    for split in ("train", "val"):
        if not splits[split]:
            raise ValueError(f"{json_path}: no {split!r} images ({report.summary()})")
    sources = {split: RecordSource(records[:max_images], image_size=image_size, name=f"{json_path} {split}")
               for split, records in splits.items() if records}
    vocab = build_vocabulary(sources["train"], min_count=min_count)
    return CaptionData(sources["train"], sources["val"], sources.get("test"), vocab, image_size,
                       f"Karpathy split {json_path}: {report.summary()}")


def coco_data(train_json: str | Path, train_root: str | Path, val_json: str | Path, val_root: str | Path, *,
              image_size: int = 224, min_count: int = 5, strict: bool = False,
              max_images: int | None = None) -> CaptionData:
    """COCO caption annotation files: one for training (and the vocabulary), one for validation.

    Missing image files are skipped and counted (``strict=True`` stops at the first).
    """
    from visattn.data.coco_captions import read_coco_captions

    sources, summaries = {}, []
    for split, path, root in (("train", train_json, train_root), ("val", val_json, val_root)):
        records, report = read_coco_captions(path, root, strict=strict)
        if not records:
            raise ValueError(f"{path}: no images with captions ({report.summary()})")
        sources[split] = RecordSource(records[:max_images], image_size=image_size, name=f"{path}")
        summaries.append(report.summary())
    vocab = build_vocabulary(sources["train"], min_count=min_count)
    return CaptionData(sources["train"], sources["val"], None, vocab, image_size, "COCO captions " + "; ".join(summaries))


def teacher_forced_objects(caption: str, alignment: Sequence[int], tokens: Tensor) -> list[int] | None:
    """Per word of an encoded reference caption, the object it names (-1: none), or None when the
    caption's whitespace words do not match its encoded words (punctuation, truncation)."""
    words = caption.split()
    if len(words) != len(alignment) or tokenize(caption) != words or len(tokens) != len(words) + 2:
        return None
    return [int(k) for k in alignment]
