"""Configs from dicts, atomic checkpoints, load() rebuilding models, and every bad-checkpoint error."""

from dataclasses import dataclass, field

import pytest
import torch

from visattn.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from visattn.config import config_from_dict, config_to_dict
from visattn.encoders import EncoderConfig
from visattn.heads.classifier import ClassifierConfig
from visattn.models import build_model, list_models, load, register_model


def save(model, path, **kw):
    return save_checkpoint(path, model, task="classify", model_name="classifier",
                           config=config_to_dict(model.config), **kw)


def test_config_round_trip_and_unknown_key_names_source():
    cfg = ClassifierConfig(num_glimpses=3, encoder=EncoderConfig(width=16))
    assert config_from_dict(ClassifierConfig, config_to_dict(cfg)) == cfg
    with pytest.raises(ValueError, match=r"run.json: unknown key\(s\) 'glimpses'.*valid keys: .*num_glimpses"):
        config_from_dict(ClassifierConfig, {"glimpses": 2}, source="run.json")
    with pytest.raises(ValueError, match=r"run.json.encoder: unknown key\(s\) 'widht'"):
        config_from_dict(ClassifierConfig, {"encoder": {"widht": 3}}, source="run.json")
    with pytest.raises(ValueError, match="pooling must be"):
        config_from_dict(ClassifierConfig, {"pooling": "max"})


def test_registry_refuses_duplicates_and_unknown_names():
    assert "classifier" in list_models(task="classify")

    @dataclass
    class Cfg:
        width: int = 2

    with pytest.raises(ValueError, match="already registered"):
        register_model("classifier", Cfg, task="classify")(torch.nn.Module)
    with pytest.raises(ValueError, match="unknown model 'resnet'; valid names: .*classifier"):
        build_model("resnet")


@pytest.mark.parametrize("pooling,mode", [("attention", "parallel"), ("attention", "recurrent"), ("gap", "parallel")])
def test_save_load_gives_identical_outputs(tmp_path, pooling, mode, tiny_classifier):
    model = tiny_classifier(pooling=pooling, glimpse_mode=mode, num_glimpses=2).eval()
    path = save(model, tmp_path / "m.safetensors")
    loaded = load(path)
    assert not loaded.training
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        a, b = model(images), loaded(images)
    torch.testing.assert_close(a["pred_logits"], b["pred_logits"], rtol=0, atol=0)
    torch.testing.assert_close(a["attention"], b["attention"], rtol=0, atol=0)
    assert loaded.config == model.config


def test_atomic_write_leaves_no_temp_files_and_replaces(tmp_path, tiny_classifier):
    model = tiny_classifier()
    path = tmp_path / "m.safetensors"
    save(model, path)
    save(model, path, training={"epoch": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    assert read_checkpoint(path).training == {"epoch": 3}


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch, tiny_classifier):
    model = tiny_classifier()
    path = save(model, tmp_path / "m.safetensors", training={"epoch": 1})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("visattn.checkpoint.save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save(model, path, training={"epoch": 2})
    assert read_checkpoint(path).training == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_missing_truncated_foreign_and_wrong_task_checkpoints(tmp_path, tiny_classifier):
    with pytest.raises(CheckpointError, match="nope.safetensors: checkpoint not found"):
        load(tmp_path / "nope.safetensors")
    path = save(tiny_classifier(), tmp_path / "m.safetensors")
    data = path.read_bytes()
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors: not a readable checkpoint"):
        load(truncated)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.safetensors"):
        load(empty)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a visattn checkpoint"):
        load(foreign)
    with pytest.raises(CheckpointError, match="is a 'classify' checkpoint .*expected a 'caption' one"):
        load(path, task="caption")


def test_checkpoint_with_unknown_config_key_or_mismatched_weights(tmp_path, tiny_classifier):
    model = tiny_classifier()
    config = config_to_dict(model.config)
    bad = save_checkpoint(tmp_path / "bad.safetensors", model, task="classify", model_name="classifier",
                          config={**config, "colour": "red"})
    with pytest.raises(CheckpointError, match=r"bad.safetensors.*unknown key\(s\) 'colour'"):
        load(bad)
    wrong = save_checkpoint(tmp_path / "wrong.safetensors", model, task="classify", model_name="classifier",
                            config={**config, "hidden_dim": 32})
    with pytest.raises(CheckpointError, match="weights do not fit model 'classifier'"):
        load(wrong)


def test_load_ignores_the_encoder_weights_file_it_was_initialised_from(tmp_path, tiny_classifier):
    model = tiny_classifier()
    config = config_to_dict(model.config)
    config["encoder"]["weights"] = str(tmp_path / "gone.pt")  # no longer on this machine
    path = save_checkpoint(tmp_path / "m.safetensors", model, task="classify", model_name="classifier", config=config)
    loaded = load(path)
    torch.testing.assert_close(loaded.state_dict()["head.4.weight"], model.state_dict()["head.4.weight"])


@dataclass
class _Nested:
    items: list[int] = field(default_factory=list)
    pair: tuple[int, int] = (1, 2)


def test_tuples_come_back_as_tuples():
    assert config_from_dict(_Nested, {"pair": [3, 4], "items": [1]}) == _Nested(items=[1], pair=(3, 4))


def test_captioner_checkpoint_from_before_newer_fields_loads_with_what_it_was_trained_with(tmp_path):
    """A checkpoint written before init_activation & co. existed means the behaviour of its time (tanh on the
    initial state, ...), not today's defaults: its outputs must not change when the defaults do."""
    from visattn.heads.captioner_config import CaptionerConfig

    config = CaptionerConfig(encoder=EncoderConfig(width=8, depth=2, num_downsample=2),
                             vocab=["<pad>", "<start>", "<end>", "<unk>", "a", "b"], attention_dim=8,
                             decoder_dim=16, embed_dim=8, dropout=0.0, init_activation="tanh",
                             init_scheme="pytorch", hard_reward="caption", hard_baseline="moving_average",
                             output_context=False)
    torch.manual_seed(0)
    model = build_model("captioner", config).eval()
    stored = config_to_dict(config)
    for key in CaptionerConfig.stored_defaults:
        del stored[key]  # what an older visattn wrote
    path = save_checkpoint(tmp_path / "old.safetensors", model, task="caption", model_name="captioner", config=stored)
    loaded = load(path)
    assert loaded.config == config
    images, tokens = torch.rand(2, 3, 32, 32), torch.tensor([[1, 4, 5, 2], [1, 5, 2, 0]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, tokens=tokens)["logits"], model(images, tokens=tokens)["logits"],
                                   rtol=0, atol=0)
