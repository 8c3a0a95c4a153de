"""The textbook Show, Attend and Tell decoder: the baseline every speed figure is measured against.

This is the approach of the well-known tutorial implementation, written plainly, with the same maths as
``visattn.heads.captioner.Captioner`` configured as ``attention="additive", gate="channel",
deep_output=False`` (the tutorial's per-channel gate and linear output), so that on the same weights both
compute the same loss (``copy_to_captioner`` maps the weights). What makes it slow is what the textbook does:

- the attention's image projection ``W_k a_i`` is recomputed at **every** decoding step (inside
  ``ReferenceAttention.forward``), for every caption still running;
- captions are sorted by length and the batch **shrinks** step by step (``batch_size_t``), so each step
  runs small, differently shaped matrix products and writes its predictions into a preallocated tensor;
- beam search runs **one image at a time**, with the k beams as the batch.

Two deliberate choices so that the comparison is about speed only: ``h_0, c_0`` go through a tanh
(paper §3.1.2 and the authors' code; the tutorial leaves it out), the scoring non-linearity is the paper's
tanh (the tutorial uses a ReLU), and the doubly stochastic regulariser is reduced as visattn documents
it (sum over locations per caption, mean over the batch). Nothing here is used by the library.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

__all__ = ["ReferenceAttention", "ReferenceDecoder", "reference_loss", "reference_beam_search",
           "copy_to_captioner"]


class ReferenceAttention(nn.Module):
    """Additive attention that projects the whole image again on every call."""

    def __init__(self, encoder_dim: int, decoder_dim: int, attention_dim: int, *, nonlinearity: str = "tanh") -> None:
        super().__init__()
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"ReferenceAttention: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        self.encoder_att = nn.Linear(encoder_dim, attention_dim)
        self.decoder_att = nn.Linear(decoder_dim, attention_dim)
        self.full_att = nn.Linear(attention_dim, 1)

    def forward(self, encoder_out: Tensor, decoder_hidden: Tensor) -> tuple[Tensor, Tensor]:
        """encoder_out (b, L, C), decoder_hidden (b, D) -> context (b, C), alpha (b, L)."""
        att1 = self.encoder_att(encoder_out)  # (b, L, A): the same for every step, recomputed anyway
        att2 = self.decoder_att(decoder_hidden)  # (b, A)
        act = torch.tanh if self.nonlinearity == "tanh" else torch.relu
        att = self.full_att(act(att1 + att2.unsqueeze(1))).squeeze(2)  # (b, L)
        alpha = F.softmax(att, dim=1)
        context = (encoder_out * alpha.unsqueeze(2)).sum(dim=1)  # (b, L, C) -> (b, C)
        return context, alpha


class ReferenceDecoder(nn.Module):
    """LSTM decoder with attention, the tutorial's structure: ``decode_step`` is an ``nn.LSTMCell``.

    Args:
        vocab_size, encoder_dim, attention_dim, decoder_dim, embed_dim: V, C, A, D, E.
        dropout: before the output layer.
        alpha_c: weight of the doubly stochastic regulariser.
        nonlinearity: of the additive score, "tanh" (the paper) or "relu" (the tutorial).
        init_tanh: a tanh on h_0 and c_0 (the paper; the tutorial has none).
        tutorial_init: the embedding and the output layer uniform in ±0.1, its bias 0 (the tutorial's).
    """

    def __init__(self, *, vocab_size: int, encoder_dim: int, attention_dim: int, decoder_dim: int, embed_dim: int,
                 dropout: float = 0.5, alpha_c: float = 0.0, nonlinearity: str = "tanh", init_tanh: bool = True,
                 tutorial_init: bool = False) -> None:
        super().__init__()
        self.vocab_size, self.alpha_c, self.init_tanh = vocab_size, alpha_c, init_tanh
        self.attention = ReferenceAttention(encoder_dim, decoder_dim, attention_dim, nonlinearity=nonlinearity)
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.decode_step = nn.LSTMCell(embed_dim + encoder_dim, decoder_dim)
        self.init_h = nn.Linear(encoder_dim, decoder_dim)
        self.init_c = nn.Linear(encoder_dim, decoder_dim)
        self.f_beta = nn.Linear(decoder_dim, encoder_dim)  # per-channel gate
        self.fc = nn.Linear(decoder_dim, vocab_size)
        if tutorial_init:
            nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
            nn.init.uniform_(self.fc.weight, -0.1, 0.1)
            nn.init.zeros_(self.fc.bias)

    def init_hidden_state(self, encoder_out: Tensor) -> tuple[Tensor, Tensor]:
        mean_encoder_out = encoder_out.mean(dim=1)  # (B, C)
        h, c = self.init_h(mean_encoder_out), self.init_c(mean_encoder_out)
        return (torch.tanh(h), torch.tanh(c)) if self.init_tanh else (h, c)

    def forward(self, encoder_out: Tensor, tokens: Tensor, lengths: Tensor):
        """Teacher forcing over length-sorted captions, shrinking the batch as captions end.

        Args:
            encoder_out: (B, L, C) annotation vectors.
            tokens: (B, T) ``<start> .. <end> <pad>..``.
            lengths: (B,) tokens per caption, ``<start>`` and ``<end>`` included.

        Returns:
            predictions (B, T', V), sorted tokens (B, T), decode lengths (list), alphas (B, T', L), sort order.
        """
        lengths, order = lengths.sort(dim=0, descending=True)
        encoder_out, tokens = encoder_out[order], tokens[order]
        batch_size, num_pixels = encoder_out.shape[:2]
        embeddings = self.embedding(tokens)  # (B, T, E)
        h, c = self.init_hidden_state(encoder_out)
        decode_lengths = (lengths - 1).tolist()  # no step predicts from <end>
        steps = max(decode_lengths)
        predictions = encoder_out.new_zeros(batch_size, steps, self.vocab_size)
        alphas = encoder_out.new_zeros(batch_size, steps, num_pixels)
        for t in range(steps):
            batch_size_t = sum(length > t for length in decode_lengths)
            context, alpha = self.attention(encoder_out[:batch_size_t], h[:batch_size_t])
            gate = torch.sigmoid(self.f_beta(h[:batch_size_t]))  # (b, C)
            context = gate * context
            h, c = self.decode_step(torch.cat([embeddings[:batch_size_t, t, :], context], dim=1),
                                    (h[:batch_size_t], c[:batch_size_t]))  # (b, D)
            predictions[:batch_size_t, t, :] = self.fc(self.dropout(h))
            alphas[:batch_size_t, t, :] = alpha
        return predictions, tokens, decode_lengths, alphas, order


def reference_loss(decoder: ReferenceDecoder, encoder_out: Tensor, tokens: Tensor, lengths: Tensor) -> Tensor:
    """Cross entropy over the real targets (packed), plus ``alpha_c · mean_b Σ_i (1 − Σ_t α_bti)²``."""
    predictions, tokens, decode_lengths, alphas, _ = decoder(encoder_out, tokens, lengths)
    targets = tokens[:, 1:]
    scores = pack_padded_sequence(predictions, decode_lengths, batch_first=True).data
    targets = pack_padded_sequence(targets, decode_lengths, batch_first=True).data
    loss = F.cross_entropy(scores, targets)
    if decoder.alpha_c > 0:
        loss = loss + decoder.alpha_c * ((1.0 - alphas.sum(dim=1)) ** 2).sum(dim=1).mean()
    return loss


@torch.no_grad()
def reference_beam_search(decoder: ReferenceDecoder, encoder_out: Tensor, *, beam_size: int, max_len: int,
                          start_id: int, end_id: int, banned: tuple[int, ...] = (0,)) -> list[int]:
    """Beam search for ONE image, the k beams as the batch; returns the best caption's ids (no start/end).

    The search rules are visattn's (``visattn.heads.beam``), so both give the same captions: every step
    takes the 2k best extensions of the k live beams; ``<end>`` extensions ranked within the top k are
    finished captions, the k best others continue; the search stops when no live beam can beat the best
    finished caption (scores are sums of log-probabilities and only fall) or after ``max_len`` tokens.
    Tokens in ``banned`` (``<pad>``, ``<start>``) are never generated.

    Args:
        decoder: the reference decoder (eval mode).
        encoder_out: (1, L, C) one image's annotations.
    """
    k = beam_size
    encoder_out = encoder_out.expand(k, *encoder_out.shape[1:])  # (k, L, C)
    h, c = decoder.init_hidden_state(encoder_out)
    device = encoder_out.device
    prev = torch.full((k,), start_id, dtype=torch.long, device=device)
    scores = torch.full((k,), float("-inf"), device=device)
    scores[0] = 0.0  # one live beam at the start
    sequences: list[list[int]] = [[] for _ in range(k)]
    best_finished, best_sequence = float("-inf"), None
    for t in range(max_len):
        embeddings = decoder.embedding(prev)  # (k, E)
        context, _ = decoder.attention(encoder_out, h)  # W_k a_i recomputed for the k beams
        context = torch.sigmoid(decoder.f_beta(h)) * context
        h, c = decoder.decode_step(torch.cat([embeddings, context], dim=1), (h, c))
        log_probs = F.log_softmax(decoder.fc(h), dim=1)  # (k, V)
        log_probs[:, list(banned)] = float("-inf")
        vocab = log_probs.shape[1]
        top_scores, top_index = (scores.unsqueeze(1) + log_probs).view(-1).topk(min(2 * k, k * vocab))
        beams, words = (top_index // vocab).tolist(), (top_index % vocab).tolist()
        top_scores_list = top_scores.tolist()
        for rank in range(k):  # <end> within the top k: a finished caption
            if words[rank] == end_id and top_scores_list[rank] > best_finished:
                best_finished, best_sequence = top_scores_list[rank], sequences[beams[rank]]
        keep = [i for i in range(len(words)) if words[i] != end_id][:k]
        scores = top_scores[keep]
        sequences = [sequences[beams[i]] + [words[i]] for i in keep]
        h, c = h[[beams[i] for i in keep]], c[[beams[i] for i in keep]]
        prev = torch.tensor([words[i] for i in keep], device=device)
        if t + 1 < max_len and best_finished >= float(scores.max()):
            break
    if best_sequence is not None:
        return list(best_sequence)
    return sequences[int(scores.argmax())]


# nn.LSTMCell stacks its gates (input, forget, cell, output); visattn stacks (input, forget, output, cell).
_LSTM_ORDER = (0, 1, 3, 2)


def _reorder_gates(weight: Tensor) -> Tensor:
    """(4D, ...) in nn.LSTMCell's gate order -> visattn's gate order."""
    chunks = weight.chunk(4, dim=0)
    return torch.cat([chunks[i] for i in _LSTM_ORDER], dim=0)


@torch.no_grad()
def copy_to_captioner(decoder: ReferenceDecoder, captioner: nn.Module) -> None:
    """Load the reference's weights into a visattn ``Captioner`` (additive, channel gate, linear output).

    The additive score's two biases (``encoder_att``'s and ``decoder_att``'s) always appear summed, so
    visattn keeps one; the LSTM cell's two biases likewise. Dropout and the embedding match one to one.
    A ReLU reference needs the captioner's ``attention="additive_relu"`` (``benchmarks/tutorial_decoder.py``
    registers it), and its ``init_activation`` must match the reference's ``init_tanh``.
    """
    config = captioner.config
    scoring = "additive" if decoder.attention.nonlinearity == "tanh" else "additive_relu"
    init = "tanh" if decoder.init_tanh else "none"
    layout = (config.attention, config.gate, config.deep_output, config.output_context, config.attention_mode,
              config.init_activation)
    if layout != (scoring, "channel", False, False, "soft", init):
        raise ValueError(f"copy_to_captioner needs CaptionerConfig(attention={scoring!r}, gate='channel', "
                         f"deep_output=False, output_context=False, attention_mode='soft', "
                         f"init_activation={init!r})")
    ref_att, att = decoder.attention, captioner.attention
    att.key_proj.weight.copy_(ref_att.encoder_att.weight)
    att.key_proj.bias.copy_(ref_att.encoder_att.bias + ref_att.decoder_att.bias)
    att.query_proj.weight.copy_(ref_att.decoder_att.weight)
    att.score.weight.copy_(ref_att.full_att.weight)
    att.score.bias.copy_(ref_att.full_att.bias)
    for name in ("init_h", "init_c"):
        getattr(captioner, name).load_state_dict(getattr(decoder, name).state_dict())
    captioner.gate.load_state_dict(decoder.f_beta.state_dict())
    captioner.embedding.weight.copy_(decoder.embedding.weight)
    cell, embed_dim = decoder.decode_step, decoder.embedding.embedding_dim
    captioner.lstm_word.weight.copy_(_reorder_gates(cell.weight_ih[:, :embed_dim]))
    captioner.lstm_word.bias.copy_(_reorder_gates(cell.bias_ih + cell.bias_hh))
    # visattn's state matmul acts on [ẑ_t; h_{t-1}]: the cell's context columns, then its hidden weights.
    captioner.lstm_state.weight.copy_(_reorder_gates(torch.cat([cell.weight_ih[:, embed_dim:], cell.weight_hh], 1)))
    captioner.out_vocab.load_state_dict(decoder.fc.state_dict())
