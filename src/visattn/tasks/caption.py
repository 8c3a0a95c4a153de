"""The captioning task: loss, evaluation by real decoding, training, captioning images, and the demo.

Library functions only (no argument parsing): ``visattn.cli`` builds the pieces from the command line and
calls these, and so can a script. Data (sources, vocabulary, items, batches) lives in
:mod:`visattn.data.caption_data`.

Validation decodes every validation image with beam search (not teacher-forced accuracy) and scores the
captions with BLEU-1..4, ROUGE-L and CIDEr-D; on procedural scenes it also measures what the captions say
(:mod:`visattn.metrics.caption_content`) and attention correctness
(:mod:`visattn.metrics.attention_correctness`) on the generated captions and, with teacher forcing, on the
references (keys with the ``_tf`` suffix). The best checkpoint is the one with the highest monitored metric:
by default the exact object F1 where the data knows its scenes' objects and CIDEr-D elsewhere
(:func:`default_monitor`; on procedural scenes CIDEr-D rewards which of the references' phrasings a caption
picks as much as what it says, docs/design.md).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from visattn import distributed as dist
from visattn.data.caption_data import CaptionData, CaptionDataset, collate, teacher_forced_objects
from visattn.data.feature_cache import ensure_feature_cache
from visattn.data.text import tokenize
from visattn.data.vocab import Vocabulary
from visattn.encoders import EncoderConfig
from visattn.engine import TrainConfig, fit, seed_everything, select_device
from visattn.heads.attention_supervision import attention_targets
from visattn.heads.captioner import CaptionerConfig  # importing it registers "captioner"
from visattn.heads.scst import CaptionReward, loss_scst
from visattn.metrics.attention_correctness import AttentionCorrectness
from visattn.metrics.caption_content import content_scores
from visattn.metrics.captions import caption_scores
from visattn.metrics.localisation import box_masks
from visattn.models import build_model
from visattn.results import CaptionHypothesis, CaptionResult
from visattn.tasks.base import Task, register_task, unwrap

__all__ = ["CaptionTask", "SelfCriticalTask", "evaluate_captioner", "train_captioner", "check_vocabulary", "eval_dataset",
           "hypothesis_words", "MODEL_NAME", "MONITORS", "CONTENT_MONITORS", "default_monitor"]

log = logging.getLogger("visattn")

MODEL_NAME = "captioner"


def _inputs(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The model's image input of a batch: ``images`` (B, 3, H, W), or cached ``features`` (B, L, C) + ``grid``."""
    if "features" in batch:
        return {"features": batch["features"].to(device, non_blocking=True), "grid": tuple(batch["grid"])}
    return {"images": batch["images"].to(device, non_blocking=True)}


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
                       teacher_forced: bool = True,
                       captions: dict[Any, str] | None = None) -> dict[str, float]:
    """Decode every image of ``loader`` with beam search and score the best caption of each.

    Args:
        model: a captioner (its ``config.vocab`` decodes the ids).
        loader: batches of :func:`~visattn.data.caption_data.collate` over a ``mode="images"`` dataset.
        device: where to run.
        beam_size: beams per image (1 = greedy).
        max_len: most tokens per caption, ``<end>`` included (None: the model's default).
        length_penalty: passed to ``generate``.
        teacher_forced: also measure attention correctness on the references (when masks exist).
        captions: when given, filled with each image's best caption (image id -> text), as scored.

    Returns:
        ``BLEU-1`` .. ``BLEU-4``, ``ROUGE-L``, ``CIDEr-D``; when the data has masks and alignments also
        ``attention_correctness``, ``uniform_correctness``, ``aligned_words`` (generated words, mass inside
        the object's mask), the same inside the object's box (``attention_correctness_box``,
        ``uniform_correctness_box``), and all of them with the suffix ``_tf`` (teacher forcing on each
        image's first reference). Masks of thin strokes hold little of any map up-sampled from a coarse
        grid (on 8×8 grids of 64-pixel scenes even the best single cell puts only ~0.41 of its mass inside
        a digit's mask, ~0.95 inside its box), so the box figures are the ones to compare across models.
        When the batches carry the scenes' ``objects`` (procedural scenes), also what the captions say:
        ``object_f1``, ``object_precision``, ``object_recall``, ``attribute_*``, ``count_*`` and
        ``content_exact`` (:mod:`visattn.metrics.caption_content`).
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    model.eval()
    vocab = Vocabulary.from_list(unwrap(model).config.vocab)
    decoded: list[tuple[Any, str, list[str], Any]] = []  # per image: (id, best caption, references, objects)
    meters: dict[str, AttentionCorrectness] = {}  # "<region>" and "<region>_tf" -> meter
    for batch in loader:
        inputs = _inputs(batch, device)
        hypotheses = model.generate(**inputs, beam_size=beam_size, max_len=max_len, length_penalty=length_penalty)
        scored = batch.get("masks") is not None and batch.get("alignment") is not None
        for i, image_id in enumerate(batch["image_ids"]):
            best = hypotheses[i][0]
            words = hypothesis_words(best.tokens, vocab)
            objects = batch["objects"][i] if batch.get("objects") is not None else None
            decoded.append((image_id, _caption_text(words), list(batch["captions"][i]), objects))
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
    scene_objects: dict[Any, Any] = {}
    for position, (image_id, caption, refs, objects) in enumerate(decoded):
        key = image_id if image_id is not None else f"#{position}"
        if key in candidates:
            raise ValueError(f"evaluation data holds image id {key!r} twice; ids must be unique")
        candidates[key], references[key] = caption, refs
        if objects is not None:
            scene_objects[key] = objects
    if not candidates:
        raise ValueError("evaluate_captioner: the loader yielded no images")
    if captions is not None:
        captions.update(candidates)
    metrics = caption_scores(candidates, references)
    if scene_objects and len(scene_objects) == len(candidates):  # procedural scenes: what the captions say
        metrics.update(content_scores(candidates, scene_objects))
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


CONTENT_MONITORS = ("object_f1", "attribute_f1", "count_f1")  # the exact content scores: procedural scenes only
MONITORS = ("CIDEr-D", "BLEU-4", "ROUGE-L", *CONTENT_MONITORS)


def _check_monitor(monitor: str) -> str:
    if monitor not in MONITORS:
        raise ValueError(f"unknown caption monitor {monitor!r}; valid: {', '.join(MONITORS)}")
    return monitor


def _knows_objects(source: Any) -> bool:
    """Whether a caption source's samples carry their scene's objects (procedural scenes do, Karpathy/COCO not)."""
    return len(source) > 0 and source.meta(0).get("objects") is not None


def default_monitor(data: CaptionData) -> str:
    """The metric that picks the best checkpoint when none is asked for: the exact object F1 where the
    validation scenes know their objects, CIDEr-D elsewhere.

    On procedural scenes every image has references in five phrasings, and which one beam search picks moves
    validation CIDEr-D more than a wrong object does (measured: 4.15 at an epoch whose object F1 was 0.92,
    3.73 one epoch later at 0.96), so selecting by CIDEr-D can keep the epoch that names more objects wrong.
    """
    return "object_f1" if _knows_objects(data.val) else "CIDEr-D"


@register_task
class CaptionTask(Task):
    """Captioning: the captioner's own loss terms (``loss_ce``, ``loss_attention_reg``, hard attention's
    ``loss_reinforce`` / ``loss_entropy``; their weights are the model config's, so :attr:`weight_dict` is
    1 for each), the best checkpoint by a validation metric of beam-search decoding, the encoder in its own
    optimizer group at ``encoder_lr`` (None: the main lr).

    Args:
        beam_size, max_len, length_penalty: decoding for validation.
        encoder_lr: learning rate of the encoder's trainable stages.
        hard: the model uses hard attention (DDP must then find the unused context path's parameters).
        monitor: the validation metric that picks the best checkpoint, one of :data:`MONITORS`; the content
            ones (:data:`CONTENT_MONITORS`) need data that knows its scenes' objects (procedural scenes); None: CIDEr-D.
    """

    name = "caption"
    model_name = "captioner"
    monitor = "CIDEr-D"
    predict_options = {"beam_size": 3, "n_best": 1, "max_len": None, "length_penalty": 0.0}

    def __init__(self, *, beam_size: int = 3, max_len: int | None = None, length_penalty: float = 0.0,
                 encoder_lr: float | None = None, hard: bool = False, monitor: str | None = None) -> None:
        self.monitor = _check_monitor(monitor or type(self).monitor)  # None: the class's CIDEr-D
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        if max_len is not None and max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.beam_size, self.max_len, self.length_penalty = beam_size, max_len, length_penalty
        self.encoder_lr = encoder_lr
        self.find_unused_parameters = hard
        self.weight_dict = {"loss_ce": 1.0, "loss_attention_reg": 1.0, "loss_reinforce": 1.0, "loss_entropy": 1.0}

    def collate(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return collate(samples)

    def criterion(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, Tensor]:
        tokens = batch["tokens"].to(device, non_blocking=True)
        # lengths stay on the CPU: the captioner plans its shrinking batch from them without a device sync
        outputs = model(**_inputs(batch, device), tokens=tokens, lengths=batch["lengths"])
        # DDP averages gradients over ranks; dividing each rank's token sum by (all tokens / world size) makes
        # that average the gradient of the global per-token mean, as one process computes it (there: its count).
        num_targets = dist.all_reduce_mean(outputs["mask"].sum().float()).clamp_min(1e-6)
        core = unwrap(model)
        targets = None
        if core.config.attention_supervision > 0:  # word-to-object alignments (a clear error when the data has none)
            targets = attention_targets(batch, tuple(outputs["attention"].shape[-2:]),
                                        region=core.config.attention_supervision_region).to(device)
        terms = core.loss(outputs, tokens, num_targets=num_targets, attention_targets=targets)
        terms.pop("loss")  # the engine weighs the terms itself, with the captioner's own weights:
        self.weight_dict = dict(core.weight_dict)  # alpha_c, attention_supervision, hard_reinforce, hard_entropy
        return terms

    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        return evaluate_captioner(model, loader, device, beam_size=self.beam_size, max_len=self.max_len,
                                  length_penalty=self.length_penalty)

    def param_groups(self, model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
        encoder = [p for p in unwrap(model).encoder.parameters() if p.requires_grad]
        in_encoder = {id(p) for p in encoder}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in in_encoder]
        groups: list[dict[str, Any]] = [{"params": rest}]
        if encoder:
            groups.append({"params": encoder, "lr": cfg.lr if self.encoder_lr is None else self.encoder_lr})
        return groups

    def predict(self, model: nn.Module, images: Tensor, sizes: Sequence[tuple[int, int]], sources: Sequence[str],
                *, beam_size: int = 3, n_best: int = 1, max_len: int | None = None,
                length_penalty: float = 0.0) -> list[CaptionResult]:
        vocab = Vocabulary.from_list(model.config.vocab)
        hypotheses = model.generate(images, beam_size=beam_size, n_best=n_best, max_len=max_len,
                                    length_penalty=length_penalty)
        results = []
        for source, size, hyps in zip(sources, sizes, hypotheses):
            captions = []
            for h in hyps:
                words = hypothesis_words(h.tokens, vocab)
                scores = [float(v) for v in h.token_logprobs]
                captions.append(CaptionHypothesis(
                    text=_caption_text(words), words=words, word_scores=scores[: len(words)],
                    end_score=scores[len(words)] if h.finished and len(scores) > len(words) else None,
                    score=float(h.score), attention=h.attention[: len(words)].float().cpu(), finished=h.finished))
            grid = tuple(hyps[0].attention.shape[-2:])
            results.append(CaptionResult(source=str(source), captions=captions, image_size=tuple(size), grid=grid))
        return results


class SelfCriticalTask(CaptionTask):
    """Captioning trained by self-critical sequence training (Rennie et al. 2017): ``loss_scst`` of
    :mod:`visattn.heads.scst` is the only weighted term; validation and checkpoints as :class:`CaptionTask`.

    Args:
        reward: the reward (CIDEr-D, optionally mixed with BLEU-4 and the content score), built once from the
            training references.
        num_samples: K captions sampled per image.
        baseline: "greedy" (the greedy caption's reward) or "mean" (the mean of the other K-1 samples).
        **options: :class:`CaptionTask`'s.
    """

    def __init__(self, reward: CaptionReward, *, num_samples: int = 5, baseline: str = "mean", **options: Any) -> None:
        super().__init__(**options)
        if baseline not in ("greedy", "mean"):
            raise ValueError(f"SCST baseline must be 'greedy' or 'mean', got {baseline!r}")
        self.reward, self.num_samples, self.baseline = reward, num_samples, baseline
        self.weight_dict = {"loss_scst": 1.0}

    def criterion(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, Tensor]:
        inputs = _inputs(batch, device)
        core = unwrap(model)
        features = inputs["features"] if "features" in inputs else core.encode(inputs["images"])[0]  # (B, L, C)
        references = [[tokenize(c) for c in captions] for captions in batch["captions"]]
        return loss_scst(core, features, references, self.reward, num_samples=self.num_samples,
                         baseline=self.baseline, objects=batch.get("objects"))  # scene objects: the content reward


def _self_critical(model_config: CaptionerConfig, data: CaptionData, train_items: Dataset, val_set: Dataset,
                   train_config: TrainConfig, run_dir: Path, scst: dict[str, Any], *, beam_size: int,
                   max_len: int | None, monitor: str) -> dict[str, Any]:
    """SCST epochs from the best cross-entropy weights of ``run_dir`` into ``run_dir/scst``."""
    from visattn.models import load

    model = load(run_dir / "best.safetensors", task="caption")
    reward = CaptionReward([[list(c) for c in refs] for refs in data.train.tokens],
                           weights={"CIDEr-D": 1.0, "BLEU-4": scst.get("bleu") or 0.0,
                                    "content": scst.get("content") or 0.0})  # a weight of 0 is not computed
    task = SelfCriticalTask(reward, num_samples=scst.get("samples", 5), baseline=scst.get("baseline", "mean"),
                            beam_size=beam_size, max_len=max_len, monitor=monitor)
    images = CaptionDataset(train_items, data.train.tokens, data.vocab, mode="images")
    config = replace(train_config, epochs=scst["epochs"], lr=scst.get("lr") or train_config.lr / 10, warmup_steps=0)
    log.info("self-critical training: %d epoch(s), %d samples per image, %s baseline", config.epochs,
             task.num_samples, task.baseline)
    return fit(model, task, images, val_set, config, run_dir / "scst")


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
                    cache_dtype: str = "float32", mode: str = "pairs",
                    scst: dict[str, Any] | None = None, monitor: str | None = None) -> dict[str, Any]:
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
        scst: after cross entropy, self-critical training from its best weights into ``run_dir/scst``:
            ``{"epochs": N, "samples": K, "baseline": "mean" | "greedy", "lr": ..., "bleu": weight of BLEU-4,
            "content": weight of the content score (procedural scenes only)}``
            (a resumed run that had finished its cross-entropy epochs goes straight to SCST).
        monitor: the validation metric that picks the best checkpoint of both phases (:data:`MONITORS`;
            None: :func:`default_monitor`).

    Returns:
        :func:`visattn.engine.fit`'s result; with ``scst``, the SCST run's, with the cross-entropy run's
        under ``"cross_entropy"``.
    """
    if mode not in ("pairs", "random"):
        raise ValueError(f"training mode must be 'pairs' or 'random', got {mode!r}")
    monitor = _check_monitor(monitor or default_monitor(data))
    if monitor in CONTENT_MONITORS and not _knows_objects(data.val):
        raise ValueError(f"monitor {monitor!r} scores captions against the scenes' objects, and {data.source} does "
                         f"not know them (procedural scenes do): monitor CIDEr-D, BLEU-4 or ROUGE-L")
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
    task = CaptionTask(beam_size=beam_size, max_len=max_len, encoder_lr=encoder_lr,
                       hard=model_config.attention_mode == "hard", monitor=monitor)
    result = fit(model, task, train_set, val_set, train_config, run_dir, resume=resume)
    if not scst or not scst.get("epochs"):
        return result
    if result["best"] is None:
        raise ValueError(f"{run_dir}: no best cross-entropy checkpoint to start self-critical training from")
    return {**_self_critical(model_config, data, train_items, val_set, train_config, Path(run_dir), scst,
                             beam_size=beam_size, max_len=max_len, monitor=monitor), "cross_entropy": result}


def eval_dataset(model: nn.Module, source: Dataset) -> CaptionDataset:
    """An evaluation set over ``source`` encoded with the model's own vocabulary (one item per image)."""
    return CaptionDataset(source, source.tokens, Vocabulary.from_list(model.config.vocab), mode="images")
