"""The caption demo's plan: a pure function of the budget, under three minutes of training at the nominal speed."""

import inspect
import json

import pytest
import torch

from visattn.encoders import create_encoder

from visattn.tasks.demo import DEMO_IMAGES_PER_SECOND, demo_data_plan, demo_model_config, run_caption_demo


def test_default_demo_trains_under_three_minutes_at_the_nominal_speed():
    budget = inspect.signature(run_caption_demo).parameters["seconds_budget"].default
    plan = demo_data_plan(budget)
    train_seconds = plan["num_train"] * plan["epochs"] / DEMO_IMAGES_PER_SECOND
    assert 0.6 * budget <= train_seconds <= min(0.75 * budget, 180.0)
    assert plan == demo_data_plan(budget)  # repeatable: no clock in it
    assert plan["num_train"] % 100 == 0 and plan["num_val"] >= 20 and plan["num_test"] >= 20


def test_plan_grows_with_the_budget_and_rejects_a_non_positive_one():
    assert demo_data_plan(480.0)["num_train"] > demo_data_plan(240.0)["num_train"]
    assert demo_data_plan(1.0)["num_train"] == 100  # the floor
    for bad in (0.0, -5.0):
        with pytest.raises(ValueError, match="seconds_budget must be positive"):
            demo_data_plan(bad)


def test_demo_model_keeps_the_8x8_grid_of_128_channels_with_a_patchify_stem():
    config = demo_model_config()
    features, grid = create_encoder(config.encoder)(torch.rand(2, 3, 64, 64))
    assert config.encoder.stem == 2 and grid == (8, 8) and features.shape == (2, 64, 128)


def test_demo_command_rejects_a_negative_supervision_weight(tmp_path, capsys):
    from visattn.cli import main

    assert main(["demo", "--out", str(tmp_path), "--attention-supervision", "-1"]) == 2
    assert "--attention-supervision must be >= 0" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing trained or written


@pytest.mark.slow
def test_demo_trains_its_encoder_faster_and_writes_figures(tmp_path):
    from visattn.checkpoint import optimizer_state, read_checkpoint
    from visattn.tasks.demo import DEMO_ENCODER_LR_SCALE

    torch.set_num_threads(1)
    summary = run_caption_demo(tmp_path, seconds_budget=1.0, num_figures=1, beam_size=1, progress=False,
                               printer=lambda *_: None)
    assert summary["figures"] and all(p.endswith((".png", ".gif")) for p in summary["figures"])
    assert 0.0 <= summary["metrics"]["object_f1"] <= 1.0
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["best"] == summary["best"] and summary["best"]["metric"] == "object_f1"  # scenes know objects
    groups = optimizer_state(read_checkpoint(tmp_path / "run" / "last.safetensors"))["param_groups"]
    decoder, encoder = (group["initial_lr"] for group in groups)
    assert DEMO_ENCODER_LR_SCALE > 1 and encoder == pytest.approx(DEMO_ENCODER_LR_SCALE * decoder)
