"""``visattn train detect``, ``eval`` of detectors and ``visattn detect IMAGE...``."""

from __future__ import annotations

import argparse
from pathlib import Path

from visattn.cli.common import (
    UsageError, add_device_option, add_strict_option, add_train_options, load_json_config, load_predictor,
    positive_int, report_metrics, report_training, train_config_from_args,
)
from visattn.engine import TrainConfig
from visattn.heads.detector import DetectorConfig

__all__ = ["register"]


def register(commands: dict) -> None:
    train = commands["train"].add_parser(
        "detect", help="train a DETR-style detector",
        description="Train a detector whose learned object queries attend over the encoder's grid (set prediction "
                    "with Hungarian matching) on procedural multi-object scenes or COCO instances files. The "
                    "checkpoint with the best validation mAP is kept.")
    data = train.add_argument_group("data (default: procedural multi-object scenes)")
    data.add_argument("--coco-train", type=Path, nargs=2, metavar=("JSON", "IMAGES"), default=None,
                      help="COCO instances file and its image folder for training")
    data.add_argument("--coco-val", type=Path, nargs=2, metavar=("JSON", "IMAGES"), default=None,
                      help="COCO instances file and its image folder for validation")
    add_strict_option(data)
    data.add_argument("--num-train", type=positive_int, default=10000, help="procedural training scenes")
    data.add_argument("--num-val", type=positive_int, default=500, help="procedural validation scenes")
    data.add_argument("--max-objects", type=positive_int, default=3, help="procedural: 1..N objects per scene")
    data.add_argument("--image-size", type=positive_int, default=64, help="square model input side")
    model = train.add_argument_group("model")
    model.add_argument("--config", type=Path, default=None, help="JSON of DetectorConfig fields; options override")
    model.add_argument("--num-queries", type=positive_int, default=None, help="learned object queries (default: 16)")
    model.add_argument("--num-layers", type=positive_int, default=None, help="decoder layers (default: 3)")
    model.add_argument("--hidden-dim", type=positive_int, default=None, help="decoder width (default: 128)")
    model.add_argument("--no-aux-loss", action="store_true", help="no loss on the earlier decoder layers")
    model.add_argument("--eos-coef", type=float, default=0.1, help="weight of the no-object class in loss_ce")
    add_train_options(train, TrainConfig(epochs=20, batch_size=32, lr=5e-4, warmup_steps=200, grad_clip=1.0))
    train.set_defaults(handler=run_train)

    commands["eval_handlers"]["detect"] = run_eval
    commands["eval"].add_argument("--coco-file", type=Path, nargs=2, metavar=("JSON", "IMAGES"), default=None,
                                  help="detect: COCO instances file and image folder to evaluate")

    detect = commands["root"].add_parser(
        "detect", help="detect objects and draw each kept query's attention",
        description="Print boxes (x1 y1 x2 y2 in pixels), labels and scores for each image and write a figure with "
                    "the boxes drawn and, beside it, the attention map of every kept query.")
    detect.add_argument("images", nargs="+", type=Path, help="image files")
    detect.add_argument("--checkpoint", required=True, help="a detector checkpoint")
    detect.add_argument("--score-threshold", type=float, default=0.5, help="keep detections scoring at least this")
    detect.add_argument("--top-k", type=positive_int, default=100, help="keep at most this many per image")
    detect.add_argument("--out", type=Path, default=Path("detections"), help="folder for the figures")
    add_device_option(detect)
    detect.set_defaults(handler=run_detect)


def run_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from visattn.tasks.detect import coco_data, scene_data, train_detector

    overrides = {"num_queries": args.num_queries, "num_layers": args.num_layers, "hidden_dim": args.hidden_dim}
    config = load_json_config(args.config, DetectorConfig, overrides=overrides)
    if args.no_aux_loss:
        config = replace(config, aux_loss=False)
    if args.coco_train is not None or args.coco_val is not None:
        if args.coco_train is None or args.coco_val is None:
            raise UsageError("--coco-train and --coco-val go together")
        data = coco_data(args.coco_train[0], args.coco_val[0], image_dir=args.coco_train[1],
                         val_image_dir=args.coco_val[1], image_size=args.image_size, strict=args.strict)
    else:
        data = scene_data(num_train=args.num_train, num_val=args.num_val, image_size=args.image_size, seed=args.seed,
                          num_objects=(1, args.max_objects))
    result = train_detector(config, data, train_config_from_args(args), args.run_dir, resume=args.resume,
                            eos_coef=args.eos_coef)
    return report_training(result)


def run_eval(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from visattn.tasks.detect import DetectTask, eval_data

    predictor = load_predictor(args, "detect")
    coco = args.coco_file or (None, None)
    dataset, category_ids = eval_data(predictor.model.config, coco_file=coco[0], image_dir=coco[1],
                                      num_samples=args.num_samples, seed=args.data_seed, strict=args.strict)
    task = DetectTask(category_ids=category_ids)
    loader = DataLoader(dataset, batch_size=args.batch_size, collate_fn=task.collate)
    return report_metrics(task.evaluate(predictor.model, loader, predictor.device), args.json_out)


def run_detect(args: argparse.Namespace) -> int:
    from visattn.data.images import load_image
    from visattn.tasks.detect import format_detection
    from visattn.viz import detection_figure

    if not 0.0 <= args.score_threshold <= 1.0:
        raise UsageError(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    predictor = load_predictor(args, "detect")
    results = predictor.predict(args.images, score_threshold=args.score_threshold, top_k=args.top_k)
    args.out.mkdir(parents=True, exist_ok=True)
    for i, (path, result) in enumerate(zip(args.images, results)):
        figure = args.out / f"{i:03d}_{path.stem}_detections.png"
        detection_figure(load_image(path), result.boxes, result.label_ids, result.scores,
                         predictor.model.config.class_names, result.attention, figure)
        print(format_detection(result, figure))
    return 0
