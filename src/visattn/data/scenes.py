"""Procedural scenes: cluttered images of digits and shapes with exact boxes, masks and captions.

Every scene is a pure function of ``(config, seed, index)``: a per-sample ``numpy.random.Generator`` is seeded
from ``(seed, index)`` (never the global RNG), so sample 17 of a data set is the same image on every machine,
in every worker process and in every epoch.

A scene is drawn back to front:

1. a dark background (plain, per-pixel noise, or a smooth random texture);
2. ``clutter`` distractor fragments: corner crops (30-55% of each side) of random large sprites in the
   palette's colours, placed away from the objects. They have the strokes of real objects and look locally
   like their parts, so a model that averages features over the whole image hears many wrong votes, while a
   model that attends to the one complete object does not. A crop is never a whole glyph: it is at most half
   as large as a large object, and its strokes are twice as thick for its size as a small object's;
3. the objects themselves, whole, inside the image, overlapping each other at most ``max_iou`` (box IoU) and
   each keeping at least ``min_visible`` of its pixels.

Three kinds share the generator: ``"single"`` (one object among clutter; ``label`` is its class, for
classification), ``"multi"`` (1-4 objects with boxes and masks, for detection) and ``"caption"`` (1-4
objects plus reference captions whose words are aligned to objects, see :mod:`visattn.data.scene_captions`).

Boxes are ``xyxy`` in pixel-edge coordinates: an object covering columns 3..9 has ``x1 = 3`` and ``x2 = 10``,
so ``0 <= x1 < x2 <= W``. Masks are the visible pixels of each object (alpha >= 0.5, not covered by a later
object), and every box is the tight box of its mask.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from visattn.data.scene_captions import describe_scene
from visattn.data.sprites import CLASS_NAMES, COLOUR_NAMES, PALETTE, SpriteBank, sprite_bank

__all__ = ["BACKGROUNDS", "CLASS_NAMES", "COLOUR_NAMES", "KINDS", "SceneConfig", "SceneDataset", "make_scene"]

KINDS = ("single", "multi", "caption")
BACKGROUNDS = ("plain", "noise", "texture")
SIZE_NAMES = ("small", "large")
# Per-kind defaults for the fields left as None: (num_objects range, clutter fragments).
_KIND_DEFAULTS: dict[str, tuple[tuple[int, int], int]] = {
    "single": ((1, 1), 20),  # dense clutter: global average pooling must not find the object by counting strokes
    "multi": ((1, 4), 6),
    "caption": ((1, 4), 3),  # light clutter: captions must stay checkable against the objects
}
_PALETTE = np.array([PALETTE[name] for name in COLOUR_NAMES], dtype=np.float32) / 255.0  # (K, 3)
_TRIES = 30  # placement attempts per object / fragment before giving up on it
_INF = float("inf")
# Allowed ranges of the (min, max) pair fields, and of the scalar fields.
_PAIR_LIMITS = {
    "num_objects": (1, _INF), "small_scale": (0.01, 1.0), "fragment_scale": (0.01, 1.0),
    "large_scale": (0.01, 0.7),  # larger objects, once rotated, no longer fit the image
    "background_level": (0.0, 1.0),
}
_LIMITS = {
    "image_size": (24, _INF), "clutter": (0, _INF), "clutter_classes": (1, len(CLASS_NAMES)),
    "max_rotation": (0, 45), "max_iou": (0, 1), "min_visible": (0, 1), "duplicate_prob": (0, 1),
    "noise": (0, _INF), "colour_jitter": (0, _INF), "fragment_margin": (0, _INF),
}


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn. Fields left as ``None`` take the kind's default (see :attr:`object_range`,
    :attr:`num_clutter`). Lists (from JSON) are accepted wherever a pair is expected.

    Attributes:
        kind: ``"single"``, ``"multi"`` or ``"caption"``.
        image_size: side of the square image in pixels.
        num_objects: inclusive (min, max) object count; None -> single (1, 1), multi and caption (1, 4).
        clutter: number of distractor fragments; None -> single 20, multi 6, caption 3.
        small_scale: range of a "small" object's longest side, as a fraction of ``image_size``.
        large_scale: same for "large"; kept well apart from ``small_scale`` so that the words are learnable.
        max_rotation: objects are rotated uniformly in +-max_rotation degrees; beyond ~20 a square starts to
            read as a diamond and a six as a nine.
        max_iou: largest box IoU allowed between two objects.
        min_visible: smallest fraction of an object's pixels that later objects may leave uncovered.
        fragment_scale: a fragment is a crop of a sprite whose sides are this fraction of the sprite's sides.
        fragment_margin: gap in pixels kept between fragments and object boxes, so no fragment ever touches
            an object and changes its shape.
        clutter_classes: the fragments of one image are cut from this many randomly chosen classes (any
            class, the object's included), so that the parts "vote" for a few classes: a sum over the image
            hears the vote, attention to the one whole object does not. None cuts each fragment from any class.
        background: ``"plain"``, ``"noise"`` or ``"texture"``.
        background_level: range of the background's mean brightness in [0, 1]; keep it dark enough for the
            white and yellow objects to stand out.
        noise: standard deviation of Gaussian pixel noise added to the whole image, on the [0, 1] scale.
        colour_jitter: each object's colour is moved by up to this much per channel, on the [0, 1] scale.
        duplicate_prob: caption and multi kinds: chance that an object repeats an earlier object's class and
            colour, so that count phrases ("two red circles") occur.
    """

    kind: str = "single"
    image_size: int = 64
    num_objects: tuple[int, int] | None = None
    clutter: int | None = None
    small_scale: tuple[float, float] = (0.26, 0.34)
    large_scale: tuple[float, float] = (0.42, 0.54)
    max_rotation: float = 15.0
    max_iou: float = 0.1
    min_visible: float = 0.8
    fragment_scale: tuple[float, float] = (0.3, 0.55)
    fragment_margin: int = 2
    clutter_classes: int | None = None
    background: str = "texture"
    background_level: tuple[float, float] = (0.0, 0.3)
    noise: float = 0.03
    colour_jitter: float = 0.06
    duplicate_prob: float = 0.25

    def __post_init__(self) -> None:
        for name, (low, high) in _PAIR_LIMITS.items():
            value = getattr(self, name)
            if value is None:
                continue
            if len(value) != 2 or not low <= value[0] <= value[1] <= high:
                raise ValueError(f"SceneConfig.{name} must be a (min, max) pair in [{low}, {high}], got {value!r}")
            object.__setattr__(self, name, tuple(value))  # JSON hands over lists
        for name, valid in (("kind", KINDS), ("background", BACKGROUNDS)):
            if getattr(self, name) not in valid:
                raise ValueError(f"SceneConfig.{name} must be one of {', '.join(valid)}; got {getattr(self, name)!r}")
        for name, (low, high) in _LIMITS.items():
            value = getattr(self, name)
            if value is not None and not low <= value <= high:
                raise ValueError(f"SceneConfig.{name} must be in [{low}, {high}], got {value!r}")
        high = self.object_range[1]
        if self.kind == "single" and high != 1:
            raise ValueError(f"SceneConfig.num_objects must be (1, 1) for kind 'single', got {self.num_objects}")
        if self.kind == "caption" and high > 9:
            raise ValueError(f"SceneConfig.num_objects max must be <= 9 for captions (count words), got {high}")
        if self.small_scale[0] * self.image_size < 8:
            raise ValueError(f"SceneConfig.small_scale {self.small_scale} gives objects under 8 pixels at "
                             f"image_size {self.image_size}; digits become unreadable")

    @property
    def object_range(self) -> tuple[int, int]:
        """Inclusive (min, max) object count after applying the kind's default."""
        return self.num_objects if self.num_objects is not None else _KIND_DEFAULTS[self.kind][0]

    @property
    def num_clutter(self) -> int:
        """Number of distractor fragments after applying the kind's default."""
        return self.clutter if self.clutter is not None else _KIND_DEFAULTS[self.kind][1]


def _background(config: SceneConfig, rng: np.random.Generator) -> np.ndarray:
    """A dark background, float32 (S, S, 3) in [0, 1]."""
    size = config.image_size
    lo, hi = config.background_level
    level = lo + (hi - lo) * rng.random()
    tint = level * (0.7 + 0.6 * rng.random(3, dtype=np.float32))  # (3,) slightly coloured grey
    canvas = np.empty((size, size, 3), dtype=np.float32)
    canvas[:] = tint
    if config.background == "noise":
        canvas += rng.standard_normal((size, size, 3), dtype=np.float32) * 0.08
    elif config.background == "texture":
        # Smooth blobs: a 6x6 random grid upsampled bilinearly to the full image.
        grid = (rng.random((6, 6, 3)) * 255).astype(np.uint8)
        smooth = Image.fromarray(grid, "RGB").resize((size, size), Image.Resampling.BILINEAR)
        canvas += (np.asarray(smooth, dtype=np.float32) / 255.0 - 0.5) * 0.25
    return canvas


def _paste(canvas: np.ndarray, alpha: np.ndarray, colour: np.ndarray, top: int, left: int) -> None:
    """Alpha-composite a sprite of one colour into ``canvas`` in place; the sprite lies inside the image."""
    h, w = alpha.shape
    region = canvas[top:top + h, left:left + w]  # (h, w, 3) view
    a = alpha[:, :, None]  # (h, w, 1)
    region += a * (colour - region)


def _box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _sprite_params(config: SceneConfig, rng: np.random.Generator, size_index: int) -> tuple[int, float]:
    """Pixel size and rotation for one sprite of size "small" (0) or "large" (1)."""
    lo, hi = config.small_scale if size_index == 0 else config.large_scale
    size_px = int(round((lo + (hi - lo) * rng.random()) * config.image_size))
    rotation = float(rng.uniform(-config.max_rotation, config.max_rotation))
    return size_px, rotation


def _place_objects(config: SceneConfig, rng: np.random.Generator, bank: SpriteBank) -> list[dict[str, Any]]:
    """Choose and place the objects; returns one dict per object with its alpha, colour and full-frame mask."""
    size = config.image_size
    low, high = config.object_range
    count = int(rng.integers(low, high + 1))
    placed: list[dict[str, Any]] = []
    for _ in range(count):
        if placed and rng.random() < config.duplicate_prob:
            source = placed[int(rng.integers(len(placed)))]
            label, colour = source["label"], source["colour_index"]
        else:
            label = int(rng.integers(len(CLASS_NAMES)))
            colour = int(rng.integers(len(COLOUR_NAMES)))
        size_index = int(rng.integers(2))
        size_px, rotation = _sprite_params(config, rng, size_index)
        alpha = bank.mask(label, size_px, rotation)
        h, w = alpha.shape
        if max(h, w) > size - 3:
            raise ValueError(
                f"a {h}x{w} pixel object does not fit a {size} pixel image with a border; reduce "
                "SceneConfig.large_scale or max_rotation"
            )
        solid = alpha >= 0.5
        tops = rng.integers(1, size - h, size=_TRIES)  # one pixel of margin: objects never touch the border
        lefts = rng.integers(1, size - w, size=_TRIES)
        for top, left in zip(tops.tolist(), lefts.tolist()):
            box = (left, top, left + w, top + h)
            if any(_box_iou(box, other["box"]) > config.max_iou for other in placed):
                continue
            full = np.zeros((size, size), dtype=bool)
            full[top:top + h, left:left + w] = solid
            if any((other["visible"] & ~full).sum() < config.min_visible * other["area"] for other in placed):
                continue
            for other in placed:
                other["visible"] &= ~full
            jitter = rng.uniform(-config.colour_jitter, config.colour_jitter, 3).astype(np.float32)
            placed.append({
                "rgb": _PALETTE[colour] + jitter,
                "label": label, "colour_index": colour, "size_index": size_index, "rotation": rotation,
                "alpha": alpha, "top": top, "left": left, "box": box, "visible": full, "area": int(solid.sum()),
            })
            break
    return placed


def _draw_fragments(
    config: SceneConfig, rng: np.random.Generator, bank: SpriteBank, canvas: np.ndarray, keep_out: list[tuple]
) -> None:
    """Composite ``num_clutter`` sprite fragments outside the dilated object boxes ``keep_out``."""
    count = config.num_clutter
    if count == 0:
        return
    size = config.image_size
    margin = config.fragment_margin
    zones = [(x1 - margin, y1 - margin, x2 + margin, y2 + margin) for x1, y1, x2, y2 in keep_out]
    f_lo, f_hi = config.fragment_scale
    # All random numbers in two draws (per-call Generator overhead dominates otherwise). Columns of
    # `params`: class, colour, (unused), scale, rotation, 3 crop tries x (height, width, bottom?, right?),
    # 3 colour jitters.
    params = rng.random((count, 20)).tolist()
    positions = rng.random((count, _TRIES, 2)).tolist()
    sources = rng.permutation(len(CLASS_NAMES))[:config.clutter_classes].tolist() if config.clutter_classes else None
    jitter_scale = config.colour_jitter
    for u, candidates in zip(params, positions):
        if sources is None:
            label = int(u[0] * len(CLASS_NAMES))
        else:
            label = sources[int(u[0] * len(sources))]
        colour = _PALETTE[int(u[1] * len(COLOUR_NAMES))]
        # Cut from large sprites only: a piece then has the strokes of a large object but at most half its
        # extent, and strokes twice as thick (relative to its extent) as a small object; never a whole glyph.
        lo, hi = config.large_scale
        size_px = int(round((lo + (hi - lo) * u[3]) * size))
        alpha = bank.mask(label, size_px, (2 * u[4] - 1) * config.max_rotation)
        h, w = alpha.shape
        # Crop a corner window of the sprite (a corner, so that no crop is itself a whole smaller object, as
        # the centre of a cross would be); retry a few windows to get one that holds some stroke.
        piece = None
        for k in range(5, 17, 4):
            fh = max(2, int(round(h * (f_lo + (f_hi - f_lo) * u[k]))))
            fw = max(2, int(round(w * (f_lo + (f_hi - f_lo) * u[k + 1]))))
            top = h - fh if u[k + 2] < 0.5 else 0
            left = w - fw if u[k + 3] < 0.5 else 0
            window = alpha[top:top + fh, left:left + fw]
            if np.count_nonzero(window >= 0.5) >= max(4, 0.15 * fh * fw):
                piece = window
                break
        if piece is None:
            continue
        fh, fw = piece.shape
        for top_u, left_u in candidates:
            top = int(top_u * (size - fh + 1))
            left = int(left_u * (size - fw + 1))
            if all(left + fw <= x1 or left >= x2 or top + fh <= y1 or top >= y2 for x1, y1, x2, y2 in zones):
                jitter = np.array(u[17:20], dtype=np.float32) * (2 * jitter_scale) - jitter_scale
                _paste(canvas, piece, colour + jitter, top, left)
                break


def _render(config: SceneConfig, seed: int, index: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Draw scene ``index``; returns uint8 pixels (S, S, 3) and the annotations (numpy arrays)."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    rng = np.random.default_rng([seed, index])
    bank = sprite_bank()
    canvas = _background(config, rng)
    objects = _place_objects(config, rng, bank)
    _draw_fragments(config, rng, bank, canvas, [obj["box"] for obj in objects])
    for obj in objects:  # on top of the clutter, in placement order (later objects occlude earlier ones)
        _paste(canvas, obj["alpha"], obj["rgb"], obj["top"], obj["left"])
    if config.noise > 0:
        canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * config.noise
    pixels = (np.clip(canvas, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    size = config.image_size
    masks = np.stack([obj["visible"] for obj in objects]) if objects else np.zeros((0, size, size), bool)
    boxes = np.zeros((len(objects), 4), dtype=np.float32)
    described = []
    for i, mask in enumerate(masks):
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)  # pixel-edge xyxy: x2 is exclusive
        obj = objects[i]
        described.append({
            "class_name": CLASS_NAMES[obj["label"]],
            "label": obj["label"],
            "colour": COLOUR_NAMES[obj["colour_index"]],
            "size": SIZE_NAMES[obj["size_index"]],
            "centre": (float(boxes[i, 0] + boxes[i, 2]) / 2, float(boxes[i, 1] + boxes[i, 3]) / 2),
            "rotation": bank.rotation_step * round(obj["rotation"] / bank.rotation_step),  # as drawn
        })
    meta: dict[str, Any] = {
        "image_id": index,
        "path": None,
        "boxes": boxes,
        "labels": np.array([obj["label"] for obj in objects], dtype=np.int64),
        "masks": masks,
        "objects": described,
    }
    if config.kind == "single":
        meta["label"] = int(meta["labels"][0])
    if config.kind == "caption":
        meta["captions"], meta["alignment"] = describe_scene(described, boxes, rng)
    return pixels, meta


def make_scene(config: SceneConfig, seed: int, index: int) -> dict[str, Any]:
    """Draw one scene, deterministically from ``(seed, index)``.

    Args:
        config: how to draw.
        seed: data set seed (>= 0).
        index: sample index (>= 0); also the ``image_id``.

    Returns:
        A raw sample: ``image`` (PIL RGB, S x S), ``image_id`` (int), ``path`` (None), ``boxes`` float32 (N, 4)
        xyxy pixels, ``labels`` int64 (N,), ``masks`` bool (N, S, S), ``objects`` (per object: class_name,
        label, colour, size, centre (x, y), rotation); kind "single" adds ``label`` (== labels[0]); kind
        "caption" adds ``captions`` (list of str) and ``alignment`` (per caption, per token: object index or -1).
    """
    pixels, meta = _render(config, seed, index)
    return {"image": Image.fromarray(pixels, "RGB"), **meta}


def _render_chunk(args: tuple[SceneConfig, int, int, int]) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Worker for :meth:`SceneDataset.materialize`: scenes [start, stop) as (n, S, S, 3) uint8 + metadata."""
    config, seed, start, stop = args
    rendered = [_render(config, seed, i) for i in range(start, stop)]
    return np.stack([pixels for pixels, _ in rendered]), [meta for _, meta in rendered]


def _to_tensors(pixels: torch.Tensor, meta: dict[str, Any]) -> dict[str, Any]:
    """uint8 (3, S, S) pixels + numpy annotations -> the tensor sample of the shared contract."""
    sample = dict(meta)
    sample["image"] = pixels.float().div_(255.0)  # (3, S, S) in [0, 1]
    # Copies, so that a transform editing boxes in place cannot corrupt a materialised cache.
    sample["boxes"] = torch.from_numpy(meta["boxes"].copy())
    sample["labels"] = torch.from_numpy(meta["labels"].copy())
    sample["masks"] = torch.from_numpy(meta["masks"].copy())
    return sample


class SceneDataset(Dataset):
    """A fixed-size data set of procedural scenes: sample ``i`` is ``make_scene(config, seed, i)``.

    Without :meth:`materialize` each access draws the scene again (cheap, and the same every time). After
    ``materialize()`` all images sit in one uint8 tensor, so training epochs never wait on drawing.

    Args:
        config: how to draw.
        num_samples: length of the data set.
        seed: data set seed; train and test sets should use different seeds.
        transform: optional callable applied to each tensor sample dict (e.g. augmentation).

    ``__getitem__`` returns ``image`` float32 (3, S, S) in [0, 1], ``boxes`` float32 (N, 4), ``labels`` int64
    (N,), ``masks`` bool (N, S, S) as tensors, plus ``image_id``, ``path``, ``objects`` and per kind ``label``
    or ``captions``/``alignment``.
    """

    def __init__(
        self,
        config: SceneConfig,
        *,
        num_samples: int,
        seed: int = 0,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.config = config
        self.num_samples = num_samples
        self.seed = seed
        self.transform = transform
        self._pixels: torch.Tensor | None = None  # (N, 3, S, S) uint8 once materialised
        self._meta: list[dict[str, Any]] | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASS_NAMES

    @property
    def is_materialized(self) -> bool:
        return self._pixels is not None

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"SceneDataset index {index} out of range for {self.num_samples} samples")
        index %= self.num_samples
        if self._pixels is not None and self._meta is not None:
            pixels, meta = self._pixels[index], self._meta[index]
        else:
            array, meta = _render(self.config, self.seed, index)
            pixels = torch.from_numpy(array).permute(2, 0, 1).contiguous()  # (S, S, 3) -> (3, S, S)
        sample = _to_tensors(pixels, meta)
        return self.transform(sample) if self.transform is not None else sample

    def materialize(self, *, num_workers: int = 0, chunk_size: int = 500) -> SceneDataset:
        """Render every scene once into an in-memory uint8 cache (N, 3, S, S); returns ``self``.

        Args:
            num_workers: processes to draw with (0 draws in this process). Results are identical either way.
            chunk_size: scenes per worker task.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        tasks = [
            (self.config, self.seed, start, min(start + chunk_size, self.num_samples))
            for start in range(0, self.num_samples, chunk_size)
        ]
        if num_workers > 0 and len(tasks) > 1:
            with multiprocessing.get_context().Pool(num_workers) as pool:
                chunks = pool.map(_render_chunk, tasks)
        else:
            chunks = [_render_chunk(task) for task in tasks]
        size = self.config.image_size
        if chunks:
            pixels = torch.from_numpy(np.concatenate([c[0] for c in chunks])).permute(0, 3, 1, 2)  # (N, 3, S, S)
        else:
            pixels = torch.zeros((0, 3, size, size), dtype=torch.uint8)
        self._pixels = pixels.contiguous()
        self._meta = [meta for chunk in chunks for meta in chunk[1]]
        return self
