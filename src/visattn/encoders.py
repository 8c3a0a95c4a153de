"""Image encoders: images (B, 3, H, W) in [0, 1] -> a feature grid (B, L = H'·W', C).

Three families behind one contract:
- ``small_cnn``: a few conv blocks trained from scratch (the offline default);
- ``tv:<name>``: a torchvision classification backbone cut before its global pooling;
- ``timm:<name>``: a timm model built with ``features_only=True`` (last stage only).

Nothing downloads: pretrained weights come from a local file, or with ``weights="torch-cache"`` from
torchvision's default checkpoint only if it already sits in the torch hub cache.
"""

from __future__ import annotations

import math
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visattn.config import config_from_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision families we know how to cut before the global pooling, by name prefix.
TV_PREFIXES = (
    "resnet", "resnext", "wide_resnet", "regnet_", "convnext_", "efficientnet_", "mobilenet_v2",
    "mobilenet_v3", "vgg", "densenet", "mnasnet", "shufflenet_v2", "squeezenet", "alexnet",
)
NAME_FORMS = '"small_cnn", "tv:<torchvision model>" (e.g. "tv:resnet50") or "timm:<timm model>"'


@dataclass
class EncoderConfig:
    """How to build an encoder; every field is JSON-serialisable.

    Attributes:
        name: "small_cnn", "tv:<torchvision classification model>" or "timm:<timm model>".
        width: small CNN only: channels of the last block (= ``out_dim``); earlier blocks halve it going back.
        depth: small CNN only: number of conv blocks.
        num_downsample: small CNN only: the first ``num_downsample`` blocks halve the resolution
            (3 of 4 turns a 64×64 image into an 8×8 grid).
        stem: small CNN only: 1 (none), or a first "patchify" convolution with kernel = stride = ``stem``
            (ViT's and ConvNeXt's stem) that shrinks the image ``stem`` times before the blocks: the
            full-resolution block costs about half of the plain CNN's time on 64-pixel scenes (docs/design.md).
        norm: small CNN only: "batch" or "group".
        top_down: small CNN only: FPN's top-down step, once (Lin et al. 2017): the last block's map is
            up-sampled ×2 (bilinear) and added to a 1×1 projection of the last down-sampling block's
            activations before its pooling, so the grid is twice as fine (8×8 -> 16×16 on the demo's
            scenes) at the semantics of the deepest block. Where attention must fall inside small objects
            (attention supervision, docs/design.md) the coarse grid's cells are larger than the objects.
        grid: None keeps the backbone's grid; an int adaptively average-pools it to grid×grid
            (Show-Attend-Tell uses 14).
        weights: None (random init), a local state_dict file (.pt/.pth/.safetensors; either the full
            classification model's keys or this encoder's own), or "torch-cache" (torchvision's default
            weights, only if already in the torch hub cache; never downloaded).
        trainable_from: "all" fine-tunes everything, "none" freezes everything, a stage name or index
            freezes every stage before it. Frozen stages stay in eval mode (BatchNorm statistics frozen).
        mean: per-channel normalisation applied inside the encoder; None = ImageNet statistics for
            tv/timm, 0.5 for the small CNN.
        std: as ``mean``; None = ImageNet statistics for tv/timm, 0.5 for the small CNN.
    """

    name: str = "small_cnn"
    width: int = 128  # the prototype's 8×8×128 grid captioned procedural scenes well (docs/design.md)
    depth: int = 4
    num_downsample: int = 3
    stem: int = 1
    norm: str = "batch"
    top_down: bool = False
    grid: int | None = None
    weights: str | None = None
    trainable_from: str | int = "all"
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not (
            self.name == "small_cnn" or re.fullmatch(r"(tv|timm):\S+", self.name)
        ):
            raise ValueError(f"EncoderConfig.name: {self.name!r} is not one of {NAME_FORMS}")
        for field, low in (("width", 8), ("depth", 1), ("num_downsample", 0), ("stem", 1)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"EncoderConfig.{field}: expected an int >= {low}, got {value!r}")
        if self.num_downsample > self.depth:
            raise ValueError(
                f"EncoderConfig.num_downsample: {self.num_downsample} exceeds depth {self.depth}"
            )
        if not isinstance(self.top_down, bool):
            raise ValueError(f"EncoderConfig.top_down: expected true or false, got {self.top_down!r}")
        if self.top_down and self.num_downsample < 1:
            raise ValueError("EncoderConfig.top_down: needs num_downsample >= 1 (a finer map to add back)")
        if self.norm not in ("batch", "group"):
            raise ValueError(f"EncoderConfig.norm: expected 'batch' or 'group', got {self.norm!r}")
        if self.name != "small_cnn":
            defaults = EncoderConfig()
            for field in ("width", "depth", "num_downsample", "stem", "norm", "top_down"):
                if getattr(self, field) != getattr(defaults, field):
                    raise ValueError(f"EncoderConfig.{field} applies to small_cnn only, not {self.name!r}")
        if self.grid is not None and (isinstance(self.grid, bool) or not isinstance(self.grid, int)
                                      or self.grid < 1):
            raise ValueError(f"EncoderConfig.grid: expected None or an int >= 1, got {self.grid!r}")
        if self.weights is not None and (not isinstance(self.weights, str) or not self.weights):
            raise ValueError(f"EncoderConfig.weights: expected None, a file path or 'torch-cache', "
                             f"got {self.weights!r}")
        if isinstance(self.trainable_from, bool) or not isinstance(self.trainable_from, (str, int)):
            raise ValueError(f"EncoderConfig.trainable_from: expected 'all', 'none', a stage name or an "
                             f"int index, got {self.trainable_from!r}")
        for field in ("mean", "std"):
            value = getattr(self, field)
            if value is None:
                continue
            if (not isinstance(value, (list, tuple)) or len(value) != 3
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
                raise ValueError(f"EncoderConfig.{field}: expected None or 3 numbers, got {value!r}")
            if field == "std" and min(value) <= 0:
                raise ValueError(f"EncoderConfig.std: every value must be > 0, got {value!r}")
            setattr(self, field, tuple(float(v) for v in value))  # JSON hands over lists


class Encoder(nn.Module):
    """A backbone trunk plus normalisation, optional adaptive pooling and freezing.

    Built by :func:`create_encoder`. Attributes: ``config``, ``out_dim`` (C), ``stride`` (nominal input
    pixels per grid cell), ``stage_names`` (valid ``trainable_from`` names, in order), ``frozen_stages``.
    """

    def __init__(self, *, config: EncoderConfig, trunk: nn.Module, mean: tuple[float, ...],
                 std: tuple[float, ...], timm_features: bool = False) -> None:
        super().__init__()
        self.config = config
        self.trunk = trunk  # its direct children are the stages
        self.stage_names = [name for name, _ in trunk.named_children()]
        self.timm_features = timm_features  # timm features_only models return a list of maps
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._grid_cache: dict[tuple[int, int], tuple[int, int]] = {}
        channels, probe_grid = self._probe(224, 224)
        self.out_dim = channels
        self.stride = 224 // probe_grid[0] if probe_grid[0] else 224
        self.frozen_stages: list[str] = []

    def trunk_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> backbone feature map (B, C, H', W') before any pooling."""
        out = self.trunk(x)
        return out[-1] if self.timm_features else out

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Encode images.

        Args:
            images: (B, 3, H, W) float in [0, 1], not normalised.

        Returns:
            features (B, L, C) with L = H'·W' in row-major grid order, and the grid size (H', W').
        """
        if images.dim() != 4 or images.size(1) != 3:
            raise ValueError(f"Encoder: expected images shaped (B, 3, H, W), got {tuple(images.shape)}")
        x = (images.to(self.mean.dtype) - self.mean) / self.std  # follows the model's dtype (e.g. bf16)
        fmap = self.trunk_forward(x)  # (B, C, H', W')
        if self.config.grid is not None:
            fmap = F.adaptive_avg_pool2d(fmap, self.config.grid)  # (B, C, grid, grid)
        height, width = fmap.shape[-2:]
        features = fmap.flatten(2).transpose(1, 2)  # (B, C, H'W') -> (B, L, C)
        return features, (int(height), int(width))

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """The grid (H', W') this encoder produces for (height, width) images, without running it."""
        if self.config.grid is not None:
            return self.config.grid, self.config.grid
        key = (int(height), int(width))
        if key not in self._grid_cache:
            self._grid_cache[key] = self._probe(*key)[1]
        return self._grid_cache[key]

    def _probe(self, height: int, width: int) -> tuple[int, tuple[int, int]]:
        # Shapes only: run the trunk on meta tensors, so no compute and no BatchNorm statistics touched.
        state = {name: torch.empty_like(t, device="meta")
                 for name, t in [*self.trunk.named_parameters(), *self.trunk.named_buffers()]}
        images = torch.empty(1, 3, height, width, device="meta")
        out = torch.func.functional_call(self.trunk, state, (images,))
        fmap = out[-1] if self.timm_features else out  # (1, C, H', W')
        return int(fmap.shape[1]), (int(fmap.shape[2]), int(fmap.shape[3]))

    def freeze_before(self, trainable_from: str | int) -> None:
        """Freeze every stage before ``trainable_from`` ("all": none frozen, "none": all frozen)."""
        names = self.stage_names
        if trainable_from == "all":
            cut = 0
        elif trainable_from == "none":
            cut = len(names)
        elif isinstance(trainable_from, int):
            if not -len(names) <= trainable_from < len(names):
                raise ValueError(f"EncoderConfig.trainable_from: index {trainable_from} out of range for "
                                 f"{len(names)} stages {names}")
            cut = trainable_from % len(names)
        elif trainable_from in names:
            cut = names.index(trainable_from)
        else:
            raise ValueError(f"EncoderConfig.trainable_from: unknown stage {trainable_from!r}; valid: "
                             f"'all', 'none', an int index or one of {names}")
        self.frozen_stages = names[:cut]
        for name, stage in self.trunk.named_children():
            for p in stage.parameters():
                p.requires_grad_(name not in self.frozen_stages)
        self.train(self.training)

    def train(self, mode: bool = True) -> Encoder:
        """Set train/eval mode; frozen stages always stay in eval mode (BatchNorm statistics frozen)."""
        super().train(mode)
        for name, stage in self.trunk.named_children():
            if name in self.frozen_stages:
                stage.eval()
        return self


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(math.gcd(8, channels), channels)


def _small_cnn(config: EncoderConfig) -> nn.Sequential:
    blocks: OrderedDict[str, nn.Module] = OrderedDict()
    in_channels = 3
    if config.stem > 1:  # (B, 3, H, W) -> (B, C_0, H // s, W // s): non-overlapping s×s patches (sides that
        # are not a multiple of s lose their last rows/columns; the CLI resizes images to the trained size)
        in_channels = max(config.width >> (config.depth - 1), 8)
        blocks["stem"] = nn.Sequential(
            nn.Conv2d(3, in_channels, config.stem, stride=config.stem, padding=0, bias=False),
            _norm(config.norm, in_channels), nn.ReLU(inplace=True))
    for i in range(config.depth):
        channels = max(config.width >> (config.depth - 1 - i), 8)  # width, width/2, ... going back
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), _norm(config.norm, channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), _norm(config.norm, channels),
            nn.ReLU(inplace=True),
        ]
        if i < config.num_downsample:
            # ceil_mode: an odd side keeps its last row/column (15 -> 8, not 7), so the grid covers the whole
            # image and up-sampled attention lines up with it; flooring shifted maps by up to a cell.
            layers.append(nn.MaxPool2d(2, ceil_mode=True))  # (B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2))
        blocks[f"block{i}"] = nn.Sequential(*layers)
        in_channels = channels
    if config.top_down:
        last_pool = config.num_downsample - 1
        return _TopDownTrunk(blocks, last_pool=f"block{last_pool}", width=config.width, norm=config.norm,
                             finer_channels=max(config.width >> (config.depth - 1 - last_pool), 8))
    return nn.Sequential(blocks)


class _TopDownTrunk(nn.Module):
    """The small CNN's stages, then FPN's top-down step once (``EncoderConfig.top_down``).

    The stages run in order; the block named ``last_pool`` (the last one that halves the resolution) is run
    up to its pooling, whose input is kept as the finer map F (B, c, 2h, 2w). The deepest map D (B, C, h, w)
    comes back at that resolution as ``bilinear_up(D) + BN(conv1x1(F))`` (B, C, 2h, 2w). The stages keep their
    names (``stage_names``, ``trainable_from``), and ``top_down`` (the projection) is the last stage.
    """

    def __init__(self, blocks: OrderedDict[str, nn.Module], *, last_pool: str, width: int, norm: str,
                 finer_channels: int) -> None:
        super().__init__()
        for name, block in blocks.items():
            self.add_module(name, block)
        self.last_pool = last_pool
        self.top_down = nn.Sequential(nn.Conv2d(finer_channels, width, 1, bias=False), _norm(norm, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        finer = x
        for name, stage in self.named_children():
            if name == "top_down":
                break  # the last stage
            for layer in stage:
                if name == self.last_pool and isinstance(layer, nn.MaxPool2d):
                    finer = x  # (B, c, 2h, 2w): the last down-sampling block before its pooling
                x = layer(x)
        up = F.interpolate(x, size=finer.shape[-2:], mode="bilinear", align_corners=False)  # (B, C, 2h, 2w)
        return up + self.top_down(finer)


def supported_torchvision_models() -> list[str]:
    """Torchvision classification models ``tv:<name>`` accepts."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    return sorted(n for n in names if n.startswith(TV_PREFIXES) and "quantized" not in n)


def _cut_torchvision(model: nn.Module, name: str) -> nn.Sequential:
    children = OrderedDict(model.named_children())
    if "features" in children:  # convnext, efficientnet, mobilenet, vgg, densenet, squeezenet, alexnet
        stages = OrderedDict(children["features"].named_children())
        if name.startswith("densenet"):
            stages["relu"] = nn.ReLU(inplace=False)  # densenet applies this ReLU in forward()
        return nn.Sequential(stages)
    if "layers" in children:  # mnasnet
        return nn.Sequential(OrderedDict(children["layers"].named_children()))
    if "trunk_output" in children:  # regnet: stem, then block1..block4
        stages = OrderedDict(stem=children["stem"])
        stages.update(children["trunk_output"].named_children())
        return nn.Sequential(stages)
    # resnet, resnext, wide_resnet, shufflenet_v2: everything before the pooling and classifier
    return nn.Sequential(OrderedDict((k, v) for k, v in children.items() if k not in ("avgpool", "fc")))


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"EncoderConfig.weights: no such file {path!r}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle code
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
            raise ValueError(f"EncoderConfig.weights: cannot read {path!r} as a state_dict: {exc}") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"EncoderConfig.weights: {path!r} does not hold a state_dict of tensors")
    # Old torchvision densenet checkpoints name 'norm.1' what the modules now call 'norm1'.
    pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|"
                         r"running_var))$")
    return {pattern.sub(r"\1\2", k): v for k, v in state.items()}


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], path: str) -> bool:
    """Load ``state`` strictly if its keys match ``module``'s; False (nothing loaded) if they do not."""
    if set(state) != set(module.state_dict()):
        return False
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:  # same keys, wrong shapes
        raise ValueError(f"EncoderConfig.weights: {path!r} does not fit this encoder: {exc}") from exc
    return True


def _key_mismatch(path: str, state: dict[str, Any], expected: dict[str, Any]) -> ValueError:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    return ValueError(f"EncoderConfig.weights: {path!r} matches neither the classification model nor this "
                      f"encoder: {len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} "
                      f"unexpected keys (e.g. {unexpected[:3]})")


def torch_cache_path(tv_name: str) -> str:
    """Where torchvision's default weights for ``tv_name`` sit in the torch hub cache (may not exist)."""
    import torchvision

    weights = torchvision.models.get_model_weights(tv_name).DEFAULT
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))


def _build_torchvision(config: EncoderConfig, tv_name: str) -> Encoder:
    import torchvision

    supported = supported_torchvision_models()
    if tv_name not in supported:
        raise ValueError(f"EncoderConfig.name: unknown torchvision backbone {tv_name!r}; supported: "
                         f"{', '.join(supported)}")
    model = torchvision.models.get_model(tv_name, weights=None)
    state, path = None, config.weights
    if config.weights == "torch-cache":
        path = torch_cache_path(tv_name)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"EncoderConfig.weights='torch-cache': torchvision's default weights for {tv_name!r} are not "
                f"in the torch hub cache (expected {path}); visattn never downloads - put the file there or "
                f"give a local path"
            )
    if path is not None:
        state = _read_state_dict(path)
        if _load_into(model, state, path):
            state = None  # loaded into the full classification model before cutting
    encoder = Encoder(config=config, trunk=_cut_torchvision(model, tv_name),
                      mean=config.mean or IMAGENET_MEAN, std=config.std or IMAGENET_STD)
    if state is not None and not _load_into(encoder, state, path):
        raise _key_mismatch(path, state, model.state_dict())
    return encoder


def _build_timm(config: EncoderConfig, timm_name: str) -> Encoder:
    try:
        import timm
    except ImportError as exc:
        raise ValueError(f"EncoderConfig.name={config.name!r} needs timm: pip install 'visattn[timm]'") from exc
    if config.weights == "torch-cache":
        raise ValueError("EncoderConfig.weights='torch-cache' is for tv: backbones; give timm a local file")
    if not timm.is_model(timm_name):
        raise ValueError(f"EncoderConfig.name: unknown timm model {timm_name!r} (see timm.list_models())")
    kwargs: dict[str, Any] = dict(features_only=True, pretrained=False, out_indices=(-1,))
    state = _read_state_dict(config.weights) if config.weights is not None else None
    trunk = timm.create_model(timm_name, **kwargs)
    encoder = Encoder(config=config, trunk=trunk, mean=config.mean or IMAGENET_MEAN,
                      std=config.std or IMAGENET_STD, timm_features=True)
    if state is not None and not _load_into(encoder, state, config.weights):
        # A timm classification checkpoint: timm maps it onto the feature model from the local file.
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=os.path.abspath(config.weights)))
        try:
            encoder.trunk = timm.create_model(timm_name, **kwargs)
        except RuntimeError as exc:
            raise ValueError(f"EncoderConfig.weights: {config.weights!r} does not fit timm model "
                             f"{timm_name!r}: {exc}") from exc
    return encoder


def create_encoder(config: EncoderConfig | dict[str, Any] | None = None) -> Encoder:
    """Build an encoder from its config (a dict is checked for unknown keys first).

    Raises:
        ValueError: unknown key, bad value, unknown backbone (the message lists the valid ones) or a
            weights file that fits neither the classification model nor the encoder.
        FileNotFoundError: the weights file, or the torch-cache checkpoint, is missing.
    """
    if config is None:
        config = EncoderConfig()
    elif isinstance(config, dict):
        config = config_from_dict(EncoderConfig, config, source="encoder config")
    if config.name == "small_cnn":
        if config.weights == "torch-cache":
            raise ValueError("EncoderConfig.weights='torch-cache' is for tv: backbones, not small_cnn")
        encoder = Encoder(config=config, trunk=_small_cnn(config),
                          mean=config.mean or (0.5, 0.5, 0.5), std=config.std or (0.5, 0.5, 0.5))
        if config.weights is not None:
            state = _read_state_dict(config.weights)
            if not _load_into(encoder, state, config.weights):
                raise _key_mismatch(config.weights, state, encoder.state_dict())
    elif config.name.startswith("tv:"):
        encoder = _build_torchvision(config, config.name[3:])
    else:
        encoder = _build_timm(config, config.name[5:])
    encoder.freeze_before(config.trainable_from)
    return encoder
