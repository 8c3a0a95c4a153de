"""Encoders: the feature-grid contract for every family, freezing, weights from local files and the cache."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

from visattn.config import config_from_dict, config_to_dict
from visattn.encoders import EncoderConfig, create_encoder, torch_cache_path

TINY_CNN = dict(name="small_cnn", width=16, depth=3, num_downsample=2)

FAMILIES = [
    TINY_CNN,
    dict(TINY_CNN, norm="group"),
    dict(name="tv:resnet18"),
    dict(name="tv:mobilenet_v3_small"),
    dict(name="tv:regnet_x_400mf"),
    dict(name="tv:shufflenet_v2_x0_5"),
    dict(name="tv:squeezenet1_0"),  # ceil-mode pooling: a grid that is not H / 32
    dict(name="timm:resnet18"),
]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to download fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"encoder tried to download: {args}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def _build(options: dict):
    if options["name"].startswith("timm:"):
        pytest.importorskip("timm")
    return create_encoder(EncoderConfig(**options))


@pytest.mark.parametrize("options", FAMILIES, ids=lambda o: o["name"] + o.get("norm", ""))
def test_every_family_returns_the_feature_grid(options):
    torch.manual_seed(0)
    encoder = _build(options).eval()
    images = torch.rand(2, 3, 72, 56)  # not square: catches a swapped H/W
    features, (height, width) = encoder(images)
    assert features.shape == (2, height * width, encoder.out_dim)
    assert encoder.grid_size(72, 56) == (height, width)
    assert height > width  # the grid keeps the image's orientation
    # Row-major order: location l = row * W' + col of the backbone's own feature map.
    fmap = encoder.trunk_forward((images - encoder.mean) / encoder.std)  # (B, C, H', W')
    assert torch.allclose(features[1, width + 1], fmap[1, :, 1, 1], atol=1e-5)


def test_small_cnn_defaults_give_an_8x8_grid_of_width_channels():
    encoder = create_encoder()
    features, grid = encoder(torch.rand(1, 3, 64, 64))
    assert grid == (8, 8) and encoder.out_dim == 128 and features.shape == (1, 64, 128)
    assert encoder.stride == 8
    assert torch.allclose(encoder.mean, torch.full((1, 3, 1, 1), 0.5))


@pytest.mark.parametrize("stem, depth, num_downsample", [(2, 4, 2), (4, 3, 1)])
def test_patchify_stem_shrinks_the_image_before_the_blocks(stem, depth, num_downsample):
    """The stem is one stride-s convolution over s×s patches: the 64-pixel scenes still give an 8×8 grid, each
    cell of the stem's map sees exactly its own patch, and the stem is a stage that can be frozen."""
    config = EncoderConfig(width=32, depth=depth, num_downsample=num_downsample, stem=stem)
    encoder = create_encoder(config)
    features, grid = encoder(torch.rand(2, 3, 64, 64))
    assert grid == (8, 8) and features.shape == (2, 64, 32) and encoder.stride == 8
    conv = encoder.trunk.stem[0]
    assert conv.kernel_size == (stem, stem) and conv.stride == (stem, stem)
    image = torch.rand(1, 3, 64, 64)
    changed = image.clone()
    changed[..., :stem, :stem] += 1.0  # only the first patch
    with torch.no_grad():
        before, after = conv(image), conv(changed)
    moved = (before - after).abs().sum(dim=1)[0] > 0  # (64 / s, 64 / s)
    assert moved[0, 0] and moved.sum() == 1
    frozen = create_encoder(EncoderConfig(**{**vars(config), "trainable_from": "block0"}))
    assert not any(p.requires_grad for p in frozen.trunk.stem.parameters())
    assert all(p.requires_grad for p in frozen.trunk.block0.parameters())


def test_top_down_doubles_the_grid_and_adds_the_finer_map_back():
    """FPN's top-down step once: the demo's 8×8 grid becomes 16×16 with the deepest block's channels; the output
    is exactly bilinear_up(deepest map) + BN(conv1x1(the last pooling block before its pool)); the projection
    is the last stage (it can be the only trainable one)."""
    config = EncoderConfig(width=32, depth=4, num_downsample=2, stem=2, top_down=True)
    encoder = create_encoder(config).eval()
    plain = create_encoder(EncoderConfig(**{**vars(config), "top_down": False}))
    features, grid = encoder(torch.rand(2, 3, 64, 64))
    assert grid == (16, 16) and features.shape == (2, 256, 32) and encoder.out_dim == 32 and encoder.stride == 4
    assert encoder.stage_names == ["stem", "block0", "block1", "block2", "block3", "top_down"]
    assert encoder.grid_size(64, 64) == (16, 16)
    trunk = encoder.trunk
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        x = (image - 0.5) / 0.5
        x = trunk.block0(trunk.stem(x))
        finer = trunk.block1[:-1](x)  # (1, 8, 16, 16): block1 before its pooling
        deepest = trunk.block3(trunk.block2(trunk.block1[-1](finer)))  # (1, 32, 8, 8)
        expected = F.interpolate(deepest, size=(16, 16), mode="bilinear", align_corners=False) + trunk.top_down(finer)
        got, _ = encoder(image)
    torch.testing.assert_close(got, expected.flatten(2).transpose(1, 2))
    assert sum(p.numel() for p in encoder.parameters()) == (
        sum(p.numel() for p in plain.parameters()) + 8 * 32 + 2 * 32)  # the 1×1 projection (8 -> 32) and its BN
    frozen = create_encoder(EncoderConfig(**{**vars(config), "trainable_from": "top_down"}))
    assert [p.requires_grad for p in frozen.parameters()].count(True) == 3  # conv weight, BN weight and bias


def test_captioner_with_top_down_attends_over_the_finer_grid_and_round_trips(tmp_path):
    """A captioner on a top-down encoder attends over its 2× finer grid, and save -> load gives the same
    logits and maps bit for bit (the projection is in the checkpoint, the flag in its config)."""
    from visattn.checkpoint import save_checkpoint
    from visattn.heads.captioner_config import CaptionerConfig
    from visattn.models import build_model, load

    config = CaptionerConfig(encoder=EncoderConfig(width=16, depth=3, num_downsample=2, stem=2, top_down=True),
                             vocab=["<pad>", "<start>", "<end>", "<unk>", "a", "b"], attention_dim=8,
                             decoder_dim=16, embed_dim=8, dropout=0.0)
    torch.manual_seed(0)
    model = build_model("captioner", config).eval()
    images, tokens = torch.rand(2, 3, 32, 32), torch.tensor([[1, 4, 5, 2], [1, 5, 2, 0]])
    with torch.no_grad():
        outputs = model(images, tokens=tokens)
    assert outputs["attention"].shape == (2, 3, 8, 8)  # 32 px: stem 2 -> 16, two poolings -> 4, top-down -> 8
    path = save_checkpoint(tmp_path / "td.safetensors", model, task="caption", model_name="captioner",
                           config=config_to_dict(config))
    loaded = load(path)
    assert loaded.config.encoder.top_down is True
    with torch.no_grad():
        again = loaded(images, tokens=tokens)
    for key in ("logits", "attention"):
        torch.testing.assert_close(again[key], outputs[key], rtol=0, atol=0)


def test_backbones_default_to_imagenet_statistics():
    encoder = create_encoder(EncoderConfig(name="tv:mobilenet_v3_small"))
    assert torch.allclose(encoder.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    assert encoder.out_dim == 576 and encoder.stride == 32


@pytest.mark.parametrize("options", [TINY_CNN, dict(name="tv:resnet18")], ids=["small_cnn", "resnet18"])
def test_adaptive_grid_is_exact(options):
    encoder = create_encoder(EncoderConfig(grid=3, **options)).eval()
    features, grid = encoder(torch.rand(2, 3, 96, 80))
    assert grid == (3, 3) and features.shape == (2, 9, encoder.out_dim)
    assert encoder.grid_size(96, 80) == (3, 3)


def test_normalisation_happens_inside_the_encoder():
    torch.manual_seed(0)
    encoder = create_encoder(EncoderConfig(mean=[0.2, 0.4, 0.6], std=[0.5, 0.25, 0.125], **TINY_CNN)).eval()
    images = torch.rand(1, 3, 32, 32)
    expected = encoder.trunk((images - torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1))
                             / torch.tensor([0.5, 0.25, 0.125]).view(1, 3, 1, 1))
    features, _ = encoder(images)
    assert torch.allclose(features, expected.flatten(2).transpose(1, 2), atol=1e-6)


def test_frozen_stages_keep_statistics_and_get_no_gradient():
    encoder = create_encoder(EncoderConfig(name="tv:resnet18", trainable_from="layer3"))
    assert encoder.frozen_stages == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2"]
    wrapper = torch.nn.Sequential(encoder)
    wrapper.train()  # a parent model switching to train mode must not unfreeze the statistics
    assert not encoder.trunk.layer2.training and encoder.trunk.layer3.training
    frozen_stats = encoder.trunk.layer1[0].bn1.running_mean.clone()
    trained_stats = encoder.trunk.layer3[0].bn1.running_mean.clone()
    features, _ = encoder(torch.rand(2, 3, 64, 64))
    features.square().mean().backward()
    assert torch.equal(encoder.trunk.layer1[0].bn1.running_mean, frozen_stats)
    assert not torch.equal(encoder.trunk.layer3[0].bn1.running_mean, trained_stats)
    for name, param in encoder.named_parameters():
        frozen = name.split(".")[1] in encoder.frozen_stages
        assert param.requires_grad is not frozen, name
        assert (param.grad is None) is frozen, name
    assert encoder.trunk.layer4[1].conv2.weight.grad.abs().sum() > 0


def test_fully_trainable_cnn_gives_every_parameter_a_gradient():
    encoder = create_encoder(EncoderConfig(**TINY_CNN)).train()
    features, _ = encoder(torch.rand(2, 3, 32, 32))
    features.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


@pytest.mark.parametrize("trainable_from, frozen", [("none", 3), ("all", 0), (1, 1), (-1, 2), ("block2", 2)])
def test_trainable_from_choices(trainable_from, frozen):
    encoder = create_encoder(EncoderConfig(trainable_from=trainable_from, **TINY_CNN)).train()
    assert encoder.frozen_stages == ["block0", "block1", "block2"][:frozen]
    assert [s.training for s in encoder.trunk] == [i >= frozen for i in range(3)]


def test_unknown_stage_lists_the_stages():
    with pytest.raises(ValueError, match="layer4"):
        create_encoder(EncoderConfig(name="tv:resnet18", trainable_from="layer9"))
    with pytest.raises(ValueError, match="out of range"):
        create_encoder(EncoderConfig(trainable_from=7, **TINY_CNN))


def test_torch_cache_without_the_file_says_so_and_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="never downloads") as info:
        create_encoder(EncoderConfig(name="tv:resnet18", weights="torch-cache"))
    assert str(tmp_path) in str(info.value)


def test_torch_cache_loads_a_cached_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(1)
    model = torchvision.models.get_model("mobilenet_v3_small", weights=None).eval()
    path = torch_cache_path("mobilenet_v3_small")
    assert path.startswith(str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(model.state_dict(), path)
    encoder = create_encoder(EncoderConfig(name="tv:mobilenet_v3_small", weights="torch-cache")).eval()
    images = torch.rand(1, 3, 64, 64)
    features, _ = encoder(images)
    expected = model.features((images - encoder.mean) / encoder.std)  # (1, C, H', W')
    assert torch.allclose(features, expected.flatten(2).transpose(1, 2), atol=1e-6)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_saved_encoder_weights_load_back_identically(tmp_path, suffix):
    torch.manual_seed(0)
    encoder = create_encoder(EncoderConfig(**TINY_CNN))
    encoder.train()(torch.rand(4, 3, 32, 32))  # move the BatchNorm statistics away from their init
    path = str(tmp_path / f"encoder{suffix}")
    if suffix == ".pt":
        torch.save(encoder.state_dict(), path)
    else:
        save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, path)
    torch.manual_seed(99)
    loaded = create_encoder(EncoderConfig(weights=path, **TINY_CNN))
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(encoder.eval()(images)[0], loaded.eval()(images)[0])


def test_classification_checkpoint_loads_into_the_cut_backbone(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": model.state_dict()}, path)  # a common training-script wrapper
    encoder = create_encoder(EncoderConfig(name="tv:resnet18", weights=str(path))).eval()
    images = torch.rand(1, 3, 64, 64)
    body = torch.nn.Sequential(*list(model.children())[:-2])  # everything before avgpool and fc
    expected = body((images - encoder.mean) / encoder.std)
    assert torch.allclose(encoder(images)[0], expected.flatten(2).transpose(1, 2), atol=1e-6)


def test_weights_that_fit_nothing_name_the_file(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"unrelated.weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="other.pt.*missing keys"):
        create_encoder(EncoderConfig(weights=str(path), **TINY_CNN))
    with pytest.raises(FileNotFoundError, match="no such file"):
        create_encoder(EncoderConfig(weights=str(tmp_path / "absent.pt"), **TINY_CNN))


def test_timm_local_classification_checkpoint(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnet18").eval()
    path = tmp_path / "timm_resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    encoder = create_encoder(EncoderConfig(name="timm:resnet18", weights=str(path))).eval()
    images = torch.rand(1, 3, 64, 64)
    expected = model.forward_features((images - encoder.mean) / encoder.std)  # (1, 512, 2, 2)
    assert torch.allclose(encoder(images)[0], expected.flatten(2).transpose(1, 2), atol=1e-5)


def test_unknown_backbone_lists_the_supported_ones():
    with pytest.raises(ValueError, match="resnet18.*mobilenet_v3_small|mobilenet_v3_small.*resnet18"):
        create_encoder(EncoderConfig(name="tv:resnet_not_real"))
    with pytest.raises(ValueError, match="small_cnn"):
        EncoderConfig(name="resnet18")


def test_timm_missing_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    with pytest.raises(ValueError, match="needs timm"):
        create_encoder(EncoderConfig(name="timm:resnet18"))


@pytest.mark.parametrize("bad", [
    dict(width=4), dict(depth=0), dict(num_downsample=5), dict(norm="layer"), dict(grid=0), dict(stem=0),
    dict(name="tv:resnet18", stem=2), dict(top_down=1), dict(num_downsample=0, top_down=True),
    dict(name="tv:resnet18", top_down=True),
    dict(grid=True), dict(trainable_from=1.5), dict(mean=[0.5, 0.5]), dict(std=[1, 0, 1]), dict(weights=""),
    dict(name="tv:resnet18", width=64), dict(name="small_cnn", weights="torch-cache"),
])
def test_bad_values_raise_value_error(bad):
    with pytest.raises(ValueError, match="EncoderConfig"):
        create_encoder(EncoderConfig(**{**TINY_CNN, **bad}))


def test_config_round_trips_through_json_dicts():
    config = EncoderConfig(name="tv:resnet18", grid=14, trainable_from="layer3", mean=(0.1, 0.2, 0.3))
    assert config_from_dict(EncoderConfig, config_to_dict(config)) == config
    with pytest.raises(ValueError, match="unknown key.*colour"):
        create_encoder({"name": "small_cnn", "colour": "red"})
