"""The detection command line: COCO export -> train -> eval -> detect, and its usage errors."""

import json

import pytest

from visattn.cli import main


@pytest.fixture(scope="module")
def coco_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("detect")
    assert main(["data", "export", "--format", "coco", "--out", str(root / "coco"), "--num-train", "16",
                 "--num-val", "8", "--num-test", "4", "--image-size", "32"]) == 0
    config = root / "tiny.json"
    config.write_text(json.dumps({"encoder": {"width": 16, "depth": 3, "num_downsample": 2}, "num_queries": 5,
                                  "hidden_dim": 16, "num_heads": 2, "num_layers": 1, "ffn_dim": 32}))
    code = main(["train", "detect", "--run-dir", str(root / "run"), "--config", str(config),
                 "--coco-train", str(root / "coco/train/instances.json"), str(root / "coco/train"),
                 "--coco-val", str(root / "coco/val/instances.json"), str(root / "coco/val"),
                 "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--no-progress", "--threads", "1"])
    assert code == 0
    return root


@pytest.mark.slow
def test_train_eval_detect_from_coco_files(coco_run, capsys):
    ckpt = str(coco_run / "run" / "best.safetensors")
    out = coco_run / "eval.json"
    assert main(["eval", "--checkpoint", ckpt, "--coco-file", str(coco_run / "coco/test/instances.json"),
                 str(coco_run / "coco/test"), "--json-out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert {"map", "map_50", "map_75"} <= set(metrics) and 0.0 <= metrics["map"] <= 1.0
    images = sorted((coco_run / "coco/test/images").glob("*.png"))[:2]
    capsys.readouterr()
    assert main(["detect", *map(str, images), "--checkpoint", ckpt, "--score-threshold", "0",
                 "--out", str(coco_run / "figs")]) == 0
    assert str(images[0]) in capsys.readouterr().out
    assert len(list((coco_run / "figs").glob("*.png"))) == 2


@pytest.mark.slow
def test_detect_usage_and_data_errors(coco_run, tmp_path, capsys):
    ckpt = str(coco_run / "run" / "best.safetensors")
    assert main(["detect", str(tmp_path / "nope.png"), "--checkpoint", ckpt]) == 1
    assert "nope.png" in capsys.readouterr().err
    assert main(["detect", str(tmp_path / "nope.png"), "--checkpoint", ckpt, "--score-threshold", "2"]) == 2
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    assert main(["eval", "--checkpoint", ckpt, "--coco-file", str(broken), str(tmp_path)]) == 1
    assert "broken.json" in capsys.readouterr().err
    assert main(["train", "detect", "--run-dir", str(tmp_path / "r"), "--coco-train", str(broken), str(tmp_path)]) == 2
