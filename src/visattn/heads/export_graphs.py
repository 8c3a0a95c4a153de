"""Exportable graphs of the three models: plain tensors in, plain tensors out, no Python-side search.

An exporter (``torch.onnx.export``, ``torch.export.export``) records one forward pass of a module whose inputs
and outputs are tensors. The models return dicts and the captioner decodes in a Python loop, so each model gets
a thin wrapper here that calls the model's own layers (nothing is re-implemented, so the graphs compute what
eager PyTorch computes) and returns a tuple:

    classifier  images (B, 3, S, S) -> pred_logits (B, K), attention (B, G, H', W')
    detector    images (B, 3, S, S) -> pred_logits (B, Q, K+1), pred_boxes (B, Q, 4) cxcywh in [0, 1],
                                       attention (B, Q, H', W')
    captioner   encoder: images (B, 3, S, S) -> keys, values, h (B, D), c (B, D)
                step:    prev_tokens (B, k) int64, h (B, k, D), c (B, k, D), keys, values
                             -> log_probs (B, k, V), attention (B, k, L), h_out (B, k, D), c_out (B, k, D)

The captioner is split as in :meth:`~visattn.heads.captioner.Captioner.decoder_step`: what depends on the image
alone (the attention keys and values, the initial LSTM state) is computed once by ``encoder``; ``step`` is one
decoding step for k hypotheses of each of B images (k = 1 for greedy search). Keys stay (B, ...), one copy per
image: the k beams of an image are k queries of its keys, so B and k are two independent dynamic sizes. Keys are
(B, L, A) for single-head scoring functions, (B, h, L, d) for ``multihead``; with ``attention="none"`` (Show
and Tell) ``keys`` is the mean feature (B, 1, C) that every step reads and ``values`` the grid (B, L, C),
which only sets the uniform map's size. Hard-attention models export the expected context, as
:meth:`~visattn.heads.captioner.Captioner.generate` decodes them. ``<pad>`` and ``<start>`` get
log-probability -inf, as in ``decoder_step``.

Additive attention builds its score tensor in pieces when autograd is off and the batch is large; that loop's
length depends on the batch, which an exported graph cannot hold. :func:`export_mode` therefore traces with
autograd on (and every parameter frozen), where it computes the same scores in one piece.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor, nn

from visattn.attention import AttentionKeys

__all__ = ["ClassifierGraph", "DetectorGraph", "CaptionEncoderGraph", "CaptionStepGraph", "graphs_for",
           "export_mode", "GRAPH_SIGNATURES"]

#: Input and output names of every graph, in order (the ONNX names; torch.export keeps the order).
GRAPH_SIGNATURES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "classifier": (("images",), ("pred_logits", "attention")),
    "detector": (("images",), ("pred_logits", "pred_boxes", "attention")),
    "encoder": (("images",), ("keys", "values", "h", "c")),
    "step": (("prev_tokens", "h", "c", "keys", "values"), ("log_probs", "attention", "h_out", "c_out")),
}


class ClassifierGraph(nn.Module):
    """images (B, 3, S, S) in [0, 1] -> (pred_logits (B, K), attention (B, G, H', W'))."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        outputs = self.model(images)
        return outputs["pred_logits"], outputs["attention"]


class DetectorGraph(nn.Module):
    """images (B, 3, S, S) -> (pred_logits (B, Q, K+1), pred_boxes (B, Q, 4), attention (B, Q, H', W')).

    The earlier layers' ``aux_outputs`` are training-only and left out.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        outputs = self.model(images)
        return outputs["pred_logits"], outputs["pred_boxes"], outputs["attention"]


class CaptionEncoderGraph(nn.Module):
    """images (B, 3, S, S) -> (keys, values, h (B, D), c (B, D)): everything computed once per image."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        features, _ = self.model.encode(images)  # (B, L, C)
        h, c, mean = self.model._init_state(features)  # (B, D), (B, D), (B, C)
        if self.model.attention is None:
            return mean.unsqueeze(1), features, h, c  # (B, 1, C): the context of every step
        keys = self.model.attention.prepare(features)
        return keys.keys, keys.values, h, c


class CaptionStepGraph(nn.Module):
    """One decoding step of B images x k hypotheses (module docstring); mirrors ``Captioner.decoder_step``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        banned = torch.zeros(len(model.config.vocab), dtype=torch.bool)
        banned[[model.pad_id, model.start_id]] = True
        self.register_buffer("banned", banned, persistent=False)  # (V,) ids that are never generated

    def forward(self, prev_tokens: Tensor, h: Tensor, c: Tensor, keys: Tensor,
                values: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        model = self.model
        batch, beams = h.shape[:2]
        # flatten/unflatten rather than reshape to computed sizes: the exporters then need no divisibility guards
        embedded = model.embedding(prev_tokens.flatten(0, 1))  # (B, k) -> (B·k, E)
        if model.attention is None:
            # broadcast by adding zeros, not expand: a fresh (B, k, ·) tensor flattens without a guard on k
            zeros = torch.zeros_like(h[:, :, :1])  # (B, k, 1)
            context = keys + zeros  # (B, 1, C) -> (B, k, C): every beam reads the mean feature
            alpha = zeros + torch.ones_like(values[:, :, 0]).unsqueeze(1).div(values.shape[1])  # (B, k, L) uniform
        else:
            # an image's k beams are k queries of its keys: (B, k, D) -> (B, k, C'), (B, k, L)
            context, alpha = model.attention(AttentionKeys(keys, values), h)
        h, c, context = h.flatten(0, 1), c.flatten(0, 1), context.flatten(0, 1)  # (B, k, ·) -> (B·k, ·)
        z, _ = model._gated(context, h)
        h, c = model._lstm(model.lstm_word(embedded), z, h, c)
        log_probs = torch.log_softmax(model._logits(embedded, h, z).float(), dim=-1)  # (B·k, V)
        log_probs = log_probs.masked_fill(self.banned, float("-inf"))
        shape = (batch, beams)  # (B·k, ·) -> (B, k, ·)
        return log_probs.unflatten(0, shape), alpha, h.unflatten(0, shape), c.unflatten(0, shape)


def graphs_for(model: nn.Module, model_name: str) -> dict[str, nn.Module]:
    """The graphs to export for a registered model: ``{"classifier"}``, ``{"detector"}`` or
    ``{"encoder", "step"}``, each in eval mode.

    Raises:
        ValueError: a model name without graphs, listing the valid ones.
    """
    builders = {"classifier": lambda: {"classifier": ClassifierGraph(model)},
                "detector": lambda: {"detector": DetectorGraph(model)},
                "captioner": lambda: {"encoder": CaptionEncoderGraph(model), "step": CaptionStepGraph(model)}}
    if model_name not in builders:
        raise ValueError(f"no export graphs for model {model_name!r}; valid: {', '.join(sorted(builders))}")
    return {name: graph.eval() for name, graph in builders[model_name]().items()}


@contextlib.contextmanager
def export_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode, every parameter frozen, autograd on (module docstring); restored afterwards."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)
