"""Frozen-encoder feature cache: encode a split once to disk, then train the decoder from the cache.

With a frozen encoder every epoch would recompute the same feature grids; the cache computes them once. A
cache is a folder:

    manifest.json                 {"format", "version", "key", "fingerprint", "num_items", "grid", "dim",
                                   "dtype", "shards": [{"file", "start", "stop"}]}
    features-00000.safetensors    tensor "features" (n, L, C) for items [start, stop); metadata {"key"}

The **key** is a SHA-256 over everything that decides the features: the encoder's config, every weight and
buffer of the encoder (so a fine-tuned or reloaded encoder is a different encoder), the image transform
(a description string the data source provides, e.g. "resize 224x224 bilinear") and the data identity (a
dataset description, or the file list with sizes and modification times: :func:`files_fingerprint`). When
the stored key differs, or a shard is missing or unreadable, the cache is stale: it is deleted and rebuilt,
and the reason is logged. The manifest is written last (atomically), so an interrupted build is never
mistaken for a complete one.

Under torchrun rank 0 builds the cache while the other ranks wait at a barrier; then every rank reads it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.utils.data import Dataset

from visattn import distributed as dist
from visattn.config import config_to_dict
from visattn.data.core import DataError, load_json, write_atomic, write_json_atomic

__all__ = ["FeatureCacheError", "FeatureCache", "encoder_fingerprint", "cache_key", "files_fingerprint",
           "build_feature_cache", "ensure_feature_cache"]

log = logging.getLogger("visattn")

FORMAT = "visattn-feature-cache"
VERSION = 1
MANIFEST = "manifest.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16}


class FeatureCacheError(DataError):
    """A feature cache that cannot be read or built (naming the folder or file)."""


def encoder_fingerprint(encoder: nn.Module) -> str:
    """SHA-256 of an encoder's config and of every tensor in its state (buffers too, persistent or not)."""
    digest = hashlib.sha256()
    config = getattr(encoder, "config", None)
    digest.update(json.dumps(config_to_dict(config) if config is not None else type(encoder).__name__,
                             sort_keys=True).encode())
    tensors = dict(encoder.named_parameters())
    tensors.update(encoder.named_buffers())  # includes the non-persistent normalisation mean/std
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def files_fingerprint(paths: Sequence[str | os.PathLike]) -> str:
    """SHA-256 of a file list with each file's size and modification time (ns); missing files count too."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            stat = os.stat(path)
            digest.update(f"{os.fspath(path)}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{os.fspath(path)}\tmissing\n".encode())
    return digest.hexdigest()


def cache_key(encoder: nn.Module, *, transform: str, data: Any) -> tuple[str, dict[str, Any]]:
    """The cache key and the fingerprint it hashes.

    Args:
        encoder: the frozen encoder.
        transform: how images are turned into the encoder's input, as a description string.
        data: a JSON-able description of the data (dataset config and seed, or a files fingerprint).

    Returns:
        ``(key, fingerprint)``: the hex key and ``{"encoder", "transform", "data"}``, stored in the manifest.
    """
    fingerprint = {"encoder": encoder_fingerprint(encoder), "transform": transform, "data": data}
    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()
    return key, fingerprint


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    path = directory / MANIFEST
    if not path.is_file():
        return None
    manifest = load_json(path, what="feature-cache manifest", error=FeatureCacheError)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise FeatureCacheError(path, reason="not a visattn feature-cache manifest")
    return manifest


@torch.no_grad()
def build_feature_cache(encoder: nn.Module, images: Dataset, directory: str | os.PathLike, *, key: str,
                        fingerprint: dict[str, Any], dtype: str = "float32", batch_size: int = 64,
                        shard_size: int = 4096, device: torch.device | str = "cpu",
                        image_of: Callable[[Any], Tensor] = lambda sample: sample["image"]) -> Path:
    """Encode every image of a data set into a fresh cache folder (its previous content is deleted).

    Args:
        encoder: maps (B, 3, H, W) images in [0, 1] to ``(features (B, L, C), (H', W'))``; run in eval mode.
        images: a data set whose items hold an image (3, H, W); all images must share one size.
        directory: the cache folder.
        key, fingerprint: from :func:`cache_key`.
        dtype: "float32" or "float16" (half the disk and memory; features are read back as float32).
        batch_size: images per encoder call.
        shard_size: items per shard file.
        device: where to encode.
        image_of: how to get the image tensor from an item.

    Returns:
        The cache folder.
    """
    if dtype not in DTYPES:
        raise ValueError(f"feature cache dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size and shard_size must be >= 1, got {batch_size} and {shard_size}")
    directory = Path(directory)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    was_training = encoder.training
    encoder.eval()
    shards: list[dict[str, Any]] = []
    grid: tuple[int, int] | None = None
    dim = 0
    try:
        for start in range(0, len(images), shard_size):
            stop = min(start + shard_size, len(images))
            chunks = []
            for first in range(start, stop, batch_size):
                batch = torch.stack([image_of(images[i]) for i in range(first, min(first + batch_size, stop))])
                features, batch_grid = encoder(batch.to(device))  # (b, L, C)
                if grid is not None and tuple(batch_grid) != grid:
                    raise FeatureCacheError(directory, reason=f"images of different sizes give grids {grid} and "
                                                              f"{tuple(batch_grid)}; resize them to one size first")
                grid, dim = tuple(batch_grid), int(features.shape[-1])
                chunks.append(features.to("cpu", DTYPES[dtype]))
            name = f"features-{len(shards):05d}.safetensors"
            tensors = {"features": torch.cat(chunks).contiguous()}
            write_atomic(directory / name, lambda tmp: save_file(tensors, tmp, metadata={"key": key}))
            shards.append({"file": name, "start": start, "stop": stop})
    finally:
        encoder.train(was_training)
    write_json_atomic({
        "format": FORMAT, "version": VERSION, "key": key, "fingerprint": fingerprint, "num_items": len(images),
        "grid": list(grid) if grid else None, "dim": dim, "dtype": dtype, "shards": shards},
        directory / MANIFEST, indent=1)
    log.info("feature cache: encoded %d items into %s (%d shards, %s)", len(images), directory, len(shards), dtype)
    return directory


class FeatureCache(Dataset):
    """A data set over a built cache: item ``i`` holds the cached features of image ``i``.

    All shards are read into memory at construction (N·L·C values in the stored dtype).

    Args:
        directory: a cache folder written by :func:`build_feature_cache`.
        meta: optional ``index -> dict`` of the item's other fields (captions, ids, masks ...), merged into
            each item; the image itself is never loaded.
        key: when given, the manifest's key must equal it.

    Items: ``{"features": (L, C) float32, "grid": (H', W'), **meta(i)}``.

    Raises:
        FeatureCacheError: missing/corrupt manifest or shard, or a key mismatch (naming the file).
    """

    def __init__(self, directory: str | os.PathLike, *, meta: Callable[[int], dict[str, Any]] | None = None,
                 key: str | None = None) -> None:
        self.directory = Path(directory)
        manifest = _read_manifest(self.directory)
        if manifest is None:
            raise FeatureCacheError(self.directory, reason=f"no feature cache here (no {MANIFEST})")
        if key is not None and manifest.get("key") != key:
            raise FeatureCacheError(self.directory, reason=f"feature cache was built for another encoder/data "
                                    f"(key {str(manifest.get('key'))[:12]}..., expected {key[:12]}...)")
        self.manifest = manifest
        self.grid = tuple(manifest["grid"]) if manifest.get("grid") else (0, 0)
        self.meta = meta
        parts = []
        for shard in manifest["shards"]:
            path = self.directory / shard["file"]
            try:
                with safe_open(str(path), framework="pt", device="cpu") as handle:
                    if (handle.metadata() or {}).get("key") != manifest["key"]:
                        raise FeatureCacheError(path, reason="shard belongs to another cache build")
                    parts.append(handle.get_tensor("features"))
            except (SafetensorError, OSError, RuntimeError) as err:
                raise FeatureCacheError(path, reason=f"unreadable feature-cache shard: {err}") from err
            if len(parts[-1]) != shard["stop"] - shard["start"]:
                raise FeatureCacheError(path, reason=f"holds {len(parts[-1])} items, manifest says "
                                                     f"{shard['stop'] - shard['start']}")
        self.features = torch.cat(parts) if parts else torch.zeros(0, 0, 0)  # (N, L, C)
        if len(self.features) != manifest["num_items"]:
            raise FeatureCacheError(self.directory, reason=f"shards hold {len(self.features)} items, manifest "
                                                           f"says {manifest['num_items']}")

    @property
    def key(self) -> str:
        return self.manifest["key"]

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.meta(index)) if self.meta is not None else {}
        item["features"] = self.features[index].float()  # (L, C)
        item["grid"] = self.grid
        return item


def _stale_reason(directory: Path, key: str) -> str | None:
    """None when ``directory`` holds a complete cache with ``key``; otherwise why it must be (re)built."""
    try:
        manifest = _read_manifest(directory)
    except FeatureCacheError as err:
        return str(err)
    if manifest is None:
        return "no cache yet"
    if manifest.get("version") != VERSION:
        return f"cache format version {manifest.get('version')} (this visattn writes {VERSION})"
    if manifest.get("key") != key:
        return f"stale key {str(manifest.get('key'))[:12]} (encoder, weights, transform or data changed)"
    for shard in manifest.get("shards", []):
        path = directory / shard["file"]
        try:  # reads the header only; a truncated file fails here
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                if (handle.metadata() or {}).get("key") != key:
                    return f"shard {shard['file']} belongs to another build"
        except (SafetensorError, OSError, RuntimeError) as err:
            return f"missing or unreadable shard {shard['file']} ({err})"
    return None


def ensure_feature_cache(encoder: nn.Module, images: Dataset, directory: str | os.PathLike, *, transform: str,
                         data: Any, dtype: str = "float32", batch_size: int = 64, shard_size: int = 4096,
                         device: torch.device | str = "cpu",
                         meta: Callable[[int], dict[str, Any]] | None = None,
                         image_of: Callable[[Any], Tensor] = lambda sample: sample["image"]) -> FeatureCache:
    """Open the cache in ``directory``, building or rebuilding it first when missing or stale.

    Args: as :func:`build_feature_cache` and :func:`cache_key`; ``meta`` as :class:`FeatureCache`.

    Returns:
        The cache as a data set. Under torchrun rank 0 builds while the others wait at a barrier.
    """
    directory = Path(directory)
    key, fingerprint = cache_key(encoder, transform=transform, data=data)
    if dist.is_main():
        reason = _stale_reason(directory, key)
        if reason is not None:
            log.info("feature cache %s: (re)building: %s", directory, reason)
            build_feature_cache(encoder, images, directory, key=key, fingerprint=fingerprint, dtype=dtype,
                                batch_size=batch_size, shard_size=shard_size, device=device, image_of=image_of)
        else:
            log.info("feature cache %s: up to date (key %s)", directory, key[:12])
    dist.barrier()
    cache = FeatureCache(directory, meta=meta, key=key)
    if len(cache) != len(images):
        raise FeatureCacheError(directory, reason=f"cache holds {len(cache)} items for a data set of {len(images)}")
    return cache
