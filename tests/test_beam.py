"""Greedy and batched beam search on a synthetic stateful model (no network weights involved).

The toy model's next-token distribution and attention depend on its whole history through a hidden
state, so a beam that is re-indexed wrongly produces scores or maps that a replay of its tokens exposes.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from visattn.heads.beam import Hypothesis, beam_search, expand_for_beams, greedy_search

END, START = 0, 4
VOCAB, LOCATIONS = 5, 6


class ToyModel:
    """State h (N, 2); h' = tanh(A h + e[prev]); log p = log_softmax(W h' + b); α = softmax(G h')."""

    def __init__(self, seed: int = 0, *, end_bias: float = 0.0):
        g = torch.Generator().manual_seed(seed)
        self.A = torch.randn(2, 2, generator=g) * 0.8
        self.e = torch.randn(VOCAB, 2, generator=g)
        self.W = torch.randn(VOCAB, 2, generator=g) * 2.0
        self.b = torch.randn(VOCAB, generator=g)
        self.b[END] += end_bias
        self.G = torch.randn(LOCATIONS, 2, generator=g)

    def step(self, prev, state):
        (h,) = state
        h = torch.tanh(h @ self.A.T + self.e[prev])  # (N, 2)
        log_probs = torch.log_softmax(h @ self.W.T + self.b, dim=-1)
        log_probs[:, START] = float("-inf")  # never generate <start>
        return log_probs, torch.softmax(h @ self.G.T, dim=-1), (h,)

    def initial(self, batch: int, seed: int = 1):
        return (torch.randn(batch, 2, generator=torch.Generator().manual_seed(seed)),)

    def replay(self, h0, tokens: list[int], finished: bool):
        """Score and maps of one sequence fed token by token (the ground truth for a hypothesis)."""
        state, prev, total, maps = (h0.unsqueeze(0),), torch.tensor([START]), 0.0, []
        for token in tokens + ([END] if finished else []):
            log_probs, alpha, state = self.step(prev, state)
            total += float(log_probs[0, token])
            maps.append(alpha[0])
            prev = torch.tensor([token])
        return total, torch.stack(maps)

    def replay_steps(self, h0, tokens: list[int], finished: bool) -> list[float]:
        """The log-probability of every scored step of one sequence (its words, then <end> if finished)."""
        state, prev, steps = (h0.unsqueeze(0),), torch.tensor([START]), []
        for token in tokens + ([END] if finished else []):
            log_probs, _, state = self.step(prev, state)
            steps.append(float(log_probs[0, token]))
            prev = torch.tensor([token])
        return steps


def run_beam(model, state, batch, k, **kw):
    state = tuple(expand_for_beams(s, k) for s in state)
    return beam_search(model.step, state, batch_size=batch, beam_size=k, start_id=START, end_id=END, **kw)


def run_greedy(model, state, batch, **kw):
    return greedy_search(model.step, state, batch_size=batch, start_id=START, end_id=END, **kw)


def assert_same(a: list[list[Hypothesis]], b: list[list[Hypothesis]]):
    assert len(a) == len(b)
    for hyps_a, hyps_b in zip(a, b):
        assert [h.tokens for h in hyps_a] == [h.tokens for h in hyps_b]
        assert [h.finished for h in hyps_a] == [h.finished for h in hyps_b]
        for x, y in zip(hyps_a, hyps_b):
            assert x.score == pytest.approx(y.score, abs=1e-5)
            torch.testing.assert_close(x.attention, y.attention, atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", range(4))
def test_beam_size_one_equals_greedy(seed):
    model = ToyModel(seed)
    state = model.initial(6, seed)
    assert_same(run_beam(model, state, 6, 1, max_len=7), run_greedy(model, state, 6, max_len=7))


@pytest.mark.parametrize("length_penalty", [0.0, 0.7])
def test_batched_equals_one_image_at_a_time(length_penalty):
    model = ToyModel(3)
    state = model.initial(5)
    batched = run_beam(model, state, 5, 3, max_len=8, n_best=3, length_penalty=length_penalty)
    single = [run_beam(model, (state[0][i : i + 1],), 1, 3, max_len=8, n_best=3,
                       length_penalty=length_penalty)[0] for i in range(5)]
    assert_same(batched, single)
    greedy_single = [run_greedy(model, (state[0][i : i + 1],), 1, max_len=8)[0] for i in range(5)]
    assert_same(run_greedy(model, state, 5, max_len=8), greedy_single)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_hypotheses_replay_and_are_sorted(length_penalty):
    model = ToyModel(1)
    state = model.initial(4)
    results = run_beam(model, state, 4, 4, max_len=6, n_best=4, length_penalty=length_penalty)
    for b, hyps in enumerate(results):
        assert len(hyps) == 4
        finished_scores = [h.score for h in hyps if h.finished]
        assert finished_scores == sorted(finished_scores, reverse=True)
        assert all(h.finished for h in hyps[: len(finished_scores)])  # finished ones come first
        for h in hyps:
            assert END not in h.tokens and START not in h.tokens
            total, maps = model.replay(state[0][b], h.tokens, h.finished)
            steps = len(h.tokens) + int(h.finished)
            assert h.attention.shape == (steps, LOCATIONS)
            assert h.score == pytest.approx(total / steps**length_penalty, abs=1e-5)
            torch.testing.assert_close(h.attention, maps, atol=1e-6, rtol=0)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_every_word_carries_its_own_log_probability(beam_size):
    model = ToyModel(2, end_bias=-1.0)
    state = model.initial(5)
    search = (lambda: run_greedy(model, state, 5, max_len=6)) if beam_size == 1 else \
        (lambda: run_beam(model, state, 5, beam_size, max_len=6, n_best=beam_size, length_penalty=0.5))
    for b, hyps in enumerate(search()):
        for h in hyps:
            expected = model.replay_steps(state[0][b], h.tokens, h.finished)
            assert len(h.token_logprobs) == len(h.attention) == len(expected)
            assert h.token_logprobs == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("length_penalty, end_bias", [(0.0, 0.0), (0.5, 0.0), (1.0, -1.0), (2.0, -1.5)])
def test_wide_beam_is_exhaustive(length_penalty, end_bias):
    """With k above the number of candidates, beam search (early stop included) returns the exact n best."""
    model = ToyModel(5, end_bias=end_bias)
    state = model.initial(2)
    max_len, words = 5, [1, 2, 3]
    results = run_beam(model, state, 2, 256, max_len=max_len, n_best=5, length_penalty=length_penalty)
    for b in range(2):
        every = []
        for n in range(max_len):  # finished sequences: n words then <end>
            for seq in itertools.product(words, repeat=n):
                total, _ = model.replay(state[0][b], list(seq), True)
                every.append((total / (n + 1) ** length_penalty, list(seq)))
        every.sort(key=lambda x: -x[0])
        assert [h.tokens for h in results[b]] == [seq for _, seq in every[:5]]
        assert [h.score for h in results[b]] == pytest.approx([s for s, _ in every[:5]], abs=1e-5)


@pytest.mark.parametrize("length_penalty, best, score", [(0.0, [], 0.6), (1.0, [1], (0.4 * 0.99) ** 0.5)])
def test_early_stop_respects_length_normalisation(length_penalty, best, score):
    """After one step "<end>" (p 0.6) beats every live beam's sum, but "a <end>" (0.4 · 0.99) wins per word."""
    table = torch.full((VOCAB, VOCAB), 1e-9)
    table[START, END], table[START, 1] = 0.6, 0.4
    table[1, END], table[1, 1] = 0.99, 0.01
    table[2:4, 1] = 1.0
    log_table = (table / table.sum(dim=1, keepdim=True)).log()

    def step(prev, state):
        return log_table[prev], torch.full((prev.shape[0], 2), 0.5), state

    for k in (1, 2):
        hyps = beam_search(step, (torch.zeros(k, 1),), batch_size=1, beam_size=k, start_id=START, end_id=END,
                           max_len=4, length_penalty=length_penalty)[0]
        assert hyps[0].tokens == best
        assert hyps[0].score == pytest.approx(torch.tensor(score).log().item(), abs=1e-4)


def test_no_end_returns_best_unfinished():
    model = ToyModel(2, end_bias=-1e9)  # <end> practically impossible
    state = model.initial(3)
    for results in (run_beam(model, state, 3, 3, max_len=5, n_best=2), run_greedy(model, state, 3, max_len=5)):
        for b, hyps in enumerate(results):
            assert hyps and all(not h.finished for h in hyps)
            for h in hyps:
                assert len(h.tokens) == 5 and h.attention.shape == (5, LOCATIONS)
                total, _ = model.replay(state[0][b], h.tokens, False)
                assert h.score == pytest.approx(total, abs=1e-4)
            assert [h.score for h in hyps] == sorted([h.score for h in hyps], reverse=True)


def test_finished_attention_includes_the_end_step_and_grid_shapes_maps():
    model = ToyModel(0, end_bias=3.0)  # ends early
    state = model.initial(2)
    for hyps in run_beam(model, state, 2, 2, max_len=6, n_best=2, grid=(2, 3)):
        for h in hyps:
            assert h.finished
            assert h.attention.shape == (len(h.tokens) + 1, 2, 3)
            torch.testing.assert_close(h.attention.sum(dim=(1, 2)), torch.ones(len(h.tokens) + 1))


@pytest.mark.parametrize("kwargs", [dict(beam_size=0), dict(max_len=0), dict(n_best=3, beam_size=2),
                                    dict(length_penalty=-1.0), dict(beam_size=2.0)])
def test_usage_errors(kwargs):
    model = ToyModel(0)
    options = dict(beam_size=2, max_len=4, n_best=1, length_penalty=0.0) | kwargs
    state = (torch.zeros(2, 2),)
    with pytest.raises(ValueError, match=next(iter(kwargs)).split("_")[0]):
        beam_search(model.step, state, batch_size=1, start_id=START, end_id=END, **options)


def test_greedy_usage_error():
    model = ToyModel(0)
    with pytest.raises(ValueError, match="max_len"):
        run_greedy(model, model.initial(1), 1, max_len=0)
