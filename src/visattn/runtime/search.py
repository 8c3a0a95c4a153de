"""Greedy and batched beam search in numpy: :mod:`visattn.heads.beam` step for step, without PyTorch.

The exported ``step`` graph is driven exactly as ``Captioner.generate`` drives the model's step function, so
the runtime returns the same tokens in the same n-best order (tested on trained captioners):

    step(prev_tokens (B, k) int64, state) -> (log_probs (B, k, V), attention (B, k, L), new_state)

``state`` is a tuple of (B, k, ...) arrays, one row per hypothesis (the graph's own layout: an image's k
beams are k queries of its keys). Greedy search runs k = 1.

What has to match PyTorch bit for bit is the arithmetic that decides a hypothesis: scores are float32 sums,
divided by a float32 ``length ** length_penalty``; ties between equal scores go to the lower index (the
only ties that occur are between impossible, -inf, extensions, which never reach a result). The rules are
those of :mod:`visattn.heads.beam`: at each step the 2k best extensions are taken, ``<end>`` extensions ranked
within the top k finish, the k best others continue; an image stops once its n-th finished score cannot be
beaten (checked at every step, as on a CPU); images with fewer than n finished get their best unfinished.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

__all__ = ["SearchHypothesis", "StepFn", "greedy_search", "beam_search", "check_decoding_args", "topk"]

StepFn = Callable[[np.ndarray, tuple[np.ndarray, ...]], tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]]
_NEG_INF = np.float32(-np.inf)


@dataclass
class SearchHypothesis:
    """One decoded sequence, as :class:`visattn.heads.beam.Hypothesis` with numpy maps.

    Attributes:
        tokens: generated ids, without ``<start>`` and ``<end>``.
        score: sum of the scored tokens' log-probabilities over ``length ** length_penalty``.
        attention: (scored steps, L): one map per word, plus the ``<end>`` step's when finished.
        finished: ended with ``<end>`` (False: cut at ``max_len``).
        token_logprobs: log-probability of every scored step (the words, then ``<end>`` when finished).
    """

    tokens: list[int]
    score: float
    attention: np.ndarray
    finished: bool = True
    token_logprobs: list[float] = field(default_factory=list)


def check_decoding_args(*, beam_size: int, max_len: int, n_best: int, length_penalty: float) -> None:
    """Usage errors of decoding options, as ValueError naming the option (the messages of visattn.heads.beam)."""
    for name, value in (("beam_size", beam_size), ("max_len", max_len), ("n_best", n_best)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if n_best > beam_size:
        raise ValueError(f"n_best ({n_best}) cannot exceed beam_size ({beam_size})")
    if isinstance(length_penalty, bool) or not (isinstance(length_penalty, (int, float)) and length_penalty >= 0):
        raise ValueError(f"length_penalty must be a number >= 0, got {length_penalty!r}")


def topk(values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The n largest of each row of (R, M), best first, equal values by lower index: (R, n) values, indices."""
    if n < values.shape[1] // 4:  # partition first: only the n candidates get sorted
        part = np.argpartition(-values, n - 1, axis=1)[:, :n]  # (R, n), unordered
        part_values = np.take_along_axis(values, part, axis=1)
        order = np.lexsort((part, -part_values), axis=1)  # by value descending, then by index
        index = np.take_along_axis(part, order, axis=1)
    else:
        index = np.argsort(-values, axis=1, kind="stable")[:, :n]
    return np.take_along_axis(values, index, axis=1), index


def greedy_search(step: StepFn, state: tuple[np.ndarray, ...], *, batch_size: int, start_id: int, end_id: int,
                  max_len: int, length_penalty: float = 0.0) -> list[list[SearchHypothesis]]:
    """The most likely token at each step for B images at once; per image a one-element list."""
    check_decoding_args(beam_size=1, max_len=max_len, n_best=1, length_penalty=length_penalty)
    B = batch_size
    prev = np.full((B, 1), start_id, dtype=np.int64)
    tokens = np.zeros((B, max_len), dtype=np.int64)
    raw = np.zeros(B, dtype=np.float32)
    step_logprobs = np.zeros((B, max_len), dtype=np.float32)
    lengths = np.zeros(B, dtype=np.int64)
    done = np.zeros(B, dtype=bool)
    maps: np.ndarray | None = None
    steps = 0
    for t in range(max_len):
        log_probs, alpha, state = step(prev, state)  # (B, 1, V), (B, 1, L)
        log_probs = log_probs[:, 0]
        if maps is None:
            maps = np.zeros((B, max_len, alpha.shape[-1]), dtype=alpha.dtype)  # (B, max_len, L)
        chosen = log_probs.argmax(axis=-1)  # (B,): the first of equal maxima, as torch.max
        best = np.take_along_axis(log_probs, chosen[:, None], axis=1)[:, 0]
        raw += np.where(done, np.float32(0.0), best)
        lengths += ~done
        tokens[:, t] = chosen
        step_logprobs[:, t] = best
        maps[:, t] = alpha[:, 0]
        done |= chosen == end_id
        prev = chosen[:, None]
        steps = t + 1
        if done.all():
            break
    assert maps is not None, "max_len >= 1 runs at least one step"
    scores = (raw / np.power(lengths.astype(np.float32), np.float32(length_penalty))).tolist()
    token_rows, logprob_rows = tokens[:, :steps].tolist(), step_logprobs[:, :steps].tolist()
    results = []
    for b in range(B):
        n = int(lengths[b])  # scored steps: the words, plus <end> when finished
        finished = bool(done[b])
        words = token_rows[b][: n - 1] if finished else token_rows[b][:n]
        results.append([SearchHypothesis(words, scores[b], maps[b, :n], finished, logprob_rows[b][:n])])
    return results


def beam_search(step: StepFn, state: tuple[np.ndarray, ...], *, batch_size: int, beam_size: int, start_id: int,
                end_id: int, max_len: int, n_best: int = 1,
                length_penalty: float = 0.0) -> list[list[SearchHypothesis]]:
    """Batched beam search (module docstring); per image its ``n_best`` hypotheses, best first.

    ``state`` arrays are (B, k, ...): each image's initial state repeated for its k beams.
    """
    check_decoding_args(beam_size=beam_size, max_len=max_len, n_best=n_best, length_penalty=length_penalty)
    B, k = batch_size, beam_size
    if state[0].shape[:2] != (B, k):
        raise ValueError(f"beam_search: state must be (batch_size, beam_size, ...) = ({B}, {k}, ...), "
                         f"got {state[0].shape}")
    scores = np.full((B, k), _NEG_INF, dtype=np.float32)  # only beam 0 is live at the start
    scores[:, 0] = 0.0
    prev = np.full((B, k), start_id, dtype=np.int64)
    hist_token = np.zeros((max_len, B, k), dtype=np.int64)  # token of live slot after step t
    hist_parent = np.zeros((max_len, B, k), dtype=np.int64)  # its slot at step t-1
    hist_raw = np.zeros((max_len, B, k), dtype=np.float32)  # its unnormalised running sum
    fin_score = np.full((max_len, B, k), _NEG_INF, dtype=np.float32)  # normalised, -inf = none
    fin_parent = np.zeros((max_len, B, k), dtype=np.int64)
    fin_raw = np.zeros((max_len, B, k), dtype=np.float32)
    best_finished = np.full((B, n_best), _NEG_INF, dtype=np.float32)  # running n best finished scores
    hist_att: np.ndarray | None = None
    max_norm = float(max_len) ** length_penalty
    steps = 0
    for t in range(max_len):
        log_probs, alpha, state = step(prev, state)  # (B, k, V), (B, k, L)
        vocab = log_probs.shape[-1]
        if hist_att is None:
            hist_att = np.zeros((max_len, B, k, alpha.shape[-1]), dtype=alpha.dtype)  # slot's map (pre-selection)
        hist_att[t] = alpha
        candidates = (scores[:, :, None] + log_probs).reshape(B, k * vocab)  # (B, k·V)
        top_scores, top_index = topk(candidates, min(2 * k, k * vocab))  # (B, 2k)
        top_beam = top_index // vocab
        top_token = top_index - top_beam * vocab
        is_end = top_token == end_id
        # <end> extensions ranked within the top k finish; their normalised scores are kept aside
        ends = is_end[:, :k] & np.isfinite(top_scores[:, :k])
        fin_score[t] = np.where(ends, top_scores[:, :k] / float(t + 1) ** length_penalty, _NEG_INF)
        fin_parent[t] = top_beam[:, :k]
        fin_raw[t] = top_scores[:, :k]
        best_finished = topk(np.concatenate([best_finished, fin_score[t]], axis=1), n_best)[0]
        # the k best other extensions continue (at most k of the 2k end, so k remain)
        scores, chosen = topk(np.where(is_end, _NEG_INF, top_scores), k)  # (B, k)
        parent = np.take_along_axis(top_beam, chosen, axis=1)
        prev = np.take_along_axis(top_token, chosen, axis=1)
        hist_token[t], hist_parent[t], hist_raw[t] = prev, parent, scores
        state = tuple(np.take_along_axis(s, parent.reshape(B, k, *([1] * (s.ndim - 2))), axis=1) for s in state)
        steps = t + 1
        if steps < max_len:
            # no live beam can still beat the n-th finished one (scores only fall; see visattn.heads.beam)
            bound = scores.max(axis=1) / max_norm
            if bool((best_finished[:, -1] >= bound).all()):
                break
    assert hist_att is not None, "max_len >= 1 runs at least one step"
    live = scores / float(steps) ** length_penalty
    return _collect(fin_score[:steps], fin_parent[:steps], fin_raw[:steps], hist_token[:steps], hist_parent[:steps],
                    hist_raw[:steps], hist_att[:steps], live, n_best=n_best)


def _collect(fin_score: np.ndarray, fin_parent: np.ndarray, fin_raw: np.ndarray, hist_token: np.ndarray,
             hist_parent: np.ndarray, hist_raw: np.ndarray, hist_att: np.ndarray, live_scores: np.ndarray, *,
             n_best: int) -> list[list[SearchHypothesis]]:
    """Each image's n best: finished first, then the best unfinished; follow the back-pointers."""
    steps, B, k = fin_score.shape
    flat = fin_score.transpose(1, 0, 2).reshape(B, steps * k)  # (B, steps·k), index = t·k + rank
    top_fin, top_fin_index = topk(flat, min(n_best, steps * k))
    live_order = np.argsort(-live_scores, axis=1, kind="stable")

    def trace(b: int, slot: int, last: int) -> tuple[list[int], list[tuple[int, int]], list[float]]:
        """Words of live slot ``slot`` after step ``last``, the (step, slot) of their maps, running sums."""
        words, where, sums = [], [], []
        for t in range(last, -1, -1):
            words.append(int(hist_token[t, b, slot]))
            sums.append(float(hist_raw[t, b, slot]))
            slot = int(hist_parent[t, b, slot])
            where.append((t, slot))
        return words[::-1], where[::-1], sums[::-1]

    def differences(sums: list[float]) -> list[float]:
        return [now - before for before, now in zip([0.0] + sums[:-1], sums)]

    def maps(b: int, where: list[tuple[int, int]]) -> np.ndarray:
        if not where:
            return hist_att[:0, b, 0]  # (0, L)
        return hist_att[[t for t, _ in where], b, [s for _, s in where]]  # (steps, L)

    results: list[list[SearchHypothesis]] = []
    for b in range(B):
        found: list[SearchHypothesis] = []
        for score, index in zip(top_fin[b].tolist(), top_fin_index[b].tolist()):
            if score == float("-inf"):
                break
            t, rank = divmod(index, k)
            parent = int(fin_parent[t, b, rank])
            words, where, sums = trace(b, parent, t - 1) if t > 0 else ([], [], [])
            found.append(SearchHypothesis(words, score, maps(b, where + [(t, parent)]), True,
                                          differences(sums + [float(fin_raw[t, b, rank])])))
        for slot in live_order[b].tolist():
            if len(found) >= n_best or live_scores[b, slot] == -np.inf:
                break
            words, where, sums = trace(b, slot, steps - 1)
            found.append(SearchHypothesis(words, float(live_scores[b, slot]), maps(b, where), False,
                                          differences(sums)))
        results.append(found)
    return results
