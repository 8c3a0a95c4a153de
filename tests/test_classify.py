"""Classification end to end: localisation metrics, the classifier contract, the CLI and its bad inputs."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from visattn.cli import main
from visattn.metrics.localisation import (
    LocalisationMeter,
    box_area_fraction,
    box_masks,
    energy_in_box,
    pointing_game,
    upsample_maps,
)
from visattn.tasks.classify import collate


def test_box_masks_use_pixel_centres():
    mask = box_masks(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), (6, 6))[0]
    rows, cols = mask.nonzero(as_tuple=True)
    assert set(rows.tolist()) == {2, 3} and set(cols.tolist()) == {1, 2}


def test_localisation_by_hand():
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, 0] = 1.0  # all mass in the top-left cell
    maps[1] = 1 / 16  # uniform
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 8.0, 8.0]])  # top-left quarter of a 16x16 image
    up = upsample_maps(maps, (16, 16))
    torch.testing.assert_close(up.sum(dim=(1, 2)), torch.ones(2))
    assert pointing_game(maps, boxes, (16, 16))[0]
    energy = energy_in_box(maps, boxes, (16, 16))
    assert energy[0] > 0.95
    assert energy[1] == pytest.approx(0.25, abs=1e-6)
    assert box_area_fraction(boxes, (16, 16)).tolist() == pytest.approx([0.25, 0.25])
    meter = LocalisationMeter()
    meter.update(maps.unsqueeze(1), boxes, (16, 16))
    result = meter.compute()
    assert result["uniform_energy"] == pytest.approx(0.25)
    assert result["energy_in_box"] == pytest.approx(float(energy.mean()), abs=1e-6)


@pytest.mark.parametrize("glimpses,mode", [(1, "parallel"), (3, "parallel"), (2, "recurrent")])
def test_classifier_contract(glimpses, mode, tiny_classifier):
    model = tiny_classifier(class_names=list("abcd"), num_glimpses=glimpses, glimpse_mode=mode)
    out = model(torch.rand(3, 3, 16, 20))
    assert out["pred_logits"].shape == (3, 4)
    assert out["attention"].shape == (3, glimpses, 4, 5)
    torch.testing.assert_close(out["attention"].sum(dim=(-2, -1)), torch.ones(3, glimpses))
    out["pred_logits"].sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_gap_baseline_returns_uniform_attention(tiny_classifier):
    out = tiny_classifier(pooling="gap")(torch.rand(2, 3, 16, 16))
    torch.testing.assert_close(out["attention"], torch.full((2, 1, 4, 4), 1 / 16))


def test_collate_keeps_the_labelled_box():
    samples = [{"image": torch.zeros(3, 8, 8), "label": k, "boxes": torch.tensor([[k, 0, 4, 4.0]]), "image_id": k}
               for k in range(3)]
    batch = collate(samples)
    assert batch["images"].shape == (3, 3, 8, 8) and batch["labels"].tolist() == [0, 1, 2]
    assert batch["boxes"][:, 0].tolist() == [0, 1, 2]
    assert collate([{"image": torch.zeros(3, 8, 8), "label": 1}])["boxes"] is None


# --- the command line -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    code = main(["train", "classify", "--run-dir", str(run), "--num-train", "48", "--num-val", "16",
                 "--image-size", "32", "--epochs", "1", "--batch-size", "16", "--encoder-width", "8",
                 "--no-progress", "--threads", "1"])
    assert code == 0
    return run


@pytest.mark.slow
def test_cli_train_writes_checkpoints_and_curves(trained):
    assert {"best.safetensors", "last.safetensors", "metrics.jsonl", "curves.png"} <= {p.name for p in trained.iterdir()}


@pytest.mark.slow
def test_cli_eval_predict_viz(trained, tmp_path, capsys):
    ckpt = str(trained / "best.safetensors")
    assert main(["eval", "--checkpoint", ckpt, "--num-samples", "16", "--json-out", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert {"accuracy", "pointing_game", "energy_in_box", "uniform_energy"} <= set(metrics)
    images = []
    for mode in ("L", "RGBA", "CMYK", "RGB"):
        path = tmp_path / f"img_{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
        Image.fromarray(np.random.RandomState(0).randint(0, 255, (40, 50, 3), dtype=np.uint8)).convert(mode).save(path)
        images.append(str(path))
    capsys.readouterr()
    assert main(["predict", *images, "--checkpoint", ckpt, "--out", str(tmp_path / "pred")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all(0 <= float(line.split("\t")[2]) <= 1 for line in lines)
    assert len(list((tmp_path / "pred").glob("*_attention.png"))) == 4
    assert main(["viz", "--checkpoint", ckpt, "--out", str(tmp_path / "grid.png"), "--num-images", "4"]) == 0
    assert (tmp_path / "grid.png").stat().st_size > 0


@pytest.mark.slow
def test_cli_bad_inputs_give_one_line_errors(trained, tmp_path, capsys):
    ckpt = str(trained / "best.safetensors")
    assert main(["predict", str(tmp_path / "missing.png"), "--checkpoint", ckpt]) == 1
    assert "missing.png" in capsys.readouterr().err
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert main(["predict", str(broken), "--checkpoint", ckpt]) == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "Traceback" not in err
    assert main(["eval", "--checkpoint", str(tmp_path / "none.safetensors")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"num_glimpses": 2, "colour": "red"}))
    assert main(["train", "classify", "--run-dir", str(tmp_path / "r"), "--config", str(config)]) == 1
    assert "unknown key(s) 'colour'" in capsys.readouterr().err
    for text, message in (('["num_glimpses", 2]', "holds one JSON object of ClassifierConfig fields, got a JSON list"),
                          ('{"num_glimpses": 2', "c.json: invalid JSON at line 1"), ("", "c.json: invalid JSON at line 1")):
        config.write_text(text)
        assert main(["train", "classify", "--run-dir", str(tmp_path / "r"), "--config", str(config)]) == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["train", "classify", "--run-dir", str(tmp_path / "r"), "--config", str(tmp_path / "no.json")]) == 1
    assert "no.json: config file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "classify", "--run-dir", str(tmp_path / "r"), "--epochs", "0"])
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_cli_exports_imagefolder_trains_on_it_and_reports_corrupt_files(tmp_path, capsys, caplog):
    root = tmp_path / "folder"
    assert main(["data", "export", "--format", "imagefolder", "--out", str(root), "--num-train", "24",
                 "--num-val", "8", "--num-test", "4", "--image-size", "32"]) == 0
    first_class = sorted(p for p in (root / "train").iterdir() if p.is_dir())[0]
    (first_class / "corrupt.png").write_bytes(b"not an image at all")
    args = ["train", "classify", "--data-dir", str(root), "--image-size", "32", "--epochs", "1", "--batch-size", "8",
            "--encoder-width", "8", "--no-progress", "--threads", "1"]
    with caplog.at_level("WARNING"):
        assert main([*args, "--run-dir", str(tmp_path / "run")]) == 0
    assert "skipped 1 unreadable image(s)" in caplog.text
    capsys.readouterr()
    assert main([*args, "--run-dir", str(tmp_path / "strict"), "--strict"]) == 1
    assert "corrupt.png" in capsys.readouterr().err
