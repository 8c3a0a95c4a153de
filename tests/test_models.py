"""Every registered model, full size and tiny, honours the model contract: built by name, it runs forward and
backward with a gradient for every trainable parameter, and a checkpoint rebuilds it with identical outputs.

A model registered with ``register_model`` or ``register_variant`` joins these tests without editing this file.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from visattn.checkpoint import read_checkpoint, save_checkpoint
from visattn.config import config_to_dict
from visattn.models import build_model, list_models, load, model_entry, register_variant

MODELS = list_models()


def test_the_tiny_variants_are_registered_like_real_models():
    for task, base in (("classify", "classifier"), ("caption", "captioner"), ("detect", "detector")):
        assert list_models(task=task) == [base, f"tiny_{base}"]
        tiny, full = model_entry(f"tiny_{base}"), model_entry(base)
        assert (tiny.cls, tiny.config_cls, tiny.task) == (full.cls, full.config_cls, full.task)
        assert build_model(f"tiny_{base}").config != build_model(base).config
        assert count_parameters(build_model(f"tiny_{base}")) < count_parameters(build_model(base)) / 20
    with pytest.raises(ValueError, match="already registered"):
        register_variant("tiny_classifier", base="classifier", config=lambda: None)
    with pytest.raises(ValueError, match="unknown base model 'resnet'"):
        register_variant("tiny_resnet", base="resnet", config=lambda: None)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def example_inputs(name: str, model: nn.Module) -> tuple[tuple, dict]:
    """Two images at the model's training size, and for a captioner two captions of different lengths."""
    size = model.config.image_size
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    if model_entry(name).task != "caption":
        return (images,), {}
    vocab = model.config.vocab
    words = [i for i, token in enumerate(vocab) if not token.startswith("<")] or [vocab.index("<unk>")]
    start, end, pad = vocab.index("<start>"), vocab.index("<end>"), 0
    tokens = torch.tensor([[start, words[0], words[-1], words[0], end], [start, words[-1], end, pad, pad]])
    return (images,), {"tokens": tokens}


def tensors(out) -> list[Tensor]:
    """Every floating-point tensor of a model's output, nested lists and dicts (``aux_outputs``) included."""
    if isinstance(out, Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict):
        return [t for key in sorted(out) for t in tensors(out[key])]
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in tensors(item)]
    return []


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_gives_every_trainable_parameter_a_gradient(name):
    torch.manual_seed(0)
    model = build_model(name).train()
    args, kwargs = example_inputs(name, model)
    outputs = tensors(model(*args, **kwargs))
    assert outputs and all(bool(torch.isfinite(t).all()) for t in outputs)
    # A fixed random weighting of every output, so every output (and every location of every map) matters.
    g = torch.Generator().manual_seed(2)
    sum((t * torch.randn(t.shape, generator=g)).sum() for t in outputs).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None]
    assert not missing, f"{name}: parameters without gradient: {missing}"
    assert all(bool(torch.isfinite(p.grad).all()) for _, p in trainable)
    # softmax(s + b) = softmax(s): a scoring bias gets zero gradient in exact arithmetic, and in floating point
    # either exactly 0 or rounding noise depending on the CPU's kernels; assert that instead of a nonzero one.
    shift_invariant = [(n, p) for n, p in trainable if n.endswith("attention.score.bias")]
    assert all(float(p.grad.abs().max()) < 1e-5 for _, p in shift_invariant), shift_invariant
    zero = [n for n, p in trainable if not bool(p.grad.abs().sum() > 0) and (n, p) not in shift_invariant]
    assert not zero, f"{name}: parameters whose gradient is exactly zero: {zero}"


@pytest.mark.parametrize("name", MODELS)
def test_save_then_load_rebuilds_the_model_with_identical_outputs(name, tmp_path):
    torch.manual_seed(0)
    model = build_model(name)
    entry = model_entry(name)
    path = save_checkpoint(tmp_path / f"{name}.safetensors", model, task=entry.task, model_name=name,
                           config=config_to_dict(model.config))
    assert read_checkpoint(path).model == name
    loaded = load(path, task=entry.task)
    assert type(loaded) is type(model) and loaded.config == model.config and not loaded.training
    args, kwargs = example_inputs(name, model)
    with torch.no_grad():
        expected, got = tensors(model.eval()(*args, **kwargs)), tensors(loaded(*args, **kwargs))
    assert len(expected) == len(got) > 0
    for a, b in zip(expected, got):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
