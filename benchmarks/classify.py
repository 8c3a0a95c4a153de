"""Classification quality benchmark: attention pooling vs global average pooling vs the seed's concat scoring.

Same data, same encoder, same budget, one run. Cluttered 60×60 procedural scenes (10k train, 2k test),
3 epochs on the CPU. Prints one JSON line per model as it finishes, then the summary JSON last:

    {"models": {"attention": {"error", "pointing_game", "energy_in_box", "uniform_energy", "train_seconds"},
                "gap": {...}, "concat": {...}}, "config": {...}}

Run: ``python benchmarks/classify.py [--threads 2] [--epochs 3]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from visattn.encoders import EncoderConfig
from visattn.engine import TrainConfig
from visattn.heads.classifier import ClassifierConfig
from visattn.predictor import Predictor
from visattn.tasks.classify import ClassifyTask, scene_data, train_classifier

MODELS = {
    "attention": dict(pooling="attention", attention="additive"),
    "gap": dict(pooling="gap"),
    "concat": dict(pooling="attention", attention="concat"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-train", type=int, default=10_000)
    parser.add_argument("--num-test", type=int, default=2_000)
    parser.add_argument("--image-size", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--width", type=int, default=64, help="small CNN channels")
    parser.add_argument("--depth", type=int, default=3, help="small CNN blocks")
    parser.add_argument("--num-downsample", type=int, default=2, help="small CNN stride-2 blocks (2: 15x15 grid)")
    parser.add_argument("--glimpses", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    parser.add_argument("--out", type=Path, default=None, help="run folders (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    data = scene_data(num_train=args.num_train, num_val=args.num_test, image_size=args.image_size, seed=args.seed)
    data_seconds = time.perf_counter() - start
    train_config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, warmup_steps=100,
                               seed=args.seed, device="cpu", progress=False)
    out = args.out or Path(tempfile.mkdtemp(prefix="visattn-bench-classify-"))
    results = {}
    for name in args.models.split(","):
        config = ClassifierConfig(encoder=EncoderConfig(width=args.width, depth=args.depth,
                                                        num_downsample=args.num_downsample),
                                  num_glimpses=args.glimpses,
                                  **MODELS[name])
        tic = time.perf_counter()
        run = train_classifier(config, data, train_config, out / name)
        seconds = time.perf_counter() - tic
        predictor = Predictor.from_checkpoint(Path(run["run_dir"]) / "last.safetensors", device="cpu", task="classify")
        task = ClassifyTask()
        metrics = task.evaluate(predictor.model, DataLoader(data.val, batch_size=256, collate_fn=task.collate),
                                predictor.device)
        results[name] = {"error": metrics["error"], "errors": round(metrics["error"] * len(data.val)), "pointing_game": metrics["pointing_game"],
                         "energy_in_box": metrics["energy_in_box"], "uniform_energy": metrics["uniform_energy"],
                         "train_seconds": round(seconds, 1)}
        print(json.dumps({name: results[name]}), flush=True)
    summary = {"models": results,
               "config": {**{k: v for k, v in vars(args).items() if k != "out"}, "data_seconds": round(data_seconds, 1),
                          "torch": torch.__version__}}
    if "attention" in results and "gap" in results:
        # With no attention error at all, count it as one: the ratio is then a lower bound.
        summary["gap_over_attention_error_at_least"] = results["gap"]["errors"] / max(results["attention"]["errors"], 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
