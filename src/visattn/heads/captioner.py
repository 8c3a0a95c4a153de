"""Show, Attend and Tell (Xu et al., ICML 2015): an LSTM that attends over the encoder's grid word by word.

    images (B, 3, H, W) -> encoder -> annotations a (B, L, C) -> keys = attention.prepare(a), once per image
    h_0, c_0 = tanh(f_init(mean_i a_i))                                    (two one-layer MLPs, §3.1.2)
    step t:  z_t, α_t = attention(keys, h_{t-1});  β_t = σ(f_β(h_{t-1}));  ẑ_t = β_t · z_t      (§4.2.1)
             h_t, c_t = LSTM([E y_{t-1}; ẑ_t], h_{t-1}, c_{t-1})
    logits_t = L_o(dropout(tanh(E y_{t-1} + L_h h_t + L_z ẑ_t)))          (deep output, eq. 7; the tanh
                                                                            is the authors' released code)

Speed (docs/design.md): the image-only attention term is computed once per image. The batch runs in
order of decreasing caption length, so step t runs only the first b_t rows, the captions still running
(planned once per batch on the CPU from the lengths: no padding is computed, and nothing in the loop reads
a value back to the host). The embedding's share of the LSTM gates is one matmul over all real steps
before the loop; the loop keeps only h_t and ẑ_t, and the deep output and the vocabulary projection run
once on the N real targets after it. The weights used at every step (LSTM state, gate) get their
gradients in one product after the backward pass (:class:`~visattn.heads.recurrence.StepLinear`). With
scheduled sampling the next input depends on this step's logits, so the output layer then runs inside
the loop.

Hard attention (§4.1) samples one location per step (REINFORCE with a moving-average baseline and an
entropy bonus); with probability ``hard_expected_context_prob`` a training batch uses the expected
context instead. Outside training, and in :meth:`Captioner.generate`, hard models use the expected
context, so decoding is deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visattn.attention import AttentionKeys, attention_class, create_attention, list_attentions
from visattn.encoders import EncoderConfig, create_encoder
from visattn.heads.beam import Hypothesis, beam_search, check_decoding_args, expand_for_beams, greedy_search
from visattn.heads.recurrence import RunningBatch, StepLinear
from visattn.models import register_model

__all__ = ["Captioner", "CaptionerConfig"]

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
        deep_output: the paper's deep output layer (eq. 7); False = a linear layer on h_t.
        alpha_c: λ of the doubly stochastic regulariser λ·Σ_i (1 − Σ_t α_ti)² (see :meth:`Captioner.loss`).
        hard_reinforce, hard_entropy: λ_r and λ_e of the hard-attention objective (§4.1).
        hard_baseline_decay: b ← decay·b + (1 − decay)·log p(y | s, a), per training batch.
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
    gate: str = "scalar"
    deep_output: bool = True
    # 0 (off) by default. With per-token cross entropy, the paper's λ = 1 on a per-caption sum is about
    # λ = 1 / words per caption here; and on small grids (64 cells, ~15 words) any λ pulls attention onto
    # the background: our prototype's attention correctness fell from 0.46 (λ = 0) to 0.21 (λ = 1).
    # Scaling the target 1 to T/L would not help: Σ_i Σ_t α_ti = T is fixed, so the target only shifts
    # the loss by a constant and leaves its gradient unchanged. Use ~0.1 on COCO-sized grids to follow the paper.
    alpha_c: float = 0.0
    hard_reinforce: float = 1.0
    hard_entropy: float = 0.01  # the paper's λ_e
    hard_baseline_decay: float = 0.9  # the paper's moving average
    hard_expected_context_prob: float = 0.5  # the paper's trick (§4.1)
    scheduled_sampling: float = 0.0
    max_len: int = 20
    image_size: int = 64

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
        for name in ("alpha_c", "hard_reinforce", "hard_entropy"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"CaptionerConfig.{name}: expected a weight >= 0, got {getattr(self, name)!r}")


@register_model("captioner", CaptionerConfig, task="caption")
class Captioner(nn.Module):
    """Show, Attend and Tell captioner (module docstring). Built as ``Captioner(config)``."""

    def __init__(self, config: CaptionerConfig) -> None:
        super().__init__()
        self.config = config
        self.pad_id = 0
        self.start_id = config.vocab.index("<start>")
        self.end_id = config.vocab.index("<end>")
        vocab_size, dim, embed = len(config.vocab), config.decoder_dim, config.embed_dim
        self.encoder = create_encoder(config.encoder)
        channels = self.encoder.out_dim
        self.init_h = nn.Linear(channels, dim)
        self.init_c = nn.Linear(channels, dim)
        self.attention = None
        context_dim = channels
        if config.attention != "none":
            self.attention = create_attention(config.attention, channels, dim, attention_dim=config.attention_dim)
            context_dim = self.attention.out_dim
        self.context_dim = context_dim
        self.gate = {"scalar": nn.Linear(dim, 1), "channel": nn.Linear(dim, context_dim), "none": None}[config.gate]
        self.embedding = nn.Embedding(vocab_size, embed, padding_idx=self.pad_id)
        # LSTM gates in the order (input, forget, output, cell): E y's share is computed for all steps at once.
        self.lstm_word = nn.Linear(embed, 4 * dim)
        self.lstm_state = nn.Linear(context_dim + dim, 4 * dim, bias=False)  # acts on [ẑ_t; h_{t-1}]
        if config.deep_output:
            self.out_hidden = nn.Linear(dim, embed)  # L_h
            self.out_context = nn.Linear(context_dim, embed, bias=False)  # L_z
        self.dropout = nn.Dropout(config.dropout)
        self.out_vocab = nn.Linear(embed if config.deep_output else dim, vocab_size)  # L_o
        if config.attention_mode == "hard":
            self.register_buffer("reward_baseline", torch.zeros(()))
            self.register_buffer("reward_baseline_updates", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------ pieces of one step
    def encode(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Images (B, 3, H, W) in [0, 1] -> annotations (B, L, C) and the grid (H', W')."""
        return self.encoder(images)

    def _annotations(self, images: Tensor | None, features: Tensor | None,
                     grid: tuple[int, int] | None) -> tuple[Tensor, tuple[int, int]]:
        if (images is None) == (features is None):
            raise ValueError("Captioner: pass exactly one of images (B, 3, H, W) or features (B, L, C)")
        if images is not None:
            return self.encode(images)
        if features.dim() != 3 or features.shape[-1] != self.encoder.out_dim:
            raise ValueError(f"Captioner: features must be (B, L, {self.encoder.out_dim}), got {tuple(features.shape)}")
        num_locations = features.shape[1]
        if grid is None:
            side = math.isqrt(num_locations)
            if side * side != num_locations:
                raise ValueError(f"Captioner: features have L={num_locations} locations, not a square grid; pass grid")
            grid = (side, side)
        if grid[0] * grid[1] != num_locations:
            raise ValueError(f"Captioner: grid {tuple(grid)} does not hold L={num_locations} locations")
        return features, (int(grid[0]), int(grid[1]))

    def _init_state(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mean = features.mean(dim=1)  # (B, C)
        return torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean)), mean

    def _gated(self, context: Tensor, h: Tensor, gate: StepLinear | None = None) -> tuple[Tensor, Tensor | None]:
        """ẑ_t = β_t · z_t with β_t = σ(f_β(h_{t-1})): (B, C'), and β (B, 1) / (B, C') or None."""
        if self.gate is None:
            return context, None
        beta = torch.sigmoid((gate or self.gate)(h))
        return beta * context, beta

    def _lstm(self, word_gates: Tensor, z: Tensor, h: Tensor, c: Tensor,
              state: StepLinear | None = None) -> tuple[Tensor, Tensor]:
        gates = word_gates + (state or self.lstm_state)(torch.cat([z, h], dim=1))  # (B, 4D)
        dim = h.shape[1]
        sig = torch.sigmoid(gates[:, : 3 * dim])  # input, forget, output
        c = sig[:, dim : 2 * dim] * c + sig[:, :dim] * torch.tanh(gates[:, 3 * dim :])
        return sig[:, 2 * dim :] * torch.tanh(c), c

    def _logits(self, embedded: Tensor, h: Tensor, z: Tensor) -> Tensor:
        """Output layer on any leading shape: (..., E), (..., D), (..., C') -> (..., V)."""
        if self.config.deep_output:
            hidden = torch.tanh(embedded + self.out_hidden(h) + self.out_context(z))
        else:
            hidden = h
        return self.out_vocab(self.dropout(hidden))

    # ------------------------------------------------------------------ teacher-forced training pass
    def forward(self, images: Tensor | None = None, *, tokens: Tensor, lengths: Tensor | None = None,
                features: Tensor | None = None, grid: tuple[int, int] | None = None) -> dict[str, Tensor]:
        """Teacher-forced pass: predict ``tokens[:, 1:]`` from ``tokens[:, :-1]``.

        A caption leaves the batch when it ends: step t runs only the captions still running (the batch
        is taken in order of decreasing length, as the paper's authors and the common tutorials do), and
        the output layer runs only on real targets, so padding costs nothing.

        Args:
            images: (B, 3, H, W) in [0, 1]; or instead
            features: (B, L, C) annotations from :meth:`encode` (e.g. a feature cache), with
            grid: their (H', W'); inferred for square grids.
            tokens: (B, T) int64 ``<start> w_1 .. w_n <end> <pad> ...``.
            lengths: (B,) real tokens per row, ``<start>`` and ``<end>`` included; default: the non-pad
                count (padding is at the end of a row). Lengths on the CPU spare a CUDA device a sync.

        Returns:
            ``logits`` (B, T-1, V); ``attention`` (B, T-1, H', W'), each real step's map sums to 1;
            ``gate`` (B, T-1) in [0, 1] (channel gate: its mean; no gate: 1); ``mask`` (B, T-1) bool, True
            on real targets; ``real_logits`` (N, V), the logits of the N real targets, which sit at
            ``real_index`` (N,) of the flattened (B·(T-1)) steps (what :meth:`loss` reads: no work on
            padding, and no host sync). Outputs at padded positions are 0
            (they are not computed). Hard attention with a sampled batch adds ``attention_index``,
            ``attention_log_prob`` and ``attention_entropy`` (B, T-1).
        """
        features, grid = self._annotations(images, features, grid)
        if tokens.dim() != 2 or tokens.shape[0] != features.shape[0] or tokens.shape[1] < 2:
            raise ValueError(f"Captioner: tokens must be (B={features.shape[0]}, T>=2), got {tuple(tokens.shape)}")
        if lengths is not None and (lengths.dim() != 1 or lengths.shape[0] != tokens.shape[0]):
            raise ValueError(f"Captioner: lengths must be (B={tokens.shape[0]},), got {tuple(lengths.shape)}")
        batch, num_locations = features.shape[:2]
        steps = tokens.shape[1] - 1
        if lengths is None:
            lengths = (tokens != self.pad_id).sum(dim=1)
        plan = RunningBatch(lengths.cpu() - 1, steps, tokens.device)
        if plan.order is not None:  # sort by decreasing length: the running captions are the first rows
            features, tokens = features.index_select(0, plan.order), tokens.index_select(0, plan.order)
        inputs = tokens[:, :-1]
        h, c, mean = self._init_state(features)
        keys = self.attention.prepare(features) if self.attention is not None else None
        # the real steps' inputs, time-major (N, ·); the embedding's share of the gates in one matmul
        embedded = self.embedding(inputs.reshape(-1).index_select(0, plan.time_major))  # (N, E)
        word_gates = self.lstm_word(embedded)  # (N, 4D)
        sampled = (self.config.attention_mode == "hard" and self.training
                   and bool(torch.rand(()) >= self.config.hard_expected_context_prob))
        scheduled = self.training and self.config.scheduled_sampling > 0
        hs, zs, alphas, betas, step_logits = [], [], [], [], []
        indices, log_probs, entropies = [], [], []
        # split: one view per step whose backward is a single cat (indexing [:, t] would zero-fill and
        # accumulate a full (B, T-1, ·) gradient at every step). The running rows' keys are sliced once
        # per batch size, so their gradient is summed before each slice's backward runs.
        embedded_steps, word_gates_steps = embedded.split(plan.running), word_gates.split(plan.running)
        running_keys, running_mean = keys, mean
        # the weights used at every step get their gradient in one product after the backward pass
        state_linear = StepLinear(self.lstm_state)
        gate_linear = StepLinear(self.gate) if self.gate is not None else None
        for t, rows in enumerate(plan.running):
            emb_t, gates_t = embedded_steps[t], word_gates_steps[t]  # (b_t, ·)
            if rows < h.shape[0]:
                h, c = h[:rows], c[:rows]
                if keys is not None:
                    running_keys = AttentionKeys(keys.keys[:rows], keys.values[:rows])
                running_mean = mean[:rows]
            if scheduled and t > 0:
                own = step_logits[-1][:rows].detach().argmax(dim=-1)  # (b_t,)
                use_own = torch.rand(rows, device=tokens.device) < self.config.scheduled_sampling
                emb_t = self.embedding(torch.where(use_own, own, inputs[:rows, t]))
                gates_t = self.lstm_word(emb_t)
            if keys is None:
                context = running_mean
            elif sampled:
                sample = self.attention.sample(running_keys, h)
                context = sample.context
                alphas.append(sample.weights)
                indices.append(sample.index)
                log_probs.append(sample.log_prob)
                entropies.append(sample.entropy)
            else:
                context, alpha = self.attention(running_keys, h)  # (b_t, C'), (b_t, L)
                alphas.append(alpha)
            z, beta = self._gated(context, h, gate_linear)
            h, c = self._lstm(gates_t, z, h, c, state_linear)
            hs.append(h)
            zs.append(z)
            if beta is not None:
                betas.append(beta.mean(dim=1) if beta.shape[1] > 1 else beta.squeeze(1))
            if scheduled:
                step_logits.append(self._logits(emb_t, h, z))
        if scheduled:
            logits = plan.gather(torch.cat(step_logits)) if step_logits else None
        else:  # the output layer on the real targets only, in one matmul: (N, ·) -> (N, V)
            hidden = plan.gather(torch.cat(hs) if hs else h[:0])
            contexts = plan.gather(torch.cat(zs) if zs else h.new_zeros(0, self.context_dim))
            logits = self._logits(plan.gather(embedded), hidden, contexts)
        real_logits = logits if logits is not None else features.new_zeros(0, self.out_vocab.out_features)
        logits = plan.scatter(real_logits)
        attention = plan.scatter(plan.gather(torch.cat(alphas))) if alphas else None
        if attention is None:
            attention = features.new_full((1, 1, num_locations), 1.0 / num_locations).expand(batch, steps, -1)
            attention = attention * plan.mask.unsqueeze(-1)
        gate = plan.scatter(plan.gather(torch.cat(betas))) if betas else plan.mask.to(features.dtype)
        outputs = {"logits": logits, "attention": attention.reshape(batch, steps, *grid), "gate": gate,
                   "mask": plan.mask, "real_logits": real_logits, "real_index": plan.flat}
        if sampled:
            outputs.update({name: plan.scatter(plan.gather(torch.cat(parts))) for name, parts in (
                ("attention_index", indices), ("attention_log_prob", log_probs), ("attention_entropy", entropies))})
        return outputs

    def loss(self, outputs: dict[str, Tensor], tokens: Tensor, *,
             num_targets: Tensor | float | None = None) -> dict[str, Tensor]:
        """Training objective from :meth:`forward`'s outputs.

        With N real target tokens in the batch (``mask``; or ``num_targets`` when given: data-parallel
        training passes the count over all ranks divided by the world size, so that the averaged gradient
        is the gradient of the per-token mean over the global batch, whatever each rank's share of tokens):

        - ``loss_ce``: cross entropy averaged over the N real targets (pads ignored).
        - ``loss_attention_reg``: ``alpha_c · mean_b Σ_i (1 − Σ_t α_bti)²``: the sum over steps runs over
          caption b's true length only, then a sum over locations per caption, then the mean over the batch.
          Zero for ``attention="none"`` (nothing to regularise).
        - hard attention only (zero on batches that used the expected context): ``loss_reinforce`` =
          ``−λ_r Σ_b (r_b − baseline) Σ_t log p(s_bt) / N`` with reward ``r_b = log p(y_b | s_b, a_b)``
          (the caption's summed log-likelihood, detached) and ``loss_entropy`` = ``−λ_e Σ_bt H[s_bt] / N``:
          the paper's per-caption sums, divided by N like the cross entropy so their ratio is the paper's.
          A training call updates the moving-average baseline (the first update sets it to the batch mean).
        - ``loss``: the sum of the terms above.
        """
        mask, index = outputs["mask"], outputs["real_index"]
        batch, steps = mask.shape
        targets = tokens[:, 1:]
        if targets.shape != (batch, steps):
            raise ValueError(f"Captioner.loss: tokens {tuple(tokens.shape)} do not match the outputs' "
                             f"{batch} x {steps} steps")
        # on the real targets only (an index, not the mask: no host sync); 0 on pads
        real_ce = F.cross_entropy(outputs["real_logits"].float(), targets.reshape(-1).index_select(0, index),
                                  reduction="none")  # (N,)
        token_ce = real_ce.new_zeros(batch * steps).index_copy(0, index, real_ce).view(batch, steps)
        if num_targets is None:
            num_targets = mask.sum().clamp_min(1)
        terms = {"loss_ce": token_ce.sum() / num_targets}
        zero = real_ce.new_zeros(())
        if self.attention is not None and self.config.alpha_c > 0:
            alpha = outputs["attention"].flatten(2).float()  # (B, T-1, H', W') -> (B, T-1, L)
            coverage = (alpha * mask.unsqueeze(-1)).sum(dim=1)  # (B, L): Σ_t over the true length
            terms["loss_attention_reg"] = self.config.alpha_c * (1.0 - coverage).pow(2).sum(dim=1).mean()
        else:
            terms["loss_attention_reg"] = zero
        if self.config.attention_mode == "hard":
            terms["loss_reinforce"], terms["loss_entropy"] = zero, zero
            if "attention_log_prob" in outputs:
                reward = -token_ce.detach().sum(dim=1)  # (B,) log p(y | s, a)
                baseline = self._baseline(reward)
                log_prob = (outputs["attention_log_prob"] * mask).sum(dim=1)  # (B,)
                advantage = reward - baseline  # (B,)
                terms["loss_reinforce"] = -self.config.hard_reinforce * (advantage * log_prob).sum() / num_targets
                entropy = (outputs["attention_entropy"] * mask).sum()
                terms["loss_entropy"] = -self.config.hard_entropy * entropy / num_targets
        terms["loss"] = sum(terms.values())
        return {"loss": terms.pop("loss"), **terms}

    def _baseline(self, reward: Tensor) -> Tensor:
        """The baseline for this batch; updates the moving average when training (no host sync)."""
        mean = reward.mean()
        started = self.reward_baseline_updates > 0
        baseline = torch.where(started, self.reward_baseline, mean)
        if self.training:
            decay = self.config.hard_baseline_decay
            self.reward_baseline.copy_(torch.where(started, decay * self.reward_baseline + (1 - decay) * mean, mean))
            self.reward_baseline_updates.add_(1)
        return baseline

    # ------------------------------------------------------------------ decoding
    @torch.no_grad()
    def generate(self, images: Tensor | None = None, *, features: Tensor | None = None,
                 grid: tuple[int, int] | None = None, beam_size: int = 1, max_len: int | None = None,
                 n_best: int = 1, length_penalty: float = 0.0) -> list[list[Hypothesis]]:
        """Caption images: greedy for ``beam_size=1``, batched beam search otherwise (eval mode inside).

        Args:
            images: (B, 3, H, W) in [0, 1]; or ``features`` (B, L, C) with ``grid``, as in :meth:`forward`.
            beam_size: k >= 1.
            max_len: most tokens per caption, ``<end>`` included; default ``config.max_len``.
            n_best: hypotheses per image (<= k).
            length_penalty: α of the score ``Σ log p / length ** α`` (0: plain sum).

        Returns:
            Per image its ``n_best`` :class:`~visattn.heads.beam.Hypothesis`, best first; token ids exclude
            ``<start>``/``<end>``; attention maps (steps, H', W'). Never generates ``<pad>`` or ``<start>``.

        Raises:
            ValueError: beam_size, max_len or n_best below 1, or n_best > beam_size.
        """
        max_len = self.config.max_len if max_len is None else max_len
        check_decoding_args(beam_size=beam_size, max_len=max_len, n_best=n_best, length_penalty=length_penalty)
        was_training = self.training
        self.eval()
        try:
            features, grid = self._annotations(images, features, grid)
            batch = features.shape[0]
            step, state = self.decoder_step(features, beam_size=beam_size)
            options = dict(start_id=self.start_id, end_id=self.end_id, max_len=max_len,
                           length_penalty=float(length_penalty), grid=grid)
            if beam_size == 1:
                return greedy_search(step, state, batch_size=batch, **options)
            return beam_search(step, state, batch_size=batch, beam_size=beam_size, n_best=n_best, **options)
        finally:
            self.train(was_training)

    def decoder_step(self, features: Tensor, *, beam_size: int = 1):
        """The step function of :mod:`visattn.heads.beam` for annotations (B, L, C), and its initial state.

        Keys and the initial state are computed once per image, then repeated for the ``beam_size`` rows
        of each image (N = B·k, image b in rows b·k .. b·k+k-1).

        Returns:
            ``(step, (h, c))`` where ``step(prev_tokens (N,), (h, c)) -> (log_probs (N, V), attention (N, L),
            (h, c))``; ``<pad>`` and ``<start>`` get log-probability -inf.
        """
        h, c, mean = self._init_state(features)
        keys = self.attention.prepare(features) if self.attention is not None else None
        batch, num_locations = features.shape[:2]
        if beam_size > 1:
            h, c, mean = (expand_for_beams(x, beam_size) for x in (h, c, mean))  # (B·k, ...)
        uniform = features.new_full((1, num_locations), 1.0 / num_locations)
        banned = torch.tensor([self.pad_id, self.start_id], device=features.device)

        def step(prev: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
            h, c = state
            embedded = self.embedding(prev)  # (N, E)
            if keys is None:
                context, alpha = mean, uniform.expand(prev.shape[0], -1)
            elif beam_size > 1:
                # (B·k, D) -> (B, k, D): an image's k beams are k queries of its keys (no per-beam copy of them).
                context, alpha = self.attention(keys, h.reshape(batch, beam_size, -1))  # (B, k, C'), (B, k, L)
                context, alpha = context.reshape(batch * beam_size, -1), alpha.reshape(batch * beam_size, -1)
            else:
                context, alpha = self.attention(keys, h)  # expected context, also for hard models
            z, _ = self._gated(context, h)
            h, c = self._lstm(self.lstm_word(embedded), z, h, c)
            log_probs = F.log_softmax(self._logits(embedded, h, z).float(), dim=-1)
            log_probs.index_fill_(1, banned, float("-inf"))
            return log_probs, alpha, (h, c)

        return step, (h, c)
