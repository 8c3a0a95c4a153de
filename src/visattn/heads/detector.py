"""DETR-style detector: learned object queries attend over the encoder's grid and each predicts one object.

    images (B, 3, H, W) -> encoder -> grid (B, L, C) -> linear -> memory (B, L, D) (+ 2-D sine positions)
    queries (Q, D) -> num_layers x [self-attention, cross-attention over the memory, FFN] -> (B, Q, D)
                   -> class head (K+1 logits, last = no object) and box head (normalised cxcywh)

Both attentions go through the shared contract (``create_attention("multihead", ...)``): the memory's keys
are prepared once per layer (``prepare``, with the grid positions), and the cross-attention weights of every
query come out as the ``attention`` maps.

Why anchors (``reference_points=True``, the default): plain DETR learns where each query looks from scratch,
and its Hungarian assignments keep flipping early in training, which is why it needs hundreds of epochs. Here
every query owns a learned anchor box (initialised on a regular grid over the image); its positional query is
made from the same sine encoding of the anchor centre that the memory uses for its grid cells (one coordinate
code that attention learns to compare), and the box head predicts a correction of the anchor in logit space,
near zero at initialisation. Each layer's box becomes the next layer's anchor (iterative refinement, detached
as in Deformable DETR), so later layers attend around the object found so far. Queries start spatially
specialised, matching is stable, and training on small data converges in minutes (Anchor-DETR / DAB-DETR
style). ``reference_points=False`` gives plain DETR queries.

Why positions in the values too (``position_in_values=True``, the default): with DETR's position-free values a
query's context says *what* it looked at but not *where*, and the box must be inferred from content features
that encode position only implicitly. Adding the grid positions to the values as well makes the context carry
the attention-weighted position of what the query looked at, which the box head can read directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from visattn.attention import create_attention
from visattn.boxes import denormalize_boxes
from visattn.encoders import EncoderConfig, create_encoder
from visattn.models import register_model

__all__ = ["Detector", "DetectorConfig", "sine_embedding"]


@dataclass
class DetectorConfig:
    """Everything needed to rebuild a :class:`Detector`.

    Attributes:
        encoder: the image encoder.
        num_classes: K object classes (the head adds a K+1-th "no object" class).
        class_names: K names, index = label; ``"0".."K-1"`` when left empty.
        num_queries: Q, the most objects one image can have.
        hidden_dim: D, width of the decoder.
        num_heads: attention heads (self- and cross-attention).
        num_layers: decoder layers.
        ffn_dim: hidden width of each layer's feed-forward block.
        dropout: dropout in attention and feed-forward blocks.
        aux_loss: also return every earlier layer's predictions (``aux_outputs``) for auxiliary losses.
        reference_points: per-query anchor boxes (see the module docstring); False = plain DETR queries.
        position_in_values: add the grid positions to the cross-attention values too, so each query's context
            says where it looked (see the module docstring); False keeps DETR's position-free values.
        image_size: side of the square input the model was trained at; ``visattn detect`` resizes images to
            it (boxes are normalised, so they map back to the original size).
    """

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    num_classes: int = 10
    class_names: list[str] = field(default_factory=list)
    num_queries: int = 16  # a few times the object count; more queries only add empty predictions
    hidden_dim: int = 128
    num_heads: int = 4
    num_layers: int = 3
    ffn_dim: int = 256
    dropout: float = 0.0  # small data trains faster without it; DETR uses 0.1 at COCO scale
    aux_loss: bool = True  # a loss at every layer is the cheapest way to speed DETR training up
    reference_points: bool = True
    position_in_values: bool = True
    image_size: int = 64

    def __post_init__(self) -> None:
        for name in ("num_classes", "num_queries", "hidden_dim", "num_heads", "num_layers", "ffn_dim", "image_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DetectorConfig.{name}: expected an int >= 1, got {value!r}")
        if self.hidden_dim % self.num_heads or self.hidden_dim % 4:
            raise ValueError(f"DetectorConfig.hidden_dim ({self.hidden_dim}) must be divisible by num_heads "
                             f"({self.num_heads}) and by 4 (sine positions)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"DetectorConfig.dropout: expected a value in [0, 1), got {self.dropout!r}")
        if not self.class_names:
            self.class_names = [str(i) for i in range(self.num_classes)]
        self.class_names = [str(name) for name in self.class_names]
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"DetectorConfig.class_names has {len(self.class_names)} names for "
                             f"num_classes={self.num_classes}")


def sine_embedding(points: Tensor, dim: int, *, temperature: float = 10000.0) -> Tensor:
    """Sine/cosine encoding of normalised 2-D points (DETR's positional encoding, shared by grid and anchors).

    Args:
        points: (..., 2) ``(x, y)`` in [0, 1].
        dim: output width, divisible by 4: half encodes y, half encodes x.

    Returns:
        (..., dim) encodings ``[y-part, x-part]``, each ``[sin(f_0 p), cos(f_0 p), sin(f_1 p), ...]``.
    """
    half = dim // 2
    freqs = temperature ** (torch.arange(half // 2, dtype=torch.float32, device=points.device) * 2 / half)
    angles = points[..., None].float() * (2 * math.pi) / freqs  # (..., 2, half/2)
    enc = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)  # (..., 2, half): sin/cos interleaved
    return torch.cat([enc[..., 1, :], enc[..., 0, :]], dim=-1)  # (..., dim): y first, then x


def _grid_positions(height: int, width: int, dim: int, device: torch.device) -> Tensor:
    """(1, H'*W', dim) sine encodings of the grid cell centres, row-major like the encoder's grid."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # (H', W') each
    points = torch.stack([grid_x, grid_y], dim=-1).view(1, height * width, 2)  # (1, L, 2)
    return sine_embedding(points, dim)


def _inverse_sigmoid(x: Tensor, eps: float = 1e-4) -> Tensor:
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else torch.relu(layer(x))
        return x


class DecoderLayer(nn.Module):
    """Self-attention among queries, cross-attention over the memory, FFN; post-norm as in DETR."""

    def __init__(self, *, hidden_dim: int, num_heads: int, ffn_dim: int, dropout: float,
                 position_in_values: bool) -> None:
        super().__init__()
        self.position_in_values = position_in_values
        options = {"attention_dim": hidden_dim, "num_heads": num_heads, "dropout": dropout}
        self.self_attn = create_attention("multihead", hidden_dim, hidden_dim, **options)
        self.cross_attn = create_attention("multihead", hidden_dim, hidden_dim, **options)
        self.ffn = nn.Sequential(nn.Linear(hidden_dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_dim, hidden_dim))
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.norm3 = nn.LayerNorm(hidden_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tgt: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor) -> tuple[Tensor, Tensor]:
        """Args: tgt (B, Q, D), query_pos (B or 1, Q, D), memory (B, L, D), memory_pos (1, L, D).

        Returns:
            the updated queries (B, Q, D) and the cross-attention weights (B, Q, L).
        """
        keys = self.self_attn.prepare(tgt, pos=query_pos.expand_as(tgt))  # queries attend to each other
        context, _ = self.self_attn(keys, tgt + query_pos)
        tgt = self.norm1(tgt + self.dropout(context))
        if self.position_in_values:
            keys = self.cross_attn.prepare(memory + memory_pos)  # keys and values both see the positions
        else:
            keys = self.cross_attn.prepare(memory, pos=memory_pos.expand_as(memory))  # positions in keys only
        context, weights = self.cross_attn(keys, tgt + query_pos)  # (B, Q, D), (B, Q, L)
        tgt = self.norm2(tgt + self.dropout(context))
        tgt = self.norm3(tgt + self.dropout(self.ffn(tgt)))
        return tgt, weights


@register_model("detector", DetectorConfig, task="detect")
class Detector(nn.Module):
    """Set-prediction detector with per-query attention maps.

    ``forward(images)`` takes (B, 3, H, W) floats in [0, 1] and returns a dict:

    * ``pred_logits`` (B, Q, K+1): class logits, the last class is "no object";
    * ``pred_boxes`` (B, Q, 4): boxes ``(cx, cy, w, h)`` normalised to [0, 1] by the image size;
    * ``attention`` (B, Q, H', W'): the last layer's cross-attention of every query over the grid (mean of
      heads; each map sums to 1);
    * ``aux_outputs`` (only with ``config.aux_loss``): a list of ``num_layers - 1`` dicts with the same three
      keys for the earlier layers.

    Args:
        config: the :class:`DetectorConfig`.
    """

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.hidden_dim
        self.encoder = create_encoder(config.encoder)
        self.input_proj = nn.Linear(self.encoder.out_dim, dim)
        self.layers = nn.ModuleList(
            DecoderLayer(hidden_dim=dim, num_heads=config.num_heads, ffn_dim=config.ffn_dim,
                         dropout=config.dropout, position_in_values=config.position_in_values)
            for _ in range(config.num_layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.class_head = nn.Linear(dim, config.num_classes + 1)
        self.box_head = MLP(dim, dim, 4, 3)
        if config.reference_points:
            self.anchors = nn.Parameter(_inverse_sigmoid(self._initial_anchors(config.num_queries)))  # (Q, 4)
            self.anchor_pos = MLP(dim, dim, dim, 2)  # sine encoding of the anchor centre -> positional query
            # Start (almost) exactly at the anchors; not zero, so every box-head layer gets a gradient at once.
            nn.init.normal_(self.box_head.layers[-1].weight, std=1e-3)
            nn.init.zeros_(self.box_head.layers[-1].bias)
        else:
            self.query_pos = nn.Parameter(torch.randn(config.num_queries, dim))
        # Learned content queries (DETR starts from zeros, which leaves the first self-attention without input).
        self.query_content = nn.Parameter(torch.randn(config.num_queries, dim))

    @staticmethod
    def _initial_anchors(num_queries: int) -> Tensor:
        """(Q, 4) normalised cxcywh anchors: centres on a near-square grid, sizes one grid cell."""
        cols = math.ceil(math.sqrt(num_queries))
        rows = math.ceil(num_queries / cols)
        index = torch.arange(num_queries, dtype=torch.float32)
        cx = (index % cols + 0.5) / cols
        cy = (torch.div(index, cols, rounding_mode="floor") + 0.5) / rows
        return torch.stack([cx, cy, torch.full_like(cx, 1 / cols), torch.full_like(cx, 1 / rows)], dim=-1)

    def _query_pos(self, anchors: Tensor | None) -> Tensor:
        """Positional queries: (B, Q, D) from the current anchors (B, Q, 4) in logit space, else (1, Q, D)."""
        if anchors is None:
            return self.query_pos.unsqueeze(0)
        centres = anchors[..., :2].sigmoid()  # (B, Q, 2) normalised (cx, cy)
        return self.anchor_pos(sine_embedding(centres, self.config.hidden_dim))

    def forward(self, images: Tensor) -> dict[str, Any]:
        """Detect objects; see the class docstring for the output dict."""
        features, (height, width) = self.encoder(images)  # (B, L, C), L = H'*W'
        batch = features.shape[0]
        memory = self.input_proj(features)  # (B, L, D)
        memory_pos = _grid_positions(height, width, self.config.hidden_dim, memory.device).to(memory.dtype)
        tgt = self.query_content.to(memory.dtype).expand(batch, -1, -1)  # (B, Q, D)
        anchors = self.anchors.expand(batch, -1, -1) if self.config.reference_points else None  # (B, Q, 4)
        per_layer = []
        for layer in self.layers:
            tgt, weights = layer(tgt, self._query_pos(anchors).to(memory.dtype), memory, memory_pos)
            hidden = self.norm(tgt)
            box_logits = self.box_head(hidden)  # (B, Q, 4)
            if anchors is not None:
                box_logits = box_logits + anchors  # a correction of the anchor, in logit space
                anchors = box_logits.detach()  # the next layer looks around this layer's box
            per_layer.append({
                "pred_logits": self.class_head(hidden),
                "pred_boxes": box_logits.sigmoid(),
                "attention": weights.view(*weights.shape[:2], height, width),  # (B, Q, L) -> (B, Q, H', W')
            })
        outputs = dict(per_layer[-1])
        if self.config.aux_loss:
            outputs["aux_outputs"] = per_layer[:-1]
        return outputs

    @torch.no_grad()
    def postprocess(
        self,
        outputs: dict[str, Any],
        image_sizes: list[tuple[int, int]] | Tensor,
        *,
        score_threshold: float = 0.5,
        top_k: int = 100,
    ) -> list[dict[str, Tensor]]:
        """Turn raw outputs into per-image detections in pixels.

        A query's score is its best object-class probability (softmax over K+1, "no object" excluded).

        Args:
            outputs: the output dict of :meth:`forward`.
            image_sizes: per image ``(H, W)`` in pixels of the original image (boxes are normalised, so they
                map back to any resize of it).
            score_threshold: keep queries scoring at least this (0 keeps all, as mAP evaluation wants).
            top_k: keep at most this many per image, best first.

        Returns:
            Per image: ``boxes`` (D, 4) xyxy pixels clipped to the image, ``scores`` (D,), ``labels`` (D,) int64, ``query_index``
            (D,) int64, ``attention`` (D, H', W') of the kept queries; sorted by descending score.
        """
        prob = outputs["pred_logits"].float().softmax(-1)[..., :-1]  # (B, Q, K)
        scores, labels = prob.max(-1)  # (B, Q) each
        sizes = torch.as_tensor(image_sizes, dtype=torch.float32, device=prob.device).reshape(-1, 2)
        if sizes.shape[0] != prob.shape[0]:
            raise ValueError(f"got {sizes.shape[0]} image sizes for a batch of {prob.shape[0]}")
        boxes = denormalize_boxes(outputs["pred_boxes"].float(), sizes)  # (B, Q, 4) xyxy pixels
        limits = sizes.flip(-1).repeat(1, 2)[:, None, :]  # (B, 1, 4): (W, H, W, H)
        boxes = torch.minimum(boxes.clamp_min(0), limits)  # clipped to the image
        results = []
        for b in range(prob.shape[0]):
            keep = (scores[b] >= score_threshold).nonzero().flatten()
            keep = keep[scores[b, keep].argsort(descending=True)][:top_k]
            results.append({
                "boxes": boxes[b, keep], "scores": scores[b, keep], "labels": labels[b, keep],
                "query_index": keep, "attention": outputs["attention"][b, keep].float(),
            })
        return results
