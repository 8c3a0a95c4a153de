"""Tiny trained checkpoints of the three tasks for the server tests (a few steps each, seconds on a CPU).

Shared by ``test_serve.py`` and ``test_browser.py``; trained once per test session into a pytest temp folder.
The tests check the server's mechanics, not caption quality, so a dozen optimizer steps on a handful of
procedural scenes do, with each task's own loss (:class:`visattn.tasks.base.Task`); each model is saved with
:func:`visattn.checkpoint.save_checkpoint` as training would.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from visattn.checkpoint import save_checkpoint
from visattn.config import config_to_dict
from visattn.encoders import EncoderConfig
from visattn.models import build_model

IMAGE_SIZE = 32  # the smallest procedural scene; an 8x8 attention grid with two down-samplings
STEPS = 12
_TRAINED: dict[str, dict[str, Path]] = {}


def _steps(model: torch.nn.Module, task_name: str, samples: list, **task_options) -> None:
    from visattn.tasks.base import get_task

    task = get_task(task_name, **task_options)
    batch = task.collate(samples)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(STEPS):
        loss = task.total_loss(task.criterion(model, batch, torch.device("cpu")))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def _captioner(path: Path) -> Path:
    from visattn.data.caption_data import CaptionDataset, scene_data
    from visattn.heads.captioner import CaptionerConfig

    data = scene_data(num_train=16, num_val=1, image_size=IMAGE_SIZE, num_objects=(1, 2), seed=0)
    # the paper preset: after a dozen steps its n-best captions are non-empty, which the tests' map checks assume
    config = CaptionerConfig.preset("paper", encoder=EncoderConfig(width=16, depth=2, num_downsample=2),
                                    attention_dim=16, decoder_dim=32, embed_dim=16, dropout=0.0, alpha_c=0.0,
                                    max_len=12, vocab=data.vocab.to_list(), image_size=IMAGE_SIZE)
    model = build_model("captioner", config)
    items = CaptionDataset(data.train, data.train.tokens, data.vocab, mode="pairs")
    _steps(model, "caption", [items[i] for i in range(0, len(items), max(1, len(items) // 16))])
    return save_checkpoint(path, model, task="caption", model_name="captioner", config=config_to_dict(model.config))


def _classifier(path: Path) -> Path:
    from visattn.heads.classifier import ClassifierConfig
    from visattn.tasks.classify import scene_data

    data = scene_data(num_train=32, num_val=1, image_size=IMAGE_SIZE, seed=0)
    config = ClassifierConfig(encoder=EncoderConfig(width=16, depth=2, num_downsample=2), attention_dim=16,
                              hidden_dim=16, num_glimpses=2, class_names=list(data.class_names),
                              image_size=IMAGE_SIZE)
    model = build_model("classifier", config)
    _steps(model, "classify", [data.train[i] for i in range(len(data.train))])
    return save_checkpoint(path, model, task="classify", model_name="classifier", config=config_to_dict(model.config))


def _detector(path: Path) -> Path:
    from visattn.heads.detector import DetectorConfig
    from visattn.tasks.detect import scene_data

    data = scene_data(num_train=16, num_val=1, image_size=IMAGE_SIZE, num_objects=(1, 3))
    config = DetectorConfig(encoder=EncoderConfig(width=16, depth=2, num_downsample=2, norm="group"), num_queries=5, num_classes=len(data.class_names),
                            hidden_dim=16, num_heads=2, num_layers=1, ffn_dim=32, class_names=list(data.class_names),
                            image_size=IMAGE_SIZE)
    model = build_model("detector", config)
    _steps(model, "detect", [data.train[i] for i in range(len(data.train))], num_classes=len(data.class_names))
    return save_checkpoint(path, model, task="detect", model_name="detector", config=config_to_dict(model.config))


def train_tiny_checkpoints(root: Path) -> dict[str, Path]:
    """Train a tiny captioner, classifier and detector on procedural scenes; task -> checkpoint path."""
    key = str(root)
    if key not in _TRAINED:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny models: one thread is faster than two fighting over shared cores
        try:
            torch.manual_seed(0)
            _TRAINED[key] = {"caption": _captioner(root / "captioner.safetensors"),
                             "classify": _classifier(root / "classifier.safetensors"),
                             "detect": _detector(root / "detector.safetensors")}
        finally:
            torch.set_num_threads(threads)
    return _TRAINED[key]


def load_predictors(paths: dict[str, Path]) -> dict:
    """Server name -> Predictor for each tiny checkpoint: ``captioner``, ``classifier``, ``detector``."""
    from visattn.predictor import Predictor

    names = {"caption": "captioner", "classify": "classifier", "detect": "detector"}
    return {names[task]: Predictor.from_checkpoint(path, device="cpu") for task, path in paths.items()}
