"""Attention supervision: the loss measures exactly the metric's mass, targets follow the alignment, errors."""

from __future__ import annotations

import pytest
import torch

from visattn.data.caption_data import CaptionDataset, collate, scene_data
from visattn.encoders import EncoderConfig
from visattn.heads.attention_supervision import attention_targets, cell_weights, loss_attention_sup
from visattn.heads.captioner import Captioner, CaptionerConfig
from visattn.metrics.attention_correctness import mass_in_masks
from visattn.metrics.localisation import box_masks


@pytest.fixture(scope="module")
def batch():
    data = scene_data(num_train=6, num_val=2, image_size=32, num_objects=(1, 3), seed=4, small_scale=(0.26, 0.3),
                      large_scale=(0.4, 0.45))
    items = CaptionDataset(data.train, data.train.tokens, data.vocab, mode="pairs")
    return collate([items[i] for i in range(0, len(items), 3)]), data.vocab


def test_cell_weights_give_the_metric_mass_exactly():
    torch.manual_seed(0)
    maps = torch.rand(5, 4, 4) ** 4  # peaked, non-negative
    regions = torch.rand(5, 32, 32) > 0.7
    inside, total = cell_weights(regions, (4, 4))
    flat = maps.flatten(1)
    mass = (flat * inside).sum(dim=1) / (flat @ total)
    torch.testing.assert_close(mass, mass_in_masks(maps, regions), rtol=1e-5, atol=1e-6)


def test_targets_follow_the_alignment_and_the_loss_is_minus_log_mass(batch):
    batch, _ = batch
    targets = attention_targets(batch, (4, 4))
    steps = batch["tokens"].shape[1] - 1
    assert targets["objects"].shape == (len(batch["tokens"]), steps)
    for i, index in enumerate(batch["caption_index"]):
        words = len(batch["alignment"][i][index])
        assert targets["objects"][i, :words].tolist() == batch["alignment"][i][index]
        assert bool((targets["objects"][i, words:] == -1).all())  # <end> and padding are not aligned
        assert bool((targets["inside"][i, len(batch["boxes"][i]):] == 0).all())  # slots past its objects
    assert len({len(b) for b in batch["boxes"]}) > 1  # images with different object counts share the batch
    torch.manual_seed(1)
    attention = torch.rand(len(batch["tokens"]), steps, 4, 4).softmax(dim=-1).requires_grad_()
    loss = loss_attention_sup(attention, targets)
    expected = []
    for i, step in (targets["objects"] >= 0).nonzero().tolist():
        k = int(targets["objects"][i, step])
        box = box_masks(torch.as_tensor(batch["boxes"][i]).reshape(-1, 4)[k : k + 1], (32, 32))
        expected.append(-torch.log(mass_in_masks(attention[i, step : step + 1].detach(), box) + 1e-6))
    torch.testing.assert_close(loss.detach(), torch.cat(expected).mean(), rtol=1e-4, atol=1e-5)
    loss.backward()
    assert attention.grad is not None and bool(attention.grad.abs().sum() > 0)
    # all mass on the named object's box costs (almost) nothing
    focused = torch.zeros_like(attention.detach())
    for i, step in (targets["objects"] >= 0).nonzero().tolist():
        k = int(targets["objects"][i, step])
        box = torch.as_tensor(batch["boxes"][i]).reshape(-1, 4)[k]
        focused[i, step, int((box[1] + box[3]) / 16), int((box[0] + box[2]) / 16)] = 1.0  # the centre's cell
    assert float(loss_attention_sup(focused, targets)) < float(loss.detach())


def test_captioner_loss_adds_the_weighted_term_and_errors_without_targets(batch):
    batch, vocab = batch
    config = CaptionerConfig(encoder=EncoderConfig(width=8, depth=3, num_downsample=3), vocab=vocab.to_list(),
                             attention_dim=16, decoder_dim=16, embed_dim=8, attention_supervision=0.5)
    model = Captioner(config)
    out = model(batch["images"], tokens=batch["tokens"], lengths=batch["lengths"])
    with pytest.raises(ValueError, match="attention_supervision > 0 needs attention_targets"):
        model.loss(out, batch["tokens"])
    terms = model.loss(out, batch["tokens"], attention_targets=attention_targets(batch, out["attention"].shape[-2:]))
    assert model.weight_dict["loss_attention_sup"] == 0.5
    torch.testing.assert_close(terms["loss"], terms["loss_ce"] + 0.5 * terms["loss_attention_sup"])
    terms["loss_attention_sup"].backward()
    assert model.attention.key_proj.weight.grad.abs().sum() > 0


def test_data_without_alignment_is_a_clear_error(batch):
    batch, _ = batch
    coco_like = {k: v for k, v in batch.items() if k not in ("alignment", "masks")}
    with pytest.raises(ValueError, match="needs word-to-object alignments"):
        attention_targets(coco_like, (4, 4))
    with pytest.raises(ValueError, match="unknown region 'circle'; valid: box, mask, box_and_mask"):
        attention_targets(batch, (4, 4), region="circle")
    with pytest.raises(ValueError, match="needs an attention"):
        CaptionerConfig(attention="none", attention_supervision=1.0)


def test_caption_task_supervises_the_configured_region(batch):
    """``attention_supervision_region`` reaches the task's criterion: its term is the loss against that region's
    targets; a mask lies inside its box, so its loss is larger, and ``box_and_mask`` is −log of the mean mass."""
    from visattn.tasks.caption import CaptionTask

    batch, vocab = batch
    losses = {}
    for region in ("box", "mask", "box_and_mask"):
        torch.manual_seed(0)
        config = CaptionerConfig(encoder=EncoderConfig(width=8, depth=3, num_downsample=3), vocab=vocab.to_list(),
                                 attention_dim=16, decoder_dim=16, embed_dim=8, dropout=0.0,
                                 attention_supervision=1.0, attention_supervision_region=region)
        model = Captioner(config).eval()
        terms = CaptionTask().criterion(model, batch, torch.device("cpu"))
        out = model(batch["images"], tokens=batch["tokens"], lengths=batch["lengths"])
        expected = loss_attention_sup(out["attention"], attention_targets(batch, out["attention"].shape[-2:],
                                                                          region=region))
        torch.testing.assert_close(terms["loss_attention_sup"], expected)
        losses[region] = float(expected.detach())
    assert losses["mask"] > losses["box_and_mask"] > losses["box"]
    inside = {region: attention_targets(batch, (4, 4), region=region)["inside"] for region in losses}
    torch.testing.assert_close(inside["box_and_mask"], (inside["box"] + inside["mask"]) / 2)  # the mean mass
    with pytest.raises(ValueError, match="attention_supervision_region: expected one of box, mask, box_and_mask"):
        CaptionerConfig(attention_supervision_region="circle")
