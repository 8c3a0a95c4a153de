"""Detection quality benchmark: how good does the detector get on procedural scenes in a fixed CPU budget?

Procedural 64x64 scenes with 1-3 objects (16 classes: digits and shapes, with clutter), trained on
``--threads`` CPU threads for at most ``--max-seconds`` of training (data rendering and evaluation are not
counted), then COCO mAP on held-out scenes. Targets: mAP >= 0.6 and AP50 >= 0.95 within 600 s on 2 threads.

Prints one JSON line per evaluation; the last line is the final result with at least ``map``, ``map_50``,
``map_75`` and ``train_seconds``. Not a test: run it by hand (``python benchmarks/detect_quality.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from torch.utils.data import DataLoader

from visattn.encoders import EncoderConfig
from visattn.heads.detector import Detector, DetectorConfig
from visattn.tasks.detect import DetectTask, scene_data


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-seconds", type=float, default=570.0, help="training budget (default leaves margin "
                        "under the 600 s target for the per-step overshoot)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--num-train", type=int, default=20000)
    parser.add_argument("--num-val", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--warmup-steps", type=int, default=200)
    parser.add_argument("--grad-clip", type=float, default=1.0)
    parser.add_argument("--width", type=int, default=128, help="CNN width (grid channels)")
    parser.add_argument("--hidden-dim", type=int, default=128)
    parser.add_argument("--num-queries", type=int, default=12)
    parser.add_argument("--num-layers", type=int, default=3)
    parser.add_argument("--eos-coef", type=float, default=0.1)
    parser.add_argument("--eval-every", type=int, default=0, help="also evaluate every this many steps "
                        "(0: only at the end)")
    parser.add_argument("--max-steps", type=int, default=0, help="stop after this many steps instead (0: time "
                        "budget only; the schedule still follows the step count when set)")
    parser.add_argument("--position-in-values", type=int, default=1)
    parser.add_argument("--reference-points", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    start = time.perf_counter()
    data = scene_data(num_train=args.num_train, num_val=args.num_val, image_size=64, seed=args.seed,
                      num_objects=(1, 3), num_workers=args.threads)
    render_seconds = time.perf_counter() - start
    config = DetectorConfig(
        encoder=EncoderConfig(width=args.width), num_classes=len(data.class_names), class_names=data.class_names,
        num_queries=args.num_queries, hidden_dim=args.hidden_dim, num_heads=4, num_layers=args.num_layers,
        ffn_dim=2 * args.hidden_dim, dropout=0.0, aux_loss=True, image_size=64,
        position_in_values=bool(args.position_in_values), reference_points=bool(args.reference_points),
    )
    model = Detector(config).to(device)
    task = DetectTask(config.num_classes, eos_coef=args.eos_coef)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    generator = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(data.train, batch_size=args.batch_size, shuffle=True, collate_fn=task.collate,
                              drop_last=True, generator=generator)
    val_loader = DataLoader(data.val, batch_size=100, collate_fn=task.collate)

    def evaluate(train_seconds: float, step: int, epoch: float) -> dict:
        model.eval()
        with torch.no_grad():
            metrics = task.evaluate(model, val_loader, device)
        model.train()
        keys = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "energy_in_pred_box",
                "baseline_pred_box", "energy_in_gt_box", "baseline_gt_box")
        result = {key: round(metrics[key], 4) for key in keys}
        result.update(train_seconds=round(train_seconds, 1), steps=step, epochs=round(epoch, 2),
                      images_per_s=round(step * args.batch_size / max(train_seconds, 1e-9), 1))
        return result

    model.train()
    train_seconds, step = 0.0, 0
    done = False
    while not done:
        for batch in train_loader:
            tic = time.perf_counter()
            warm = min(1.0, (step + 1) / args.warmup_steps)
            progress = step / args.max_steps if args.max_steps else train_seconds / args.max_seconds
            cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
            for group in optimizer.param_groups:
                group["lr"] = args.lr * warm * max(cosine, 0.01)
            terms = task.criterion(model, batch, device)
            losses = {"loss": task.total_loss(terms), **terms}
            if not torch.isfinite(losses["loss"]):
                raise RuntimeError(f"non-finite loss at step {step}: {losses}")
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            step += 1
            train_seconds += time.perf_counter() - tic
            if args.eval_every and step % args.eval_every == 0:
                terms = {k: round(float(v.detach()), 4) for k, v in losses.items() if not k[-1].isdigit()}
                print(json.dumps({"progress": True, **terms,
                                  **evaluate(train_seconds, step, step * args.batch_size / len(data.train))}),
                      flush=True)
            if train_seconds >= args.max_seconds or (args.max_steps and step >= args.max_steps):
                done = True
                break
    result = evaluate(train_seconds, step, step * args.batch_size / len(data.train))
    result.update(render_seconds=round(render_seconds, 1), threads=args.threads, num_train=args.num_train,
                  num_val=args.num_val, batch_size=args.batch_size, lr=args.lr, num_queries=args.num_queries,
                  num_layers=args.num_layers, hidden_dim=args.hidden_dim, width=args.width,
                  parameters=sum(p.numel() for p in model.parameters()))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
