"""``visattn demo``: the main job on the embedded procedural data, end to end, on a laptop CPU."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from visattn.cli.common import positive_int

__all__ = ["register", "run_classify_demo"]


def register(commands: dict) -> None:
    demo = commands["root"].add_parser(
        "demo", help="train and evaluate on procedural data, write figures",
        description="caption (default): a Show-Attend-Tell captioner trained on procedural scenes (about 6 "
                    "minutes on 2 CPU cores); prints BLEU-1..4, ROUGE-L, CIDEr-D and attention correctness on held-out "
                    "scenes and writes per-word attention figures (PNG + GIF). classify: an attention classifier and "
                    "its global-average-pooling baseline on cluttered scenes (about 3 minutes); prints accuracy, "
                    "pointing game and energy in box for both and writes the attention figure.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_argument("task", nargs="?", choices=["caption", "classify"], default="caption", help="which demo")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    demo.add_argument("--seed", type=int, default=0, help="seed of data, weights and order")
    demo.add_argument("--epochs", type=positive_int, default=3, help="classify: training epochs per model")
    demo.add_argument("--num-train", type=positive_int, default=6000, help="classify: training images")
    demo.add_argument("--seconds", type=float, default=360.0,
                      help="caption: training budget; sets the amount of data, not a clock, so runs repeat exactly")
    demo.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: PyTorch's choice)")
    demo.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    if args.task == "caption":
        from visattn.tasks.caption import run_caption_demo

        run_caption_demo(args.out, seconds_budget=args.seconds, seed=args.seed)
        return 0
    results = run_classify_demo(args.out, seed=args.seed, epochs=args.epochs, num_train=args.num_train)
    print(json.dumps(results, indent=2))
    return 0


def run_classify_demo(out: Path, *, seed: int = 0, epochs: int = 3, num_train: int = 6000) -> dict:
    """Train the attention classifier and the GAP baseline on the same data; evaluate; draw.

    Returns:
        per model: accuracy, error, pointing game, energy in box, uniform energy, train seconds; and the
        figure's path.
    """
    from torch.utils.data import DataLoader

    from visattn.engine import TrainConfig
    from visattn.heads.classifier import ClassifierConfig
    from visattn.models import load
    from visattn.tasks.classify import collate, evaluate_classifier, scene_data, train_classifier
    from visattn.viz import classification_grid

    out = Path(out)
    data = scene_data(num_train=num_train, num_val=1000, image_size=64, seed=seed)
    train_config = TrainConfig(epochs=epochs, batch_size=64, lr=2e-3, seed=seed, warmup_steps=50, device="cpu")
    results: dict = {"data": data.source, "models": {}}
    for pooling in ("attention", "gap"):
        start = time.perf_counter()
        run = train_classifier(ClassifierConfig(pooling=pooling), data, train_config, out / pooling)
        seconds = time.perf_counter() - start
        model = load(Path(run["run_dir"]) / "best.safetensors", task="classify")
        loader = DataLoader(data.val, batch_size=128, collate_fn=collate)
        metrics = evaluate_classifier(model, loader, torch.device("cpu"))
        results["models"][pooling] = {**{k: round(v, 4) for k, v in metrics.items()}, "train_seconds": round(seconds, 1)}
        if pooling == "attention":
            batch = collate([data.val[i] for i in range(12)])
            with torch.no_grad():
                pred = model(batch["images"])
            results["figure"] = str(classification_grid(batch["images"], pred["attention"], batch["labels"],
                                                        pred["logits"].argmax(-1), model.config.class_names,
                                                        out / "attention.png"))
    return results
