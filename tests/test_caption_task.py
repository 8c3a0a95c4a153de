"""Captioning task glue: batches, vocabulary, attention correctness, the Task, training and captioning."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from visattn.data.images import ImageLoadError
from visattn.data.vocab import Vocabulary
from visattn.metrics.attention_correctness import AttentionCorrectness, align_words, mass_in_masks, word_objects
from visattn.data.caption_data import CaptionDataset, build_vocabulary, collate, scene_data, teacher_forced_objects
from visattn.metrics.caption_content import caption_content


@pytest.fixture(scope="module")
def scenes():
    return scene_data(num_train=12, num_val=8, num_test=4, image_size=32, num_objects=(1, 2), seed=0,
                      small_scale=(0.3, 0.34), large_scale=(0.42, 0.5))


# ----------------------------------------------------------------------------------------------- batches
def test_collate_pads_tokens_and_reports_lengths():
    vocab = Vocabulary.build([["a", "red", "circle"], ["a", "blue", "two"]])
    samples = [{"image": torch.zeros(3, 8, 8), "image_id": i, "captions": [c],
                "tokens": torch.tensor(vocab.encode(c.split()))}
               for i, c in enumerate(["a red circle", "a two"])]
    batch = collate(samples)
    assert batch["images"].shape == (2, 3, 8, 8)
    assert batch["lengths"].tolist() == [5, 4]
    assert batch["tokens"].shape == (2, 5)
    assert batch["tokens"][1].tolist() == [vocab.start_id, vocab.token_to_id("a"), vocab.token_to_id("two"),
                                           vocab.end_id, vocab.pad_id]
    assert batch["tokens"][0, 4].item() == vocab.end_id
    assert batch["image_ids"] == [0, 1] and "masks" not in batch


def test_dataset_modes_cover_pairs_images_and_random(scenes):
    pairs = CaptionDataset(scenes.train, scenes.train.tokens, scenes.vocab, mode="pairs")
    per_image = [len(c) for c in scenes.train.tokens]
    assert len(pairs) == sum(per_image)
    seen = {(pairs[i]["image_id"], pairs[i]["caption_index"]) for i in range(len(pairs))}
    assert len(seen) == len(pairs)  # every (image, caption) pair exactly once
    images = CaptionDataset(scenes.val, scenes.val.tokens, scenes.vocab, mode="images")
    assert len(images) == len(scenes.val) and images[0]["caption_index"] == 0
    torch.manual_seed(0)
    random = CaptionDataset(scenes.train, scenes.train.tokens, scenes.vocab, mode="random")
    chosen = {random[0]["caption_index"] for _ in range(40)}
    assert len(random) == len(scenes.train) and len(chosen) > 1
    item = pairs[3]
    words = scenes.vocab.decode(item["tokens"].tolist())
    assert " ".join(words) == item["captions"][item["caption_index"]]
    batch = collate([images[i] for i in range(4)])
    assert len(batch["masks"]) == 4 and len(batch["alignment"]) == 4
    with pytest.raises(ValueError, match="mode"):
        CaptionDataset(scenes.train, scenes.train.tokens, scenes.vocab, mode="epochs")


def test_vocabulary_comes_from_the_training_split_only():
    train = [[["a", "red", "circle"]], [["a", "red", "square"]]]
    vocab = build_vocabulary(train)
    assert "circle" in vocab and "triangle" not in vocab
    assert build_vocabulary(train, min_count=2).to_list()[4:] == ["a", "red"]


def test_scene_splits_differ_and_vocabulary_is_from_train(scenes):
    def ids(source):
        return {tuple(source[i]["image"].flatten()[:50].tolist()) for i in range(len(source))}

    assert not ids(scenes.train) & ids(scenes.val) and not ids(scenes.val) & ids(scenes.test)
    train_words = {w for image in scenes.train.tokens for c in image for w in c}
    assert set(scenes.vocab.to_list()[4:]) == train_words


# ----------------------------------------------------------------------------------- attention correctness
def test_all_mass_inside_the_mask_scores_one_and_uniform_scores_the_area():
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[0, :8, :8] = True  # object 0: top-left quarter
    masks[1, 8:, :] = True  # object 1: bottom half
    inside = torch.zeros(4, 4)
    inside[0, 0] = 1.0  # up-sampled bilinearly, its mass stays within pixels 0..4 of rows and columns
    uniform = torch.full((4, 4), 1 / 16)
    meter = AttentionCorrectness()
    meter.update_aligned(torch.stack([inside, uniform, uniform]), [0, 0, 1], masks)
    torch.testing.assert_close(mass_in_masks(inside[None], masks[:1]), torch.tensor([1.0]))
    result = meter.compute()
    assert result["aligned_words"] == 3
    assert result["attention_correctness"] == pytest.approx((1.0 + 0.25 + 0.5) / 3, abs=1e-5)
    assert result["uniform_correctness"] == pytest.approx((0.25 + 0.25 + 0.5) / 3)
    empty = AttentionCorrectness()
    empty.update_aligned(torch.stack([uniform]), [-1], masks)
    assert empty.compute()["aligned_words"] == 0


def test_generated_words_are_tied_to_objects_only_when_unique():
    captions = ["a red seven and a red circle", "the seven is large", "there are two red circles"]
    alignment = [[-1, 0, 0, -1, -1, 1, 1], [-1, 0, -1, 0], [-1, -1, -1, 1, 1]]
    table = word_objects(captions, alignment)
    assert table == {"seven": 0, "large": 0, "circle": 1, "circles": 1}  # "red" names both objects
    assert align_words(["a", "red", "seven", "circle", "blue"], captions, alignment) == [-1, -1, 0, 1, -1]
    # A count word that is sometimes unaligned is not scored even if it is aligned elsewhere.
    assert word_objects(["a two", "there are two twos"], [[-1, 0], [-1, -1, -1, 0]]) == {"twos": 0}
    with pytest.raises(ValueError, match="alignment has"):
        word_objects(["a red seven"], [[-1, 0]])


def test_teacher_forced_objects_need_matching_words():
    tokens = torch.tensor([1, 5, 6, 2])
    assert teacher_forced_objects("a seven", [-1, 0], tokens) == [-1, 0]
    assert teacher_forced_objects("a seven.", [-1, 0], tokens) is None  # punctuation changes the words
    assert teacher_forced_objects("a seven", [-1, 0], tokens[:3]) is None  # truncated


# ------------------------------------------------------------------------------- task, training, captioning
def test_task_loss_trains_and_evaluate_decodes(scenes, tiny_captioner):
    from torch.utils.data import DataLoader

    from visattn.engine import TrainConfig
    from visattn.tasks import get_task

    task = get_task("caption", beam_size=2)
    model = tiny_captioner(vocab=scenes.vocab.to_list(), max_len=12)
    pairs = CaptionDataset(scenes.train, scenes.train.tokens, scenes.vocab)
    batch = collate([pairs[i] for i in range(8)])
    terms = task.criterion(model, batch, torch.device("cpu"))
    assert {"loss_ce", "loss_attention_reg"} <= set(terms) and "loss" not in terms
    loss = task.total_loss(terms)
    assert loss.requires_grad
    torch.testing.assert_close(loss, model.loss(model(batch["images"], tokens=batch["tokens"],
                                                      lengths=batch["lengths"]), batch["tokens"])["loss"])
    loss.backward()
    assert model.attention is not None and all(p.grad is not None for p in model.attention.parameters())
    groups = get_task("caption", encoder_lr=1e-5).param_groups(model, TrainConfig())
    assert groups[1]["lr"] == 1e-5 and len(groups[0]["params"]) + len(groups[1]["params"]) == len(
        [p for p in model.parameters() if p.requires_grad])
    val = CaptionDataset(scenes.val, scenes.val.tokens, scenes.vocab, mode="images")
    metrics = task.evaluate(model.eval(), DataLoader(val, batch_size=4, collate_fn=task.collate), torch.device("cpu"))
    for key in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D", "attention_correctness",
                "uniform_correctness", "attention_correctness_tf", "uniform_correctness_tf",
                "attention_correctness_box", "uniform_correctness_box", "attention_correctness_box_tf",
                "object_f1", "attribute_f1", "count_f1", "content_exact"):
        assert key in metrics and metrics[key] >= 0.0, key
    assert 0.0 < metrics["uniform_correctness_tf"] < metrics["uniform_correctness_box_tf"] < 1.0  # mask inside box
    assert metrics["aligned_words_tf"] > 8
    assert task.monitor == "CIDEr-D" and task.monitor in metrics
    assert get_task("caption", monitor="object_f1").monitor in metrics
    with pytest.raises(ValueError, match="unknown caption monitor 'CIDEr'"):
        get_task("caption", monitor="CIDEr")


def test_evaluation_decodes_for_real(scenes, monkeypatch, tiny_captioner):
    """The monitored metric comes from generated captions: a model that generates a reference scores high."""
    from torch.utils.data import DataLoader

    from visattn.heads.beam import Hypothesis
    from visattn.tasks.caption import evaluate_captioner

    model = tiny_captioner(vocab=scenes.vocab.to_list(), max_len=12).eval()
    calls = []

    def generate(images=None, *, features=None, grid=None, beam_size=1, max_len=None, n_best=1, length_penalty=0.0):
        calls.append(beam_size)  # every image "generates" its first reference, with uniform attention
        return [[Hypothesis(scenes.vocab.encode(tokens[0])[1:-1], 0.0, torch.full((20, 4, 4), 1 / 16))]
                for tokens in scenes.val.tokens]

    monkeypatch.setattr(model, "generate", generate)
    val = CaptionDataset(scenes.val, scenes.val.tokens, scenes.vocab, mode="images")
    loader = DataLoader(val, batch_size=len(val), collate_fn=collate)
    captions = {}
    metrics = evaluate_captioner(model, loader, torch.device("cpu"), beam_size=3, teacher_forced=False,
                                 captions=captions)
    assert calls == [3]
    assert len(captions) == len(val) and all(text for text in captions.values())
    assert metrics["BLEU-1"] > 0.99 and metrics["CIDEr-D"] > 1.0
    assert metrics["object_f1"] > 0.9 and metrics["content_captions"] == len(val)  # a reference says what is there
    assert metrics["attention_correctness"] == pytest.approx(metrics["uniform_correctness"], abs=0.02)


@pytest.mark.slow
def test_train_then_caption_writes_checkpoint_and_figures(scenes, tmp_path, capsys, tiny_config):
    from PIL import Image

    from visattn import Predictor
    from visattn.cli import main
    from visattn.engine import TrainConfig
    from visattn.models import load
    from visattn.tasks.caption import train_captioner

    model_config = tiny_config("captioner", max_len=12)
    result = train_captioner(model_config, scenes, TrainConfig(epochs=1, batch_size=16, progress=False),
                             tmp_path / "run", beam_size=2)
    assert (tmp_path / "run" / "best.safetensors").is_file() and (tmp_path / "run" / "last.safetensors").is_file()
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "val_CIDEr-D" in record and "val_BLEU-4" in record
    assert result["best"]["metric"] == "object_f1"  # procedural scenes know their objects: the exact content F1
    model = load(tmp_path / "run" / "best.safetensors", task="caption")
    assert model.config.vocab == scenes.vocab.to_list()
    path = tmp_path / "scene.png"
    Image.fromarray((scenes.test[0]["image"].permute(1, 2, 0).numpy() * 255).astype("uint8")).save(path)
    predictor = Predictor.from_checkpoint(tmp_path / "run" / "best.safetensors", device="cpu", task="caption",
                                          image_size=32)
    results = predictor.predict([path], beam_size=3, n_best=2, max_len=6)
    assert len(results[0].captions) == 2 and results[0].captions[0].score >= results[0].captions[1].score
    assert len(results[0].words) <= 6 and results[0].attention.shape[0] == len(results[0].words)
    checkpoint = str(tmp_path / "run" / "best.safetensors")
    assert main(["caption", str(path), "--checkpoint", checkpoint, "--image-size", "32", "--beam-size", "3",
                 "--n-best", "2", "--max-len", "6", "--out", str(tmp_path / "figures"), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[3] for line in lines[:2]] == [c.text for c in results[0].captions]
    # --annotations: what the best caption says against each annotated scene, the content metric's own numbers
    made = tmp_path / "made"
    assert main(["data", "make", "--kind", "caption", "--num", "2", "--out", str(made), "--image-size", "32"]) == 0
    scenes_made = [json.loads(x) for x in (made / "annotations.jsonl").read_text().splitlines()]
    images = [str(made / r["file"]) for r in scenes_made] + [str(path)]
    capsys.readouterr()
    assert main(["caption", *images, "--checkpoint", checkpoint, "--image-size", "32", "--max-len", "8",
                 "--annotations", str(made / "annotations.jsonl"), "--out", str(tmp_path / "annotated")]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    best = {r[0]: r[3] for r in rows if r[1] == "1"}
    content = {r[0]: r[2] for r in rows if r[1] == "content"}
    for image, record in zip(images, scenes_made):
        expected = caption_content(best[image], record["objects"])
        assert json.loads(content[image]) == {k: round(expected[k], 4) for k in json.loads(content[image])}
        assert "object_f1" in json.loads(content[image])
    assert content[str(path)].startswith("- (not in")
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"file": "images/0.png", "captions": ["a red star"]}) + "\n")
    assert main(["caption", images[0], "--checkpoint", checkpoint, "--annotations", str(broken),
                 "--out", str(tmp_path / "annotated")]) == 1
    assert f"{broken}:1: field 'objects'" in capsys.readouterr().err
    if results[0].words:  # an untrained model may end at once; then there is no word to draw
        figures = sorted((tmp_path / "figures").iterdir())
        assert [p.suffix for p in figures] == [".gif", ".png"] and all(p.stat().st_size > 0 for p in figures)
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(path.read_bytes()[:60])
    with pytest.raises(ImageLoadError, match="broken.png"):
        predictor.predict([path, corrupt])
    for bad in (dict(beam_size=0), dict(max_len=0), dict(beam_size=2, n_best=3)):
        with pytest.raises(ValueError):
            predictor.predict([path], **bad)


@pytest.mark.slow
def test_feature_cache_training_and_vocabulary_mismatch_on_resume(scenes, tmp_path, tiny_config):
    from visattn.engine import TrainConfig
    from visattn.tasks.caption import train_captioner
    from visattn.data.caption_data import scene_data

    config, model_config = TrainConfig(epochs=1, batch_size=16, progress=False), tiny_config("captioner", max_len=12)
    result = train_captioner(model_config, scenes, config, tmp_path / "run", beam_size=1,
                             feature_cache=tmp_path / "cache", cache_dtype="float16")
    assert (tmp_path / "cache" / "train" / "manifest.json").is_file() and result["history"]
    with pytest.raises(ValueError, match="kept its best checkpoint by 'object_f1'.*monitors 'CIDEr-D'"):
        train_captioner(model_config, scenes, replace(config, epochs=2), tmp_path / "run", beam_size=1,
                        feature_cache=tmp_path / "cache", cache_dtype="float16",
                        resume=tmp_path / "run" / "last.safetensors", monitor="CIDEr-D")
    with pytest.raises(ValueError, match="frozen encoder"):
        train_captioner(model_config, scenes, config, tmp_path / "x", feature_cache=tmp_path / "cache",
                        encoder_lr=1e-4)
    other = scene_data(num_train=3, num_val=2, image_size=32, num_objects=(1, 1), seed=5,
                       small_scale=(0.3, 0.34), large_scale=(0.42, 0.5))
    assert other.vocab != scenes.vocab
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        train_captioner(model_config, other, TrainConfig(epochs=2, batch_size=16, progress=False),
                        tmp_path / "run", resume=tmp_path / "run" / "last.safetensors")


def _write_scenes(source, folder, first_id):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(len(source)):
        sample = source[i]
        path = folder / f"{first_id + i}.png"
        Image.fromarray((sample["image"].permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(path)
        records.append({"path": str(path), "image_id": first_id + i, "captions": sample["captions"]})
    return records


def test_karpathy_and_coco_files_give_the_same_task(scenes, tmp_path):
    from visattn.data.coco_captions import write_coco_captions
    from visattn.data.karpathy import write_karpathy
    from visattn.data.caption_data import coco_data, karpathy_data
    from visattn.engine import TrainConfig
    from visattn.models import build_model
    from visattn.tasks.caption import default_monitor, train_captioner

    train = _write_scenes(scenes.train, tmp_path / "images" / "train", 0)
    val = _write_scenes(scenes.val, tmp_path / "images" / "val", 1000)
    write_karpathy({"train": train[:8], "restval": train[8:], "val": val}, tmp_path / "karpathy.json",
                   image_root=tmp_path / "images")
    data = karpathy_data(tmp_path / "karpathy.json", tmp_path / "images", image_size=32, min_count=1)
    assert len(data.train) == len(scenes.train) and len(data.val) == len(scenes.val)
    assert data.vocab == scenes.vocab  # from train (+restval) only, same words as the procedural route
    item = CaptionDataset(data.val, data.val.tokens, data.vocab, mode="images")[0]
    torch.testing.assert_close(item["image"], scenes.val[0]["image"], atol=1 / 255, rtol=0)
    assert item["image_id"] == 1000 and item["captions"] == scenes.val[0]["captions"]
    # best checkpoint by CIDEr-D here: the files carry no scene objects, so the exact content F1 cannot be asked for
    assert default_monitor(data) == "CIDEr-D" and default_monitor(scenes) == "object_f1"
    with pytest.raises(ValueError, match="monitor 'object_f1' scores captions against the scenes' objects"):
        train_captioner(build_model("tiny_captioner").config, data, TrainConfig(epochs=1, progress=False),
                        tmp_path / "run", monitor="object_f1")
    write_coco_captions(train, tmp_path / "train.json", image_root=tmp_path / "images" / "train")
    write_coco_captions(val, tmp_path / "val.json", image_root=tmp_path / "images" / "val")
    coco = coco_data(tmp_path / "train.json", tmp_path / "images" / "train", tmp_path / "val.json",
                     tmp_path / "images" / "val", image_size=32, min_count=1)
    assert coco.vocab == scenes.vocab and len(coco.val) == len(scenes.val)
    broken = tmp_path / "images" / "val" / "1001.png"
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(ImageLoadError, match="1001.png"):
        coco.val[1]
