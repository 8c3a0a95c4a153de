"""Feature-cache speed: a training epoch with a frozen encoder, from the feature cache vs recomputing the encoder.

Both epochs go through the product's own path: procedural caption scenes (``SceneSource``), the
captioning task's collate and loss (``visattn.tasks.caption.CaptionTask``) and the engine's
``train_one_epoch`` with AdamW, on one captioner whose encoder is frozen. ``recompute`` feeds images and
runs the encoder in every step; ``cache`` feeds the annotations that ``ensure_feature_cache`` wrote once
(the one-time build is reported as ``build_seconds``). The epochs alternate (median of ``--repeats``, after
one warm-up epoch each), training the same decoder.

The default encoder is a ResNet-50 (random weights: speed does not depend on them) on 224×224 images, the
usual frozen-encoder setting; ``--mode random`` draws one caption per image per epoch, so each image is
encoded once per epoch (``pairs``, one item per reference caption, would encode it five times and favour
the cache even more).

Run: ``visattn bench cache [--encoder tv:resnet50 --image-size 224 --num-images 256] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

import _timing
from visattn.data.feature_cache import ensure_feature_cache
from visattn.data.scenes import SceneConfig
from visattn.encoders import EncoderConfig
from visattn.engine import TrainConfig, make_loader, train_one_epoch
from visattn.heads.captioner import CaptionerConfig
from visattn.models import build_model
from visattn.tasks.caption import CaptionTask
from visattn.data.caption_data import CaptionDataset, SceneSource, build_vocabulary


def build(*, encoder: str, image_size: int, num_images: int, attention_dim: int, decoder_dim: int, embed_dim: int,
          batch_size: int, mode: str, workdir: str, seed: int) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """The two epochs as callables, and facts about the setup (build time, grid, vocabulary size)."""
    source = SceneSource(SceneConfig(kind="caption", image_size=image_size), num_samples=num_images, seed=seed)
    vocab = build_vocabulary(source)
    torch.manual_seed(seed)
    config = CaptionerConfig(encoder=EncoderConfig(name=encoder, trainable_from="none"), vocab=vocab.to_list(),
                             attention_dim=attention_dim, decoder_dim=decoder_dim, embed_dim=embed_dim)
    model = build_model("captioner", config)
    device = torch.device("cpu")
    start = time.perf_counter()
    cache = ensure_feature_cache(model.encoder, source, Path(workdir) / "cache", transform=source.transform,
                                 data=source.identity, meta=source.meta)
    build_seconds = time.perf_counter() - start
    task = CaptionTask()
    train_config = TrainConfig(epochs=1, batch_size=batch_size, progress=False, device="cpu", seed=seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=train_config.lr)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    loaders = {name: make_loader(CaptionDataset(items, source.tokens, vocab, mode=mode), task, train_config,
                                 train=True, device=device)
               for name, items in (("recompute", source), ("cache", cache))}
    epochs = {"recompute": 0, "cache": 0}

    def epoch(name: str) -> Callable[[], Any]:
        def one() -> dict[str, float]:
            loaders[name].sampler.set_epoch(epochs[name])
            epochs[name] += 1
            return train_one_epoch(model, loaders[name], task, optimizer, train_config, device, epoch=0, step=0,
                                   total_steps=len(loaders[name]))
        return one

    facts = {"build_seconds": build_seconds, "grid": list(cache.grid), "encoder_dim": model.encoder.out_dim,
             "vocab_size": len(vocab), "steps_per_epoch": len(loaders["cache"]),
             "items_per_epoch": len(loaders["cache"].dataset)}
    return {name: epoch(name) for name in loaders}, facts


def memory_workload(which: str, **kwargs: Any) -> Callable[[], Any]:
    """Entry point of the peak-memory child process (see ``_timing.peak_memory``)."""
    workdir = tempfile.mkdtemp(prefix="visattn-bench-cache-")
    epochs, _ = build(**kwargs, workdir=workdir)
    return epochs[which]


def run(*, encoder: str = "tv:resnet50", image_size: int = 224, num_images: int = 256, attention_dim: int = 512,
        decoder_dim: int = 512, embed_dim: int = 512, batch_size: int = 32, mode: str = "random", repeats: int = 3,
        threads: int | None = None, seed: int = 0, memory: bool = True) -> dict[str, Any]:
    """Measure both epochs side by side; returns the JSON-able report (module docstring)."""
    if num_images < 1 or batch_size < 1 or image_size < 8:
        raise ValueError("--num-images and --batch-size must be >= 1, --image-size >= 8")
    device = _timing.configure(threads, "cpu")
    options = dict(encoder=encoder, image_size=image_size, num_images=num_images, attention_dim=attention_dim,
                   decoder_dim=decoder_dim, embed_dim=embed_dim, batch_size=batch_size, mode=mode, seed=seed)
    workdir = tempfile.mkdtemp(prefix="visattn-bench-cache-")
    try:
        epochs, facts = build(**options, workdir=workdir)
        losses: dict[str, list[float]] = {name: [] for name in epochs}

        def timed(name: str) -> Callable[[], None]:
            return lambda: losses[name].append(epochs[name]()["train_loss"])

        times = _timing.time_alternating({name: timed(name) for name in epochs}, repeats=repeats, warmup=1,
                                         device=device)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report: dict[str, Any] = {"benchmark": "cache", **_timing.device_info(device), **options, **facts,
                              "repeats": repeats}
    for name in epochs:
        seconds = _timing.summarise(times[name])
        entry: dict[str, Any] = {"seconds_per_epoch": seconds["median"], "seconds_min": seconds["min"],
                                 "seconds_max": seconds["max"],
                                 "items_per_s": facts["items_per_epoch"] / seconds["median"], "losses": losses[name]}
        if memory:
            entry["memory"] = _timing.peak_memory("cache", "memory_workload", {"which": name, **options},
                                                  device=device)
        report[name] = entry
    report["speedup"] = report["recompute"]["seconds_per_epoch"] / report["cache"]["seconds_per_epoch"]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="visattn bench cache", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="tv:resnet50", help='"small_cnn", "tv:<name>" or "timm:<name>"')
    parser.add_argument("--image-size", type=int, default=224, help="(default: 224)")
    parser.add_argument("--num-images", type=int, default=256, help="images per epoch (default: 256)")
    for name in ("attention-dim", "decoder-dim", "embed-dim"):
        parser.add_argument(f"--{name}", type=int, default=512, help="(default: 512)")
    parser.add_argument("--batch-size", type=int, default=32, help="(default: 32)")
    parser.add_argument("--mode", choices=["random", "pairs"], default="random",
                        help="items per image (default: random)")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per path (default: 3)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--json", action="store_true", help="print only the JSON report")
    args = parser.parse_args(argv)
    try:
        report = run(encoder=args.encoder, image_size=args.image_size, num_images=args.num_images,
                     attention_dim=args.attention_dim, decoder_dim=args.decoder_dim, embed_dim=args.embed_dim,
                     batch_size=args.batch_size, mode=args.mode, repeats=args.repeats, threads=args.threads,
                     seed=args.seed, memory=not args.no_memory)
    except ValueError as err:
        print(f"cache: error: {err}", file=sys.stderr)
        return 2
    if not args.json:
        for name in ("recompute", "cache"):
            e = report[name]
            print(f"{name:9s} {e['seconds_per_epoch']:.2f} s/epoch, {e['items_per_s']:.1f} items/s", file=sys.stderr)
        print(f"speedup {report['speedup']:.1f}x; cache built once in {report['build_seconds']:.1f} s "
              f"({report['device']}, {report['threads']} threads)", file=sys.stderr)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
