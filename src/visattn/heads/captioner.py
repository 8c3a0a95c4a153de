"""Show, Attend and Tell (Xu et al., ICML 2015): an LSTM that attends over the encoder's grid word by word.

    images (B, 3, H, W) -> encoder -> annotations a (B, L, C) -> keys = attention.prepare(a), once per image
    h_0, c_0 = tanh(f_init(mean_i a_i))                                    (two one-layer MLPs, §3.1.2)
    step t:  z_t, α_t = attention(keys, h_{t-1});  β_t = σ(f_β(h_{t-1}));  ẑ_t = β_t · z_t      (§4.2.1)
             h_t, c_t = LSTM([E y_{t-1}; ẑ_t], h_{t-1}, c_{t-1})
    logits_t = L_o(dropout(tanh(E y_{t-1} + L_h h_t + L_z ẑ_t)))          (deep output, eq. 7; the tanh
                                                                            is the authors' released code)
          or L_o(dropout(h_t)) + L_z(dropout(ẑ_t))      (the default: linear, with the context's own path,
                                                         ``output_context``; docs/design.md)

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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visattn.attention import AttentionKeys, create_attention
from visattn.encoders import create_encoder
from visattn.heads.attention_supervision import loss_attention_sup
from visattn.heads.beam import Hypothesis, beam_search, check_decoding_args, expand_for_beams, greedy_search
from visattn.heads.captioner_config import PRESETS, CaptionerConfig
from visattn.heads.recurrence import RunningBatch, StepLinear
from visattn.models import register_model

__all__ = ["Captioner", "CaptionerConfig", "PRESETS"]

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
        if config.output_context:
            self.out_vocab_context = nn.Linear(context_dim, vocab_size, bias=False)  # ẑ_t straight to the words
        if config.init_scheme == "uniform":
            nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
            nn.init.uniform_(self.out_vocab.weight, -0.1, 0.1)
            nn.init.zeros_(self.out_vocab.bias)
            if config.output_context:
                nn.init.uniform_(self.out_vocab_context.weight, -0.1, 0.1)
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
        h, c = self.init_h(mean), self.init_c(mean)
        if self.config.init_activation == "tanh":
            h, c = torch.tanh(h), torch.tanh(c)
        return h, c, mean

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
            return self.out_vocab(self.dropout(torch.tanh(embedded + self.out_hidden(h) + self.out_context(z))))
        logits = self.out_vocab(self.dropout(h))
        if self.config.output_context:
            logits = logits + self.out_vocab_context(self.dropout(z))
        return logits

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

    @property
    def weight_dict(self) -> dict[str, float]:
        """The weight of each loss term of :meth:`loss` in the total (DETR's ``weight_dict``)."""
        weights = {"loss_ce": 1.0, "loss_attention_reg": self.config.alpha_c}
        if self.config.attention_supervision > 0:
            weights["loss_attention_sup"] = self.config.attention_supervision
        if self.config.attention_mode == "hard":
            weights.update(loss_reinforce=self.config.hard_reinforce, loss_entropy=self.config.hard_entropy)
        return weights

    def loss(self, outputs: dict[str, Tensor], tokens: Tensor, *, num_targets: Tensor | float | None = None,
             attention_targets: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Training objective from :meth:`forward`'s outputs: named terms and their weighted sum.

        Every ``loss_*`` term is returned unweighted; ``loss`` is ``Σ weight_dict[k] · terms[k]``
        (:attr:`weight_dict`, from the config). With N real target tokens in the batch (``mask``; or
        ``num_targets`` when given: data-parallel training passes the count over all ranks divided by the
        world size, so that the averaged gradient is the gradient of the per-token mean over the global
        batch, whatever each rank's share of tokens):

        - ``loss_ce``: cross entropy averaged over the N real targets (pads ignored).
        - ``loss_attention_reg``: ``mean_b Σ_i (1 − Σ_t α_bti)²``, weight ``alpha_c``: the sum over steps runs
          over caption b's true length only, then a sum over locations per caption, then the mean over the
          batch. Zero for ``attention="none"`` or ``alpha_c = 0`` (not computed).
        - ``loss_attention_sup`` (only when ``attention_supervision > 0``): mean over aligned words of
          −log(attention mass inside the word's object), see :mod:`visattn.heads.attention_supervision`;
          ``attention_targets`` is :func:`~visattn.heads.attention_supervision.attention_targets` of the batch.
        - hard attention only (zero on batches that used the expected context): ``loss_reinforce`` =
          ``−Σ_b (r_b − b_b) Σ_t log p(s_bt) / N`` with reward ``r_b = log p(y_b | s_b, a_b)`` (the caption's
          summed log-likelihood, detached) and baseline ``b_b`` (``hard_baseline``), and ``loss_entropy`` =
          ``−Σ_bt H[s_bt] / N``: the paper's per-caption sums, divided by N like the cross entropy so their
          ratio is the paper's. A training call updates the moving-average baseline.

        Raises:
            ValueError: tokens that do not match the outputs, or attention supervision on without targets.
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
            terms["loss_attention_reg"] = (1.0 - coverage).pow(2).sum(dim=1).mean()
        else:
            terms["loss_attention_reg"] = zero
        if self.config.attention_supervision > 0:
            if attention_targets is None:
                raise ValueError("Captioner.loss: attention_supervision > 0 needs attention_targets (word-to-object "
                                 "alignments, visattn.heads.attention_supervision.attention_targets); this data "
                                 "has none, so set attention_supervision=0")
            terms["loss_attention_sup"] = loss_attention_sup(outputs["attention"], attention_targets)
        if self.config.attention_mode == "hard":
            terms["loss_reinforce"], terms["loss_entropy"] = zero, zero
            if "attention_log_prob" in outputs:
                terms["loss_reinforce"] = self._reinforce(outputs, token_ce.detach(), mask, num_targets)
                entropy = (outputs["attention_entropy"] * mask).sum()
                terms["loss_entropy"] = -entropy / num_targets
        weights = self.weight_dict
        total = sum(weights[name] * value for name, value in terms.items())
        return {"loss": total, **terms}

    def _reinforce(self, outputs: dict[str, Tensor], token_ce: Tensor, mask: Tensor, num_targets) -> Tensor:
        """``−Σ_bt A_bt log p(s_bt) / N`` with the advantage A of ``hard_reward`` and ``hard_baseline``."""
        log_likelihood = -token_ce  # (B, T-1) log p(y_t | ...), 0 on pads
        if self.config.hard_reward == "to_go":
            reward = log_likelihood.flip(1).cumsum(1).flip(1)  # (B, T-1): Σ_{t' >= t} log p(y_t')
        else:
            reward = log_likelihood.sum(dim=1, keepdim=True).expand_as(log_likelihood)  # (B, T-1)
        if self.config.hard_baseline == "batch":
            weight = mask.to(reward.dtype)
            running = weight.sum(dim=0, keepdim=True)  # (1, T-1): captions still running at step t
            others = ((reward * weight).sum(dim=0, keepdim=True) - reward) / (running - 1).clamp_min(1)
            advantage = (reward - others) * (running > 1)  # a caption alone at its step has no baseline
        else:
            advantage = reward - self._baseline(reward[:, 0])  # (B, T-1), the caption reward at every step
        return -(advantage * mask * outputs["attention_log_prob"]).sum() / num_targets

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
            log_probs = log_probs.index_fill(1, banned, float("-inf"))  # not in place: SCST backpropagates
            return log_probs, alpha, (h, c)

        return step, (h, c)
