"""``visattn train caption``, ``eval`` of captioners and ``visattn caption IMAGE...``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from visattn.attention import list_attentions
from visattn.cli.common import (
    CliError, UsageError, add_device_option, add_strict_option, add_train_options, load_json_config, load_predictor,
    positive_int, report_metrics, report_training, train_config_from_args,
)
from visattn.heads.attention_supervision import REGIONS
from visattn.heads.captioner_config import PRESETS
from visattn.tasks.caption import MONITORS

__all__ = ["register"]


def register(commands: dict) -> None:
    train = commands["train"].add_parser(
        "caption", help="train a Show-Attend-Tell captioner",
        description="Train a captioner (soft or hard attention, or the no-attention baseline) on procedural "
                    "caption scenes, a Karpathy split file or COCO caption files. Validation decodes with beam "
                    "search and keeps the best checkpoint by --monitor: the exact object F1 on procedural scenes, "
                    "CIDEr-D on Karpathy and COCO captions.")
    data = train.add_argument_group("data (default: procedural caption scenes)")
    data.add_argument("--karpathy-json", type=Path, default=None, help="dataset_coco.json / dataset_flickr*.json")
    data.add_argument("--image-root", type=Path, default=None, help="folder the Karpathy file paths are under")
    data.add_argument("--coco-train", type=Path, nargs=2, metavar=("JSON", "IMAGES"), default=None,
                      help="COCO caption file and image folder for training")
    data.add_argument("--coco-val", type=Path, nargs=2, metavar=("JSON", "IMAGES"), default=None,
                      help="COCO caption file and image folder for validation")
    add_strict_option(data)
    data.add_argument("--max-images", type=positive_int, default=None, help="use the first N images per split")
    data.add_argument("--min-count", type=positive_int, default=None,
                      help="words seen fewer times in train are <unk> (default: 5 for files, 1 for scenes)")
    data.add_argument("--num-train", type=positive_int, default=10000, help="procedural training scenes")
    data.add_argument("--num-val", type=positive_int, default=500, help="procedural validation scenes")
    data.add_argument("--max-objects", type=positive_int, default=3, help="procedural: 1..N objects per scene")
    data.add_argument("--image-size", type=positive_int, default=None,
                      help="square image side (default: 64 for scenes, 224 for files)")
    data.add_argument("--mode", choices=["pairs", "random"], default="pairs",
                      help="pairs: one item per (image, caption); random: one item per image, random caption")
    model = train.add_argument_group("model")
    model.add_argument("--preset", choices=sorted(PRESETS), default=None,
                       help="start from a named configuration: 'default' (what learns most per second here) or "
                            "'paper' (Xu et al. 2015 as published); the options below override it")
    model.add_argument("--config", type=Path, default=None, help="JSON of CaptionerConfig fields; options override")
    model.add_argument("--attention", choices=list_attentions() + ["none"], default=None, help="scoring; none = Show and Tell")
    model.add_argument("--attention-mode", choices=["soft", "hard"], default=None)
    model.add_argument("--attention-dim", type=positive_int, default=None)
    model.add_argument("--decoder-dim", type=positive_int, default=None)
    model.add_argument("--embed-dim", type=positive_int, default=None)
    model.add_argument("--dropout", type=float, default=None)
    model.add_argument("--gate", choices=["scalar", "channel", "none"], default=None)
    model.add_argument("--alpha-c", type=float, default=None, help="doubly stochastic regulariser weight")
    model.add_argument("--attention-supervision", type=float, default=None, metavar="LAMBDA",
                       help="weight of the loss on the attention mass inside each aligned word's object (procedural "
                            "scenes only: they carry word-to-object alignments; default: 0, off)")
    model.add_argument("--attention-supervision-region", choices=REGIONS, default=None,
                       help="where the supervised attention mass must fall: the object's box (default), its "
                            "pixels, or the mean of the two masses")
    model.add_argument("--max-len", type=positive_int, default=None, help="most tokens generated, <end> included")
    model.add_argument("--encoder", default=None, help='"small_cnn", "tv:<name>" or "timm:<name>"')
    model.add_argument("--encoder-width", type=positive_int, default=None, help="small CNN channels")
    model.add_argument("--encoder-stem", type=positive_int, default=None, metavar="S",
                       help="small CNN: an S×S patchify convolution before the blocks (the demo uses 2 with "
                            "--encoder-downsample 2: the same 8×8 grid on 64-pixel scenes, 1.6× faster)")
    model.add_argument("--encoder-downsample", type=int, default=None, metavar="N",
                       help="small CNN: how many blocks halve the resolution (default 3)")
    model.add_argument("--encoder-top-down", action="store_true", default=None,
                       help="small CNN: FPN's top-down step, a grid twice as fine (16×16 on the demo's scenes) "
                            "at about half the training speed; with --attention-supervision its maps fall inside "
                            "the objects (mask correctness 0.52 against 0.32 at 8×8, docs/design.md)")
    model.add_argument("--encoder-weights", default=None, help="local state_dict file or 'torch-cache'")
    model.add_argument("--grid", type=positive_int, default=None, help="pool the grid to NxN (paper: 14)")
    model.add_argument("--encoder-lr", type=float, default=None,
                       help="learning rate of the encoder (default: --lr; 0 freezes it). With "
                            "--attention-supervision, 5 × --lr taught the small CNN the classes much sooner "
                            "(docs/design.md)")
    model.add_argument("--feature-cache", type=Path, default=None,
                       help="folder: encode images once with the frozen encoder and train from the cache")
    model.add_argument("--cache-dtype", choices=["float32", "float16"], default="float32")
    model.add_argument("--beam-size", type=positive_int, default=3, help="beam size of validation decoding")
    model.add_argument("--monitor", choices=MONITORS, default=None,
                       help="validation metric that picks best.safetensors (default: object_f1 on procedural scenes, "
                            "whose references phrase one content five ways; CIDEr-D on Karpathy and COCO)")
    scst = train.add_argument_group("self-critical training (after cross entropy, from its best checkpoint)")
    scst.add_argument("--scst-epochs", type=int, default=0, help="epochs of SCST into RUN_DIR/scst (0: off)")
    scst.add_argument("--scst-baseline", choices=["mean", "greedy"], default="mean",
                      help="mean of the other samples (Luo 2020) or the greedy caption's reward (Rennie et al.)")
    scst.add_argument("--scst-samples", type=positive_int, default=5, help="captions sampled per image")
    scst.add_argument("--scst-lr", type=float, default=None, help="learning rate of SCST (default: --lr / 10)")
    scst.add_argument("--scst-bleu", type=float, default=0.0, help="weight of BLEU-4 beside CIDEr-D in the reward")
    scst.add_argument("--scst-content", type=float, default=0.0,
                      help="weight of the content score (object F1 against the scene; procedural scenes only) "
                           "beside CIDEr-D in the reward")
    add_train_options(train)
    train.set_defaults(handler=run_train)

    commands["eval_handlers"]["caption"] = run_eval
    evaluate = commands["eval"]
    evaluate.add_argument("--beam-size", type=positive_int, default=3, help="caption: beams per image")
    evaluate.add_argument("--karpathy-json", type=Path, default=None, help="caption: Karpathy file to evaluate")
    evaluate.add_argument("--image-root", type=Path, default=None, help="caption: images of --karpathy-json")
    evaluate.add_argument("--split", choices=["val", "test"], default="test", help="caption: Karpathy split")
    evaluate.add_argument("--image-size", type=positive_int, default=None,
                          help="caption: resize images to this side (default: the checkpoint's training size)")

    caption = commands["root"].add_parser(
        "caption", help="caption images and draw per-word attention",
        description="Print the n-best captions with scores for each image and write the Show-Attend-Tell "
                    "figure (image, then one panel per word) as PNG and animated GIF.")
    caption.add_argument("images", nargs="+", type=Path, help="image files")
    caption.add_argument("--checkpoint", required=True, help="a captioner checkpoint")
    caption.add_argument("--beam-size", type=positive_int, default=3)
    caption.add_argument("--n-best", type=positive_int, default=1)
    caption.add_argument("--max-len", type=positive_int, default=None, help="most tokens, <end> included")
    caption.add_argument("--image-size", type=positive_int, default=None,
                         help="resize images to this side (default: the checkpoint's training size)")
    caption.add_argument("--out", type=Path, default=Path("captions"), help="folder for the figures")
    caption.add_argument("--annotations", type=Path, default=None, metavar="JSONL",
                         help="an annotations.jsonl of `visattn data make --kind caption`: for each image it lists, "
                              "also print what the best caption says against the scene (object, attribute and "
                              "count F1)")
    add_device_option(caption)
    caption.set_defaults(handler=run_caption)


def _data(args: argparse.Namespace, *, train: bool, model_size: int | None = None):
    from visattn.data.caption_data import coco_data, karpathy_data, scene_data

    files = args.karpathy_json is not None or getattr(args, "coco_train", None) is not None
    size = args.image_size or model_size or (224 if files else 64)
    if args.karpathy_json is not None:
        if args.image_root is None:
            raise UsageError("--karpathy-json needs --image-root")
        return karpathy_data(args.karpathy_json, args.image_root, image_size=size,
                             min_count=getattr(args, "min_count", None) or 5,
                             strict=getattr(args, "strict", False),
                             max_images=getattr(args, "max_images", None))
    if getattr(args, "coco_train", None) is not None:
        if args.coco_val is None:
            raise UsageError("--coco-train needs --coco-val")
        return coco_data(*args.coco_train, *args.coco_val, image_size=size, min_count=args.min_count or 5,
                         strict=args.strict, max_images=args.max_images)
    if train:
        return scene_data(num_train=args.num_train, num_val=args.num_val, image_size=size,
                          num_objects=(1, args.max_objects), seed=args.seed, min_count=args.min_count or 1)
    return scene_data(num_train=0, num_val=args.num_samples, image_size=size, seed=args.data_seed)


def run_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from visattn.encoders import EncoderConfig
    from visattn.heads.captioner import CaptionerConfig
    from visattn.tasks.caption import train_captioner

    names = ("attention", "attention_mode", "attention_dim", "decoder_dim", "embed_dim", "dropout", "gate",
             "alpha_c", "attention_supervision", "attention_supervision_region", "max_len")
    overrides = {k: getattr(args, k) for k in names}
    if args.preset is not None:
        if args.config is not None:
            raise UsageError("--preset and --config both name a whole configuration; pass one")
        overrides = {**PRESETS[args.preset], **{k: v for k, v in overrides.items() if v is not None}}
    config = load_json_config(args.config, CaptionerConfig, overrides=overrides)
    encoder = {"name": args.encoder, "width": args.encoder_width, "stem": args.encoder_stem,
               "num_downsample": args.encoder_downsample, "top_down": args.encoder_top_down,
               "weights": args.encoder_weights, "grid": args.grid}
    if any(v is not None for v in encoder.values()):
        encoder = load_json_config(None, EncoderConfig, overrides={**vars(config.encoder), **encoder})
        config = replace(config, encoder=encoder)
    train_config = train_config_from_args(args)
    data = _data(args, train=True)
    result = train_captioner(config, data, train_config, args.run_dir, resume=args.resume, beam_size=args.beam_size,
                             max_len=args.max_len, encoder_lr=args.encoder_lr, feature_cache=args.feature_cache,
                             cache_dtype=args.cache_dtype, mode=args.mode,
                             scst={"epochs": args.scst_epochs, "baseline": args.scst_baseline,
                                   "samples": args.scst_samples, "lr": args.scst_lr, "bleu": args.scst_bleu,
                                   "content": args.scst_content},
                             monitor=args.monitor)
    return report_training(result)


def run_eval(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from visattn.tasks.caption import CaptionTask, eval_dataset

    predictor = load_predictor(args, "caption")
    data = _data(args, train=False, model_size=predictor.image_size)
    source = data.test if args.karpathy_json is not None and args.split == "test" else data.val
    if source is None:
        raise CliError(f"{args.karpathy_json}: no {args.split!r} images")
    task = CaptionTask(beam_size=args.beam_size)
    loader = DataLoader(eval_dataset(predictor.model, source), batch_size=args.batch_size, collate_fn=task.collate)
    return report_metrics(task.evaluate(predictor.model, loader, predictor.device), args.json_out)


def run_caption(args: argparse.Namespace) -> int:
    from visattn.metrics.caption_content import caption_content
    from visattn.viz import caption_figure

    if args.n_best > args.beam_size:
        raise UsageError(f"--n-best ({args.n_best}) cannot exceed --beam-size ({args.beam_size})")
    scenes = _scene_objects(args.annotations) if args.annotations is not None else None
    predictor = load_predictor(args, "caption")
    prepared = predictor.preprocess(args.images)
    results = predictor.predict(prepared, beam_size=args.beam_size, n_best=args.n_best, max_len=args.max_len)
    for i, (image, result) in enumerate(zip(prepared.images, results)):
        for rank, hypothesis in enumerate(result.captions, start=1):
            print(f"{result.source}\t{rank}\t{hypothesis.score:.3f}\t{hypothesis.text}")
        figures = []
        if result.words:
            stem = args.out / f"{i:03d}_{Path(result.source).stem}_caption"
            figures = caption_figure(image, result.words, result.attention, stem.with_suffix(".png"),
                                     stem.with_suffix(".gif"))
        print(f"{result.source}\tfigures\t{' '.join(str(p) for p in figures) or '-'}")
        if scenes is not None:
            objects = scenes.get(Path(result.source).resolve())
            if objects is None:
                print(f"{result.source}\tcontent\t- (not in {args.annotations})")
            else:
                scores = caption_content(result.caption, objects)
                print(f"{result.source}\tcontent\t" + json.dumps(
                    {key: round(scores[key], 4) for key in CONTENT_KEYS}))
    return 0


CONTENT_KEYS = ("object_precision", "object_recall", "object_f1", "attribute_f1", "count_f1", "content_exact")


def _scene_objects(path: Path) -> dict[Path, list[dict]]:
    """Each annotated image's objects (class_name, colour, size), keyed by the image's resolved path."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as err:
        raise CliError(f"--annotations: file not found: {path}") from err
    scenes: dict[Path, list[dict]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise CliError(f"{path}:{number}: not valid JSON: {err.msg}") from err
        if not isinstance(record, dict) or not isinstance(record.get("file"), str):
            raise CliError(f"{path}:{number}: a record needs a 'file' string")
        objects = record.get("objects")
        if not isinstance(objects, list) or not all(
                isinstance(o, dict) and {"class_name", "colour", "size"} <= set(o) for o in objects):
            raise CliError(f"{path}:{number}: field 'objects' must list each object's class_name, colour and size "
                           f"(written by `visattn data make --kind caption`)")
        scenes[(path.parent / record["file"]).resolve()] = objects
    return scenes
