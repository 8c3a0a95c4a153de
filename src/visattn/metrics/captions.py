"""Caption metrics: BLEU-1..4, ROUGE-L and CIDEr-D, numerically equal to the COCO caption evaluation tool.

Written from the papers, with the choices the COCO tool (``pycocoevalcap``) makes where the papers leave
room, so scores are comparable with published ones:

* **BLEU** (Papineni et al. 2002), corpus level: clipped n-gram matches and candidate n-gram counts are summed
  over the corpus; ``BLEU-n = (prod_{k<=n} p_k)^(1/n) * BP`` with ``p_k = (matches_k + 1e-15) /
  (total_k + 1e-9)`` (the tool's smoothing constants: an order with no candidate n-grams gives ``p_k = 1e-6``,
  so an identical candidate scores ``1 - O(1e-9)``, not exactly 1). The reference length of each candidate is
  the *closest* reference length (ties to the shorter); ``BP = exp(1 - r/c)`` when ``c < r``, computed as the
  tool does from the smoothed ratio ``(c + 1e-15) / (r + 1e-9)``.
* **ROUGE-L** (Lin 2004): LCS-based F-measure with ``beta = 1.2``. Over several references the tool takes the
  best precision and the best recall separately (possibly from different references) and combines those;
  we do the same. Per-image scores, averaged over images.
* **CIDEr-D** (Vedantam et al. 2015, with the CIDEr-D changes): n-grams n = 1..4 weighted by tf-idf. The
  document frequency of an n-gram is the number of evaluated images whose reference set contains it, idf is
  ``log(N_images / max(1, df))``, and the term frequency is the raw n-gram count (as in the tool; the paper
  divides it by the sentence's n-gram total, which would change the clipped scores). Per order: the cosine
  similarity between candidate and each reference, with the candidate's counts clipped by the reference's,
  times the Gaussian length penalty ``exp(-(l_c - l_r)^2 / (2 sigma^2))``, ``sigma = 6``; averaged over
  references and orders, times 10.
  It needs a corpus: with a single image every idf is 0 and so is the score. ``pycocoevalcap``'s ``Cider`` is
  exactly this CIDEr-D (its "CIDEr" key in published tables is CIDEr-D).

:func:`caption_scores` takes raw strings and tokenizes them with :func:`visattn.data.text.tokenize`; the lower
functions take token lists.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

from visattn.data.text import tokenize

__all__ = [
    "caption_scores",
    "caption_scores_tokenized",
    "cider_d",
    "corpus_bleu",
    "lcs_length",
    "ngram_counts",
    "rouge_l",
    "sentence_bleu",
]

Tokens = Sequence[str]
NGram = tuple[str, ...]

# The COCO tool's smoothing: numerators get _TINY, denominators _SMALL.
_TINY = 1e-15
_SMALL = 1e-9


def ngram_counts(tokens: Tokens, max_n: int = 4) -> Counter[NGram]:
    """Counts of every n-gram of ``tokens`` for n = 1..max_n (keys are token tuples)."""
    counts: Counter[NGram] = Counter()
    for n in range(1, max_n + 1):
        counts.update(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return counts


def _check_max_n(max_n: int) -> None:
    if isinstance(max_n, bool) or not isinstance(max_n, int) or max_n < 1:
        raise ValueError(f"max_n must be an int >= 1, got {max_n!r}")


# ---------------------------------------------------------------------------------------------- BLEU
def _bleu_stats(
    candidate: Tokens, references: Sequence[Tokens], max_n: int
) -> tuple[int, int, list[int], list[int]]:
    """(candidate length, closest reference length, clipped matches per order, candidate n-grams per order)."""
    if not references:
        raise ValueError("BLEU needs at least one reference per candidate")
    max_ref_counts: Counter[NGram] = Counter()
    for reference in references:
        for gram, count in ngram_counts(reference, max_n).items():
            max_ref_counts[gram] = max(max_ref_counts[gram], count)
    length = len(candidate)
    # Closest reference length; a tie goes to the shorter reference.
    ref_length = min((abs(len(r) - length), len(r)) for r in references)[1]
    matches = [0] * max_n
    for gram, count in ngram_counts(candidate, max_n).items():
        matches[len(gram) - 1] += min(count, max_ref_counts[gram])
    totals = [max(0, length - k) for k in range(max_n)]
    return length, ref_length, matches, totals


def _bleu_from_stats(
    length: float, ref_length: float, matches: Sequence[float], totals: Sequence[float]
) -> list[float]:
    """BLEU-1..n from summed statistics, with the tool's smoothing and brevity penalty."""
    scores = []
    product = 1.0
    for k, (matched, total) in enumerate(zip(matches, totals)):
        product *= (matched + _TINY) / (total + _SMALL)
        scores.append(product ** (1.0 / (k + 1)))  # geometric mean of p_1..p_{k+1}
    ratio = (length + _TINY) / (ref_length + _SMALL)
    if ratio < 1:
        penalty = math.exp(1 - 1 / ratio)
        scores = [score * penalty for score in scores]
    return scores


def corpus_bleu(
    candidates: Sequence[Tokens], references: Sequence[Sequence[Tokens]], *, max_n: int = 4
) -> list[float]:
    """Corpus-level BLEU-1..max_n.

    Args:
        candidates: one token list per image (may be empty).
        references: per image, a non-empty list of reference token lists.
        max_n: highest n-gram order.

    Returns:
        ``[BLEU-1, ..., BLEU-max_n]``, each in [0, 1].
    """
    _check_max_n(max_n)
    _check_inputs(candidates, references)
    length = ref_length = 0
    matches, totals = [0] * max_n, [0] * max_n
    for candidate, refs in zip(candidates, references):
        c, r, m, t = _bleu_stats(candidate, refs, max_n)
        length, ref_length = length + c, ref_length + r
        matches = [a + b for a, b in zip(matches, m)]
        totals = [a + b for a, b in zip(totals, t)]
    return _bleu_from_stats(length, ref_length, matches, totals)


def sentence_bleu(candidate: Tokens, references: Sequence[Tokens], *, max_n: int = 4) -> list[float]:
    """BLEU-1..max_n of one candidate, with the same smoothing (the tool's per-image BLEU)."""
    _check_max_n(max_n)
    return _bleu_from_stats(*_bleu_stats(candidate, references, max_n))


# ---------------------------------------------------------------------------------------------- ROUGE-L
def lcs_length(a: Tokens, b: Tokens) -> int:
    """Length of the longest common subsequence of two token lists (O(len(a) * len(b)) time)."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)  # LCS lengths of a[:i-1] against every prefix of b
    for token in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(candidate: Tokens, references: Sequence[Tokens], *, beta: float = 1.2) -> float:
    """ROUGE-L F-measure of one candidate against its references, in [0, 1].

    Precision ``LCS / len(candidate)`` and recall ``LCS / len(reference)`` are each maximised over the
    references (as the COCO tool does), then ``F = (1 + beta^2) P R / (R + beta^2 P)``; 0 when either is 0.
    """
    if not references:
        raise ValueError("ROUGE-L needs at least one reference per candidate")
    if not candidate:
        return 0.0
    precision = recall = 0.0
    for reference in references:
        common = lcs_length(candidate, reference)
        precision = max(precision, common / len(candidate))
        recall = max(recall, common / len(reference) if reference else 0.0)
    if precision == 0 or recall == 0:
        return 0.0
    return (1 + beta**2) * precision * recall / (recall + beta**2 * precision)


# ---------------------------------------------------------------------------------------------- CIDEr-D
def _tfidf(counts: Counter[NGram], idf: Mapping[NGram, float], default_idf: float, max_n: int):
    """Per order: n-gram -> (term frequency, idf); and the vector norm of tf * idf."""
    vectors: list[dict[NGram, tuple[int, float]]] = [{} for _ in range(max_n)]
    squared = [0.0] * max_n
    for gram, tf in counts.items():
        weight = idf.get(gram, default_idf)
        vectors[len(gram) - 1][gram] = (tf, weight)
        squared[len(gram) - 1] += (tf * weight) ** 2
    return vectors, [math.sqrt(s) for s in squared]


def cider_d(
    candidates: Sequence[Tokens],
    references: Sequence[Sequence[Tokens]],
    *,
    max_n: int = 4,
    sigma: float = 6.0,
) -> list[float]:
    """CIDEr-D of every candidate; the corpus score is their mean.

    Args:
        candidates: one token list per image (may be empty).
        references: per image, a non-empty list of reference token lists. Document frequencies come from
            these, so the scores depend on the whole set evaluated together.
        max_n: highest n-gram order.
        sigma: standard deviation of the Gaussian length penalty.

    Returns:
        One score per image, >= 0 (10 for a candidate identical to every one of its references).
    """
    _check_max_n(max_n)
    _check_inputs(candidates, references)
    ref_counts = [[ngram_counts(r, max_n) for r in refs] for refs in references]
    document_frequency: Counter[NGram] = Counter()
    for counts in ref_counts:
        document_frequency.update(set().union(*counts))
    log_images = math.log(len(candidates)) if candidates else 0.0
    idf = {gram: log_images - math.log(df) for gram, df in document_frequency.items()}
    # An n-gram in no reference has df 0, counted as 1 (as the tool does): idf = log(N).
    scores = []
    for candidate, refs, counts_of_refs in zip(candidates, references, ref_counts):
        cand_vectors, cand_norms = _tfidf(ngram_counts(candidate, max_n), idf, log_images, max_n)
        total = 0.0
        for reference, counts in zip(refs, counts_of_refs):
            ref_vectors, ref_norms = _tfidf(counts, idf, log_images, max_n)
            # The tool measures length in bigrams (len - 1): the same difference whenever both sides are
            # non-empty, and an empty side scores 0 anyway.
            penalty = math.exp(-((len(candidate) - len(reference)) ** 2) / (2 * sigma**2))
            for n in range(max_n):
                if cand_norms[n] == 0 or ref_norms[n] == 0:
                    continue
                dot = 0.0
                for gram, (tf, weight) in cand_vectors[n].items():
                    ref_tf = ref_vectors[n].get(gram, (0, 0.0))[0]
                    # Candidate counts are clipped by the reference's (the "D" in CIDEr-D).
                    dot += min(tf, ref_tf) * weight * ref_tf * weight
                total += penalty * dot / (cand_norms[n] * ref_norms[n])
        scores.append(10.0 * total / (max_n * len(refs)))
    return scores


# ---------------------------------------------------------------------------------------------- entry points
def _check_inputs(candidates: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> None:
    """Same number of candidates and reference lists, and no empty reference list."""
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists")
    for i, refs in enumerate(references):
        if not refs:
            raise ValueError(f"reference list {i} is empty: every candidate needs at least one reference")


def _matching_ids(candidates: Mapping[Hashable, object], references: Mapping[Hashable, object]) -> list[Hashable]:
    """The shared ids in ``references`` order; ValueError naming the ids only one side has."""
    if not references:
        raise ValueError("no references to score against (empty mapping)")
    only_candidates = [i for i in candidates if i not in references]
    only_references = [i for i in references if i not in candidates]
    if only_candidates or only_references:
        raise ValueError(
            "candidates and references must have the same ids: "
            f"{len(only_candidates)} ids only in candidates (e.g. {only_candidates[:5]}), "
            f"{len(only_references)} only in references (e.g. {only_references[:5]})"
        )
    return list(references)


def caption_scores_tokenized(
    candidates: Mapping[Hashable, Tokens],
    references: Mapping[Hashable, Sequence[Tokens]],
) -> dict[str, float]:
    """:func:`caption_scores` for text that is already tokenized (token lists instead of strings)."""
    ids = _matching_ids(candidates, references)
    cands = [list(candidates[i]) for i in ids]
    refs = [[list(r) for r in references[i]] for i in ids]
    for image_id, image_refs in zip(ids, refs):
        if not any(image_refs):
            raise ValueError(f"references for id {image_id!r} are empty: every image needs a non-empty reference")
    bleu = corpus_bleu(cands, refs, max_n=4)
    scores = {f"BLEU-{n}": bleu[n - 1] for n in range(1, 5)}
    scores["ROUGE-L"] = sum(rouge_l(c, r) for c, r in zip(cands, refs)) / len(ids)
    scores["CIDEr-D"] = sum(cider_d(cands, refs)) / len(ids)
    return scores


def caption_scores(
    candidates: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
) -> dict[str, float]:
    """BLEU-1..4, ROUGE-L and CIDEr-D of generated captions, as the COCO caption tool reports them.

    Args:
        candidates: image id -> generated caption (raw text; an empty caption scores 0).
        references: image id -> non-empty list of reference captions (raw text). The ids must be the same as
            in ``candidates``.

    Returns:
        ``{"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D"}`` -> corpus score. BLEU and ROUGE-L are
        in [0, 1]; CIDEr-D is in [0, 10] per image (10 = identical to every reference).

    Raises:
        ValueError: the id sets differ, no ids, an id with no (or only blank) references, or a value of the
            wrong type (a bare string where a list of references is expected).
    """
    ids = _matching_ids(candidates, references)
    cand_tokens: dict[Hashable, list[str]] = {}
    ref_tokens: dict[Hashable, list[list[str]]] = {}
    for image_id in ids:
        candidate, refs = candidates[image_id], references[image_id]
        if not isinstance(candidate, str):
            raise ValueError(f"candidate for id {image_id!r} must be a str, got {type(candidate).__name__}")
        if isinstance(refs, str) or not isinstance(refs, Sequence):
            raise ValueError(f"references for id {image_id!r} must be a list of str, got {type(refs).__name__}")
        if not refs:
            raise ValueError(f"references for id {image_id!r} is an empty list")
        bad = [r for r in refs if not isinstance(r, str)]
        if bad:
            raise ValueError(f"references for id {image_id!r} must be str, got {type(bad[0]).__name__}")
        cand_tokens[image_id] = tokenize(candidate)
        ref_tokens[image_id] = [tokenize(r) for r in refs]
    return caption_scores_tokenized(cand_tokens, ref_tokens)
