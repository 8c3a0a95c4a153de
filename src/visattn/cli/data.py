"""``visattn data make`` (procedural scenes to disk) and ``visattn data export`` (standard formats)."""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

from visattn.cli.common import HelpFormatter, positive_int

__all__ = ["register"]

# Which procedural kind each export format carries, and what it is for.
FORMATS = {"imagefolder": "single", "karpathy": "caption", "coco": "multi"}


def register(commands: dict) -> None:
    data = commands["root"].add_parser("data", help="make procedural data; export it in standard formats",
                                       description="Procedural scenes, deterministic from (seed, index).")
    sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True,
                             parser_class=functools.partial(argparse.ArgumentParser, formatter_class=HelpFormatter))

    make = sub.add_parser(
        "make", help="render procedural scenes with their annotations",
        description="Render scenes as PNG files plus annotations.jsonl (boxes xyxy in pixels, labels, class "
                    "names, and for captions the reference captions, their word-to-object alignment and each object's "
                    "class, colour and size: what `visattn caption --annotations` scores a caption's content against).")
    make.add_argument("--kind", choices=["single", "multi", "caption"], default="single",
                      help="single: one object among clutter (classification); multi: 1-4 objects (detection); "
                           "caption: 1-4 objects with captions")
    make.add_argument("--num", type=positive_int, default=16, help="number of scenes")
    _common(make)
    make.set_defaults(handler=run_make)

    export = sub.add_parser(
        "export", help="write train/val/test splits in a standard format",
        description="imagefolder: OUT/<split>/<class>/<id>.png (single-object scenes); karpathy: images + "
                    "dataset_visattn.json in the Karpathy split format (caption scenes); coco: OUT/<split>/images + "
                    "instances.json (multi-object scenes).")
    export.add_argument("--format", choices=sorted(FORMATS), required=True, help="output format")
    export.add_argument("--num-train", type=positive_int, default=1000, help="training scenes")
    export.add_argument("--num-val", type=positive_int, default=200, help="validation scenes")
    export.add_argument("--num-test", type=positive_int, default=200, help="test scenes")
    _common(export)
    export.set_defaults(handler=run_export)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="data seed (splits use seed*3 + 0/1/2)")
    parser.add_argument("--image-size", type=positive_int, default=64, help="square image side in pixels")


def _dataset(kind: str, num: int, seed: int, image_size: int):
    from visattn.data.scenes import SceneConfig, SceneDataset

    return SceneDataset(SceneConfig(kind=kind, image_size=image_size), num_samples=num, seed=seed)


def run_make(args: argparse.Namespace) -> int:
    from visattn.data.core import write_atomic
    from visattn.data.images import save_image

    dataset = _dataset(args.kind, args.num, args.seed, args.image_size)
    lines = []
    for i in range(len(dataset)):
        sample = dataset[i]
        relative = Path("images") / f"{sample['image_id']}.png"
        save_image(sample["image"], args.out / relative, source=f"scene {sample['image_id']}")
        record = {"image_id": sample["image_id"], "file": str(relative),
                  "boxes": sample["boxes"].tolist(), "labels": sample["labels"].tolist(),
                  "class_names": [dataset.class_names[k] for k in sample["labels"].tolist()]}
        if "captions" in sample:
            record.update(captions=sample["captions"], alignment=sample["alignment"],
                          objects=[{key: obj[key] for key in ("class_name", "colour", "size")}
                                   for obj in sample["objects"]])
        lines.append(json.dumps(record) + "\n")
    write_atomic(args.out / "annotations.jsonl", lambda tmp: tmp.write_text("".join(lines), encoding="utf-8"))
    print(f"wrote {len(dataset)} {args.kind} scenes to {args.out}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from visattn.data.coco import write_coco
    from visattn.data.imagefolder import export_imagefolder
    from visattn.data.karpathy import export_karpathy

    kind = FORMATS[args.format]
    splits = {name: _dataset(kind, num, args.seed * 3 + k, args.image_size)
              for k, (name, num) in enumerate([("train", args.num_train), ("val", args.num_val),
                                               ("test", args.num_test)])}
    target = args.out
    if args.format == "imagefolder":
        for name, dataset in splits.items():
            export_imagefolder(dataset, args.out, dataset.class_names, split=name)
    elif args.format == "coco":
        for name, dataset in splits.items():
            write_coco(dataset, args.out / name, list(dataset.class_names))
    else:
        target = export_karpathy(splits, args.out)
    print(f"exported {args.format} ({kind} scenes): {target}")
    return 0
