"""Self-critical sequence training (Rennie et al., CVPR 2017; the mean-of-samples baseline of Luo, 2020).

After cross-entropy training, the captioner is trained to maximise the expected reward (CIDEr-D, optionally
mixed with BLEU-4 and, on procedural scenes, the exact content score) of the captions it samples itself, with
REINFORCE and a baseline that needs no critic:

    for each image: sample K captions w^1..w^K ~ p(w | I) (the model in training mode), rewards r^k
    baseline b^k = r(greedy caption of I)                     ("greedy", Rennie et al.)
               or mean_{j ≠ k} r^j                            ("mean", Luo's new self-critical; K >= 2)
    loss_scst = − mean over the B·K samples of (r^k − b^k) · Σ_t log p(w^k_t | w^k_<t, I)

``<end>`` is part of a sampled caption (its log-probability is in the sum); steps after it are not.

Rewards use document frequencies computed **once** from the training references (:class:`CaptionReward`),
as the self-critical implementations do: scoring a batch against its own references alone would make the
idf of every n-gram depend on the batch. A reward is a short Python loop over n-grams: measured on the
benchmark's scenes (batch 64 × 5 samples of up to 24 tokens, 1 thread) it takes ~10% of an SCST step
(1.1 s of 10 s; the step's sampling and backward are the rest), so it is not vectorised (docs/design.md).

The ``content`` reward is SPIDEr's idea (Liu et al., ICCV 2017: CIDEr for fluency plus SPICE for content)
made exact: the object F1 of :mod:`visattn.metrics.caption_content` against the scene's own objects. CIDEr-D
alone can be earned with n-grams every reference shares ("a small", "and a") while naming the wrong object;
the content term pays for the right objects only. It needs the scenes' objects, which Karpathy and COCO data
do not have (a ``ValueError`` says so).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from visattn.metrics.caption_content import caption_content
from visattn.metrics.captions import ngram_counts, sentence_bleu

__all__ = ["BASELINES", "CaptionReward", "SampledCaptions", "sample_captions", "loss_scst"]

BASELINES = ("greedy", "mean")
REWARDS = ("CIDEr-D", "BLEU-4", "content")


class CaptionReward:
    """Per-caption reward: ``Σ_m weight_m · metric_m(candidate, references)`` with CIDEr-D's idf fixed.

    Args:
        train_references: per training image, its reference captions as token lists; the document
            frequencies of CIDEr-D come from these, once.
        weights: metric -> weight, metrics among "CIDEr-D", "BLEU-4" and "content" (the object F1 of the
            caption against its scene's objects; module docstring) (default: CIDEr-D alone).
        sigma: CIDEr-D's length-penalty standard deviation.

    Raises:
        ValueError: no training references, or an unknown metric (listing the valid ones).
    """

    def __init__(self, train_references: Sequence[Sequence[Sequence[str]]], *,
                 weights: Mapping[str, float] | None = None, sigma: float = 6.0, max_n: int = 4) -> None:
        if not train_references:
            raise ValueError("CaptionReward: needs the training references (document frequencies come from them)")
        self.weights = dict(weights or {"CIDEr-D": 1.0})
        unknown = sorted(set(self.weights) - set(REWARDS))
        if unknown:
            raise ValueError(f"CaptionReward: unknown reward metrics {unknown}; valid: {', '.join(REWARDS)}")
        self.sigma, self.max_n = sigma, max_n
        frequency: Counter = Counter()
        for refs in train_references:
            frequency.update(set().union(*(ngram_counts(list(r), max_n) for r in refs)))
        self.log_images = math.log(len(train_references))
        self.idf = {gram: self.log_images - math.log(df) for gram, df in frequency.items()}

    def _vector(self, tokens: Sequence[str]) -> tuple[list[dict], list[float]]:
        vectors: list[dict] = [{} for _ in range(self.max_n)]
        norms = [0.0] * self.max_n
        for gram, tf in ngram_counts(list(tokens), self.max_n).items():
            weight = self.idf.get(gram, self.log_images)
            vectors[len(gram) - 1][gram] = (tf, weight)
            norms[len(gram) - 1] += (tf * weight) ** 2
        return vectors, [math.sqrt(n) for n in norms]

    def cider_d(self, candidate: Sequence[str], references: Sequence[Sequence[str]]) -> float:
        """CIDEr-D of one candidate with the training idf (the COCO tool's formula, see metrics.captions)."""
        cand, cand_norms = self._vector(candidate)
        total = 0.0
        for reference in references:
            ref, ref_norms = self._vector(reference)
            penalty = math.exp(-((len(candidate) - len(reference)) ** 2) / (2 * self.sigma ** 2))
            for n in range(self.max_n):
                if cand_norms[n] == 0 or ref_norms[n] == 0:
                    continue
                dot = sum(min(tf, ref[n].get(g, (0, 0.0))[0]) * w * ref[n].get(g, (0, 0.0))[0] * w
                          for g, (tf, w) in cand[n].items())
                total += penalty * dot / (cand_norms[n] * ref_norms[n])
        return 10.0 * total / (self.max_n * max(len(references), 1))

    @property
    def needs_objects(self) -> bool:
        """True when the reward scores content, so each candidate needs its scene's objects."""
        return bool(self.weights.get("content"))

    def __call__(self, candidates: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]],
                 objects: Sequence[Sequence[Mapping[str, Any]]] | None = None) -> Tensor:
        """Rewards (N,) float32 of N candidates, each against its own references (and, for the content
        reward, its own scene's ``objects``: dicts with ``class_name``, ``colour`` and ``size``)."""
        if len(candidates) != len(references):
            raise ValueError(f"CaptionReward: {len(candidates)} candidates but {len(references)} reference lists")
        if self.needs_objects:
            if objects is None:
                raise ValueError("CaptionReward: the 'content' reward needs each image's scene objects (procedural "
                                 "scenes have them; Karpathy and COCO data do not): drop it from the weights "
                                 "(visattn train caption: --scst-content 0)")
            if len(objects) != len(candidates):
                raise ValueError(f"CaptionReward: {len(candidates)} candidates but {len(objects)} object lists")
        rewards = []
        for i, (candidate, refs) in enumerate(zip(candidates, references)):
            value = 0.0
            if self.weights.get("CIDEr-D"):
                value += self.weights["CIDEr-D"] * self.cider_d(candidate, refs)
            if self.weights.get("BLEU-4"):
                value += self.weights["BLEU-4"] * sentence_bleu(list(candidate), [list(r) for r in refs])[3]
            if self.needs_objects:
                value += self.weights["content"] * caption_content(" ".join(candidate), objects[i])["object_f1"]
            rewards.append(value)
        return torch.tensor(rewards, dtype=torch.float32)


@dataclass
class SampledCaptions:
    """K sampled captions per image, image b in rows b·K .. b·K+K-1.

    Attributes:
        tokens: (B·K, T) int64 sampled ids (``<end>`` included where it was sampled; 0 after it).
        log_probs: (B·K, T) log-probability of each sampled token, differentiable; 0 after ``<end>``.
        mask: (B·K, T) bool, True on the tokens that belong to the caption.
    """

    tokens: Tensor
    log_probs: Tensor
    mask: Tensor

    def words(self, vocab: Sequence[str], end_id: int) -> list[list[str]]:
        """The sampled captions as words, ``<end>`` and everything after it dropped."""
        out = []
        for row in self.tokens.tolist():
            words = []
            for index in row:
                if index == end_id:
                    break
                words.append(vocab[index])
            out.append(words)
        return out


def sample_captions(model: nn.Module, features: Tensor, *, num_samples: int, max_len: int) -> SampledCaptions:
    """Sample ``num_samples`` captions per image from a captioner, keeping the graph for REINFORCE.

    Args:
        model: a :class:`~visattn.heads.captioner.Captioner` (its training mode decides dropout).
        features: (B, L, C) annotations (``model.encode(images)[0]``).
        num_samples: K >= 1.
        max_len: most tokens per caption, ``<end>`` included.
    """
    if num_samples < 1 or max_len < 1:
        raise ValueError(f"sample_captions: num_samples and max_len must be >= 1, got {num_samples}, {max_len}")
    step, state = model.decoder_step(features, beam_size=num_samples)
    rows = features.shape[0] * num_samples
    prev = torch.full((rows,), model.start_id, dtype=torch.long, device=features.device)
    running = torch.ones(rows, dtype=torch.bool, device=features.device)
    tokens, log_probs, masks = [], [], []
    for _ in range(max_len):
        scores, _, state = step(prev, state)  # (B·K, V) log-probabilities, pad/start banned
        sample = torch.multinomial(scores.detach().exp(), 1).squeeze(1)  # (B·K,)
        picked = scores.gather(1, sample.unsqueeze(1)).squeeze(1)  # (B·K,)
        masks.append(running)
        tokens.append(torch.where(running, sample, torch.zeros_like(sample)))
        log_probs.append(torch.where(running, picked, torch.zeros_like(picked)))
        running = running & (sample != model.end_id)
        prev = sample
        if not bool(running.any()):
            break
    return SampledCaptions(torch.stack(tokens, 1), torch.stack(log_probs, 1), torch.stack(masks, 1))


def loss_scst(model: nn.Module, features: Tensor, references: Sequence[Sequence[Sequence[str]]],
              reward: CaptionReward, *, num_samples: int = 5, baseline: str = "greedy",
              max_len: int | None = None,
              objects: Sequence[Sequence[Mapping[str, Any]]] | None = None) -> dict[str, Tensor]:
    """The self-critical loss of one batch (module docstring).

    Args:
        model: a captioner in training mode.
        features: (B, L, C) annotations of the batch's images.
        references: per image, its reference captions as token lists.
        reward: the reward, built once from the training references.
        num_samples: K captions sampled per image.
        baseline: "greedy" (reward of the greedy caption) or "mean" (mean reward of the other K-1 samples).
        max_len: most tokens per caption (default: the model's ``config.max_len``).
        objects: per image, its scene's objects; needed by the ``content`` reward only.

    Returns:
        ``loss_scst`` (differentiable), and detached ``reward`` (mean sample reward) and ``reward_baseline``.

    Raises:
        ValueError: an unknown baseline (listing the valid ones), or "mean" with K < 2.
    """
    if baseline not in BASELINES:
        raise ValueError(f"loss_scst: unknown baseline {baseline!r}; valid: {', '.join(BASELINES)}")
    if baseline == "mean" and num_samples < 2:
        raise ValueError("loss_scst: the mean-of-others baseline needs num_samples >= 2")
    if len(references) != features.shape[0]:
        raise ValueError(f"loss_scst: {features.shape[0]} images but {len(references)} reference lists")
    max_len = max_len or model.config.max_len
    vocab = model.config.vocab
    sampled = sample_captions(model, features, num_samples=num_samples, max_len=max_len)
    repeated = [refs for refs in references for _ in range(num_samples)]  # row b·K + k -> image b
    scenes = None if objects is None else [objs for objs in objects for _ in range(num_samples)]
    rewards = reward(sampled.words(vocab, model.end_id), repeated, scenes).to(features.device)  # (B·K,)
    per_image = rewards.view(-1, num_samples)  # (B, K)
    if baseline == "greedy":
        greedy = model.generate(features=features.detach(), beam_size=1, max_len=max_len)
        words = [[vocab[t] for t in hyps[0].tokens] for hyps in greedy]
        base = reward(words, references, objects).to(features.device).unsqueeze(1).expand_as(per_image)  # (B, K)
    else:  # the mean of the other samples of the same image
        base = (per_image.sum(dim=1, keepdim=True) - per_image) / (num_samples - 1)
    advantage = (per_image - base).reshape(-1)  # (B·K,)
    sequence_log_prob = (sampled.log_probs * sampled.mask).sum(dim=1)  # (B·K,)
    loss = -(advantage * sequence_log_prob).mean()
    return {"loss_scst": loss, "reward": rewards.mean(), "reward_baseline": base.mean()}
