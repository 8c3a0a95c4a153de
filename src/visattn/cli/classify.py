"""``visattn train classify``, ``eval`` of classifiers, ``predict`` and ``viz``."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from visattn.attention import list_attentions
from visattn.cli.common import (
    CliError, add_device_option, add_strict_option, add_train_options, load_json_config, load_predictor,
    positive_int, report_metrics, report_training, train_config_from_args,
)
from visattn.heads.classifier import ClassifierConfig

__all__ = ["register"]


def register(commands: dict) -> None:
    train = commands["train"].add_parser(
        "classify", help="train an attention (or GAP) classifier",
        description="Train an image classifier with attention pooling (or its global-average-pooling baseline) "
                    "on cluttered procedural scenes or an ImageFolder tree (DIR/train/<class>/*, DIR/val/<class>/*).")
    data = train.add_argument_group("data")
    data.add_argument("--data-dir", type=Path, default=None,
                      help="ImageFolder root with train/ and val/; default: procedural scenes")
    add_strict_option(data)
    data.add_argument("--num-train", type=positive_int, default=5000, help="procedural training images")
    data.add_argument("--num-val", type=positive_int, default=1000, help="procedural validation images")
    data.add_argument("--image-size", type=positive_int, default=64, help="square image side in pixels")
    data.add_argument("--clutter", type=int, default=None, help="distractor fragments per procedural image")
    model = train.add_argument_group("model")
    model.add_argument("--config", type=Path, default=None,
                       help="JSON file of ClassifierConfig fields; the options below override it")
    model.add_argument("--pooling", choices=["attention", "gap"], default=None, help="default: attention")
    model.add_argument("--attention", choices=list_attentions(), default=None,
                       help="scoring function; default: additive")
    model.add_argument("--glimpses", type=positive_int, default=None, dest="num_glimpses", help="default: 1")
    model.add_argument("--glimpse-mode", choices=["parallel", "recurrent"], default=None, help="default: parallel")
    model.add_argument("--encoder", default=None, help='"small_cnn", "tv:<name>" or "timm:<name>"')
    model.add_argument("--encoder-width", type=positive_int, default=None, help="small CNN channels (default: 64)")
    add_train_options(train)
    train.set_defaults(handler=run_train)

    commands["eval_handlers"]["classify"] = run_eval
    commands["eval"].add_argument("--data-dir", type=Path, default=None,
                                  help="classify: ImageFolder root whose val/ split is evaluated")

    predict = commands["root"].add_parser(
        "predict", help="classify images and write attention overlays",
        description="Print the label and confidence of each image and write an attention overlay per image.")
    predict.add_argument("images", nargs="+", type=Path, help="image files (any format Pillow reads)")
    predict.add_argument("--checkpoint", required=True, help="a classifier checkpoint")
    predict.add_argument("--out", type=Path, default=Path("predictions"), help="folder for the overlays")
    predict.add_argument("--top-k", type=positive_int, default=3, help="how many labels to print")
    add_device_option(predict)
    predict.set_defaults(handler=run_predict)

    viz = commands["root"].add_parser(
        "viz", help="grid of test images with labels and attention overlays",
        description="Draw procedural (or ImageFolder val) test images with true/predicted labels and every "
                    "glimpse's attention overlaid.")
    viz.add_argument("--checkpoint", required=True, help="a classifier checkpoint")
    viz.add_argument("--out", type=Path, default=Path("attention.png"), help="PNG to write")
    viz.add_argument("--num-images", type=positive_int, default=12, help="images in the grid")
    viz.add_argument("--data-dir", type=Path, default=None, help="ImageFolder root (its val/ split)")
    viz.add_argument("--data-seed", type=int, default=12345, help="seed of the procedural images")
    add_device_option(viz)
    viz.set_defaults(handler=run_viz)


def run_train(args: argparse.Namespace) -> int:
    from visattn.encoders import EncoderConfig
    from visattn.tasks.classify import imagefolder_data, scene_data, train_classifier

    overrides = {k: getattr(args, k) for k in ("pooling", "attention", "num_glimpses", "glimpse_mode")}
    config = load_json_config(args.config, ClassifierConfig, overrides=overrides)
    if args.encoder or args.encoder_width:
        encoder = load_json_config(None, EncoderConfig, overrides={**vars(config.encoder), "name": args.encoder,
                                                                   "width": args.encoder_width})
        config = load_json_config(None, ClassifierConfig, overrides={**vars(config), "encoder": encoder})
    train_config = train_config_from_args(args)
    if args.data_dir is not None:
        data = imagefolder_data(args.data_dir, image_size=args.image_size, strict=args.strict)
    else:
        data = scene_data(num_train=args.num_train, num_val=args.num_val, image_size=args.image_size,
                          seed=args.seed, clutter=args.clutter)
    result = train_classifier(config, data, train_config, args.run_dir, resume=args.resume)
    return report_training(result)


def _eval_data(args: argparse.Namespace, image_size: int):
    from visattn.tasks.classify import imagefolder_data, scene_data

    if getattr(args, "data_dir", None) is not None:
        return imagefolder_data(args.data_dir, image_size=image_size, strict=getattr(args, "strict", False)).val
    data = scene_data(num_train=0, num_val=args.num_samples if hasattr(args, "num_samples") else args.num_images,
                      image_size=image_size, seed=args.data_seed)
    return data.val


def run_eval(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from visattn.tasks import get_task

    predictor = load_predictor(args, "classify")
    task = get_task("classify")
    loader = DataLoader(_eval_data(args, predictor.image_size), batch_size=args.batch_size, collate_fn=task.collate)
    return report_metrics(task.evaluate(predictor.model, loader, predictor.device), args.json_out)


def run_predict(args: argparse.Namespace) -> int:
    from visattn.viz import overlay

    predictor = load_predictor(args, "classify")
    prepared = predictor.preprocess(args.images)
    args.out.mkdir(parents=True, exist_ok=True)
    results = predictor.predict(prepared, top_k=args.top_k)
    for i, (image, result) in enumerate(zip(prepared.images, results)):
        target = args.out / f"{i:03d}_{Path(result.source).stem}_attention.png"
        overlay(image, result.attention.mean(dim=0)).save(target)
        others = ", ".join(f"{name} {p:.3f}" for name, p in result.top_k[1:])
        print(f"{result.source}\t{result.label}\t{result.score:.3f}\t{others}\t{target}")
    return 0


def run_viz(args: argparse.Namespace) -> int:
    from visattn.tasks import get_task
    from visattn.viz import classification_grid

    predictor = load_predictor(args, "classify")
    dataset = _eval_data(args, predictor.image_size)
    if len(dataset) == 0:
        raise CliError("no images to draw")
    batch = get_task("classify").collate([dataset[i] for i in range(min(args.num_images, len(dataset)))])
    results = predictor.predict(batch["images"], top_k=1)
    names = predictor.model.config.class_names
    path = classification_grid(batch["images"], torch.stack([r.attention for r in results]), batch["labels"],
                               [names.index(r.label) for r in results], names, args.out)
    print(path)
    return 0
