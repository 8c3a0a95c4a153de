"""Registered size variants of the heads (timm style): ``tiny_*`` models that build, train, save and load like
the full-size ones in a fraction of a second.

The tests use them as they would a real model (``build_model("tiny_classifier")``, ``tests/conftest.py``), and
``tests/test_models.py`` runs every registered model through forward, backward, save and load. Each config is
the smallest that still exercises every part of its head: two encoder blocks with two halvings (a 4x4 grid on
16 px images, 8x8 on 32 px), attention widths of 8 to 16, two decoder layers.
"""

from __future__ import annotations

from visattn.encoders import EncoderConfig
from visattn.heads.captioner import CaptionerConfig
from visattn.heads.classifier import ClassifierConfig
from visattn.heads.detector import DetectorConfig
from visattn.models import register_variant

__all__ = ["TINY_VOCAB", "tiny_captioner_config", "tiny_classifier_config", "tiny_detector_config"]

#: The special tokens and eight words: enough for captions of different lengths.
TINY_VOCAB = ["<pad>", "<start>", "<end>", "<unk>"] + [f"w{i}" for i in range(8)]


def tiny_classifier_config() -> ClassifierConfig:
    return ClassifierConfig(encoder=EncoderConfig(width=8, depth=2, num_downsample=2), class_names=["a", "b", "c"],
                            attention_dim=8, hidden_dim=16, image_size=16)


def tiny_captioner_config() -> CaptionerConfig:
    # No dropout: outputs are deterministic in training mode, so tests can compare training-mode passes.
    return CaptionerConfig(encoder=EncoderConfig(width=8, depth=2, num_downsample=2), vocab=list(TINY_VOCAB),
                           attention_dim=16, decoder_dim=16, embed_dim=8, dropout=0.0, image_size=16)


def tiny_detector_config() -> DetectorConfig:
    # GroupNorm: a detector's batches are small, and its outputs should not depend on the batch's other images.
    return DetectorConfig(encoder=EncoderConfig(width=16, depth=2, num_downsample=2, norm="group"), num_classes=3,
                          class_names=["a", "b", "c"], num_queries=6, hidden_dim=16, num_heads=2, num_layers=2,
                          ffn_dim=32, image_size=32)


register_variant("tiny_classifier", base="classifier", config=tiny_classifier_config)
register_variant("tiny_captioner", base="captioner", config=tiny_captioner_config)
register_variant("tiny_detector", base="detector", config=tiny_detector_config)
