"""The captioning command line on exported Karpathy data: export -> train -> eval -> caption, and data make."""

import json

import pytest

from visattn.cli import main


@pytest.mark.slow
def test_karpathy_export_train_eval_caption(tmp_path, capsys):
    data = tmp_path / "karpathy"
    assert main(["data", "export", "--format", "karpathy", "--out", str(data), "--num-train", "24",
                 "--num-val", "6", "--num-test", "6", "--image-size", "32"]) == 0
    records = json.loads((data / "dataset_visattn.json").read_text())["images"]
    assert len(records) == 36 and {r["split"] for r in records} == {"train", "val", "test"}
    assert all(len(r["sentences"]) >= 5 for r in records)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"encoder": {"width": 16, "depth": 2, "num_downsample": 2}, "attention_dim": 16,
                                  "decoder_dim": 16, "embed_dim": 16, "max_len": 12}))
    run = tmp_path / "run"
    assert main(["train", "caption", "--run-dir", str(run), "--config", str(config), "--karpathy-json",
                 str(data / "dataset_visattn.json"), "--image-root", str(data), "--image-size", "32",
                 "--min-count", "1", "--epochs", "1", "--batch-size", "16", "--beam-size", "2", "--no-progress",
                 "--threads", "1"]) == 0
    ckpt = str(run / "best.safetensors")
    out = tmp_path / "metrics.json"
    assert main(["eval", "--checkpoint", ckpt, "--karpathy-json", str(data / "dataset_visattn.json"),
                 "--image-root", str(data), "--beam-size", "2", "--json-out", str(out)]) == 0
    assert {"BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr-D"} <= set(json.loads(out.read_text()))
    image = next((data / "images").glob("test_*.png"))
    capsys.readouterr()
    assert main(["caption", str(image), "--checkpoint", ckpt, "--beam-size", "2", "--n-best", "2",
                 "--out", str(tmp_path / "figs")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[1] for line in lines[:2]] == ["1", "2"]
    assert {p.suffix for p in (tmp_path / "figs").iterdir()} == {".png", ".gif"}
    for bad in (["--beam-size", "0"], ["--max-len", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["caption", str(image), "--checkpoint", ckpt, *bad])
        assert exit_info.value.code == 2
    assert main(["caption", str(image), "--checkpoint", ckpt, "--beam-size", "2", "--n-best", "3"]) == 2


def test_data_make_writes_images_and_annotations(tmp_path):
    assert main(["data", "make", "--kind", "caption", "--num", "3", "--out", str(tmp_path), "--image-size", "48"]) == 0
    lines = [json.loads(x) for x in (tmp_path / "annotations.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    for record in lines:
        assert (tmp_path / record["file"]).is_file()
        assert len(record["boxes"]) == len(record["labels"]) == len(record["class_names"]) >= 1
        assert len(record["captions"]) == len(record["alignment"]) >= 5
        assert [o["class_name"] for o in record["objects"]] == record["class_names"]
        assert all(set(o) == {"class_name", "colour", "size"} for o in record["objects"])


@pytest.mark.slow
def test_preset_attention_supervision_and_self_critical_training(tmp_path, capsys):
    """--preset paper, --attention-supervision and --scst-epochs reach the model and the engine: the checkpoint
    holds the paper's choices and λ, the supervision term is trained, and SCST (with the content reward, which
    reads the scenes' objects) continues into RUN_DIR/scst."""
    from visattn.checkpoint import read_checkpoint

    run = tmp_path / "run"
    assert main(["train", "caption", "--run-dir", str(run), "--preset", "paper", "--encoder-width", "16",
                 "--encoder-stem", "2", "--encoder-downsample", "2", "--encoder-top-down", "--attention-dim", "16",
                 "--decoder-dim", "16",
                 "--embed-dim", "16", "--max-len", "10",
                 "--dropout", "0", "--attention-supervision", "0.5",
                 "--attention-supervision-region", "mask", "--num-train", "24", "--num-val", "6",
                 "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--beam-size", "2",
                 "--scst-epochs", "1", "--scst-samples", "2", "--scst-content", "2", "--no-progress",
                 "--threads", "1"]) == 0
    config = read_checkpoint(run / "best.safetensors").config
    assert config["gate"] == "scalar" and config["deep_output"] is True and config["init_activation"] == "tanh"
    assert config["attention_supervision"] == 0.5 and config["attention_supervision_region"] == "mask"
    assert config["dropout"] == 0.0
    assert (config["encoder"]["stem"], config["encoder"]["num_downsample"], config["encoder"]["top_down"]) == (2, 2, True)
    xe = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert xe["train_loss_attention_sup"] > 0
    scst = json.loads((run / "scst" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "train_loss_scst" in scst and "val_CIDEr-D" in scst
    assert (run / "scst" / "last.safetensors").is_file()
    with pytest.raises(SystemExit):
        main(["train", "caption", "--run-dir", str(run), "--preset", "nope"])
    assert main(["train", "caption", "--run-dir", str(tmp_path / "bad"), "--encoder-downsample", "-1"]) == 1
    assert "EncoderConfig.num_downsample: expected an int >= 0, got -1" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: not a positive int
        main(["train", "caption", "--run-dir", str(tmp_path / "bad"), "--encoder-stem", "0"])
    assert main(["train", "caption", "--run-dir", str(run), "--preset", "paper",
                 "--config", str(run / "train_config.json")]) == 2
