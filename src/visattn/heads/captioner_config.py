"""The captioner's configuration: every field with its meaning, the checks, and the named presets.

:class:`CaptionerConfig` rebuilds a :class:`~visattn.heads.captioner.Captioner` (checkpoints store it);
:data:`PRESETS` names whole configurations: ``"paper"`` is Xu et al. (2015) as published, ``"default"`` is
what learns most per second on the procedural scenes (docs/design.md, "Why the default captioner").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from visattn.attention import attention_class, list_attentions
from visattn.encoders import EncoderConfig
from visattn.heads.attention_supervision import REGIONS

__all__ = ["CaptionerConfig", "PRESETS"]

_SPECIALS = ("<pad>", "<start>", "<end>", "<unk>")


@dataclass
class CaptionerConfig:
    """Everything needed to rebuild a :class:`Captioner`.

    Attributes:
        encoder: the image encoder.
        vocab: the token list, index = id; ``<pad>`` at 0, and ``<start>``, ``<end>`` somewhere in it.
        attention: a :func:`visattn.attention.create_attention` name, or "none" for the Show and Tell
            baseline (mean-pooled features fed at every step; uniform attention maps).
        attention_mode: "soft" (deterministic, §4.2) or "hard" (stochastic, §4.1; single-head scoring only).
        attention_dim, decoder_dim, embed_dim: widths A (attention MLP), D (LSTM) and E (word embedding).
        dropout: before the vocabulary projection.
        gate: "scalar" (the paper's β = σ(f_β(h))), "channel" (one gate per context channel, as in common
            re-implementations) or "none".
        deep_output: the paper's deep output layer (eq. 7); False = a linear layer on dropout(h_t).
        output_context: with ``deep_output=False``, add a linear map of dropout(ẑ_t) to the logits: the
            attended features reach the words directly, not only through the LSTM (eq. 7's L_z ẑ_t without
            its tanh layer). False = logits from h_t alone (the tutorials' output layer).
        init_activation: "tanh" (the paper, §3.1.2: h_0 = tanh(f_init,h(mean a))) or "none" (linear).
        init_scheme: "pytorch" (every layer's default initialisation) or "uniform" (the word embedding and
            the vocabulary projection drawn from U(-0.1, 0.1), the projection's bias 0, as common
            re-implementations do).
        alpha_c: λ of the doubly stochastic regulariser λ·Σ_i (1 − Σ_t α_ti)² (see :meth:`Captioner.loss`).
        attention_supervision: λ of the attention-supervision term (Liu et al. 2017, see
            :mod:`visattn.heads.attention_supervision`): 0 = off; > 0 needs word-to-object alignments.
        attention_supervision_region: where the supervised mass must fall: the aligned object's "box", its
            "mask" (the pixels of the glyph; what the mask attention-correctness score measures), or
            "box_and_mask" (the mean of the two masses).
        hard_reinforce, hard_entropy: λ_r and λ_e of the hard-attention objective (§4.1).
        hard_baseline_decay: b ← decay·b + (1 − decay)·log p(y | s, a), per training batch.
        hard_reward: "caption" (the paper: every sampled location of a caption is credited with the whole
            caption's log-likelihood) or "to_go" (location s_t is credited with Σ_{t' >= t} log p(y_t'), the
            words it can still affect: the same expected gradient, less variance).
        hard_baseline: "moving_average" (the paper's running mean of the reward) or "batch" (per step, the
            mean reward of the other captions of the batch still running: a per-sample baseline).
        hard_expected_context_prob: per training batch, the probability of using the expected context.
        scheduled_sampling: per step and caption, the probability of feeding the model's own most likely
            previous word instead of the true one (training only).
        max_len: default number of tokens :meth:`Captioner.generate` may produce (``<end>`` included).
        image_size: the square side images were trained at; ``visattn caption`` and ``eval`` resize to it.
    """

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    vocab: list[str] = field(default_factory=lambda: list(_SPECIALS))  # a real vocab comes from the data
    attention: str = "additive"
    attention_mode: str = "soft"
    attention_dim: int = 256
    decoder_dim: int = 512
    embed_dim: int = 256
    dropout: float = 0.5
    # The next four are not the paper's (PRESETS["paper"] is): each learned more per second on the procedural
    # scenes, and together they lifted test CIDEr-D 1.16 -> 1.5x at equal training (docs/design.md, ablation).
    gate: str = "channel"
    deep_output: bool = False
    # The attended features' own path to the words: at 48k training images object F1 0.27 -> 0.78 without
    # attention supervision and 0.87 -> 0.95 with it (validation; docs/design.md). Through the LSTM alone the
    # class words reached the encoder too weakly, and captions stayed fluent but named the wrong glyph for epochs.
    output_context: bool = True
    init_activation: str = "none"
    init_scheme: str = "uniform"
    # 0 (off) by default. With per-token cross entropy, the paper's λ = 1 on a per-caption sum is about
    # λ = 1 / words per caption here; and on small grids (64 cells, ~15 words) any λ pulls attention onto
    # the background: our prototype's attention correctness fell from 0.46 (λ = 0) to 0.21 (λ = 1).
    # Scaling the target 1 to T/L would not help: Σ_i Σ_t α_ti = T is fixed, so the target only shifts
    # the loss by a constant and leaves its gradient unchanged. Use ~0.1 on COCO-sized grids to follow the paper.
    alpha_c: float = 0.0
    attention_supervision: float = 0.0
    attention_supervision_region: str = "box"
    hard_reinforce: float = 1.0
    # the paper's λ_e = 0.01 (PRESETS["paper"]) pulls the maps towards uniform: 0 reached box correctness 0.71
    # instead of 0.59 and object F1 0.54 instead of 0.32 in the same budget (docs/design.md)
    hard_entropy: float = 0.0
    hard_baseline_decay: float = 0.9  # the paper's moving average
    # not the paper's (PRESETS["paper"] is): the same expected gradient with less variance (docs/design.md)
    hard_reward: str = "to_go"
    hard_baseline: str = "batch"
    hard_expected_context_prob: float = 0.5  # the paper's trick (§4.1)
    scheduled_sampling: float = 0.0
    max_len: int = 20
    image_size: int = 64

    # What a checkpoint written before a field existed means by its absence: the behaviour it was trained with
    # (the later defaults differ). ``visattn.models.model_from_checkpoint`` fills these in before the defaults.
    stored_defaults: ClassVar[dict[str, Any]] = {"init_activation": "tanh", "init_scheme": "pytorch",
                                                 "attention_supervision": 0.0, "attention_supervision_region": "box",
                                                 "output_context": False,
                                                 "hard_reward": "caption",
                                                 "hard_baseline": "moving_average"}

    @classmethod
    def preset(cls, name: str, **overrides) -> "CaptionerConfig":
        """A named preset of :data:`PRESETS` with ``overrides`` on top, e.g. ``preset("paper", vocab=...)``.

        Raises:
            ValueError: an unknown preset name (listing the valid ones).
        """
        if name not in PRESETS:
            raise ValueError(f"CaptionerConfig.preset: unknown preset {name!r}; valid: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def __post_init__(self) -> None:
        for name in ("attention_dim", "decoder_dim", "embed_dim", "max_len", "image_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"CaptionerConfig.{name}: expected an int >= 1, got {value!r}")
        if not isinstance(self.vocab, (list, tuple)) or not all(isinstance(t, str) for t in self.vocab):
            raise ValueError("CaptionerConfig.vocab: expected a list of token strings")
        self.vocab = list(self.vocab)
        if not self.vocab or self.vocab[0] != "<pad>":
            raise ValueError(f"CaptionerConfig.vocab: '<pad>' must be token 0, got {self.vocab[:1]}")
        for token in ("<start>", "<end>"):
            if token not in self.vocab:
                raise ValueError(f"CaptionerConfig.vocab: has no {token!r} token")
        if len(set(self.vocab)) != len(self.vocab):
            raise ValueError("CaptionerConfig.vocab: duplicate tokens")
        valid = list_attentions() + ["none"]
        if self.attention not in valid:
            raise ValueError(f"CaptionerConfig.attention: unknown {self.attention!r}; valid: {', '.join(valid)}")
        if self.attention_mode not in ("soft", "hard"):
            raise ValueError(f"CaptionerConfig.attention_mode: expected 'soft' or 'hard', got {self.attention_mode!r}")
        if self.attention_mode == "hard" and (self.attention == "none"
                                              or not attention_class(self.attention).supports_sampling):
            able = [name for name in list_attentions() if attention_class(name).supports_sampling]
            raise ValueError(f"CaptionerConfig: hard attention needs a single-head scoring function that can "
                             f"sample, not {self.attention!r}; valid: {', '.join(able)}")
        if self.gate not in ("scalar", "channel", "none"):
            raise ValueError(f"CaptionerConfig.gate: expected 'scalar', 'channel' or 'none', got {self.gate!r}")
        for name in ("dropout", "hard_expected_context_prob", "scheduled_sampling", "hard_baseline_decay"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0 or (name == "dropout" and value == 1.0):
                raise ValueError(f"CaptionerConfig.{name}: expected a probability, got {value!r}")
        if self.hard_reward not in ("caption", "to_go"):
            raise ValueError(f"CaptionerConfig.hard_reward: expected 'caption' or 'to_go', got {self.hard_reward!r}")
        if self.hard_baseline not in ("moving_average", "batch"):
            raise ValueError(f"CaptionerConfig.hard_baseline: expected 'moving_average' or 'batch', "
                             f"got {self.hard_baseline!r}")
        if self.hard_reward == "to_go" and self.hard_baseline == "moving_average":
            raise ValueError("CaptionerConfig: hard_reward='to_go' needs hard_baseline='batch' (a per-step baseline)")
        if self.output_context and self.deep_output:
            raise ValueError("CaptionerConfig.output_context: the deep output layer already maps the context to the "
                             "words (eq. 7); with deep_output=True set output_context=False")
        if self.init_activation not in ("tanh", "none"):
            raise ValueError(f"CaptionerConfig.init_activation: expected 'tanh' or 'none', "
                             f"got {self.init_activation!r}")
        if self.init_scheme not in ("pytorch", "uniform"):
            raise ValueError(f"CaptionerConfig.init_scheme: expected 'pytorch' or 'uniform', got {self.init_scheme!r}")
        if self.attention_supervision > 0 and self.attention == "none":
            raise ValueError("CaptionerConfig.attention_supervision: needs an attention (attention='none' has no maps)")
        if self.attention_supervision_region not in REGIONS:
            raise ValueError(f"CaptionerConfig.attention_supervision_region: expected one of {', '.join(REGIONS)}, "
                             f"got {self.attention_supervision_region!r}")
        for name in ("alpha_c", "attention_supervision", "hard_reinforce", "hard_entropy"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"CaptionerConfig.{name}: expected a weight >= 0, got {getattr(self, name)!r}")


PRESETS: dict[str, dict] = {
    # Xu et al. 2015 as published: scalar gate β, deep output layer (eq. 7), tanh on the initial state,
    # the paper's doubly stochastic regulariser (λ = 1 per caption ≈ 1/T per token here) and dropout 0.5.
    "paper": dict(gate="scalar", deep_output=True, output_context=False, init_activation="tanh",
                  init_scheme="pytorch", dropout=0.5, alpha_c=0.1, hard_entropy=0.01, hard_reward="caption",
                  hard_baseline="moving_average"),
    "default": {},
}
"""Named configurations for ``CaptionerConfig.preset(name)`` (and the CLI's ``--preset``)."""
