"""visattn.Predictor: one way from a checkpoint to typed predictions with attention, for every task."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from visattn import CaptionResult, CheckpointError, ClassifyResult, DetectResult, Predictor
from visattn.checkpoint import save_checkpoint
from visattn.config import config_to_dict
from visattn.data.images import ImageLoadError
from visattn.encoders import EncoderConfig
from visattn.models import build_model

VOCAB = ["<pad>", "<start>", "<end>", "<unk>", "a", "red", "green", "circle", "two"]
# The registered tiny models at 24 px (a 6x6 grid), with their own names and words, saved as training saves them:
# under the task's model name. GroupNorm encoders, so that nothing depends on batch statistics.
ENCODER = EncoderConfig(width=8, depth=2, num_downsample=2, norm="group")
MODELS = {
    "classify": ("classifier", dict(encoder=ENCODER, class_names=["x", "y", "z"], image_size=24)),
    "caption": ("captioner", dict(encoder=ENCODER, vocab=VOCAB, max_len=7, image_size=24)),
    "detect": ("detector", dict(encoder=ENCODER, class_names=["x", "y", "z"], num_queries=4, num_layers=1,
                                image_size=24)),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for task, (name, overrides) in MODELS.items():
        torch.manual_seed(0)
        model = build_model(f"tiny_{name}", **overrides)
        paths[task] = save_checkpoint(root / f"{task}.safetensors", model, task=task, model_name=name,
                                      config=config_to_dict(model.config))
    return paths


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "scene.png"
    g = torch.Generator().manual_seed(1)
    pixels = (torch.rand(30, 40, 3, generator=g) * 255).byte().numpy()  # not square, not the model's size
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.parametrize("task, result_type", [("classify", ClassifyResult), ("caption", CaptionResult),
                                               ("detect", DetectResult)])
def test_every_input_kind_gives_one_result_each_with_maps_that_sum_to_one(checkpoints, image_file, task, result_type):
    predictor = Predictor.from_checkpoint(checkpoints[task], device="cpu")
    assert predictor.task.name == task and predictor.image_size == 24
    picture = Image.open(image_file)
    tensor = torch.rand(3, 30, 40)
    options = {"detect": {"score_threshold": 0.0}}.get(task, {})
    results = predictor.predict([image_file, picture, tensor, (tensor * 255).byte()], **options)
    assert len(results) == 4 and all(isinstance(r, result_type) for r in results)
    assert results[0].source == str(image_file) and results[2].source == "<image 2>"
    assert all(r.image_size == (30, 40) for r in results)
    # a file and the same picture in memory go through the same conversion
    torch.testing.assert_close(results[0].attention, results[1].attention)
    for result in results:
        maps = result.attention
        if maps.numel():
            torch.testing.assert_close(maps.flatten(-2).sum(-1), torch.ones(maps.shape[:-2]), atol=1e-5, rtol=0)
        encoded = json.loads(json.dumps(result.to_dict()))
        assert encoded["task"] == task and encoded["grid"] == list(maps.shape[-2:])
    assert len(predictor.predict(tensor[None].repeat(3, 1, 1, 1), **options)) == 3  # a (B, 3, H, W) batch


@pytest.mark.parametrize("task", ["classify", "caption", "detect"])
def test_batched_equals_one_image_at_a_time(checkpoints, task):
    predictor = Predictor.from_checkpoint(checkpoints[task], device="cpu")
    images = torch.rand(5, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    together = predictor.predict(images, batch_size=16)
    alone = predictor.predict(images, batch_size=1)
    for a, b in zip(together, alone):
        torch.testing.assert_close(a.attention, b.attention, atol=1e-5, rtol=1e-4)
        if task == "caption":
            assert [c.words for c in a.captions] == [c.words for c in b.captions]


def test_captions_carry_word_scores_that_add_up_to_the_score(checkpoints):
    predictor = Predictor.from_checkpoint(checkpoints["caption"], device="cpu")
    images = torch.rand(4, 3, 24, 24, generator=torch.Generator().manual_seed(3))
    for result in predictor.predict(images, beam_size=3, n_best=3):
        assert len(result.captions) == 3
        assert [c.score for c in result.captions if c.finished] == sorted(
            [c.score for c in result.captions if c.finished], reverse=True)
        for caption in result.captions:
            assert len(caption.word_scores) == len(caption.words) == caption.attention.shape[0]
            total = sum(caption.word_scores) + (caption.end_score if caption.finished else 0.0)
            assert total == pytest.approx(caption.score, abs=1e-4)  # length_penalty 0: the plain sum
            assert (caption.end_score is None) == (not caption.finished)
    # the Predictor's best caption is the model's own beam search
    direct = predictor.model.generate(images, beam_size=3)
    ours = predictor.predict(images, beam_size=3)
    assert [r.captions[0].words for r in ours] == [
        [VOCAB[t] for t in hyps[0].tokens] for hyps in direct]


def test_classifier_probabilities_and_detector_boxes_in_original_pixels(checkpoints, image_file):
    [label] = Predictor.from_checkpoint(checkpoints["classify"], device="cpu").predict(image_file, top_k=10)
    assert len(label.top_k) == 3 and sum(p for _, p in label.top_k) == pytest.approx(1.0, abs=1e-5)
    assert label.label == label.top_k[0][0] and label.score == label.top_k[0][1]
    [found] = Predictor.from_checkpoint(checkpoints["detect"], device="cpu").predict(
        image_file, score_threshold=0.0, top_k=3)
    assert found.boxes.shape == (3, 4) and found.attention.shape[0] == 3 and len(found.labels) == 3
    assert (found.boxes[:, 2] <= 40 + 1e-4).all() and (found.boxes[:, 3] <= 30 + 1e-4).all()
    assert found.scores.tolist() == sorted(found.scores.tolist(), reverse=True)


def test_info_describes_the_model(checkpoints):
    info = Predictor.from_checkpoint(checkpoints["caption"], device="cpu").info()
    assert info["task"] == "caption" and info["model"] == "captioner" and info["image_size"] == 24
    assert info["vocab_size"] == len(VOCAB) and info["grid"] == [6, 6]
    assert info["options"] == {"beam_size": 3, "n_best": 1, "max_len": None, "length_penalty": 0.0}
    json.dumps(info)


def test_bad_input_gets_the_documented_error(checkpoints, image_file, tmp_path):
    with pytest.raises(CheckpointError, match="classify.safetensors.*'classify' checkpoint"):
        Predictor.from_checkpoint(checkpoints["classify"], device="cpu", task="caption")
    with pytest.raises(CheckpointError, match="not found"):
        Predictor.from_checkpoint(tmp_path / "missing.safetensors", device="cpu")
    predictor = Predictor.from_checkpoint(checkpoints["caption"], device="cpu")
    with pytest.raises(ValueError, match="num_beams.*valid: beam_size, n_best, max_len, length_penalty"):
        predictor.predict(image_file, num_beams=3)
    with pytest.raises(ValueError, match=r"<image 0>.*\(3, H, W\)"):
        predictor.predict(torch.rand(4, 24, 24))  # four channels
    with pytest.raises(ValueError, match="n_best"):
        predictor.predict(image_file, beam_size=2, n_best=3)
    broken = tmp_path / "broken.png"
    broken.write_bytes(image_file.read_bytes()[:50])
    with pytest.raises(ImageLoadError, match="broken.png"):
        predictor.predict([image_file, broken])
    with pytest.raises(ValueError, match="no images"):
        predictor.predict([])
    detector = Predictor.from_checkpoint(checkpoints["detect"], device="cpu")
    with pytest.raises(ValueError, match="score_threshold"):
        detector.predict(image_file, score_threshold=1.5)
