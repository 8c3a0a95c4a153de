"""Frozen-encoder feature cache: build, hit, rebuild on any change of its key, exact features.

This file is also a torchrun worker: ``torchrun --nproc_per_node=2 tests/test_feature_cache.py --worker DIR``
opens one cache from every rank and records which rank built it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from visattn.data.feature_cache import (
    FeatureCache,
    FeatureCacheError,
    build_feature_cache,
    cache_key,
    encoder_fingerprint,
    ensure_feature_cache,
    files_fingerprint,
)
from visattn.encoders import EncoderConfig, create_encoder


class Images(Dataset):
    def __init__(self, count: int = 10, size: int = 32, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.rand(count, 3, size, size, generator=generator)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "image_id": index}


def tiny_encoder(seed: int = 0):
    torch.manual_seed(seed)
    return create_encoder(EncoderConfig(width=16, depth=2, num_downsample=2, trainable_from="none"))


def meta(index: int) -> dict:
    return {"image_id": 100 + index, "captions": [f"caption {index}"]}


def ensure(encoder, images, directory, **kwargs):
    options = dict(transform="resize 32", data={"name": "random", "count": len(images)}, batch_size=4,
                   shard_size=4, meta=meta)
    options.update(kwargs)
    return ensure_feature_cache(encoder, images, directory, **options)


def shard_times(directory) -> list[int]:
    return sorted(os.stat(p).st_mtime_ns for p in directory.glob("features-*.safetensors"))


def test_cached_features_equal_a_direct_encode(tmp_path):
    encoder, images = tiny_encoder(), Images()
    cache = ensure(encoder, images, tmp_path / "cache")
    encoder.eval()
    with torch.no_grad():
        direct, grid = encoder(images.images)
    assert len(cache) == len(images) and cache.grid == tuple(grid)
    assert len(list((tmp_path / "cache").glob("features-*.safetensors"))) == 3  # shards of 4, 4, 2
    stacked = torch.stack([cache[i]["features"] for i in range(len(cache))])
    torch.testing.assert_close(stacked, direct, rtol=0, atol=0)
    item = cache[3]
    assert item["image_id"] == 103 and item["captions"] == ["caption 3"] and "image" not in item
    assert item["features"].dtype == torch.float32


def test_float16_cache_is_close_and_half_the_size(tmp_path):
    encoder, images = tiny_encoder(), Images()
    full = ensure(encoder, images, tmp_path / "f32")
    half = ensure(encoder, images, tmp_path / "f16", dtype="float16")
    assert half.features.dtype == torch.float16
    torch.testing.assert_close(half[5]["features"], full[5]["features"], rtol=2e-3, atol=2e-3)
    size = lambda d: sum(p.stat().st_size for p in d.glob("features-*"))  # noqa: E731
    assert size(tmp_path / "f16") < 0.6 * size(tmp_path / "f32")


def test_second_open_is_a_hit(tmp_path, caplog):
    encoder, images = tiny_encoder(), Images()
    ensure(encoder, images, tmp_path / "cache")
    before = shard_times(tmp_path / "cache")
    with caplog.at_level(logging.INFO, logger="visattn"):
        ensure(encoder, images, tmp_path / "cache")
    assert shard_times(tmp_path / "cache") == before
    assert "up to date" in caplog.text and "rebuilding" not in caplog.text


@pytest.mark.parametrize("change", ["weights", "transform", "data", "encoder_config"])
def test_a_change_of_any_key_part_rebuilds(tmp_path, caplog, change):
    encoder, images = tiny_encoder(), Images()
    first = ensure(encoder, images, tmp_path / "cache")
    kwargs = {}
    if change == "weights":
        with torch.no_grad():
            encoder.trunk.block0[0].weight.add_(0.5)
    elif change == "transform":
        kwargs["transform"] = "resize 32 antialias"
    elif change == "data":
        images = Images(seed=1)
        kwargs["data"] = {"name": "random", "count": 10, "seed": 1}
    else:
        state = encoder.state_dict()
        encoder = create_encoder(EncoderConfig(width=16, depth=2, num_downsample=1, trainable_from="none"))
        encoder.load_state_dict(state)
    with caplog.at_level(logging.INFO, logger="visattn"):
        second = ensure(encoder, images, tmp_path / "cache", **kwargs)
    assert "(re)building" in caplog.text and "stale key" in caplog.text
    assert second.key != first.key
    encoder.eval()
    with torch.no_grad():
        direct, _ = encoder(images.images[:1])
    torch.testing.assert_close(second[0]["features"], direct[0])


def test_damaged_cache_is_rebuilt(tmp_path, caplog):
    encoder, images = tiny_encoder(), Images()
    ensure(encoder, images, tmp_path / "cache")
    shard = tmp_path / "cache" / "features-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:50])  # truncated
    with caplog.at_level(logging.INFO, logger="visattn"):
        cache = ensure(encoder, images, tmp_path / "cache")
    assert "unreadable shard" in caplog.text
    assert len(cache) == 10


def test_reading_a_damaged_or_foreign_cache_names_the_file(tmp_path):
    encoder, images = tiny_encoder(), Images()
    with pytest.raises(FeatureCacheError, match="no feature cache"):
        FeatureCache(tmp_path / "nothing")
    ensure(encoder, images, tmp_path / "cache")
    with pytest.raises(FeatureCacheError, match="another encoder"):
        FeatureCache(tmp_path / "cache", key="0" * 64)
    (tmp_path / "cache" / "features-00002.safetensors").write_bytes(b"garbage")
    with pytest.raises(FeatureCacheError, match="features-00002"):
        FeatureCache(tmp_path / "cache")
    (tmp_path / "cache" / "manifest.json").write_text("{not json")
    with pytest.raises(FeatureCacheError, match="manifest"):
        FeatureCache(tmp_path / "cache")


def test_key_covers_buffers_and_file_mtimes(tmp_path):
    encoder = tiny_encoder()
    before = encoder_fingerprint(encoder)
    encoder.trunk.block0[1].running_mean.add_(1.0)  # a BatchNorm statistic is not a parameter
    assert encoder_fingerprint(encoder) != before
    path = tmp_path / "a.png"
    path.write_bytes(b"x")
    first = files_fingerprint([path])
    os.utime(path, ns=(1, 1))
    assert files_fingerprint([path]) != first
    key, fingerprint = cache_key(encoder, transform="t", data={"files": first})
    assert len(key) == 64 and fingerprint["transform"] == "t"


def test_build_rejects_bad_options(tmp_path):
    encoder, images = tiny_encoder(), Images()
    with pytest.raises(ValueError, match="dtype"):
        build_feature_cache(encoder, images, tmp_path / "c", key="k", fingerprint={}, dtype="int8")


def _worker(directory: Path) -> None:
    """Under torchrun: every rank opens the same cache; record who built it and what each rank read."""
    import visattn.data.feature_cache as feature_cache
    from visattn import distributed as dist

    dist.init_from_env(torch.device("cpu"))
    built: list[int] = []
    original = feature_cache.build_feature_cache

    def recording_build(*args, **kwargs):
        built.append(dist.rank())
        return original(*args, **kwargs)

    feature_cache.build_feature_cache = recording_build
    cache = ensure(tiny_encoder(), Images(), directory / "cache")
    (directory / f"rank{dist.rank()}.json").write_text(json.dumps(
        {"built": built, "key": cache.key, "sum": float(cache.features.double().sum())}))
    dist.cleanup()


@pytest.mark.slow
@pytest.mark.distributed
def test_under_torchrun_rank_zero_builds_and_every_rank_reads(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
               "--worker", str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["built"] == [0] and ranks[1]["built"] == []
    assert ranks[0]["key"] == ranks[1]["key"] and ranks[0]["sum"] == ranks[1]["sum"]


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker(Path(sys.argv[2]))
    else:
        sys.exit("usage: torchrun --nproc_per_node=2 tests/test_feature_cache.py --worker DIR")
