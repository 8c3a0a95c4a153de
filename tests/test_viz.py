"""Figures: each writes a readable file of the documented size; overlays put the light where attention is."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from visattn.viz import (caption_figure, classification_grid, detection_figure, overlay, training_curves,
                         upsample_attention)


def _size(path) -> tuple[int, int]:
    with Image.open(path) as picture:
        return picture.size


def _one_hot(row: int, col: int, size: int = 8) -> torch.Tensor:
    att = torch.zeros(size, size)
    att[row, col] = 1.0
    return att


def _softmax_maps(n: int, h: int = 4, w: int = 4) -> torch.Tensor:
    return torch.randn(n, h * w).softmax(-1).view(n, h, w)  # (N, L) -> (N, H', W')


def test_upsample_keeps_rank_and_renormalises():
    att = _softmax_maps(3)
    up = upsample_attention(att, (32, 24), normalize=True)
    assert up.shape == (3, 32, 24) and (up >= 0).all()
    assert np.allclose(up.sum(axis=(1, 2)), 1.0, atol=1e-5)
    single = upsample_attention(att[0].numpy(), (32, 24))
    assert single.shape == (32, 24)
    uniform = upsample_attention(torch.full((4, 4), 1 / 16), (16, 16))
    assert np.allclose(uniform, 1 / 16)


def test_overlay_is_brightest_where_the_attention_is():
    image = torch.full((3, 64, 64), 0.5)
    picture = overlay(image, _one_hot(2, 5), alpha=0.6)
    assert picture.size == (64, 64) and picture.mode == "RGB"
    brightness = np.asarray(picture, dtype=np.float32).sum(axis=2)  # (H, W)
    row, col = np.unravel_index(brightness.argmax(), brightness.shape)
    assert 16 <= row < 24 and 40 <= col < 48  # inside grid cell (2, 5) of an 8×8 grid over 64 px
    assert brightness[row, col] > brightness[60, 4] + 100


def test_overlay_accepts_pil_and_numpy_images():
    pil = Image.new("RGB", (40, 30), (10, 200, 30))
    assert overlay(pil, _one_hot(1, 1, 4)).size == (40, 30)
    assert overlay(np.zeros((30, 40, 3), np.uint8), _one_hot(1, 1, 4), alpha=0.0).getextrema()[0] == (0, 0)
    with pytest.raises(ValueError, match="alpha"):
        overlay(pil, _one_hot(1, 1, 4), alpha=2.0)
    with pytest.raises(ValueError, match="one attention map"):
        overlay(pil, _softmax_maps(2))


def test_classification_grid_size_and_parent_dirs(tmp_path):
    images = torch.rand(3, 3, 32, 32)
    path = classification_grid(images, _softmax_maps(6).view(3, 2, 4, 4), [0, 1, 2], torch.tensor([0, 2, 2]),
                               ["circle", "square", "seven"], tmp_path / "a" / "b" / "grid.png",
                               columns=2, panel_size=1.0, dpi=50)
    assert path.stat().st_size > 0
    # 2 images per row × (1 image + 2 glimpses) panels, 2 rows, 50 px per panel.
    assert _size(path) == (300, 100)


def test_classification_grid_rejects_mismatched_inputs(tmp_path):
    with pytest.raises(ValueError, match="true_labels"):
        classification_grid(torch.rand(2, 3, 8, 8), _softmax_maps(2), [0], [0, 1], ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="outside class_names"):
        classification_grid(torch.rand(1, 3, 8, 8), _softmax_maps(1), [5], [0], ["a"], tmp_path / "x.png")


def test_caption_figure_png_and_one_gif_frame_per_word(tmp_path):
    words = ["a", "red", "circle", "left"]
    maps = torch.stack([_one_hot(r, c, 4) for r, c in [(0, 0), (1, 2), (3, 3), (2, 0)]])  # (T, H', W')
    png, gif = caption_figure(torch.rand(3, 48, 64), words, maps, tmp_path / "cap" / "fig.png",
                              tmp_path / "cap" / "fig.gif", columns=3, panel_size=1.0, dpi=40, frame_size=128)
    assert _size(png) == (120, 80)  # 5 panels wrapped into 2 rows of 3
    with Image.open(gif) as animation:
        assert animation.n_frames == len(words)
        assert animation.size == (128, 96 + 21)  # 128 px on the long side plus the word strip


def test_caption_figure_needs_one_map_per_word(tmp_path):
    with pytest.raises(ValueError, match="3 words but 2 attention maps"):
        caption_figure(torch.rand(3, 8, 8), ["a", "b", "c"], _softmax_maps(2), tmp_path / "x.png")
    assert caption_figure(torch.rand(3, 8, 8), ["a"], _softmax_maps(1), tmp_path / "y.png") == [tmp_path / "y.png"]


def test_detection_figure_with_boxes_and_without(tmp_path):
    boxes = torch.tensor([[2.0, 3.0, 20.0, 30.0], [30.0, 10.0, 60.0, 40.0], [0.0, 0.0, 63.0, 63.0]])
    path = detection_figure(torch.rand(3, 64, 64), boxes, torch.tensor([0, 1, 1]), torch.tensor([0.9, 0.5, 0.3]),
                            ["circle", "square"], _softmax_maps(3), tmp_path / "det.png", columns=2,
                            panel_size=1.0, dpi=50)
    assert _size(path) == (200, 100)  # 2×2 image block + 2 query columns, 2 rows
    empty = detection_figure(torch.rand(3, 64, 64), torch.zeros(0, 4), [], None, ["circle"],
                             torch.zeros(0, 4, 4), tmp_path / "empty.png", panel_size=1.0, dpi=50)
    assert _size(empty) == (100, 100)
    with pytest.raises(ValueError, match="2 attention maps for 3 boxes"):
        detection_figure(torch.rand(3, 64, 64), boxes, [0, 1, 1], None, ["circle", "square"],
                         _softmax_maps(2), tmp_path / "bad.png")


def test_training_curves_from_engine_records(tmp_path):
    history = [
        {"epoch": 1, "step": 10, "loss": 2.0, "loss_ce": 1.5, "lr": 1e-3, "time_s": 3.0, "val_bleu4": 0.1},
        {"epoch": 2, "step": 20, "loss": 1.0, "loss_ce": 0.8, "lr": 5e-4, "time_s": 3.1, "val_bleu4": 0.4,
         "val": {"accuracy": 0.7}},
        {"epoch": 3, "step": 30, "loss": float("nan"), "loss_ce": 0.7, "lr": 1e-4, "time_s": 3.0},
    ]
    path = training_curves(history, tmp_path / "run" / "curves.png", panel_size=2.5, dpi=40)
    assert _size(path) == (420, 100)  # losses, metrics, learning rate: 3 × 1.4 × 2.5 in at 40 dpi
    only_losses = training_curves([{"loss": 1.0}, {"loss": 0.5}], tmp_path / "l.png", panel_size=2.5, dpi=40)
    assert _size(only_losses) == (140, 100)
    with pytest.raises(ValueError, match="non-empty"):
        training_curves([], tmp_path / "none.png")
    with pytest.raises(ValueError, match="no numeric series"):
        training_curves([{"epoch": 1, "note": "x"}], tmp_path / "none.png")


def test_results_figure_draws_every_task_one_row_per_image():
    from visattn.results import CaptionHypothesis, CaptionResult, DetectResult
    from visattn.viz import results_figure

    words = ["a", "red", "circle"]
    caption = CaptionResult(source="0", image_size=(16, 16), grid=(4, 4), captions=[CaptionHypothesis(
        text="a red circle", words=words, word_scores=[-0.1] * 3, end_score=-0.2, score=-0.5,
        attention=_softmax_maps(3), finished=True)])
    empty = DetectResult(source="1", boxes=torch.zeros(0, 4), scores=torch.zeros(0), labels=[],
                         label_ids=torch.zeros(0, dtype=torch.int64), query_index=torch.zeros(0, dtype=torch.int64),
                         attention=torch.zeros(0, 4, 4), image_size=(16, 16))
    fig = results_figure(torch.rand(2, 3, 16, 16), [caption, empty], max_maps=2, panel_size=1.0, dpi=50)
    titled = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titled == ["a red circle", "a", "red", "0 detections"]  # two of three words: max_maps
    assert tuple(fig.get_size_inches() * fig.dpi) == (150, 100)  # 1 + 2 columns, 2 rows
    with pytest.raises(ValueError, match="one result per image"):
        results_figure(torch.rand(1, 3, 8, 8), [caption, empty])
