"""One attention contract for every task.

An attention module scores each location of a feature grid against a query and returns the weighted
sum of the grid's values together with the weights:

    keys = att.prepare(features)            # once per image: everything that depends on the image only
    context, weights = att(keys, query)     # once per query (per decoding step, per object query, ...)

Shapes (B batch, L = H'·W' grid locations, C feature width, D query width, Q queries):

    features (B, L, C)  ->  keys: AttentionKeys
    query    (B, D)     ->  context (B, out_dim),    weights (B, L)
    query    (B, Q, D)  ->  context (B, Q, out_dim), weights (B, Q, L)
    mask     (B, L) bool, True where a location is valid; masked weights are exactly 0.

Weights are non-negative and sum to one over the valid locations. Multi-head modules return the mean
of their heads' weights, which is still a distribution over locations.

The scoring functions (``create_attention(name, key_dim, query_dim, **options)``):

    concat      w·[a_i; h] + b                    the textbook formula; CANNOT attend (see below)
    additive    w·tanh(W_k a_i + W_q h)           Bahdanau; Show, Attend and Tell (the default)
    dot         (W_q h)·a_i                       Luong "general"
    scaled_dot  (W_q h)·(W_k a_i) / sqrt(A)       Transformer scoring, one head
    multihead   scaled_dot in several heads, with value and output projections

Why ``concat`` cannot attend: ``w·[a_i; h] = w_a·a_i + w_h·h``, and ``w_h·h`` is the same number at
every location i. Softmax over i is invariant to adding a constant, so the weights depend on the
image alone and never on the query. It is kept (and :class:`VisualAttention` with the tutorial's exact
API) for compatibility with checkpoints and code written against it; the tests prove the flaw.

Adding a scoring function is one class in this file: subclass :class:`Attention`, implement ``prepare`` and
``_logits`` (and ``_combine`` if the values are not the raw features), take options as keyword-only
constructor arguments, set ``supports_sampling = False`` if one location cannot be drawn from it, and decorate
it with ``@register_attention("name")``. The CLI choices, the factory and the contract tests
(``tests/test_attention.py``, parametrized over :func:`list_attentions`) pick it up from the registry.
"""

from __future__ import annotations

import abc
import inspect
import math
from typing import Any, Callable, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Attention",
    "AttentionKeys",
    "HardAttentionSample",
    "ConcatAttention",
    "AdditiveAttention",
    "DotAttention",
    "ScaledDotAttention",
    "MultiHeadAttention",
    "VisualAttention",
    "SHARED_OPTIONS",
    "attention_class",
    "attention_options",
    "create_attention",
    "list_attentions",
    "register_attention",
    "masked_softmax",
]


class AttentionKeys(NamedTuple):
    """The image-only part of attention, computed once per image by ``prepare``.

    Attributes:
        keys: what queries are scored against; (B, L, A) for single-head modules, (B, h, L, d) for
            multi-head ones; (B, L, 1) for ``concat`` (the per-location score term).
        values: what the weights average; (B, L, C), or (B, h, L, d) for multi-head modules.
    """

    keys: Tensor
    values: Tensor


class HardAttentionSample(NamedTuple):
    """One location sampled per query from the attention distribution (Show, Attend and Tell, hard).

    Attributes:
        context: the value at the sampled location; (B, out_dim) or (B, Q, out_dim).
        weights: the full distribution the sample was drawn from; (B, L) or (B, Q, L).
        index: the sampled location; (B,) or (B, Q), int64.
        log_prob: log-probability of the sample, differentiable w.r.t. the scores; (B,) or (B, Q).
        entropy: entropy of the distribution, differentiable; (B,) or (B, Q).
    """

    context: Tensor
    weights: Tensor
    index: Tensor
    log_prob: Tensor
    entropy: Tensor


#: Without autograd, additive attention builds its (B, Q, L, A) tensor in pieces of at most this many elements.
INFERENCE_CHUNK_ELEMENTS = 1 << 20


def masked_softmax(logits: Tensor, mask: Tensor | None) -> Tensor:
    """Softmax over the last dimension with invalid locations set to exactly zero.

    Args:
        logits: (..., L) scores; the mask broadcasts from (B, L) over the middle dimensions.
        mask: (B, L) bool, True = valid; None means every location is valid.

    Raises:
        ValueError: when a row has no valid location (its distribution would be undefined).
    """
    if mask is None:
        return logits.softmax(dim=-1)
    if mask.dtype != torch.bool:
        raise ValueError(f"attention mask must be bool (True = valid location), got {mask.dtype}")
    if mask.dim() != 2 or mask.shape[0] != logits.shape[0] or mask.shape[1] != logits.shape[-1]:
        raise ValueError(
            f"attention mask must have shape (B, L) = ({logits.shape[0]}, {logits.shape[-1]}), "
            f"got {tuple(mask.shape)}"
        )
    if not bool(mask.any(dim=-1).all()):
        empty = (~mask.any(dim=-1)).nonzero().flatten().tolist()
        raise ValueError(f"attention mask has no valid location in batch rows {empty}")
    # (B, L) -> (B, 1, ..., 1, L) so it broadcasts over heads and queries.
    expanded = mask.view(mask.shape[0], *([1] * (logits.dim() - 2)), mask.shape[1])
    return logits.masked_fill(~expanded, float("-inf")).softmax(dim=-1)


class Attention(nn.Module, metaclass=abc.ABCMeta):
    """Base class of the contract. Subclasses implement ``prepare`` and ``_logits``.

    Attributes:
        key_dim: width C of the features attended over.
        query_dim: width D of the query.
        out_dim: width of the returned context.
        num_heads: 1 for single-head modules.
        supports_sampling: class attribute; True when :meth:`sample` can draw one location per query (hard
            attention needs one distribution over locations and values of shape (B, L, C)). Decoders ask this
            instead of checking names.
    """

    supports_sampling: ClassVar[bool] = True

    def __init__(self, key_dim: int, query_dim: int, *, out_dim: int | None = None, num_heads: int = 1):
        super().__init__()
        if key_dim <= 0 or query_dim <= 0:
            raise ValueError(f"key_dim and query_dim must be positive, got {key_dim} and {query_dim}")
        self.key_dim = key_dim
        self.query_dim = query_dim
        self.out_dim = key_dim if out_dim is None else out_dim
        self.num_heads = num_heads

    @abc.abstractmethod
    def prepare(self, features: Tensor, pos: Tensor | None = None) -> AttentionKeys:
        """Compute the image-only part once.

        Args:
            features: (B, L, key_dim) feature grid, flattened row-major.
            pos: optional (B or 1, L, key_dim) positional encoding added to the key input only
                (values stay position-free, as in DETR).
        """

    @abc.abstractmethod
    def _logits(self, keys: AttentionKeys, query: Tensor) -> Tensor:
        """Scores of (B, Q, query_dim) queries: (B, heads, Q, L)."""

    def _check_features(self, features: Tensor, pos: Tensor | None) -> Tensor:
        if features.dim() != 3 or features.shape[-1] != self.key_dim:
            raise ValueError(
                f"{type(self).__name__} expects features of shape (B, L, {self.key_dim}), "
                f"got {tuple(features.shape)}"
            )
        if pos is None:
            return features
        if pos.shape[-2:] != features.shape[-2:]:
            raise ValueError(f"pos must have shape (B, L, C) = {tuple(features.shape)}, got {tuple(pos.shape)}")
        return features + pos

    def _as_queries(self, query: Tensor) -> tuple[Tensor, bool]:
        # (B, D) -> (B, 1, D); remember to squeeze the outputs back.
        if query.dim() == 2:
            query, single = query.unsqueeze(1), True
        elif query.dim() == 3:
            single = False
        else:
            raise ValueError(f"query must be (B, D) or (B, Q, D), got {tuple(query.shape)}")
        if query.shape[-1] != self.query_dim:
            raise ValueError(f"query width must be {self.query_dim}, got {query.shape[-1]}")
        return query, single

    def scores(self, keys: AttentionKeys, query: Tensor) -> Tensor:
        """Raw logits before the softmax: (B, [Q,] L), or (B, heads, [Q,] L) with several heads."""
        queries, single = self._as_queries(query)
        logits = self._logits(keys, queries)  # (B, h, Q, L)
        if self.num_heads == 1:
            logits = logits.squeeze(1)
        return logits.squeeze(-2) if single else logits

    def _combine(self, keys: AttentionKeys, weights: Tensor) -> Tensor:
        """(B, h, Q, L) weights and (B, L, C) values -> (B, Q, out_dim) context."""
        return torch.matmul(weights.squeeze(1), keys.values)

    def forward(self, keys: AttentionKeys, query: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Attend: returns ``(context, weights)``; see the module docstring for shapes."""
        queries, single = self._as_queries(query)
        weights = masked_softmax(self._logits(keys, queries), mask)  # (B, h, Q, L)
        context = self._combine(keys, weights)  # (B, Q, out_dim)
        weights = weights.mean(dim=1) if self.num_heads > 1 else weights.squeeze(1)  # (B, Q, L)
        if single:
            return context.squeeze(1), weights.squeeze(1)
        return context, weights

    def sample(self, keys: AttentionKeys, query: Tensor, mask: Tensor | None = None) -> HardAttentionSample:
        """Hard attention: draw one location per query from the softmax of the same scores.

        Raises:
            ValueError: for a module whose ``supports_sampling`` is False, naming the scorers that can sample.
        """
        if not self.supports_sampling:
            able = [name for name in list_attentions() if _REGISTRY[name].supports_sampling]
            raise ValueError(f"{type(self).__name__} cannot sample one location per query (hard attention needs a "
                             f"single-head scoring function); scorers that can: {', '.join(able)}")
        queries, single = self._as_queries(query)
        weights = masked_softmax(self._logits(keys, queries).squeeze(1), mask)  # (B, Q, L)
        # log(0) = -inf at masked places: Categorical never samples them and their entropy term is 0.
        # At least fp32 and no argument validation: the check would sync with the device every step and its
        # 1e-6 tolerance rejects bf16 distributions.
        dtype = torch.promote_types(weights.dtype, torch.float32)
        dist = torch.distributions.Categorical(probs=weights.to(dtype), validate_args=False)
        index = dist.sample()  # (B, Q)
        log_prob = dist.log_prob(index)
        entropy = dist.entropy()
        # Gather the values at the sampled locations: (B, L, C) -> (B, Q, C).
        values = keys.values
        context = torch.gather(values, 1, index.unsqueeze(-1).expand(-1, -1, values.shape[-1]))
        if single:
            return HardAttentionSample(
                context.squeeze(1), weights.squeeze(1), index.squeeze(1), log_prob.squeeze(1), entropy.squeeze(1)
            )
        return HardAttentionSample(context, weights, index, log_prob, entropy)


_REGISTRY: dict[str, type[Attention]] = {}


def register_attention(name: str) -> Callable[[type[Attention]], type[Attention]]:
    """Class decorator adding a scoring function to the factory; refuses duplicate names."""

    def add(cls: type[Attention]) -> type[Attention]:
        if name in _REGISTRY:
            raise ValueError(f"attention {name!r} is already registered by {_REGISTRY[name].__name__}")
        _REGISTRY[name] = cls
        return cls

    return add


def list_attentions() -> list[str]:
    """Names accepted by :func:`create_attention`."""
    return sorted(_REGISTRY)


def attention_class(name: str) -> type[Attention]:
    """The class registered as ``name``, to ask it about itself (``supports_sampling``) before building one.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown attention {name!r}; valid names: {', '.join(list_attentions())}")
    return _REGISTRY[name]


#: Options a head passes whatever scorer the user picks (the classifier's and captioner's ``attention_dim``, the
#: classifier's ``num_heads``). :func:`create_attention` drops these, and only these, for a scorer whose
#: constructor has no such argument (``dot`` has no hidden width, single-head scorers have no heads).
SHARED_OPTIONS = frozenset({"attention_dim", "num_heads"})


def attention_options(name: str) -> list[str]:
    """The keyword options the scorer ``name`` takes: its constructor's keyword-only arguments."""
    parameters = inspect.signature(attention_class(name).__init__).parameters.values()
    return [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]


def create_attention(name: str, key_dim: int, query_dim: int, **options: Any) -> Attention:
    """Build a scoring function by name.

    Args:
        name: one of :func:`list_attentions`.
        key_dim: width of the features attended over.
        query_dim: width of the query.
        **options: the scorer's keyword options (:func:`attention_options`: ``attention_dim``, ``num_heads``,
            ``out_dim``, ``dropout``, ...). Of the :data:`SHARED_OPTIONS`, those the scorer does not take are
            dropped; any other option it does not take is an error, so a typo never passes silently.

    Raises:
        ValueError: for an unknown name, listing the valid ones; for an option the scorer does not take,
            naming it and listing the scorer's options.
    """
    accepted = attention_options(name)
    unknown = sorted(set(options) - set(accepted) - SHARED_OPTIONS)
    if unknown:
        raise ValueError(f"attention {name!r} takes no option(s) {', '.join(map(repr, unknown))}; "
                         f"its options: {', '.join(accepted) or 'none'}")
    return _REGISTRY[name](key_dim, query_dim, **{k: v for k, v in options.items() if k in accepted})


@register_attention("concat")
class ConcatAttention(Attention):
    """``score_i = w·[a_i; h] + b`` with a single ``nn.Linear(key_dim + query_dim, 1)`` named ``attention``.

    Kept for compatibility. The query term ``w_h·h`` is constant over locations and cancels in the
    softmax, so the weights never depend on the query. Use ``additive`` or ``scaled_dot`` instead.
    """

    def __init__(self, key_dim: int, query_dim: int):
        super().__init__(key_dim, query_dim)
        self.attention = nn.Linear(key_dim + query_dim, 1)

    def prepare(self, features: Tensor, pos: Tensor | None = None) -> AttentionKeys:
        inputs = self._check_features(features, pos)
        # The location term w_a·a_i: (B, L, 1). The weight's first key_dim columns act on a_i.
        location_term = F.linear(inputs, self.attention.weight[:, : self.key_dim])
        return AttentionKeys(location_term, features)

    def _logits(self, keys: AttentionKeys, query: Tensor) -> Tensor:
        # The query term w_h·h + b: (B, Q, 1), the same for every location.
        query_term = F.linear(query, self.attention.weight[:, self.key_dim :], self.attention.bias)
        logits = keys.keys.transpose(1, 2) + query_term  # (B, 1, L) + (B, Q, 1) -> (B, Q, L)
        return logits.unsqueeze(1)  # (B, 1, Q, L)


@register_attention("additive")
class AdditiveAttention(Attention):
    """Bahdanau / Show, Attend and Tell: ``score_i = w·tanh(W_k a_i + W_q h)``."""

    def __init__(self, key_dim: int, query_dim: int, *, attention_dim: int = 256):
        super().__init__(key_dim, query_dim)
        self.key_proj = nn.Linear(key_dim, attention_dim)
        self.query_proj = nn.Linear(query_dim, attention_dim, bias=False)
        self.score = nn.Linear(attention_dim, 1)

    def prepare(self, features: Tensor, pos: Tensor | None = None) -> AttentionKeys:
        # 2·W_k a (B, L, A): the factor 2 of the logistic form below, paid once per image, not per query
        return AttentionKeys(self.key_proj(self._check_features(features, pos)).mul_(2.0), features)

    def _logits(self, keys: AttentionKeys, query: Tensor) -> Tensor:
        # w·tanh(u) + b is computed as (2w)·σ(2u) + (b − Σw), since tanh(u) = 2σ(2u) − 1: the same scores and
        # gradients, but PyTorch's logistic function (and its backward) is much faster than tanh on CPUs (see
        # docs/design.md), and this (B, Q, L, A) tensor is the largest of every decoding step.
        q = self.query_proj(query)  # (B, Q, A)
        weight, bias = self.score.weight, self.score.bias  # (1, A), (1,)
        weight, bias = 2.0 * weight, bias - weight.sum(dim=1)
        batch, num_queries, width = q.shape
        chunk = max(1, INFERENCE_CHUNK_ELEMENTS // max(1, num_queries * keys.keys.shape[1] * width))
        if torch.is_grad_enabled() or chunk >= batch:
            # (B, 1, L, A) + 2·(B, Q, 1, A) -> 2u (B, Q, L, A), fresh, so σ runs in place (autograd keeps σ's output)
            hidden = torch.add(keys.keys.unsqueeze(1), q.unsqueeze(2), alpha=2.0).sigmoid_()
            return F.linear(hidden, weight, bias).squeeze(-1).unsqueeze(1)  # (B, 1, Q, L)
        # Without autograd (decoding: k beams are k queries), a few images at a time: the temporary stays
        # small enough to be reused from cache instead of mapping fresh memory at every step.
        scores = q.new_empty(batch, num_queries, keys.keys.shape[1])
        for start in range(0, batch, chunk):
            part = slice(start, start + chunk)
            hidden = torch.add(keys.keys[part].unsqueeze(1), q[part].unsqueeze(2), alpha=2.0).sigmoid_()
            scores[part] = F.linear(hidden, weight, bias).squeeze(-1)
        return scores.unsqueeze(1)  # (B, 1, Q, L)


@register_attention("dot")
class DotAttention(Attention):
    """Luong's "general" score: ``score_i = (W_q h)·a_i``; the query is projected to the key width."""

    def __init__(self, key_dim: int, query_dim: int):
        super().__init__(key_dim, query_dim)
        self.query_proj = nn.Linear(query_dim, key_dim, bias=False)

    def prepare(self, features: Tensor, pos: Tensor | None = None) -> AttentionKeys:
        return AttentionKeys(self._check_features(features, pos), features)

    def _logits(self, keys: AttentionKeys, query: Tensor) -> Tensor:
        q = self.query_proj(query)  # (B, Q, C)
        return torch.matmul(q, keys.keys.transpose(1, 2)).unsqueeze(1)  # (B, 1, Q, L)


@register_attention("scaled_dot")
class ScaledDotAttention(Attention):
    """One Transformer head: ``score_i = (W_q h)·(W_k a_i) / sqrt(A)``; values are the raw features."""

    def __init__(self, key_dim: int, query_dim: int, *, attention_dim: int = 256):
        super().__init__(key_dim, query_dim)
        self.key_proj = nn.Linear(key_dim, attention_dim)
        self.query_proj = nn.Linear(query_dim, attention_dim)
        self.scale = 1.0 / math.sqrt(attention_dim)

    def prepare(self, features: Tensor, pos: Tensor | None = None) -> AttentionKeys:
        return AttentionKeys(self.key_proj(self._check_features(features, pos)), features)

    def _logits(self, keys: AttentionKeys, query: Tensor) -> Tensor:
        q = self.query_proj(query) * self.scale  # (B, Q, A)
        return torch.matmul(q, keys.keys.transpose(1, 2)).unsqueeze(1)  # (B, 1, Q, L)


@register_attention("multihead")
class MultiHeadAttention(Attention):
    """Multi-head scaled-dot attention with value and output projections (Vaswani et al.).

    The context is ``W_o [head_1; ...; head_h]`` of width ``out_dim`` (``key_dim`` unless given);
    the returned weights are the mean over heads. ``dropout`` drops attention weights inside the
    context computation during training; the returned weights are the undropped distribution.
    It cannot sample: its values are per head, (B, h, L, d), and its weights average several distributions.
    """

    supports_sampling = False

    def __init__(
        self,
        key_dim: int,
        query_dim: int,
        *,
        attention_dim: int = 256,
        num_heads: int = 8,
        out_dim: int | None = None,
        dropout: float = 0.0,
    ):
        if attention_dim % num_heads != 0:
            raise ValueError(f"attention_dim ({attention_dim}) must be divisible by num_heads ({num_heads})")
        super().__init__(key_dim, query_dim, out_dim=out_dim, num_heads=num_heads)
        self.head_dim = attention_dim // num_heads
        self.key_proj = nn.Linear(key_dim, attention_dim)
        self.value_proj = nn.Linear(key_dim, attention_dim)
        self.query_proj = nn.Linear(query_dim, attention_dim)
        self.out_proj = nn.Linear(attention_dim, self.out_dim)
        self.dropout = nn.Dropout(dropout)

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # (B, h, L, d)

    def prepare(self, features: Tensor, pos: Tensor | None = None) -> AttentionKeys:
        keys = self._split_heads(self.key_proj(self._check_features(features, pos)))  # (B, h, L, d)
        values = self._split_heads(self.value_proj(features))  # (B, h, L, d)
        return AttentionKeys(keys, values)

    def _logits(self, keys: AttentionKeys, query: Tensor) -> Tensor:
        q = self._split_heads(self.query_proj(query)) / math.sqrt(self.head_dim)  # (B, h, Q, d)
        return torch.matmul(q, keys.keys.transpose(-1, -2))  # (B, h, Q, L)

    def _combine(self, keys: AttentionKeys, weights: Tensor) -> Tensor:
        heads = torch.matmul(self.dropout(weights), keys.values)  # (B, h, Q, d)
        batch, _, num_queries, _ = heads.shape
        merged = heads.transpose(1, 2).reshape(batch, num_queries, -1)  # (B, Q, h*d)
        return self.out_proj(merged)


class VisualAttention(ConcatAttention):
    """The popular tutorial's attention module, with its public API kept exactly.

    One ``nn.Linear(encoder_dim + decoder_dim, 1)`` named ``attention`` scores ``[a_i; h]``, so a
    state_dict saved from the tutorial's module loads here unchanged.

    Warning:
        These weights do not depend on ``decoder_hidden``: the hidden state's contribution to the
        score is the same at every location and cancels in the softmax. The module pools the image
        with a fixed, image-dependent distribution. Prefer ``create_attention("additive", ...)``.
    """

    def __init__(self, encoder_dim: int, decoder_dim: int):
        super().__init__(encoder_dim, decoder_dim)

    def forward(self, encoder_output: Tensor, decoder_hidden: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """Args: encoder_output (B, L, E), decoder_hidden (B, D).

        Returns:
            attended_features (B, E) and attention_weights (B, L, 1).
        """
        if decoder_hidden.dim() != 2:
            raise ValueError(f"decoder_hidden must be (B, D), got {tuple(decoder_hidden.shape)}")
        context, weights = super().forward(self.prepare(encoder_output), decoder_hidden)
        return context, weights.unsqueeze(-1)
