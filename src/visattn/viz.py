"""Figures from model outputs: attention overlays, per-glimpse grids, per-word captions, detections, curves.

Everything here reads tensors a model already returned (``outputs["attention"]`` shaped to the grid) and
draws headless: a ``matplotlib.figure.Figure`` on an Agg canvas, never pyplot's global state. Every
function that writes files creates the parent folders and returns the path(s) it wrote.

Images may be a float tensor (3, H, W) in [0, 1], a PIL image or a uint8/float numpy array (H, W, 3).
Attention maps may be tensors or numpy arrays.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image, ImageDraw, ImageFont

from visattn.data.images import tensor_to_image
from visattn.metrics.localisation import upsample_maps

ImageLike = Union[torch.Tensor, np.ndarray, Image.Image]
ArrayLike = Union[torch.Tensor, np.ndarray]

CORRECT_COLOUR = "#1a9850"
WRONG_COLOUR = "#d73027"


def _image_array(image: ImageLike) -> np.ndarray:
    """Any supported image -> float32 array (H, W, 3) in [0, 1] (float input outside [0, 1] is clipped)."""
    return np.asarray(tensor_to_image(image, clip=True, source="viz"), dtype=np.float32) / 255.0


def _maps(attention: ArrayLike) -> np.ndarray:
    """Attention (H', W') or (N, H', W') -> float32 array (N, H', W')."""
    if isinstance(attention, torch.Tensor):
        attention = attention.detach().float().cpu().numpy()
    maps = np.asarray(attention, dtype=np.float32)
    if maps.ndim == 2:
        maps = maps[None]  # (H', W') -> (1, H', W')
    if maps.ndim != 3:
        raise ValueError(f"viz: expected attention shaped (H', W') or (N, H', W'), got {maps.shape}")
    return maps


def upsample_attention(attention: ArrayLike, size: tuple[int, int], *, normalize: bool = False) -> np.ndarray:
    """Bilinearly up-sample attention maps to an image size (:func:`~visattn.metrics.localisation.upsample_maps`,
    the same up-sampling the localisation metrics score).

    Args:
        attention: (H', W') or (N, H', W') weights over the feature grid.
        size: target (H, W) in pixels.
        normalize: rescale each map to sum to 1 (maps summing to 0 are left at 0).

    Returns:
        float32 numpy array (H, W) or (N, H, W), matching the input's rank.
    """
    squeeze = (attention.dim() if isinstance(attention, torch.Tensor) else np.ndim(attention)) == 2
    out = upsample_maps(torch.from_numpy(_maps(attention)), tuple(size), normalize=normalize).numpy()  # (N, H, W)
    return out[0] if squeeze else out


def _heat_blend(image: np.ndarray, attention: ArrayLike, alpha: float, cmap: str) -> np.ndarray:
    """(H, W, 3) image and one (H', W') map -> blended (H, W, 3) float image in [0, 1]."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"viz: alpha must be in [0, 1], got {alpha}")
    maps = _maps(attention)
    if maps.shape[0] != 1:
        raise ValueError(f"viz: overlay takes one attention map, got {maps.shape[0]}")
    heat = upsample_attention(maps, image.shape[:2])[0]  # (H, W)
    peak = float(heat.max())
    heat = heat / peak if peak > 0 else heat  # the strongest location gets the top colour
    coloured = colormaps[cmap](heat)[..., :3].astype(np.float32)  # (H, W, 3)
    return (1.0 - alpha) * image + alpha * coloured


def overlay(image: ImageLike, attention: ArrayLike, alpha: float = 0.6, *, cmap: str = "inferno") -> Image.Image:
    """Draw an attention heat map over an image.

    Args:
        image: (3, H, W) float tensor in [0, 1], PIL image or (H, W, 3) numpy array.
        attention: (H', W') weights; up-sampled bilinearly and scaled so its maximum is 1.
        alpha: weight of the heat map (0 = image only, 1 = heat map only).
        cmap: a matplotlib colour map; the default's brightness rises with attention.

    Returns:
        An RGB PIL image the size of ``image``.
    """
    return tensor_to_image(_heat_blend(_image_array(image), attention, alpha, cmap), clip=True, source="viz")


def _figure(rows: int, cols: int, panel_size: float, dpi: int) -> Figure:
    fig = Figure(figsize=(cols * panel_size, rows * panel_size), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)  # headless canvas owned by this figure alone
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=fig.dpi)  # no bbox_inches="tight": the pixel size stays figsize * dpi
    return path


def _show(ax: Any, picture: np.ndarray | Image.Image, title: str | None = None, colour: str = "black") -> None:
    ax.imshow(picture)
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title, color=colour, fontsize=9)


def _labels(values: Any, count: int, field: str) -> list[int]:
    labels = [int(v) for v in (values.tolist() if isinstance(values, torch.Tensor) else values)]
    if len(labels) != count:
        raise ValueError(f"viz: {field} has {len(labels)} entries for {count} images/boxes")
    return labels


def _class_name(class_names: Sequence[str], index: int, field: str) -> str:
    if not 0 <= index < len(class_names):
        raise ValueError(f"viz: {field} {index} is outside class_names (0..{len(class_names) - 1})")
    return class_names[index]


def classification_grid(images: Sequence[ImageLike] | torch.Tensor, attentions: ArrayLike,
                        true_labels: Sequence[int] | torch.Tensor, pred_labels: Sequence[int] | torch.Tensor,
                        class_names: Sequence[str], path: str | Path, *, columns: int = 4, alpha: float = 0.6,
                        panel_size: float = 1.6, dpi: int = 100) -> Path:
    """A PNG grid: each image titled "true / pred" (green if right, red if wrong) and one overlay per glimpse.

    Args:
        images: N images ((N, 3, H, W) tensor in [0, 1] or a sequence of images).
        attentions: (N, G, H', W') classifier attention (or (N, H', W') for one glimpse).
        true_labels, pred_labels: N class indices each.
        class_names: names indexed by label.
        path: PNG to write.
        columns: images per row; each image takes 1 + G panels.
        alpha, panel_size, dpi: overlay weight, inches per panel, pixels per inch.

    Returns:
        ``path``; the PNG measures (columns' · (1 + G) · panel_size · dpi) × (rows · panel_size · dpi).
    """
    if isinstance(attentions, torch.Tensor):
        attentions = attentions.detach().float().cpu().numpy()
    maps = np.asarray(attentions, dtype=np.float32)
    if maps.ndim == 3:
        maps = maps[:, None]  # (N, H', W') -> (N, 1, H', W')
    count = len(images)
    if maps.ndim != 4 or maps.shape[0] != count:
        raise ValueError(f"viz: attentions must be (N={count}, G, H', W'), got {maps.shape}")
    if count == 0:
        raise ValueError("viz: classification_grid needs at least one image")
    truth = _labels(true_labels, count, "true_labels")
    preds = _labels(pred_labels, count, "pred_labels")
    glimpses = maps.shape[1]
    per_row = min(columns, count)
    rows = math.ceil(count / per_row)
    fig = _figure(rows, per_row * (1 + glimpses), panel_size, dpi)
    axes = fig.subplots(rows, per_row * (1 + glimpses), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i in range(count):
        row, col = divmod(i, per_row)
        col *= 1 + glimpses
        picture = _image_array(images[i])
        true_name = _class_name(class_names, truth[i], "true label")
        pred_name = _class_name(class_names, preds[i], "predicted label")
        colour = CORRECT_COLOUR if truth[i] == preds[i] else WRONG_COLOUR
        _show(axes[row, col], picture, f"{true_name} / {pred_name}", colour)
        for g in range(glimpses):
            title = f"glimpse {g + 1}" if glimpses > 1 else "attention"
            _show(axes[row, col + 1 + g], overlay(picture, maps[i, g], alpha), title)
    return _save(fig, path)


def _frame(image: np.ndarray, attention: np.ndarray, word: str, alpha: float, frame_size: int) -> Image.Image:
    """One GIF frame: the overlay at ``frame_size`` on its longer side, the word on a strip below."""
    height, width = image.shape[:2]
    scale = frame_size / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    big = np.asarray(tensor_to_image(image, clip=True, source="viz").resize(size, Image.BILINEAR))
    picture = overlay(big, attention, alpha)
    strip = max(16, frame_size // 6)
    frame = Image.new("RGB", (size[0], size[1] + strip), "black")
    frame.paste(picture, (0, 0))
    draw = ImageDraw.Draw(frame)
    font = ImageFont.load_default(size=int(strip * 0.6))
    draw.text((size[0] / 2, size[1] + strip / 2), word, fill="white", font=font, anchor="mm")
    return frame


def caption_figure(image: ImageLike, words: Sequence[str], attentions: ArrayLike, path_png: str | Path,
                   path_gif: str | Path | None = None, *, columns: int = 5, alpha: float = 0.6,
                   panel_size: float = 2.0, dpi: int = 100, frame_size: int = 256,
                   frame_ms: int = 800) -> list[Path]:
    """The Show-Attend-Tell figure: the image, then one panel per word with its attention overlaid.

    Args:
        image: the captioned image.
        words: the T generated words, in order.
        attentions: (T, H', W') attention at each word.
        path_png: the figure to write; panels wrap after ``columns``.
        path_gif: if given, also an animated GIF with one frame per word, the word written under it.
        columns, alpha, panel_size, dpi: layout, overlay weight, inches per panel, pixels per inch.
        frame_size: GIF frame size in pixels (longer side of the image part).
        frame_ms: how long each GIF frame shows.

    Returns:
        [path_png] or [path_png, path_gif]. Pillow merges identical consecutive frames, so a GIF may hold
        fewer frames than words when two steps draw the same word with the same attention.
    """
    maps = _maps(attentions)
    if len(words) != maps.shape[0]:
        raise ValueError(f"viz: caption_figure got {len(words)} words but {maps.shape[0]} attention maps")
    picture = _image_array(image)
    panels = 1 + len(words)
    cols = min(columns, panels)
    rows = math.ceil(panels / cols)
    fig = _figure(rows, cols, panel_size, dpi)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    _show(axes[0, 0], picture, "image")
    for t, word in enumerate(words, start=1):
        _show(axes[t // cols, t % cols], overlay(picture, maps[t - 1], alpha), word)
    written = [_save(fig, path_png)]
    if path_gif is not None:
        if not words:
            raise ValueError("viz: caption_figure cannot write a GIF for an empty caption")
        frames = [_frame(picture, maps[t], word, alpha, frame_size) for t, word in enumerate(words)]
        gif = Path(path_gif)
        gif.parent.mkdir(parents=True, exist_ok=True)
        frames[0].save(gif, save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)
        written.append(gif)
    return written


def detection_figure(image: ImageLike, boxes: ArrayLike, labels: Sequence[int] | torch.Tensor,
                     scores: Sequence[float] | torch.Tensor | None, class_names: Sequence[str],
                     attentions: ArrayLike, path: str | Path, *, columns: int = 4, alpha: float = 0.6,
                     panel_size: float = 2.0, dpi: int = 100) -> Path:
    """The image with its kept boxes drawn and, beside it, each kept query's attention map.

    Args:
        image: the image the boxes refer to.
        boxes: (K, 4) xyxy in pixels of ``image``.
        labels: K class indices; scores: K confidences or None.
        class_names: names indexed by label (without the no-object class).
        attentions: (K, H', W') attention of the query behind each box.
        path: PNG to write.
        columns: query panels per row; the image takes a 2×2-panel block on the left.
        alpha, panel_size, dpi: overlay weight, inches per panel, pixels per inch.

    Returns:
        ``path``; the PNG measures ((2 + min(columns, K)) · panel_size · dpi) ×
        (max(2, ceil(K / columns)) · panel_size · dpi).
    """
    box_array = np.asarray(boxes.detach().cpu() if isinstance(boxes, torch.Tensor) else boxes, dtype=np.float32)
    count = 0 if box_array.size == 0 else len(box_array)
    if count and (box_array.ndim != 2 or box_array.shape[1] != 4):
        raise ValueError(f"viz: boxes must be (K, 4) xyxy, got {box_array.shape}")
    kinds = _labels(labels, count, "labels")
    confidences = None if scores is None else [float(s) for s in (
        scores.tolist() if isinstance(scores, torch.Tensor) else scores)]
    if confidences is not None and len(confidences) != count:
        raise ValueError(f"viz: scores has {len(confidences)} entries for {count} boxes")
    maps = _maps(attentions) if count else np.zeros((0, 1, 1), np.float32)
    if maps.shape[0] != count:
        raise ValueError(f"viz: {maps.shape[0]} attention maps for {count} boxes")
    picture = _image_array(image)
    titles = [_class_name(class_names, kinds[k], "label")
              + ("" if confidences is None else f" {confidences[k]:.2f}") for k in range(count)]
    colours = [colormaps["tab10"](k % 10) for k in range(count)]
    per_row = min(columns, count)
    rows = max(2, math.ceil(count / columns)) if count else 2
    fig = _figure(rows, 2 + per_row, panel_size, dpi)
    grid = fig.add_gridspec(rows, 2 + per_row)
    main = fig.add_subplot(grid[0:2, 0:2])
    _show(main, picture, f"{count} detections")
    for k in range(count):
        x0, y0, x1, y1 = box_array[k].tolist()
        main.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colours[k], linewidth=2))
        main.text(x0, y0, titles[k], color="white", fontsize=7, va="bottom",
                  bbox=dict(facecolor=colours[k], edgecolor="none", pad=1))
        row, col = divmod(k, per_row)
        ax = fig.add_subplot(grid[row, 2 + col])
        _show(ax, overlay(picture, maps[k], alpha), titles[k])
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colours[k], linewidth=1.5))
    return _save(fig, path)


def _result_panels(result: Any) -> tuple[str, np.ndarray, list[str]]:
    """(image title, maps (N, H', W'), one title per map) of a typed prediction result."""
    from visattn.results import CaptionResult, ClassifyResult, DetectResult

    maps = _maps(result.attention) if result.attention.numel() else np.zeros((0, 1, 1), np.float32)
    if isinstance(result, ClassifyResult):
        names = [f"glimpse {g + 1}" for g in range(len(maps))] if len(maps) > 1 else ["attention"]
        return f"{result.label} {result.score:.2f}", maps, names
    if isinstance(result, CaptionResult):
        return result.caption, maps, list(result.words)
    if isinstance(result, DetectResult):
        names = [f"{label} {score:.2f}" for label, score in zip(result.labels, result.scores.tolist())]
        return f"{len(names)} detections", maps, names
    raise ValueError(f"viz: no figure for a {type(result).__name__}")


def results_figure(images: Sequence[ImageLike] | torch.Tensor, results: Sequence[Any], *, max_maps: int = 6,
                   alpha: float = 0.6, panel_size: float = 1.6, dpi: int = 100) -> Figure:
    """One row per image: the image titled with the prediction, then its attention maps (glimpses, words or
    kept queries) overlaid, at most ``max_maps`` of them. What a logger shows after each evaluation.

    Args:
        images: N images; results: their N typed results (``visattn.results``), maps at grid resolution.
        max_maps, alpha, panel_size, dpi: maps per row, overlay weight, inches per panel, pixels per inch.

    Returns:
        A headless figure of N rows × (1 + the most maps of any result, at most ``max_maps``) panels;
        nothing is written.
    """
    if len(images) != len(results) or not results:
        raise ValueError(f"viz: results_figure needs one result per image, got {len(images)} and {len(results)}")
    panels = [_result_panels(result) for result in results]
    columns = 1 + max(1, min(max_maps, max(len(maps) for _, maps, _ in panels)))
    fig = _figure(len(results), columns, panel_size, dpi)
    axes = fig.subplots(len(results), columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for row, (image, (title, maps, names)) in enumerate(zip(images, panels)):
        picture = _image_array(image)
        _show(axes[row, 0], picture, title[:40])
        for k in range(min(max_maps, len(maps))):
            _show(axes[row, 1 + k], overlay(picture, maps[k], alpha), names[k] if k < len(names) else None)
    return fig


_NOT_PLOTTED = ("epoch", "step", "iteration")


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """{"val": {"bleu4": 0.5}, "loss": 1.0} -> {"val/bleu4": 0.5, "loss": 1.0}; numbers only."""
    flat: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value) if math.isfinite(value) else math.nan
    return flat


def _panel(key: str) -> str | None:
    leaf = key.rsplit("/", 1)[-1].lower()
    if leaf in _NOT_PLOTTED or "time" in leaf or leaf.endswith("_s") or "second" in leaf:
        return None
    if leaf == "lr" or leaf.startswith("lr_") or "learning_rate" in leaf:
        return "learning rate"
    return "losses" if "loss" in leaf else "metrics"


def training_curves(history: Sequence[Mapping[str, Any]], path: str | Path, *, panel_size: float = 4.0,
                    dpi: int = 100) -> Path:
    """One PNG with the loss curves, the eval metrics and (if logged) the learning rate per epoch.

    Args:
        history: one record per epoch, e.g. the lines of metrics.jsonl. The x value is ``record["epoch"]``
            (else its position, from 1); nested dicts are flattened ("val": {"bleu4": ...} -> "val/bleu4").
            Keys holding "loss" go to the loss panel, "lr"/"learning_rate" to a log-scale panel, times and
            step counters are not drawn, every other number is a metric. A key missing from a record
            leaves a gap.
        path: PNG to write.
        panel_size, dpi: inches per panel (height; width is 1.4×), pixels per inch.

    Returns:
        ``path``.
    """
    if not history or not all(isinstance(r, Mapping) for r in history):
        raise ValueError("viz: training_curves needs a non-empty list of dict records")
    xs = [float(r.get("epoch", i + 1)) for i, r in enumerate(history)]
    records = [_flatten(r) for r in history]
    series: dict[str, dict[str, list[float]]] = {}
    for record in records:
        for key in record:
            panel = _panel(key)
            if panel is not None:
                series.setdefault(panel, {}).setdefault(key, [])
    if not series:
        raise ValueError(f"viz: training_curves found no numeric series to plot in keys {sorted(records[0])}")
    order = [p for p in ("losses", "metrics", "learning rate") if p in series]
    fig = Figure(figsize=(1.4 * panel_size * len(order), panel_size), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(order), squeeze=False)[0]
    for ax, panel in zip(axes, order):
        for key in sorted(series[panel]):
            ys = [record.get(key, math.nan) for record in records]
            ax.plot(xs, ys, marker="o", markersize=3, label=key)
        values = [y for record in records for k, y in record.items() if k in series[panel] and y == y]
        if panel == "learning rate" and values and min(values) > 0:
            ax.set_yscale("log")
        ax.set_title(panel)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)
