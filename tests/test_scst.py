"""Self-critical training: the reward equals CIDEr-D, samples carry their log-probabilities, baselines, errors."""

from __future__ import annotations

import pytest
import torch

from visattn.encoders import EncoderConfig
from visattn.heads.captioner import Captioner, CaptionerConfig
from visattn.heads.scst import CaptionReward, loss_scst, sample_captions
from visattn.metrics.captions import cider_d

VOCAB = ["<pad>", "<start>", "<end>", "<unk>"] + [f"w{i}" for i in range(8)]
REFS = [[["w0", "w1", "w2"], ["w0", "w1"]], [["w3", "w4", "w5", "w6"]], [["w7", "w0"], ["w7", "w1", "w2"]]]


def tiny(**overrides) -> Captioner:
    torch.manual_seed(0)
    options = dict(encoder=EncoderConfig(width=8, depth=2, num_downsample=2), vocab=VOCAB, attention_dim=16,
                   decoder_dim=16, embed_dim=8, dropout=0.0, max_len=6)
    return Captioner(CaptionerConfig(**(options | overrides)))


def test_reward_is_cider_d_with_the_training_document_frequencies():
    candidates = [["w0", "w1", "w2"], ["w3", "w5"], ["w2", "w2", "w7"]]
    reward = CaptionReward(REFS)
    torch.testing.assert_close(reward(candidates, REFS), torch.tensor(cider_d(candidates, REFS)), rtol=1e-6, atol=1e-6)
    # idf comes from the training set, not from the batch: one image scored alone keeps its score
    torch.testing.assert_close(reward(candidates[:1], REFS[:1]), reward(candidates, REFS)[:1])
    mixed = CaptionReward(REFS, weights={"CIDEr-D": 1.0, "BLEU-4": 2.0})
    assert float(mixed(candidates[:1], REFS[:1])) > float(reward(candidates[:1], REFS[:1]))
    with pytest.raises(ValueError, match="unknown reward metrics \\['METEOR'\\]; valid: CIDEr-D, BLEU-4"):
        CaptionReward(REFS, weights={"METEOR": 1.0})


def test_samples_carry_the_models_own_log_probabilities():
    model = tiny().eval()
    features, _ = model.encode(torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)))
    torch.manual_seed(2)
    sampled = sample_captions(model, features, num_samples=2, max_len=6)
    assert sampled.tokens.shape[0] == 6 and sampled.tokens.shape == sampled.log_probs.shape == sampled.mask.shape
    assert sampled.log_probs.requires_grad
    # teacher-forcing each sample through forward gives the same per-token log-probabilities
    lengths = sampled.mask.sum(dim=1)
    tokens = torch.cat([torch.full((6, 1), model.start_id), sampled.tokens], dim=1)
    out = model(features=features.repeat_interleave(2, dim=0), tokens=tokens, lengths=lengths + 1)
    teacher = out["logits"].log_softmax(-1).gather(2, sampled.tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(teacher * sampled.mask, sampled.log_probs.detach(), rtol=1e-4, atol=1e-5)
    # nothing after <end>
    for row, length in zip(sampled.tokens, lengths.tolist()):
        assert bool((row[length:] == 0).all())
        if length < sampled.tokens.shape[1]:
            assert int(row[length - 1]) == model.end_id


@pytest.mark.parametrize("baseline", ["greedy", "mean"])
def test_loss_and_baselines(baseline):
    model = tiny().train()
    features, _ = model.encode(torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)))
    reward = CaptionReward(REFS)
    torch.manual_seed(3)
    terms = loss_scst(model, features, REFS, reward, num_samples=4, baseline=baseline)
    assert set(terms) == {"loss_scst", "reward", "reward_baseline"}
    terms["loss_scst"].backward()
    assert model.out_vocab.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    if baseline == "mean":  # the mean of the others: the samples' rewards and baselines have the same mean
        torch.testing.assert_close(terms["reward"], terms["reward_baseline"])
    else:
        greedy = model.generate(features=features.detach(), beam_size=1, max_len=6)
        words = [[VOCAB[t] for t in h[0].tokens] for h in greedy]
        torch.testing.assert_close(terms["reward_baseline"], reward(words, REFS).mean())


def test_bad_arguments():
    model = tiny().train()
    features, _ = model.encode(torch.rand(3, 3, 16, 16))
    with pytest.raises(ValueError, match="unknown baseline 'critic'; valid: greedy, mean"):
        loss_scst(model, features, REFS, CaptionReward(REFS), baseline="critic")
    with pytest.raises(ValueError, match="needs num_samples >= 2"):
        loss_scst(model, features, REFS, CaptionReward(REFS), baseline="mean", num_samples=1)
    with pytest.raises(ValueError, match="needs the training references"):
        CaptionReward([])


SCENE = [{"class_name": "seven", "colour": "red", "size": "large"}, {"class_name": "star", "colour": "blue", "size": "small"}]


def test_content_reward_pays_for_the_right_objects_only():
    refs = [[["a", "large", "red", "seven", "and", "a", "small", "blue", "star"]]]
    content = CaptionReward(refs, weights={"content": 1.0})
    right = ["a", "small", "blue", "star", "and", "a", "red", "seven"]  # another order, the same objects
    wrong_class = ["a", "large", "red", "eight", "and", "a", "small", "blue", "star"]
    missing = ["a", "large", "red", "seven"]
    scores = content([right, wrong_class, missing], refs * 3, [SCENE] * 3)
    torch.testing.assert_close(scores, torch.tensor([1.0, 0.5, 2 / 3]))
    # mixed with CIDEr-D: the sum of the two, each with its weight
    mixed = CaptionReward(refs, weights={"CIDEr-D": 1.0, "content": 2.0})
    cider = CaptionReward(refs)
    torch.testing.assert_close(mixed([wrong_class], refs, [SCENE]), cider([wrong_class], refs) + 2.0 * 0.5)
    assert not cider.needs_objects and mixed.needs_objects
    with pytest.raises(ValueError, match="'content' reward needs each image's scene objects"):
        mixed([right], refs)
    with pytest.raises(ValueError, match="1 candidates but 2 object lists"):
        mixed([right], refs, [SCENE, SCENE])


def test_loss_with_the_content_reward_reaches_the_scene_objects():
    model = tiny().train()
    features, _ = model.encode(torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)))
    scenes = [[{"class_name": "w0", "colour": None, "size": None}]] * 3
    reward = CaptionReward(REFS, weights={"CIDEr-D": 1.0, "content": 1.0})
    torch.manual_seed(3)
    terms = loss_scst(model, features, REFS, reward, num_samples=2, baseline="greedy", objects=scenes)
    terms["loss_scst"].backward()
    assert model.out_vocab.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="'content' reward needs each image's scene objects"):
        loss_scst(model, features, REFS, reward, num_samples=2, baseline="mean")
