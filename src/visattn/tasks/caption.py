"""The captioning task: loss, evaluation by real decoding, training, captioning images, and the demo.

Library functions only (no argument parsing): ``visattn.cli`` builds the pieces from the command line and
calls these, and so can a script. Data (sources, vocabulary, items, batches) lives in
:mod:`visattn.data.caption_data`.

Validation decodes every validation image with beam search (not teacher-forced accuracy) and scores the
captions with BLEU-1..4, ROUGE-L and CIDEr-D (the monitored metric); on procedural scenes it also measures
attention correctness (:mod:`visattn.metrics.attention_correctness`) on the generated captions and, with
teacher forcing, on the references (keys with the ``_tf`` suffix).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from visattn import distributed as dist
from visattn.data.feature_cache import ensure_feature_cache
from visattn.data.images import image_to_tensor, load_image
from visattn.data.vocab import Vocabulary
from visattn.encoders import EncoderConfig
from visattn.engine import TaskSpec, TrainConfig, fit, seed_everything, select_device
from visattn.heads.captioner import CaptionerConfig  # importing it registers "captioner"
from visattn.metrics.attention_correctness import AttentionCorrectness
from visattn.metrics.captions import caption_scores
from visattn.metrics.localisation import box_masks
from visattn.models import build_model
from visattn.data.caption_data import CaptionData, CaptionDataset, collate, teacher_forced_objects

__all__ = ["caption_task", "evaluate_captioner", "train_captioner", "check_vocabulary", "eval_dataset",
           "hypothesis_words", "caption_tensors", "caption_images", "CaptionResult", "MODEL_NAME",
           "demo_model_config", "demo_data_plan", "run_caption_demo"]

log = logging.getLogger("visattn")

MODEL_NAME = "captioner"


def _core(model: nn.Module) -> nn.Module:
    """The captioner inside a torch.compile / DDP wrapper."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def _inputs(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The model's image input of a batch: ``images`` (B, 3, H, W), or cached ``features`` (B, L, C) + ``grid``."""
    if "features" in batch:
        return {"features": batch["features"].to(device, non_blocking=True), "grid": tuple(batch["grid"])}
    return {"images": batch["images"].to(device, non_blocking=True)}


def _loss(model: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, Tensor]:
    tokens = batch["tokens"].to(device, non_blocking=True)
    # lengths stay on the CPU: the captioner plans its shrinking batch from them without a device sync
    outputs = model(**_inputs(batch, device), tokens=tokens, lengths=batch["lengths"])
    # DDP averages gradients over ranks; dividing each rank's token sum by (all tokens / world size) makes
    # that average the gradient of the global per-token mean, as one process computes it (there: its count).
    num_targets = dist.all_reduce_mean(outputs["mask"].sum().float()).clamp_min(1e-6)
    return _core(model).loss(outputs, tokens, num_targets=num_targets)


def hypothesis_words(tokens: Sequence[int] | Tensor, vocab: Vocabulary) -> list[str]:
    """Words of a generated id sequence, one per decoding step: a leading ``<start>`` is dropped, decoding
    stops before ``<end>``, and ``<unk>`` stays a word (so word ``t`` keeps attention map ``t``)."""
    ids = [int(t) for t in (tokens.tolist() if isinstance(tokens, Tensor) else tokens)]
    if ids and ids[0] == vocab.start_id:
        ids = ids[1:]
    words = []
    for index in ids:
        if index == vocab.end_id:
            break
        words.append(vocab.id_to_token(index))
    return words


def _caption_text(words: Sequence[str]) -> str:
    return " ".join(w for w in words if not (w.startswith("<") and w.endswith(">")))


def _regions(batch: dict[str, Any], i: int) -> dict[str, Tensor]:
    """Image ``i``'s object regions to score attention in: "" the masks (N, H, W), "_box" their boxes."""
    masks = batch["masks"][i]
    regions = {"": masks}
    if batch.get("boxes") is not None:
        regions["_box"] = box_masks(torch.as_tensor(batch["boxes"][i]).reshape(-1, 4), tuple(masks.shape[-2:]))
    return regions


@torch.no_grad()
def evaluate_captioner(model: nn.Module, loader: DataLoader, device: torch.device, *, beam_size: int = 3,
                       max_len: int | None = None, length_penalty: float = 0.0,
                       teacher_forced: bool = True) -> dict[str, float]:
    """Decode every image of ``loader`` with beam search and score the best caption of each.

    Args:
        model: a captioner (its ``config.vocab`` decodes the ids).
        loader: batches of :func:`~visattn.data.caption_data.collate` over a ``mode="images"`` dataset.
        device: where to run.
        beam_size: beams per image (1 = greedy).
        max_len: most tokens per caption, ``<end>`` included (None: the model's default).
        length_penalty: passed to ``generate``.
        teacher_forced: also measure attention correctness on the references (when masks exist).

    Returns:
        ``BLEU-1`` .. ``BLEU-4``, ``ROUGE-L``, ``CIDEr-D``; when the data has masks and alignments also
        ``attention_correctness``, ``uniform_correctness``, ``aligned_words`` (generated words, mass inside
        the object's mask), the same inside the object's box (``attention_correctness_box``,
        ``uniform_correctness_box``), and all of them with the suffix ``_tf`` (teacher forcing on each
        image's first reference). Masks of thin strokes hold little of any map up-sampled from a coarse
        grid (on 8×8 grids of 64-pixel scenes even the best single cell puts only ~0.41 of its mass inside
        a digit's mask, ~0.95 inside its box), so the box figures are the ones to compare across models.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    model.eval()
    vocab = Vocabulary.from_list(_core(model).config.vocab)
    decoded: list[tuple[Any, str, list[str]]] = []  # per image: (id, best caption, references)
    meters: dict[str, AttentionCorrectness] = {}  # "<region>" and "<region>_tf" -> meter
    for batch in loader:
        inputs = _inputs(batch, device)
        hypotheses = model.generate(**inputs, beam_size=beam_size, max_len=max_len, length_penalty=length_penalty)
        scored = batch.get("masks") is not None and batch.get("alignment") is not None
        for i, image_id in enumerate(batch["image_ids"]):
            best = hypotheses[i][0]
            words = hypothesis_words(best.tokens, vocab)
            decoded.append((image_id, _caption_text(words), list(batch["captions"][i])))
            if scored and words:
                for region, masks in _regions(batch, i).items():
                    meters.setdefault(region, AttentionCorrectness()).update_generated(
                        best.attention[: len(words)].cpu(), words, batch["captions"][i], batch["alignment"][i], masks)
        if teacher_forced and scored:
            tokens = batch["tokens"]
            outputs = model(**inputs, tokens=tokens.to(device), lengths=batch["lengths"])
            attention = outputs["attention"].float().cpu()  # (B, T-1, H', W'): step t emits word t
            for i, index in enumerate(batch["caption_index"]):
                objects = teacher_forced_objects(batch["captions"][i][index], batch["alignment"][i][index],
                                                 tokens[i, : int(batch["lengths"][i])])
                if objects is not None:
                    for region, masks in _regions(batch, i).items():
                        meters.setdefault(f"{region}_tf", AttentionCorrectness()).update_aligned(
                            attention[i], objects, masks)
    # under torchrun with a sharded loader: every rank's captions, in dataset order, and the summed meters
    decoded = dist.gather_shards(decoded, loader)
    meters = dist.merge_shards(meters, loader, _merge_meters)
    candidates: dict[Any, str] = {}
    references: dict[Any, list[str]] = {}
    for position, (image_id, caption, refs) in enumerate(decoded):
        key = image_id if image_id is not None else f"#{position}"
        if key in candidates:
            raise ValueError(f"evaluation data holds image id {key!r} twice; ids must be unique")
        candidates[key], references[key] = caption, refs
    if not candidates:
        raise ValueError("evaluate_captioner: the loader yielded no images")
    metrics = caption_scores(candidates, references)
    for suffix, meter in sorted(meters.items()):
        tail = "_tf" if suffix.endswith("_tf") else ""
        region = suffix[: -3] if tail else suffix
        for name, value in meter.compute().items():
            if name == "aligned_words" and region:
                continue  # the same words as for the masks
            metrics[f"{name}{region}{tail}"] = value
    return metrics


def _merge_meters(a: dict[str, AttentionCorrectness],
                  b: dict[str, AttentionCorrectness]) -> dict[str, AttentionCorrectness]:
    for name, meter in b.items():
        a[name] = a[name].merge(meter) if name in a else meter
    return a


def _param_groups(encoder_lr: float | None):
    def groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
        encoder = [p for p in _core(model).encoder.parameters() if p.requires_grad]
        in_encoder = {id(p) for p in encoder}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in in_encoder]
        out: list[dict[str, Any]] = [{"params": rest}]
        if encoder:
            out.append({"params": encoder, "lr": cfg.lr if encoder_lr is None else encoder_lr})
        return out

    return groups


def caption_task(*, beam_size: int = 3, max_len: int | None = None, length_penalty: float = 0.0,
                 encoder_lr: float | None = None) -> TaskSpec:
    """The engine's view of captioning: the model's loss; the best checkpoint by validation CIDEr-D from
    beam-search decoding; the encoder in its own optimizer group at ``encoder_lr`` (None: the main lr)."""
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if max_len is not None and max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")

    def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        return evaluate_captioner(model, loader, device, beam_size=beam_size, max_len=max_len,
                                  length_penalty=length_penalty)

    return TaskSpec(name="caption", collate=collate, loss=_loss, evaluate=evaluate, monitor="CIDEr-D", mode="max",
                    param_groups=_param_groups(encoder_lr), sharded_eval=True)


def check_vocabulary(model_vocab: Sequence[str], data_vocab: Vocabulary, what: str) -> None:
    """ValueError (naming ``what``) unless a checkpoint's vocabulary equals the data's."""
    try:
        data_vocab.check_compatible(list(model_vocab), names=("the data's training split", what))
    except ValueError as err:
        raise ValueError(f"{what}: {err}") from err


def _frozen(model_config: Any) -> Any:
    return replace(model_config, encoder=replace(model_config.encoder, trainable_from="none"))


def train_captioner(model_config: CaptionerConfig, data: CaptionData, train_config: TrainConfig, run_dir: str | Path, *,
                    resume: str | Path | None = None, beam_size: int = 3, max_len: int | None = None,
                    encoder_lr: float | None = None, feature_cache: str | Path | None = None,
                    cache_dtype: str = "float32", mode: str = "pairs") -> dict[str, Any]:
    """Build a captioner for ``data``'s vocabulary and train it; returns :func:`visattn.engine.fit`'s result.

    Args:
        model_config: a ``CaptionerConfig``; its ``vocab`` is replaced by ``data.vocab``.
        data: sources and the training vocabulary.
        train_config: the engine's settings.
        run_dir: output folder.
        resume: a ``last.safetensors``; its vocabulary must equal ``data.vocab`` (clear error otherwise).
        beam_size, max_len: decoding for validation.
        encoder_lr: learning rate of the encoder's trainable stages (None: ``train_config.lr``; 0 freezes it).
        feature_cache: a folder; encode train/val once with the frozen encoder and train the decoder from
            the cache (rebuilt when the encoder, its weights, the transform or the data change).
        cache_dtype: "float32" or "float16" for the cache.
        mode: "pairs" or "random" (see :class:`~visattn.data.caption_data.CaptionDataset`).
    """
    if mode not in ("pairs", "random"):
        raise ValueError(f"training mode must be 'pairs' or 'random', got {mode!r}")
    if resume is not None:
        from visattn.checkpoint import read_checkpoint

        check_vocabulary(read_checkpoint(resume, task="caption").config.get("vocab", []), data.vocab, str(resume))
    model_config = replace(model_config, vocab=data.vocab.to_list(), image_size=data.image_size)
    if feature_cache is not None and encoder_lr:
        raise ValueError("a feature cache needs a frozen encoder; drop encoder_lr or the feature cache")
    if feature_cache is not None or encoder_lr == 0:
        model_config = _frozen(model_config)
    seed_everything(train_config.seed)
    model = build_model(MODEL_NAME, model_config)
    train_items, val_items = data.train, data.val
    if feature_cache is not None:
        device = select_device(train_config.device)
        dist.init_from_env(device)  # so that rank 0 alone builds the cache
        encoder = model.encoder.to(device)
        train_items, val_items = (
            ensure_feature_cache(encoder, source, Path(feature_cache) / split, transform=source.transform,
                                 data=source.identity, dtype=cache_dtype, device=device, meta=source.meta)
            for split, source in (("train", data.train), ("val", data.val)))
    train_set = CaptionDataset(train_items, data.train.tokens, data.vocab, mode=mode)
    val_set = CaptionDataset(val_items, data.val.tokens, data.vocab, mode="images")
    log.info("training %s captioner (attention=%s) on %s: %d items, vocabulary %d", model_config.attention_mode,
             model_config.attention, data.source, len(train_set), len(data.vocab))
    task = caption_task(beam_size=beam_size, max_len=max_len, encoder_lr=encoder_lr)
    return fit(model, MODEL_NAME, task, train_set, val_set, train_config, run_dir, resume=resume)


def eval_dataset(model: nn.Module, source: Dataset) -> CaptionDataset:
    """An evaluation set over ``source`` encoded with the model's own vocabulary (one item per image)."""
    return CaptionDataset(source, source.tokens, Vocabulary.from_list(model.config.vocab), mode="images")


@dataclass
class CaptionResult:
    """One image's captions.

    Attributes:
        path: the image file.
        captions: the n-best ``(caption, score)`` pairs, best first.
        words: the best caption's words, one per decoding step (``<unk>`` kept).
        attention: (T, H', W') attention of the best caption, one map per word.
        figures: the PNG and GIF written (empty without ``out_dir``).
    """

    path: str
    captions: list[tuple[str, float]]
    words: list[str]
    attention: Tensor
    figures: list[Path]


@torch.no_grad()
def caption_tensors(model: nn.Module, images: Tensor, names: Sequence[str], *, beam_size: int = 3, n_best: int = 1,
                    max_len: int | None = None, length_penalty: float = 0.0, out_dir: str | Path | None = None,
                    batch_size: int = 16) -> list[CaptionResult]:
    """Caption images already in memory, (N, 3, H, W) in [0, 1], named ``names`` (file stems for figures).

    Args:
        model: a captioner.
        images, names: the images and one name each.
        beam_size, n_best, max_len, length_penalty: decoding (1 <= n_best <= beam_size).
        out_dir: where ``<name>_caption.png`` and ``<name>_caption.gif`` go (image, then one panel per word).
        batch_size: images decoded together.

    Raises:
        ValueError: beam_size, n_best or max_len < 1, or n_best > beam_size.
    """
    if beam_size < 1 or n_best < 1 or (max_len is not None and max_len < 1):
        raise ValueError(f"beam_size, n_best and max_len must be >= 1, got {beam_size}, {n_best}, {max_len}")
    if n_best > beam_size:
        raise ValueError(f"n_best ({n_best}) cannot exceed beam_size ({beam_size})")
    device = next(model.parameters()).device
    vocab = Vocabulary.from_list(model.config.vocab)
    results: list[CaptionResult] = []
    stems: dict[str, int] = {}
    for start in range(0, len(images), batch_size):
        hypotheses = model.generate(images[start:start + batch_size].to(device), beam_size=beam_size,
                                    n_best=n_best, max_len=max_len, length_penalty=length_penalty)
        for offset, hyps in enumerate(hypotheses):
            name = str(names[start + offset])
            words = hypothesis_words(hyps[0].tokens, vocab)
            attention = hyps[0].attention[: len(words)].float().cpu()  # (T, H', W'): one map per word
            figures: list[Path] = []
            if out_dir is not None and words:
                from visattn.viz import caption_figure  # matplotlib only when drawing

                base = Path(name).stem
                stems[base] = stems.get(base, 0) + 1  # a.png and other/a.png must not overwrite each other
                stem = Path(out_dir) / (f"{base}_caption" if stems[base] == 1 else f"{base}_{stems[base]}_caption")
                figures = caption_figure(images[start + offset], words, attention, stem.with_suffix(".png"),
                                         stem.with_suffix(".gif"))
            captions = [(_caption_text(hypothesis_words(h.tokens, vocab)), float(h.score)) for h in hyps]
            results.append(CaptionResult(name, captions, words, attention, figures))
    return results


def caption_images(model: nn.Module, paths: Sequence[str | Path], *, image_size: int | None = None,
                   **options: Any) -> list[CaptionResult]:
    """Caption image files: each is loaded completely and resized to ``image_size`` (default: the model
    config's ``image_size``); ``options`` as :func:`caption_tensors`.

    Raises:
        ImageLoadError: a missing or corrupt image (the message names the file), before any decoding.
        ValueError: as :func:`caption_tensors`, or no image size known.
    """
    size = image_size or getattr(model.config, "image_size", None)
    if not size:
        raise ValueError("caption_images: pass image_size (the side the captioner was trained at)")
    images = torch.stack([image_to_tensor(load_image(path), size=size) for path in paths])  # (N, 3, S, S)
    return caption_tensors(model, images, [str(p) for p in paths], **options)


# ----------------------------------------------------------------------------------------------------- demo
# Nominal training speed of the demo model on 2 CPU cores: the prototype ran ~270 images/s (docs/design.md);
# we measured 160 on a busy machine. A little below the idle speed keeps the demo under its budget.
DEMO_IMAGES_PER_SECOND = 200.0


def demo_model_config(*, attention: str = "additive", attention_mode: str = "soft") -> CaptionerConfig:
    """The captioner of the demo and the quality benchmark: 8×8×128 grid, LSTM 256, attention 128 (the
    prototype of docs/design.md); the doubly stochastic regulariser is off (it spreads attention)."""
    return CaptionerConfig(encoder=EncoderConfig(name="small_cnn", width=128, depth=4, num_downsample=3),
                           attention=attention, attention_mode=attention_mode, attention_dim=128,
                           decoder_dim=256, embed_dim=128, dropout=0.1, alpha_c=0.0, max_len=24)


def demo_data_plan(seconds_budget: float, *, epochs: int = 4,
                   images_per_second: float = DEMO_IMAGES_PER_SECOND) -> dict[str, int]:
    """How many scenes the demo draws for a budget: about 75% of it trains at the nominal speed. A pure
    function of the budget, so a run is repeatable from its seed and budget (not from the clock)."""
    if seconds_budget <= 0:
        raise ValueError(f"seconds_budget must be positive, got {seconds_budget}")
    num_train = int(0.75 * seconds_budget * images_per_second / epochs) // 100 * 100
    return {"num_train": max(num_train, 100), "num_val": int(min(max(seconds_budget / 2, 20), 200)),
            "num_test": int(min(max(1.5 * seconds_budget, 20), 500)), "epochs": epochs}


def run_caption_demo(out_dir: str | Path, *, seconds_budget: float = 360.0, seed: int = 0, num_figures: int = 4,
                     beam_size: int = 3, progress: bool = True, printer: Any = print) -> dict[str, Any]:
    """Train a soft-attention captioner on procedural scenes, evaluate it on held-out scenes, draw figures.

    Everything is a function of ``(seed, seconds_budget)``: the data size comes from
    :func:`demo_data_plan`, not from the clock. At the nominal speed the whole run takes about the budget
    (default 6 minutes on 2 CPU cores).

    Args:
        out_dir: gets ``run/`` (checkpoints, metrics.jsonl, curves.png), ``figures/`` (per test image the
            per-word attention figure as PNG and GIF) and ``metrics.json``.
        seconds_budget: sets the amount of training data.
        seed: data, weights and order.
        num_figures: test images drawn.
        beam_size: decoding for validation and test.
        progress: progress bars.
        printer: where the summary lines go (``print``; a no-op to stay quiet).

    Returns:
        ``{"metrics": test metrics, "train_seconds", "total_seconds", "figures": [paths], "checkpoint",
        "data"}``.
    """
    import json
    import time

    from visattn.models import load
    from visattn.data.caption_data import scene_data

    started = time.perf_counter()
    out_dir = Path(out_dir)
    plan = demo_data_plan(seconds_budget)
    data = scene_data(num_train=plan["num_train"], num_val=plan["num_val"], num_test=plan["num_test"],
                      image_size=64, num_objects=(1, 3), seed=seed)
    train_config = TrainConfig(epochs=plan["epochs"], batch_size=64, lr=2e-3, warmup_steps=100, seed=seed,
                               device="cpu", progress=progress)
    run = train_captioner(demo_model_config(), data, train_config, out_dir / "run", beam_size=beam_size,
                          mode="random")
    train_seconds = sum(r["train_seconds"] for r in run["history"])
    model = load(out_dir / "run" / "best.safetensors", task="caption")
    test = eval_dataset(model, data.test)
    loader = DataLoader(test, batch_size=64, collate_fn=collate)
    metrics = evaluate_captioner(model, loader, torch.device("cpu"), beam_size=beam_size)
    shown = collate([test[i] for i in range(min(num_figures, len(test)))])
    results = caption_tensors(model, shown["images"], [f"test_{i:03d}" for i in shown["image_ids"]],
                              beam_size=beam_size, out_dir=out_dir / "figures")
    summary = {"metrics": metrics, "train_seconds": train_seconds,
               "total_seconds": time.perf_counter() - started, "figures": [str(p) for r in results for p in r.figures],
               "checkpoint": str(out_dir / "run" / "best.safetensors"), "data": data.source}
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    printer(f"captioning demo: {plan['num_train']} training scenes x {plan['epochs']} epochs, "
            f"{train_seconds:.0f} s training, {len(test)} held-out test scenes, beam {beam_size}")
    for key in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D"):
        printer(f"  {key:<8} {metrics[key]:.3f}")
    if "attention_correctness" in metrics:
        printer(f"  attention correctness {metrics['attention_correctness']:.3f} on generated words "
                f"(uniform {metrics['uniform_correctness']:.3f}); "
                f"{metrics.get('attention_correctness_tf', float('nan')):.3f} with teacher forcing")
        if "attention_correctness_box" in metrics:
            printer(f"  attention correctness in boxes {metrics['attention_correctness_box']:.3f} "
                    f"(uniform {metrics['uniform_correctness_box']:.3f})")
    for result in results:
        printer(f"  {result.path}: {result.captions[0][0]!r} -> {result.figures[0] if result.figures else '-'}")
    return summary
