"""Show, Attend and Tell captioner on the registered tiny_captioner (tests/conftest.py): shapes, invariants,
losses, hard attention, decoding, save/load."""

from __future__ import annotations

import pytest
import torch

from visattn.checkpoint import save_checkpoint
from visattn.config import config_to_dict
from visattn.heads.beam import beam_search, greedy_search
from visattn.heads.captioner import PRESETS, Captioner, CaptionerConfig
from visattn.heads.variants import TINY_VOCAB
from visattn.models import build_model, load

VOCAB = TINY_VOCAB  # the tiny_captioner's 12 tokens: <pad> <start> <end> <unk> w0..w7
PAD, START, END = 0, 1, 2
# <start> w.. <end> <pad>..: three captions of true lengths 5, 3 and 6 tokens.
TOKENS = torch.tensor([[1, 4, 5, 6, 2, 0], [1, 7, 2, 0, 0, 0], [1, 8, 9, 10, 11, 2]])


def images(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


VARIANTS = [
    dict(),
    {k: v for k, v in PRESETS["paper"].items() if k not in ("dropout", "alpha_c")},  # the paper-faithful choices
    dict(deep_output=False),
    dict(output_context=False),
    dict(gate="channel"),
    dict(gate="none"),
    dict(attention="none"),
    dict(attention="scaled_dot"),
    dict(attention="multihead"),
    dict(attention_mode="hard", hard_expected_context_prob=0.0),
    dict(attention_mode="hard", hard_expected_context_prob=1.0),
]


@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_shapes_invariants_and_every_parameter_learns(overrides, tiny_captioner):
    model = tiny_captioner(alpha_c=0.5, **overrides).train()
    out = model(images(), tokens=TOKENS)
    assert out["logits"].shape == (3, 5, len(VOCAB))
    assert out["attention"].shape == (3, 5, 4, 4)  # 16x16 images, two halvings -> 4x4 grid
    assert out["gate"].shape == (3, 5)
    mask = out["mask"]
    assert mask.tolist() == [[True] * 4 + [False], [True] * 2 + [False] * 3, [True] * 5]
    # each real step's map sums to 1; padded steps are not computed and are exactly 0
    torch.testing.assert_close(out["attention"].sum(dim=(2, 3)), mask.float())
    assert bool((out["logits"][~mask] == 0).all()) and bool((out["gate"][~mask] == 0).all())
    assert bool((out["attention"] >= 0).all())
    assert bool(((out["gate"] >= 0) & (out["gate"] <= 1)).all())
    if overrides.get("attention") == "none":
        torch.testing.assert_close(out["attention"], mask[..., None, None] * torch.full((3, 5, 4, 4), 1 / 16))
    terms = model.loss(out, TOKENS)
    expected = {"loss", "loss_ce", "loss_attention_reg"}
    if overrides.get("attention_mode") == "hard":
        expected |= {"loss_reinforce", "loss_entropy"}
    assert set(terms) == expected and set(model.weight_dict) == expected - {"loss"}
    assert all(bool(torch.isfinite(v)) for v in terms.values())
    # DETR style: unweighted named terms, combined by the model's weight dict
    torch.testing.assert_close(terms["loss"], sum(model.weight_dict[k] * v for k, v in terms.items() if k != "loss"))
    terms["loss"].backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing, f"parameters without gradient: {missing}"


@pytest.mark.parametrize("overrides", [dict(), dict(gate="channel", deep_output=False), dict(attention="multihead"),
                                       dict(scheduled_sampling=1.0)],
                         ids=["paper", "channel", "multihead", "scheduled"])
def test_batch_that_drops_ended_captions_equals_one_caption_at_a_time(overrides, tiny_captioner):
    # The forward sorts captions by length and runs each step on the captions still running; every output
    # must equal a pass over that caption alone, with no padding at all. (Scheduled sampling with
    # probability 1 and no dropout is deterministic in training mode: it always feeds its own argmax;
    # the encoder's batch norm stays in eval mode so that an image's features do not depend on its batch.)
    model = tiny_captioner(**overrides).train("scheduled_sampling" in overrides)
    model.encoder.eval()
    pixels = images()
    out = model(pixels, tokens=TOKENS)
    for row, length in enumerate(out["mask"].sum(dim=1).tolist()):
        alone = model(pixels[row : row + 1], tokens=TOKENS[row : row + 1, : length + 1])
        for name in ("logits", "attention", "gate"):
            torch.testing.assert_close(out[name][row, :length], alone[name][0], atol=1e-5, rtol=1e-4)
    # lengths given explicitly (on the CPU) plan the same pass
    same = model(pixels, tokens=TOKENS, lengths=(TOKENS != 0).sum(dim=1))
    torch.testing.assert_close(same["logits"], out["logits"])
    # and the gradients of the summed cross entropy are the sums of the captions' gradients
    def summed_ce(pixels, tokens):
        outputs = model(pixels, tokens=tokens)
        return model.loss(outputs, tokens)["loss_ce"] * outputs["mask"].sum()

    model.zero_grad()
    summed_ce(pixels, TOKENS).backward()
    batched = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    for row, length in enumerate(out["mask"].sum(dim=1).tolist()):
        summed_ce(pixels[row : row + 1], TOKENS[row : row + 1, : length + 1]).backward()
    for name, grad in batched.items():
        torch.testing.assert_close(grad, dict(model.named_parameters())[name].grad, atol=1e-5, rtol=1e-4)


def test_gradients_reach_padded_rows_only_through_real_steps(tiny_captioner):
    # A caption whose padding changes must get exactly the same loss and gradients.
    model = tiny_captioner().eval()
    padded = torch.cat([TOKENS, torch.zeros(3, 4, dtype=torch.long)], dim=1)
    losses, grads = [], []
    for tokens in (TOKENS, padded):
        model.zero_grad()
        loss = model.loss(model(images(), tokens=tokens), tokens)["loss"]
        loss.backward()
        losses.append(loss.detach())
        grads.append(model.lstm_state.weight.grad.clone())
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(grads[0], grads[1])


def test_regulariser_matches_hand_computation(tiny_captioner):
    model = tiny_captioner(alpha_c=0.7)
    out = model(images(), tokens=TOKENS)
    alpha = out["attention"].flatten(2).detach()  # (B, T-1, L)
    lengths = [4, 2, 5]  # decoding steps with a real target per caption
    per_caption = []
    for b, steps in enumerate(lengths):
        total = 0.0
        for i in range(alpha.shape[-1]):
            coverage = sum(float(alpha[b, t, i]) for t in range(steps))
            total += (1.0 - coverage) ** 2
        per_caption.append(total)
    expected = sum(per_caption) / len(per_caption)  # the term is unweighted; alpha_c weighs it in the total
    terms = model.loss(out, TOKENS)
    assert float(terms["loss_attention_reg"].detach()) == pytest.approx(expected, rel=1e-5)
    assert model.weight_dict["loss_attention_reg"] == 0.7
    assert float(terms["loss"].detach()) == pytest.approx(float(terms["loss_ce"].detach()) + 0.7 * expected, rel=1e-5)


def test_cross_entropy_ignores_pads_and_extra_padding_changes_nothing(tiny_captioner):
    model = tiny_captioner(alpha_c=0.3).eval()
    feats = images()
    out = model(feats, tokens=TOKENS)
    terms = model.loss(out, TOKENS)
    padded = torch.cat([TOKENS, torch.zeros(3, 4, dtype=torch.long)], dim=1)  # four more pad columns
    out_padded = model(feats, tokens=padded)
    terms_padded = model.loss(out_padded, padded)
    for key in terms:
        torch.testing.assert_close(terms[key], terms_padded[key])
    torch.testing.assert_close(out_padded["logits"][:, :5], out["logits"])
    # Explicit lengths give the same mask as the pad count.
    with_lengths = model(feats, tokens=TOKENS, lengths=torch.tensor([5, 3, 6]))
    assert torch.equal(with_lengths["mask"], out["mask"])
    manual = torch.nn.functional.cross_entropy(out["logits"].reshape(-1, len(VOCAB)), TOKENS[:, 1:].reshape(-1),
                                               ignore_index=PAD)
    torch.testing.assert_close(terms["loss_ce"], manual)


def test_features_path_equals_images_path(tiny_captioner):
    model = tiny_captioner().eval()
    batch = images()
    features, grid = model.encode(batch)
    assert grid == (4, 4) and features.shape == (3, 16, 8)
    a = model(batch, tokens=TOKENS)
    b = model(features=features, grid=grid, tokens=TOKENS)
    c = model(features=features, tokens=TOKENS)  # square grid inferred
    for key in ("logits", "attention", "gate"):
        torch.testing.assert_close(a[key], b[key])
        torch.testing.assert_close(a[key], c[key])
    hyps_a = model.generate(batch, beam_size=2, max_len=5)
    hyps_b = model.generate(features=features, grid=grid, beam_size=2, max_len=5)
    assert [h[0].tokens for h in hyps_a] == [h[0].tokens for h in hyps_b]


def test_keys_are_prepared_once_per_image(tiny_captioner):
    """The image-only attention term W_k·a runs once per forward / decode, on B rows (never per step or beam)."""
    model = tiny_captioner().eval()
    calls = []
    model.attention.key_proj.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    model(images(), tokens=TOKENS)
    assert calls == [3]
    calls.clear()
    model.generate(images(), beam_size=4, max_len=6)
    assert calls == [3]


def test_bad_inputs_are_clear_errors(tiny_captioner):
    model = tiny_captioner()
    with pytest.raises(ValueError, match="exactly one"):
        model(tokens=TOKENS)
    with pytest.raises(ValueError, match="features must be"):
        model(features=torch.zeros(3, 16, 5), tokens=TOKENS)
    with pytest.raises(ValueError, match="not a square grid"):
        model(features=torch.zeros(3, 6, 8), tokens=TOKENS)
    with pytest.raises(ValueError, match="tokens must be"):
        model(images(), tokens=TOKENS[:2])
    for kwargs in (dict(max_len=0), dict(beam_size=0), dict(beam_size=2, n_best=3)):
        with pytest.raises(ValueError):
            model.generate(images(1), **kwargs)


@pytest.mark.parametrize("overrides, match", [
    (dict(vocab=["<start>", "<pad>", "<end>"]), "<pad>"),
    (dict(vocab=["<pad>", "<start>", "a"]), "<end>"),
    (dict(attention="bogus"), "valid: .*additive"),
    (dict(attention="multihead", attention_mode="hard"), "single-head"),
    (dict(gate="sometimes"), "gate"),
    (dict(scheduled_sampling=1.5), "scheduled_sampling"),
    (dict(deep_output=True), "with deep_output=True set output_context=False"),
])
def test_config_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        CaptionerConfig(**overrides)


def test_hard_attention_samples_and_updates_the_baseline(tiny_captioner):
    model = tiny_captioner(attention_mode="hard", hard_expected_context_prob=0.0, hard_baseline_decay=0.9,
                 hard_reward="caption", hard_baseline="moving_average", hard_entropy=0.01,
                 ).train()  # the paper's estimator and entropy bonus
    out = model(images(), tokens=TOKENS)
    index, alpha = out["attention_index"], out["attention"].flatten(2)
    assert index.shape == (3, 5) and bool(((index >= 0) & (index < 16)).all())
    picked = alpha.gather(2, index.unsqueeze(-1)).squeeze(-1)  # probability of each sampled location
    real = out["mask"]
    torch.testing.assert_close(out["attention_log_prob"][real], picked[real].log())
    assert bool((out["attention_log_prob"][~real] == 0).all())
    terms = model.loss(out, TOKENS)
    reward = -caption_ce(out).detach()  # log p(y | s, a) per caption
    first = reward.mean()
    torch.testing.assert_close(model.reward_baseline, first)  # first update: the batch mean
    # REINFORCE and entropy terms by hand (N = 4 + 2 + 5 = 11 real targets; the first batch's baseline is its mean).
    valid = TOKENS[:, 1:] != PAD
    log_prob = (out["attention_log_prob"] * valid).sum(dim=1)
    torch.testing.assert_close(terms["loss_reinforce"], -((reward - first) * log_prob).sum() / 11)
    torch.testing.assert_close(terms["loss_entropy"], -(out["attention_entropy"] * valid).sum() / 11)
    assert model.weight_dict["loss_entropy"] == 0.01
    assert float(terms["loss_entropy"].detach()) < 0  # an entropy bonus lowers the loss
    out2 = model(images(), tokens=TOKENS)
    terms2 = model.loss(out2, TOKENS)
    reward2 = -caption_ce(out2).detach()
    torch.testing.assert_close(model.reward_baseline, 0.9 * first + 0.1 * reward2.mean())
    assert int(model.reward_baseline_updates) == 2
    log_prob2 = (out2["attention_log_prob"] * valid).sum(dim=1)
    torch.testing.assert_close(terms2["loss_reinforce"], -((reward2 - first) * log_prob2).sum() / 11)
    # Outside training: expected context, no samples, no baseline update.
    model.eval()
    out3 = model(images(), tokens=TOKENS)
    assert "attention_index" not in out3
    terms3 = model.loss(out3, TOKENS)
    assert float(terms3["loss_reinforce"]) == 0.0 and int(model.reward_baseline_updates) == 2


def test_expected_context_probability_picks_sampled_batches(tiny_captioner):
    model = tiny_captioner(attention_mode="hard", hard_expected_context_prob=0.5).train()
    torch.manual_seed(3)
    sampled = sum("attention_index" in model(images(), tokens=TOKENS) for _ in range(40))
    assert 8 <= sampled <= 32


def caption_ce(out: dict) -> torch.Tensor:
    """Per-caption summed cross entropy of TOKENS, computed here independently of Captioner.loss: (B,)."""
    ce = torch.nn.functional.cross_entropy(out["logits"].flatten(0, 1), TOKENS[:, 1:].flatten(), ignore_index=PAD,
                                           reduction="none")
    return ce.view(TOKENS.shape[0], -1).sum(dim=1)


@pytest.mark.parametrize("overrides", [dict(), dict(attention_mode="hard"),
                                       dict(attention_mode="hard", hard_expected_context_prob=0.0)],
                         ids=["soft", "hard", "hard-always-sampled"])
def test_overfits_a_tiny_problem(overrides, tiny_captioner):
    model = tiny_captioner(alpha_c=0.01, **overrides).train()
    batch = images()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(0)

    def mean_ce() -> float:  # in training mode, so hard models are measured as they train (sampled)
        with torch.no_grad():
            return sum(float(caption_ce(model(batch, tokens=TOKENS)).sum()) for _ in range(4)) / 4

    before = mean_ce()
    for _ in range(60):  # a sampled one-cell context also feeds the words directly (output_context): noisier
        terms = model.loss(model(batch, tokens=TOKENS), TOKENS)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
    after = mean_ce()
    assert after < 0.35 * before, (before, after)


def test_scheduled_sampling_feeds_own_predictions(tiny_captioner):
    model = tiny_captioner(scheduled_sampling=1.0).train()
    feats = images()
    other = TOKENS.clone()
    other[:, 1:-1] = torch.where(other[:, 1:-1] > 3, 11 - other[:, 1:-1] + 4, other[:, 1:-1])  # other words
    a, b = model(feats, tokens=TOKENS), model(feats, tokens=other)
    # Only <start> is ever fed from the data, so the words in the input do not matter.
    torch.testing.assert_close(a["logits"], b["logits"])
    model.eval()  # no scheduled sampling outside training: the inputs matter again
    assert not torch.allclose(model(feats, tokens=TOKENS)["logits"], model(feats, tokens=other)["logits"])


def test_dropout_is_active_in_training_only(tiny_captioner):
    model = tiny_captioner(dropout=0.5)
    feats = images()
    model.train()
    assert not torch.equal(model(feats, tokens=TOKENS)["logits"], model(feats, tokens=TOKENS)["logits"])
    model.eval()
    assert torch.equal(model(feats, tokens=TOKENS)["logits"], model(feats, tokens=TOKENS)["logits"])


@pytest.mark.parametrize("overrides", [dict(), dict(attention="none"), dict(gate="channel", deep_output=False),
                                       dict(output_context=False)])
def test_beam_one_equals_greedy_and_batched_equals_single(overrides, tiny_captioner):
    model = tiny_captioner(**overrides).eval()
    features, grid = model.encode(images(4))
    with torch.no_grad():
        step, state = model.decoder_step(features)
        greedy = greedy_search(step, state, batch_size=4, start_id=START, end_id=END, max_len=7)
        step, state = model.decoder_step(features, beam_size=1)
        beam1 = beam_search(step, state, batch_size=4, beam_size=1, start_id=START, end_id=END, max_len=7)
    for g, b in zip(greedy, beam1):
        assert g[0].tokens == b[0].tokens and g[0].score == pytest.approx(b[0].score, abs=1e-5)
        torch.testing.assert_close(g[0].attention, b[0].attention)
    batched = model.generate(features=features, beam_size=3, n_best=3, max_len=7, length_penalty=0.5)
    for i in range(4):
        single = model.generate(features=features[i : i + 1], beam_size=3, n_best=3, max_len=7, length_penalty=0.5)[0]
        assert [h.tokens for h in single] == [h.tokens for h in batched[i]]
        assert [h.score for h in single] == pytest.approx([h.score for h in batched[i]], abs=1e-5)
        for h in batched[i]:
            assert h.attention.shape == (len(h.tokens) + int(h.finished), *grid)
            assert PAD not in h.tokens and START not in h.tokens and END not in h.tokens
        finished = [h.score for h in batched[i] if h.finished]
        assert finished == sorted(finished, reverse=True)


def test_generate_scores_match_teacher_forcing(tiny_captioner):
    """A decoded caption's score is the teacher-forced log-likelihood of that caption."""
    model = tiny_captioner().eval()
    batch = images(2)
    for hyps, image in zip(model.generate(batch, beam_size=3, n_best=2, max_len=6), batch):
        for h in hyps:
            seq = torch.tensor([[START, *h.tokens] + ([END] if h.finished else [])])
            with torch.no_grad():
                out = model(image.unsqueeze(0), tokens=seq)
            log_probs = out["logits"].log_softmax(-1).gather(2, seq[:, 1:].unsqueeze(-1))
            assert h.score == pytest.approx(float(log_probs.sum()), abs=1e-4)
            torch.testing.assert_close(h.attention, out["attention"][0])


def test_generate_without_end_returns_unfinished(tiny_captioner):
    model = tiny_captioner().eval()
    with torch.no_grad():
        model.out_vocab.bias[END] = -1e9
    for beam_size in (1, 3):
        for hyps in model.generate(images(2), beam_size=beam_size, n_best=beam_size, max_len=4):
            assert len(hyps) == beam_size
            assert all(not h.finished and len(h.tokens) == 4 and h.attention.shape == (4, 4, 4) for h in hyps)
    assert model.training is False


def test_save_load_round_trip(tmp_path, tiny_captioner):
    model = build_model("captioner", tiny_captioner(attention_mode="hard").config)
    model.train()
    model.loss(model(images(), tokens=TOKENS), TOKENS)  # moves the baseline buffer off zero
    model.eval()
    path = save_checkpoint(tmp_path / "cap.safetensors", model, task="caption", model_name="captioner",
                           config=config_to_dict(model.config))
    loaded = load(path, task="caption")
    assert isinstance(loaded, Captioner) and not loaded.training
    assert loaded.config == model.config
    torch.testing.assert_close(loaded.reward_baseline, model.reward_baseline)
    a, b = model(images(), tokens=TOKENS), loaded(images(), tokens=TOKENS)
    for key in ("logits", "attention", "gate"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    ha, hb = model.generate(images(), beam_size=2, max_len=5), loaded.generate(images(), beam_size=2, max_len=5)
    assert [h[0].tokens for h in ha] == [h[0].tokens for h in hb]


def test_bf16_autocast_trains_like_fp32(tiny_captioner):
    # What `visattn train --dtype bf16` runs on a CPU: fp32 weights, bf16 products (the per-step weights are
    # cast once per pass by StepLinear); gradients land on the fp32 parameters and follow fp32's.
    model = tiny_captioner(gate="channel").train()
    pixels = images()
    model.zero_grad()
    model.loss(model(pixels, tokens=TOKENS), TOKENS)["loss"].backward()
    fp32_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(pixels, tokens=TOKENS)
        terms = model.loss(out, TOKENS)
    assert out["real_logits"].dtype == torch.bfloat16 and terms["loss"].dtype == torch.float32
    terms["loss"].backward()
    for name, grad in fp32_grads.items():
        low = dict(model.named_parameters())[name].grad
        assert low.dtype == torch.float32, name
        if float(grad.norm()) < 1e-6:  # the score's bias: its gradient is zero up to rounding (softmax shift)
            continue
        cosine = torch.nn.functional.cosine_similarity(low.flatten(), grad.flatten(), dim=0)
        assert float(cosine) > 0.95, (name, float(cosine))  # bf16 rounding; a wrong gradient is far off


def test_captions_without_targets_cost_nothing_and_break_nothing(tiny_captioner):
    # Rows of only <start> (length 1) never run; a batch of them gives zero outputs and a zero loss.
    model = tiny_captioner().train()
    tokens = torch.tensor([[1, 0, 0], [1, 0, 0]])
    out = model(images(2), tokens=tokens)
    assert out["real_logits"].shape == (0, len(VOCAB)) and not bool(out["mask"].any())
    assert bool((out["logits"] == 0).all()) and bool((out["attention"] == 0).all())
    terms = model.loss(out, tokens)
    assert float(terms["loss"].detach()) == 0.0
    # mixed with a real caption, only that caption's steps run
    mixed = torch.tensor([[1, 0, 0, 0], [1, 4, 5, 2]])
    out = model(images(2), tokens=mixed)
    assert out["mask"].tolist() == [[False] * 3, [True] * 3]
    assert out["real_logits"].shape == (3, len(VOCAB))
    # lengths longer than the tokens are clipped to them
    same = model.eval()(images(2), tokens=mixed, lengths=torch.tensor([1, 9]))
    assert same["mask"].tolist() == [[False] * 3, [True] * 3]


def test_presets_name_whole_configurations():
    paper = CaptionerConfig.preset("paper", vocab=VOCAB)
    assert (paper.gate, paper.deep_output, paper.init_activation) == ("scalar", True, "tanh")
    assert paper.vocab == VOCAB  # overrides on top of the preset
    assert CaptionerConfig.preset("default") == CaptionerConfig()
    with pytest.raises(ValueError, match="unknown preset 'fast'; valid: paper, default"):
        CaptionerConfig.preset("fast")
    for overrides, match in ((dict(hard_baseline="moving_average"), "needs hard_baseline='batch'"),
                             (dict(init_activation="relu"), "init_activation"), (dict(init_scheme="xavier"), "init_scheme")):
        with pytest.raises(ValueError, match=match):
            CaptionerConfig(**overrides)


def test_hard_reward_to_go_with_the_batch_baseline_by_hand(tiny_captioner):
    model = tiny_captioner(attention_mode="hard", hard_expected_context_prob=0.0).train()  # defaults: to_go, batch
    out = model(images(), tokens=TOKENS)
    terms = model.loss(out, TOKENS)
    valid = (TOKENS[:, 1:] != PAD).float()
    ce = torch.nn.functional.cross_entropy(out["logits"].flatten(0, 1), TOKENS[:, 1:].flatten(), ignore_index=PAD,
                                           reduction="none").view(3, -1).detach()
    expected = 0.0
    for b in range(3):
        for t in range(5):
            if not valid[b, t]:
                continue
            to_go = lambda row: -float(ce[row, t:].sum())  # noqa: E731  (log-likelihood of the words still ahead)
            others = [to_go(r) for r in range(3) if r != b and valid[r, t]]
            advantage = to_go(b) - sum(others) / len(others) if others else 0.0
            expected -= advantage * float(out["attention_log_prob"][b, t].detach())
    assert float(terms["loss_reinforce"].detach()) == pytest.approx(expected / 11, rel=1e-4, abs=1e-6)
    assert int(model.reward_baseline_updates) == 0  # the batch baseline keeps no running state
