"""The attention contract, run over every registered scorer, then each built-in against its textbook formula.

A scorer registered with ``@register_attention`` is picked up by every contract test below without editing this
file: weights are a distribution (exactly zero where masked) for (B, D) and (B, Q, D) queries, prepared keys
can be reused for many queries, every parameter gets a gradient, and it samples if it says it can.
"""

import pytest
import torch
from torch import nn

import visattn.attention as attention_module
from visattn.attention import (
    SHARED_OPTIONS,
    AdditiveAttention,
    Attention,
    AttentionKeys,
    HardAttentionSample,
    VisualAttention,
    attention_class,
    attention_options,
    create_attention,
    list_attentions,
    masked_softmax,
    register_attention,
)

KEY_DIM, QUERY_DIM, B, L = 12, 10, 3, 7
BUILT_IN = ["concat", "additive", "dot", "scaled_dot", "multihead"]
SCORERS = list_attentions()
SAMPLERS = [name for name in SCORERS if attention_class(name).supports_sampling]
# concat's bias only shifts every score equally: its gradient is exactly zero, by design (the module docstring).
ZERO_GRADIENT_BY_DESIGN = {("concat", "attention.bias")}


def make(name: str) -> nn.Module:
    torch.manual_seed(0)
    # The options a head passes whatever the scorer (SHARED_OPTIONS); those a scorer does not take are dropped.
    return create_attention(name, KEY_DIM, QUERY_DIM, attention_dim=16, num_heads=4).double()


def inputs(q: int | None = None):
    g = torch.Generator().manual_seed(1)
    features = torch.randn(B, L, KEY_DIM, generator=g, dtype=torch.double)
    shape = (B, QUERY_DIM) if q is None else (B, q, QUERY_DIM)
    return features, torch.randn(*shape, generator=g, dtype=torch.double)


def some_mask() -> torch.Tensor:
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, :3] = False
    mask[2, -1] = False
    return mask


# --- the factory -------------------------------------------------------------------------------------------


def test_factory_lists_names_and_rejects_unknown():
    assert set(BUILT_IN) <= set(list_attentions())
    with pytest.raises(ValueError, match="valid names: .*additive"):
        create_attention("bahdanau", 4, 4)
    with pytest.raises(ValueError, match="valid names: .*additive"):
        attention_class("bahdanau")


def test_an_option_the_scorer_does_not_take_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"'multihead' takes no option\(s\) 'num_head'; its options: .*num_heads"):
        create_attention("multihead", 8, 8, num_head=4)
    with pytest.raises(ValueError, match=r"'additive' takes no option\(s\) 'dropout'; its options: attention_dim"):
        create_attention("additive", 8, 8, dropout=0.1)
    with pytest.raises(TypeError, match="num_head"):  # the classes themselves take explicit keywords only
        AdditiveAttention(8, 8, num_head=4)


def test_shared_options_are_dropped_only_where_the_scorer_has_no_such_argument():
    assert SHARED_OPTIONS == {"attention_dim", "num_heads"}
    assert attention_options("dot") == [] and attention_options("additive") == ["attention_dim"]
    assert create_attention("dot", 8, 6, attention_dim=32, num_heads=4).query_proj.out_features == 8
    assert create_attention("additive", 8, 6, attention_dim=32, num_heads=4).key_proj.out_features == 32
    multihead = create_attention("multihead", 8, 6, attention_dim=32, num_heads=4)
    assert multihead.num_heads == 4 and multihead.head_dim == 8


def test_a_scorer_registered_in_one_place_is_offered_everywhere(monkeypatch):
    from visattn.cli import build_parser
    from visattn.heads.captioner import CaptionerConfig

    monkeypatch.setattr(attention_module, "_REGISTRY", dict(attention_module._REGISTRY))  # undone after the test

    @register_attention("cosine")
    class CosineAttention(Attention):
        def __init__(self, key_dim: int, query_dim: int, *, temperature: float = 0.1):
            super().__init__(key_dim, query_dim)
            self.query_proj = nn.Linear(query_dim, key_dim)
            self.temperature = temperature

        def prepare(self, features, pos=None):
            return AttentionKeys(nn.functional.normalize(self._check_features(features, pos), dim=-1), features)

        def _logits(self, keys, query):
            q = nn.functional.normalize(self.query_proj(query), dim=-1)  # (B, Q, C)
            return (q @ keys.keys.transpose(1, 2) / self.temperature).unsqueeze(1)  # (B, 1, Q, L)

    with pytest.raises(ValueError, match="already registered by CosineAttention"):
        register_attention("cosine")(CosineAttention)
    assert "cosine" in list_attentions() and attention_options("cosine") == ["temperature"]
    assert create_attention("cosine", 4, 6, temperature=0.5, attention_dim=8).temperature == 0.5
    with pytest.raises(ValueError, match="'temprature'; its options: temperature"):
        create_attention("cosine", 4, 6, temprature=0.5)
    for command in (["train", "caption"], ["train", "classify"]):
        args = build_parser().parse_args([*command, "--run-dir", "run", "--attention", "cosine"])
        assert args.attention == "cosine"
    assert CaptionerConfig(attention="cosine", attention_mode="hard").attention == "cosine"  # it can sample


# --- the contract, for every registered scorer -------------------------------------------------------------


@pytest.mark.parametrize("name", SCORERS)
def test_shapes_and_distribution(name):
    att = make(name)
    features, query = inputs()
    context, weights = att(att.prepare(features), query)
    assert context.shape == (B, att.out_dim) and weights.shape == (B, L)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, dtype=torch.double))


@pytest.mark.parametrize("name", SCORERS)
def test_multi_query_matches_one_query_at_a_time(name):
    att = make(name)
    features, queries = inputs(q=4)
    keys = att.prepare(features)
    context, weights = att(keys, queries)
    assert context.shape == (B, 4, att.out_dim) and weights.shape == (B, 4, L)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, 4, dtype=torch.double))
    for j in range(4):
        c, w = att(keys, queries[:, j])
        torch.testing.assert_close(context[:, j], c)
        torch.testing.assert_close(weights[:, j], w)


@pytest.mark.parametrize("name", SCORERS)
def test_keys_prepared_once_serve_every_query_as_if_recomputed(name):
    att = make(name)
    features, queries = inputs(q=5)
    keys = att.prepare(features)
    for j in range(5):  # a decoder's steps: the same prepared keys, a new query each time
        context, weights = att(keys, queries[:, j])
        fresh_context, fresh_weights = att(att.prepare(features), queries[:, j])
        torch.testing.assert_close(context, fresh_context)
        torch.testing.assert_close(weights, fresh_weights)
    torch.testing.assert_close(keys.keys, att.prepare(features).keys)  # attending did not change the keys


@pytest.mark.parametrize("q", [None, 4], ids=["(B, D)", "(B, Q, D)"])
@pytest.mark.parametrize("name", SCORERS)
def test_mask_gives_exact_zeros_and_renormalises(name, q):
    att = make(name)
    features, query = inputs(q)
    mask = some_mask()
    _, weights = att(att.prepare(features), query, mask=mask)
    expanded = mask if q is None else mask.unsqueeze(1).expand(-1, q, -1)
    assert (weights[~expanded] == 0).all() and (weights[expanded] > 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1], dtype=torch.double))


def test_fully_masked_row_is_a_clear_error():
    att = make("additive")
    features, query = inputs()
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1] = False
    with pytest.raises(ValueError, match=r"no valid location in batch rows \[1\]"):
        att(att.prepare(features), query, mask=mask)
    with pytest.raises(ValueError, match="must be bool"):
        masked_softmax(torch.zeros(B, L), torch.ones(B, L))


@pytest.mark.parametrize("name", SCORERS)
def test_every_parameter_gets_a_gradient(name):
    att = make(name)
    features, query = inputs()
    features.requires_grad_(True)
    context, weights = att(att.prepare(features), query)
    # Weight the context by a fixed random vector so every location's weight matters to the loss.
    (context * torch.randn_like(context)).sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    for pname, param in att.named_parameters():
        assert param.grad is not None, pname
        if (name, pname) in ZERO_GRADIENT_BY_DESIGN:
            assert param.grad.abs().max() < 1e-12, pname
        else:
            assert param.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", SCORERS)
def test_batch_of_one_equals_its_row_in_a_batch(name):
    att = make(name)
    features, query = inputs()
    context, weights = att(att.prepare(features), query)
    c1, w1 = att(att.prepare(features[1:2]), query[1:2])
    torch.testing.assert_close(c1[0], context[1])
    torch.testing.assert_close(w1[0], weights[1])


@pytest.mark.parametrize("name", [name for name in SCORERS if name != "concat"])
def test_working_scorers_move_with_the_query(name):
    att = make(name)
    features, query = inputs()
    keys = att.prepare(features)
    _, w1 = att(keys, query)
    _, w2 = att(keys, query * 3 + 1)
    assert (w1 - w2).abs().max() > 1e-3


@pytest.mark.parametrize("q", [None, 2], ids=["(B, D)", "(B, Q, D)"])
@pytest.mark.parametrize("name", SAMPLERS)
def test_hard_attention_samples_from_the_same_distribution(name, q):
    att = make(name)
    features, query = inputs(q)
    keys = att.prepare(features)
    _, weights = att(keys, query)
    torch.manual_seed(0)
    sample = att.sample(keys, query)
    assert isinstance(sample, HardAttentionSample)
    torch.testing.assert_close(sample.weights, weights)
    flat = weights if q is None else weights.reshape(B * q, L)  # (B, Q, L) -> (B·Q, L), one row per query
    index = sample.index.reshape(-1)
    rows = torch.arange(len(flat))
    image = rows if q is None else rows // q
    torch.testing.assert_close(sample.context.reshape(len(flat), -1), keys.values[image, index])
    torch.testing.assert_close(sample.log_prob.reshape(-1), flat[rows, index].log())
    torch.testing.assert_close(sample.entropy.reshape(-1), -(flat * flat.log()).sum(-1))
    sample.log_prob.sum().backward()
    grads = [p.grad for p in att.parameters()]
    assert grads and all(g is not None for g in grads)
    # Empirical frequencies follow the weights: 4000 draws for the first image in one batched call.
    many = att.prepare(features[:1].expand(4000, -1, -1))
    first = query[:1, 0] if q else query[:1]
    draws = att.sample(many, first.expand(4000, -1)).index
    counts = torch.bincount(draws, minlength=L).double()
    torch.testing.assert_close(counts / counts.sum(), flat[0].detach(), atol=0.03, rtol=0)


@pytest.mark.parametrize("name", SAMPLERS)
def test_hard_attention_never_samples_masked_locations(name):
    att = make(name)
    features, query = inputs()
    mask = torch.zeros(B, L, dtype=torch.bool)
    mask[:, 2] = True
    mask[:, 5] = True
    keys = att.prepare(features)
    for _ in range(50):
        index = att.sample(keys, query, mask=mask).index
        assert mask[torch.arange(B), index].all()


@pytest.mark.parametrize("name", [name for name in SCORERS if name not in SAMPLERS])
def test_scorers_that_cannot_sample_say_so(name):
    att = make(name)
    features, query = inputs()
    with pytest.raises(ValueError, match="cannot sample.*single-head.*scorers that can: .*additive"):
        att.sample(att.prepare(features), query)


def test_which_built_in_scorers_sample():
    assert [name for name in BUILT_IN if name in SAMPLERS] == ["concat", "additive", "dot", "scaled_dot"]


# --- each built-in scorer against its textbook formula -----------------------------------------------------


def naive(name: str, att, features, query):
    """Straightforward per-location formulas, no prepared keys: the reference for the fast path."""
    context, weights = [], []
    for b in range(features.shape[0]):
        a, h = features[b], query[b]  # (L, C), (D,)
        if name == "concat":
            s = torch.stack([att.attention(torch.cat([a[i], h])) for i in range(L)]).squeeze(-1)
        elif name == "additive":
            s = torch.stack([att.score(torch.tanh(att.key_proj(a[i]) + att.query_proj(h))) for i in range(L)])
            s = s.squeeze(-1)
        elif name == "dot":
            s = torch.stack([att.query_proj(h) @ a[i] for i in range(L)])
        elif name == "scaled_dot":
            s = torch.stack([att.query_proj(h) @ att.key_proj(a[i]) for i in range(L)]) / 16**0.5
        else:
            raise AssertionError(name)
        w = torch.softmax(s, dim=0)
        context.append((w[:, None] * a).sum(0))
        weights.append(w)
    return torch.stack(context), torch.stack(weights)


def naive_multihead(att, features, query):
    heads, d = att.num_heads, att.head_dim
    k = att.key_proj(features).view(B, L, heads, d)
    v = att.value_proj(features).view(B, L, heads, d)
    q = att.query_proj(query).view(B, heads, d)
    outs, ws = [], []
    for head in range(heads):
        w = torch.softmax(torch.einsum("bd,bld->bl", q[:, head], k[:, :, head]) / d**0.5, dim=-1)
        outs.append(torch.einsum("bl,bld->bd", w, v[:, :, head]))
        ws.append(w)
    return att.out_proj(torch.cat(outs, dim=-1)), torch.stack(ws).mean(0)


@pytest.mark.parametrize("name", BUILT_IN)
def test_prepared_keys_equal_naive_computation(name):
    att = make(name)
    features, query = inputs()
    context, weights = att(att.prepare(features), query)
    ref_context, ref_weights = (
        naive_multihead(att, features, query) if name == "multihead" else naive(name, att, features, query)
    )
    torch.testing.assert_close(weights, ref_weights)
    torch.testing.assert_close(context, ref_context)


# --- the seed's module: API, parity with the textbook formula, and its flaw ---------------------------------


class TextbookAttention(nn.Module):
    """The tutorial's formula written out directly: Linear(concat(a_i, h)) then softmax over locations."""

    def __init__(self, encoder_dim, decoder_dim):
        super().__init__()
        self.attention = nn.Linear(encoder_dim + decoder_dim, 1)

    def forward(self, encoder_output, decoder_hidden):
        hidden = decoder_hidden.unsqueeze(1).repeat(1, encoder_output.size(1), 1)
        scores = self.attention(torch.cat((encoder_output, hidden), dim=2))
        weights = torch.softmax(scores, dim=1)
        return (encoder_output * weights).sum(dim=1), weights


def test_visual_attention_keeps_the_seed_api_and_matches_the_formula():
    torch.manual_seed(0)
    ref = TextbookAttention(KEY_DIM, QUERY_DIM).double()
    ours = VisualAttention(KEY_DIM, QUERY_DIM).double()
    ours.load_state_dict(ref.state_dict())  # same parameter names: checkpoints load unchanged
    assert list(ours.state_dict()) == ["attention.weight", "attention.bias"]
    features, query = inputs()
    attended, weights = ours(features, query)
    assert attended.shape == (B, KEY_DIM) and weights.shape == (B, L, 1)
    ref_attended, ref_weights = ref(features, query)
    torch.testing.assert_close(attended, ref_attended)
    torch.testing.assert_close(weights, ref_weights)


def test_visual_attention_cannot_attend():
    torch.manual_seed(0)
    seed = VisualAttention(KEY_DIM, QUERY_DIM).double()
    features, query = inputs()
    other = torch.randn_like(query) * 10
    _, w1 = seed(features, query)
    _, w2 = seed(features, other)
    torch.testing.assert_close(w1, w2)  # the decoder state changes nothing
    additive = make("additive")
    keys = additive.prepare(features)
    assert (additive(keys, query)[1] - additive(keys, other)[1]).abs().max() > 1e-2


def test_wrong_shapes_are_clear_errors():
    att = make("additive")
    features, query = inputs()
    with pytest.raises(ValueError, match=r"features of shape \(B, L, 12\)"):
        att.prepare(features[..., :5])
    with pytest.raises(ValueError, match="query width must be 10"):
        att(att.prepare(features), query[:, :3])
    with pytest.raises(ValueError, match="divisible"):
        create_attention("multihead", 8, 8, attention_dim=10, num_heads=3)


@pytest.mark.parametrize("chunk", [1, 2 * L * 16, 10**9])
def test_additive_inference_in_pieces_equals_one_piece(chunk, monkeypatch):
    # Without autograd the additive score is built a few images at a time; any piece size gives the same.
    import visattn.attention as attention_module

    att = make("additive")
    features, queries = inputs(q=2)
    keys = att.prepare(features)
    expected = att.scores(keys, queries).detach()
    monkeypatch.setattr(attention_module, "INFERENCE_CHUNK_ELEMENTS", chunk)
    with torch.no_grad():
        torch.testing.assert_close(att.scores(keys, queries), expected)
        context, weights = att(keys, queries)
    torch.testing.assert_close(weights, expected.softmax(dim=-1))
