"""Decoding for autoregressive heads: a greedy fast path and batched beam search.

Both drive a model through one step function, so they know nothing about LSTMs or attention:

    step(prev_tokens (N,), state) -> (log_probs (N, V), attention (N, L), new_state)

``state`` is a tuple of tensors whose first dimension is N, one row per hypothesis. Greedy search runs
N = B rows (one per image); beam search runs N = B·k rows in one tensor pass, rows ``b·k .. b·k+k-1``
belonging to image ``b`` (:func:`expand_for_beams` lays tensors out that way). Everything the step needs
per image only (e.g. attention keys) can live in the step function's closure, expanded once: beams never
move between images, so only ``state`` is re-indexed when beams are re-ordered.

Beam search keeps, per image, the k best unfinished hypotheses. Each step it takes the 2k best
extensions: ``<end>`` extensions ranked within the top k become finished hypotheses (kept aside), and the
k best other extensions continue. Back-pointers, tokens and attention maps are written into preallocated
(max_len, B, k, ...) buffers and followed backwards only for the returned hypotheses, so a step never
copies earlier history. An image stops counting once its n-th best finished score cannot be beaten by any
live beam (exact, also with length normalisation); the loop ends when every image has stopped or at
``max_len``. Images without n finished hypotheses get their best unfinished ones (``finished=False``).

Scores are sums of log-probabilities, divided by ``length ** length_penalty`` where ``length`` counts the
scored tokens (the words, plus ``<end>`` when the hypothesis finished).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

__all__ = ["Hypothesis", "StepFn", "greedy_search", "beam_search", "expand_for_beams", "check_decoding_args"]

StepFn = Callable[[Tensor, tuple[Tensor, ...]], tuple[Tensor, Tensor, tuple[Tensor, ...]]]


@dataclass
class Hypothesis:
    """One decoded sequence.

    Attributes:
        tokens: generated ids, without ``<start>`` and ``<end>``.
        score: sum of the log-probabilities of the scored tokens, divided by ``length ** length_penalty``.
        attention: one map per step: (len(tokens) + 1, H', W') when finished (the last map is the one that
            produced ``<end>``), (len(tokens), H', W') when cut at ``max_len``; (steps, L) without a grid.
        finished: whether the hypothesis ended with ``<end>`` (False: cut at ``max_len``).
        token_logprobs: log-probability of every scored step, one per map: the words, then ``<end>`` when
            finished (so ``sum(token_logprobs)`` is the unnormalised score).
    """

    tokens: list[int]
    score: float
    attention: Tensor
    finished: bool = True
    token_logprobs: list[float] = field(default_factory=list)


def check_decoding_args(*, beam_size: int, max_len: int, n_best: int, length_penalty: float) -> None:
    """Usage errors of decoding options, as ValueError naming the option."""
    for name, value in (("beam_size", beam_size), ("max_len", max_len), ("n_best", n_best)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if n_best > beam_size:
        raise ValueError(f"n_best ({n_best}) cannot exceed beam_size ({beam_size})")
    if not (isinstance(length_penalty, (int, float)) and length_penalty >= 0):
        raise ValueError(f"length_penalty must be a number >= 0, got {length_penalty!r}")


def expand_for_beams(tensor: Tensor, beam_size: int) -> Tensor:
    """(B, ...) -> (B·k, ...), each image's row repeated k times consecutively."""
    return tensor.repeat_interleave(beam_size, dim=0)


def _stop_checks_every(device: torch.device) -> int:
    # Reading a flag is free on the CPU but a host-device sync elsewhere: check less often there.
    return 1 if device.type == "cpu" else 4


def _maps(attention: Tensor, grid: tuple[int, int] | None) -> Tensor:
    return attention if grid is None else attention.view(attention.shape[0], *grid)  # (steps, L) -> (steps, H', W')


def greedy_search(
    step: StepFn,
    state: tuple[Tensor, ...],
    *,
    batch_size: int,
    start_id: int,
    end_id: int,
    max_len: int,
    length_penalty: float = 0.0,
    grid: tuple[int, int] | None = None,
) -> list[list[Hypothesis]]:
    """Pick the most likely token at each step, for B images at once.

    Args:
        step: the model's step function (module docstring); N = ``batch_size`` rows.
        state: initial state tensors, first dimension B.
        batch_size: B.
        start_id, end_id: ids of ``<start>`` and ``<end>``.
        max_len: most tokens generated per image (``<end>`` included).
        length_penalty: α of the score ``sum log p / length ** α``.
        grid: (H', W') to shape the attention maps; None keeps (steps, L).

    Returns:
        Per image a one-element list with its :class:`Hypothesis`.
    """
    check_decoding_args(beam_size=1, max_len=max_len, n_best=1, length_penalty=length_penalty)
    device = state[0].device
    prev = torch.full((batch_size,), start_id, dtype=torch.long, device=device)
    tokens = torch.empty(batch_size, max_len, dtype=torch.long, device=device)
    raw = torch.zeros(batch_size, device=device)
    step_logprobs = torch.zeros(batch_size, max_len, device=device)  # (B, max_len): log p of each chosen token
    lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
    done = torch.zeros(batch_size, dtype=torch.bool, device=device)
    maps: Tensor | None = None
    check_every = _stop_checks_every(device)
    steps = 0
    for t in range(max_len):
        log_probs, alpha, state = step(prev, state)  # (B, V), (B, L)
        if maps is None:
            maps = alpha.new_empty(batch_size, max_len, alpha.shape[-1])  # (B, max_len, L)
        best, prev = log_probs.max(dim=-1)  # (B,), (B,)
        raw += best.masked_fill(done, 0.0)
        lengths += (~done).long()
        tokens[:, t] = prev
        step_logprobs[:, t] = best
        maps[:, t] = alpha
        done |= prev == end_id
        steps = t + 1
        if steps % check_every == 0 and bool(done.all()):
            break
    assert maps is not None, "max_len >= 1 runs at least one step"
    scores = (raw / lengths.float().pow(length_penalty)).tolist()
    token_rows, finished, lengths_list = tokens[:, :steps].tolist(), done.tolist(), lengths.tolist()
    logprob_rows = step_logprobs[:, :steps].tolist()
    results = []
    for b in range(batch_size):
        n = lengths_list[b]  # scored steps: the words, plus <end> when finished
        words = token_rows[b][: n - 1] if finished[b] else token_rows[b][:n]
        results.append([Hypothesis(words, scores[b], _maps(maps[b, :n], grid), finished[b], logprob_rows[b][:n])])
    return results


def beam_search(
    step: StepFn,
    state: tuple[Tensor, ...],
    *,
    batch_size: int,
    beam_size: int,
    start_id: int,
    end_id: int,
    max_len: int,
    n_best: int = 1,
    length_penalty: float = 0.0,
    grid: tuple[int, int] | None = None,
) -> list[list[Hypothesis]]:
    """Batched beam search over B images × k beams in one tensor pass.

    Args:
        step: the model's step function (module docstring); N = B·k rows, image b in rows b·k .. b·k+k-1.
        state: initial state tensors, first dimension B·k (see :func:`expand_for_beams`).
        batch_size: B.
        beam_size: k.
        start_id, end_id: ids of ``<start>`` and ``<end>``.
        max_len: most tokens generated per hypothesis (``<end>`` included).
        n_best: hypotheses returned per image (<= k).
        length_penalty: α of the score ``sum log p / length ** α``; 0 ranks by the plain sum.
        grid: (H', W') to shape the attention maps; None keeps (steps, L).

    Returns:
        Per image its ``n_best`` hypotheses, best first: finished ones first, then (only when fewer than
        ``n_best`` finished) the best unfinished ones cut at ``max_len``.
    """
    check_decoding_args(beam_size=beam_size, max_len=max_len, n_best=n_best, length_penalty=length_penalty)
    B, k = batch_size, beam_size
    device = state[0].device
    if state[0].shape[0] != B * k:
        raise ValueError(f"beam_search: state rows must be batch_size * beam_size = {B * k}, got {state[0].shape[0]}")
    # Only beam 0 is live at the start, so the k beams do not all extend the same <start>.
    scores = torch.full((B, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    prev = torch.full((B * k,), start_id, dtype=torch.long, device=device)
    row_base = torch.arange(B, device=device).unsqueeze(1) * k  # (B, 1): first row of each image
    hist_token = torch.empty(max_len, B, k, dtype=torch.long, device=device)  # token of live slot after step t
    hist_parent = torch.empty(max_len, B, k, dtype=torch.long, device=device)  # its slot at step t-1
    fin_score = torch.full((max_len, B, k), float("-inf"), device=device)  # normalised, -inf = none
    fin_parent = torch.zeros(max_len, B, k, dtype=torch.long, device=device)
    # unnormalised running sums, to give every word its own log-probability: live slots after step t, and
    # the <end> extensions of step t
    hist_raw = torch.empty(max_len, B, k, device=device)
    fin_raw = torch.empty(max_len, B, k, device=device)
    best_finished = torch.full((B, n_best), float("-inf"), device=device)  # running n best finished scores
    hist_att: Tensor | None = None
    max_norm = float(max_len) ** length_penalty
    check_every = _stop_checks_every(device)
    steps = 0
    for t in range(max_len):
        log_probs, alpha, state = step(prev, state)  # (B·k, V), (B·k, L)
        vocab = log_probs.shape[-1]
        if hist_att is None:
            hist_att = alpha.new_empty(max_len, B, k, alpha.shape[-1])  # attention of slot (pre-selection) at t
        hist_att[t] = alpha.view(B, k, -1)
        candidates = (scores.unsqueeze(-1) + log_probs.view(B, k, vocab)).view(B, k * vocab)  # (B, k·V)
        top_scores, top_index = candidates.topk(min(2 * k, k * vocab), dim=1)  # (B, 2k)
        top_beam = torch.div(top_index, vocab, rounding_mode="floor")
        top_token = top_index - top_beam * vocab
        is_end = top_token == end_id
        # <end> extensions ranked within the top k finish; their normalised scores are kept aside.
        ends = is_end[:, :k] & torch.isfinite(top_scores[:, :k])
        fin_score[t] = (top_scores[:, :k] / float(t + 1) ** length_penalty).masked_fill(~ends, float("-inf"))
        fin_parent[t] = top_beam[:, :k]
        fin_raw[t] = top_scores[:, :k]
        best_finished = torch.cat([best_finished, fin_score[t]], dim=1).topk(n_best, dim=1).values
        # The k best other extensions continue (at most k of the 2k end, so k remain).
        scores, chosen = top_scores.masked_fill(is_end, float("-inf")).topk(k, dim=1)  # (B, k)
        parent = top_beam.gather(1, chosen)
        prev_tokens = top_token.gather(1, chosen)
        hist_token[t], hist_parent[t], hist_raw[t] = prev_tokens, parent, scores
        rows = (row_base + parent).view(-1)  # (B·k,) rows of the parents in the flat state
        state = tuple(s.index_select(0, rows) for s in state)
        prev = prev_tokens.view(-1)
        steps = t + 1
        if steps % check_every == 0 and steps < max_len:
            # No live beam can still beat the n-th finished one: scores only fall, and
            # dividing a negative sum by a longer length**α raises it at most to sum / max_len**α.
            bound = scores.max(dim=1).values / max_norm
            if bool((best_finished[:, -1] >= bound).all()):
                break
    assert hist_att is not None, "max_len >= 1 runs at least one step"
    return _collect(
        fin_score[:steps], fin_parent[:steps], hist_token[:steps], hist_parent[:steps], hist_att[:steps],
        scores / float(steps) ** length_penalty, hist_raw[:steps], fin_raw[:steps], n_best=n_best, grid=grid,
    )


def _collect(
    fin_score: Tensor, fin_parent: Tensor, hist_token: Tensor, hist_parent: Tensor, hist_att: Tensor,
    live_scores: Tensor, hist_raw: Tensor, fin_raw: Tensor, *, n_best: int, grid: tuple[int, int] | None,
) -> list[list[Hypothesis]]:
    """Pick each image's n best and follow their back-pointers (host lists; one gather per hypothesis)."""
    steps, B, k = fin_score.shape
    flat = fin_score.permute(1, 0, 2).reshape(B, steps * k)  # (B, steps·k), index = t·k + rank
    top_fin, top_fin_index = flat.topk(min(n_best, steps * k), dim=1)
    tokens, parents, raws = hist_token.tolist(), hist_parent.tolist(), hist_raw.tolist()  # [t][b][slot]
    fin_raws = fin_raw.tolist()
    fin_parents = fin_parent.tolist()
    top_fin, top_fin_index = top_fin.tolist(), top_fin_index.tolist()
    live_order = live_scores.argsort(dim=1, descending=True).tolist()
    live = live_scores.tolist()

    def trace(b: int, slot: int, last: int) -> tuple[list[int], list[tuple[int, int]], list[float]]:
        """Words of live slot ``slot`` after step ``last``, (step, pre-selection slot) of its maps, and the
        running sums of log-probabilities after each word."""
        words, where, sums = [], [], []
        for t in range(last, -1, -1):
            words.append(tokens[t][b][slot])
            sums.append(raws[t][b][slot])
            slot = parents[t][b][slot]
            where.append((t, slot))
        return words[::-1], where[::-1], sums[::-1]

    def differences(sums: list[float]) -> list[float]:
        return [now - before for before, now in zip([0.0] + sums[:-1], sums)]

    def gather_maps(b: int, where: list[tuple[int, int]]) -> Tensor:
        if not where:
            return hist_att.new_empty(0, hist_att.shape[-1])
        t_index = torch.tensor([t for t, _ in where], device=hist_att.device)
        s_index = torch.tensor([s for _, s in where], device=hist_att.device)
        return hist_att[t_index, b, s_index]  # (steps, L)

    results: list[list[Hypothesis]] = []
    for b in range(B):
        found: list[Hypothesis] = []
        for score, index in zip(top_fin[b], top_fin_index[b]):
            if score == float("-inf"):
                break
            t, rank = divmod(index, k)
            parent = fin_parents[t][b][rank]
            words, where, sums = trace(b, parent, t - 1) if t > 0 else ([], [], [])
            found.append(Hypothesis(words, score, _maps(gather_maps(b, where + [(t, parent)]), grid), True,
                                    differences(sums + [fin_raws[t][b][rank]])))
        for slot in live_order[b]:
            if len(found) >= n_best or live[b][slot] == float("-inf"):
                break
            words, where, sums = trace(b, slot, steps - 1)
            found.append(Hypothesis(words, live[b][slot], _maps(gather_maps(b, where), grid), False, differences(sums)))
        results.append(found)
    return results
