"""``visattn demo``: the main job on the embedded procedural data, end to end, on a laptop CPU."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


from visattn.cli.common import UsageError, positive_int

__all__ = ["register"]


def register(commands: dict) -> None:
    demo = commands["root"].add_parser(
        "demo", help="train and evaluate on procedural data, write figures",
        description="caption (default): a Show-Attend-Tell captioner trained on procedural scenes, its "
                    "attention supervised by the scenes' word-to-object alignments (about 4 minutes on 2 CPU cores, "
                    "under 3 of them training); prints BLEU-1..4, ROUGE-L, CIDEr-D, attention correctness and what "
                    "the captions say (object F1) on held-out scenes and writes per-word attention figures (PNG + "
                    "GIF). classify: an attention classifier and "
                    "its global-average-pooling baseline on cluttered scenes (about 3 minutes); prints accuracy, "
                    "pointing game and energy in box for both and writes the attention figure.")
    demo.add_argument("task", nargs="?", choices=["caption", "classify"], default="caption", help="which demo")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    demo.add_argument("--seed", type=int, default=0, help="seed of data, weights and order")
    demo.add_argument("--epochs", type=positive_int, default=3, help="classify: training epochs per model")
    demo.add_argument("--num-train", type=positive_int, default=6000, help="classify: training images")
    demo.add_argument("--seconds", type=float, default=240.0,
                      help="caption: the run's budget at the nominal speed (about 75%% of it trains); it sets the "
                           "amount of data, not a clock, so runs repeat exactly")
    demo.add_argument("--attention-supervision", type=float, default=None, metavar="LAMBDA",
                      help="caption: weight of the loss that puts each word's attention on its object's box "
                           "(default 0.3; 0 trains on the captions alone)")
    demo.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: PyTorch's choice)")
    demo.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    if args.task == "caption":
        from visattn.tasks.demo import DEMO_ATTENTION_SUPERVISION, run_caption_demo

        if args.attention_supervision is not None and not args.attention_supervision >= 0:
            raise UsageError(f"--attention-supervision must be >= 0, got {args.attention_supervision}")
        supervision = DEMO_ATTENTION_SUPERVISION if args.attention_supervision is None else args.attention_supervision
        run_caption_demo(args.out, seconds_budget=args.seconds, seed=args.seed, attention_supervision=supervision)
        return 0
    from visattn.tasks.demo import run_classify_demo

    results = run_classify_demo(args.out, seed=args.seed, epochs=args.epochs, num_train=args.num_train)
    print(json.dumps(results, indent=2))
    return 0
