"""The reference of the caption benchmark: the popular PyTorch tutorial's Show-Attend-Tell decoder.

The tutorial's structure (issue 12 lists it), written for this benchmark, not copied: the decoder is
:class:`reference_sat.ReferenceDecoder` (the speed benchmarks' textbook decoder) with the tutorial's choices,

    scores_i = w·relu(W_k a_i + W_q h + b) + c       (ReLU, not tanh, in the additive score)
    z = Σ_i softmax(scores)_i a_i;  z ← σ(f_β(h)) ⊙ z   (one gate per channel)
    h_0 = f_init,h(mean a), c_0 = f_init,c(mean a)    (linear, no tanh)
    h, c = LSTMCell([E y_{t-1}; z], (h, c));  logits = fc(dropout(h))   (no deep output layer)

and its loop: the batch sorted by decreasing caption length, step t running the first b_t captions, one
``nn.LSTMCell`` call per step, the embedding and the vocabulary projection uniform in ±0.1.
:func:`train_tutorial` trains it the way the issue measured it (Adam, cosine schedule, gradient clipping 5,
every (image, caption) pair an item, the final weights kept), for a wall-clock budget.

:func:`to_captioner` copies the trained weights into a :class:`visattn.heads.captioner.Captioner` that
computes the same function (``attention="additive_relu"``, ``gate="channel"``, ``deep_output=False``,
``init_activation="none"``), so the benchmark scores the reference with the very beam search and metrics
it scores visattn's models with. ``tests/test_bench.py`` checks that the two give the same loss.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from reference_sat import ReferenceDecoder, copy_to_captioner, reference_loss
from visattn.attention import AdditiveAttention, AttentionKeys, register_attention
from visattn.encoders import create_encoder
from visattn.heads.captioner import Captioner, CaptionerConfig

__all__ = ["ReluAdditiveAttention", "TutorialDecoder", "to_captioner", "train_tutorial"]


@register_attention("additive_relu")
class ReluAdditiveAttention(AdditiveAttention):
    """The tutorial's ``w·relu(W_k a_i + W_q h)`` scoring (the parameters of ``additive``); benchmark only."""

    def prepare(self, features: Tensor, pos: Tensor | None = None) -> AttentionKeys:
        return AttentionKeys(self.key_proj(self._check_features(features, pos)), features)

    def _logits(self, keys: AttentionKeys, query: Tensor) -> Tensor:
        hidden = torch.relu(keys.keys.unsqueeze(1) + self.query_proj(query).unsqueeze(2))  # (B, Q, L, A)
        return self.score(hidden).squeeze(-1).unsqueeze(1)  # (B, 1, Q, L)


class TutorialDecoder(nn.Module):
    """The benchmark's encoder + :class:`reference_sat.ReferenceDecoder` configured as the tutorial (ReLU
    score, no tanh on the initial state, its initialisation); ``forward`` returns the token cross entropy."""

    def __init__(self, config: CaptionerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = create_encoder(config.encoder)
        self.decoder = ReferenceDecoder(vocab_size=len(config.vocab), encoder_dim=self.encoder.out_dim,
                                        attention_dim=config.attention_dim, decoder_dim=config.decoder_dim,
                                        embed_dim=config.embed_dim, dropout=config.dropout, alpha_c=0.0,
                                        nonlinearity="relu", init_tanh=False, tutorial_init=True)

    def forward(self, images: Tensor, tokens: Tensor) -> Tensor:
        lengths = (tokens != 0).sum(dim=1)  # <start> .. <end>, padding 0 at the end
        return reference_loss(self.decoder, self.encoder(images)[0], tokens, lengths)


@torch.no_grad()
def to_captioner(reference: TutorialDecoder) -> Captioner:
    """A Captioner computing the same function as ``reference`` (module docstring), in eval mode."""
    config = replace(reference.config, attention="additive_relu", attention_mode="soft", gate="channel",
                     deep_output=False, output_context=False, init_activation="none", alpha_c=0.0,
                     attention_supervision=0.0)
    model = Captioner(config)
    model.encoder.load_state_dict(reference.encoder.state_dict())
    copy_to_captioner(reference.decoder, model)
    return model.eval()


def train_tutorial(reference: TutorialDecoder, items, collate, *, steps: int, seconds: float = math.inf,
                   batch_size: int = 64, lr: float = 2e-3, grad_clip: float = 5.0, seed: int = 0) -> dict:
    """The tutorial's loop: Adam with a cosine schedule over ``steps`` batches, gradient clipping, the final
    weights; it also stops after ``seconds`` of training. ``items``: every (image, caption) pair."""
    planned = max(1, steps)
    optimizer = torch.optim.Adam(reference.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, planned)
                                                                                         / planned)))
    loader = DataLoader(items, batch_size=batch_size, shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(seed))
    reference.train()
    steps, images, started = 0, 0, time.perf_counter()
    while steps < planned and time.perf_counter() - started < seconds:
        for batch in loader:
            loss = reference(batch["images"], batch["tokens"])
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(reference.parameters(), grad_clip)
            optimizer.step()
            schedule.step()
            steps, images = steps + 1, images + len(batch["tokens"])
            if steps >= planned or time.perf_counter() - started >= seconds:
                break
    return {"steps": steps, "images": images, "train_seconds": time.perf_counter() - started,
            "final_loss": float(loss.detach())}
