"""visattn.runtime: the numpy beam search is Captioner.generate's, and OnnxPredictor is the Predictor's.

On a captioner trained for a few seconds on procedural scenes: the numpy searches driven by the model's own
step return exactly the hypotheses of visattn.heads.beam; through ONNX Runtime they return the same tokens
in the same n-best order as ``Captioner.generate`` on 60 scenes with beams 1, 3 and 5. Every task's results
equal the Predictor's (``to_dict``, floats within 1e-4); the package imports and runs with torch blocked.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from test_export import TOLERANCE, classifier_config, detector_config, save  # noqa: E402

from visattn import Predictor  # noqa: E402
from visattn.data.caption_data import CaptionDataset, collate, scene_data  # noqa: E402
from visattn.data.images import ImageLoadError  # noqa: E402
from visattn.encoders import EncoderConfig  # noqa: E402
from visattn.export import export_checkpoint, file_sha256  # noqa: E402
from visattn.heads.beam import beam_search as torch_beam_search  # noqa: E402
from visattn.heads.beam import greedy_search as torch_greedy_search  # noqa: E402
from visattn.heads.captioner import CaptionerConfig  # noqa: E402
from visattn.models import build_model  # noqa: E402
from visattn.runtime import ExportFolderError, OnnxPredictor, beam_search, greedy_search  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_SCENES = 60


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runtime")


@pytest.fixture(scope="module")
def scenes():
    return scene_data(num_train=96, num_val=NUM_SCENES, image_size=32, num_objects=(1, 2), seed=0)


@pytest.fixture(scope="module")
def captioner(scenes):
    """A tiny captioner trained for a few seconds: captions of different lengths, most ended by <end>. (The paper
    preset: after 60 steps its captions already vary in length, which the search's end handling needs to be
    exercised; the newer defaults learn more per second but are still uniform this early.)"""
    config = CaptionerConfig.preset("paper", encoder=EncoderConfig(width=16, depth=2, num_downsample=2),
                                    vocab=scenes.vocab.to_list(), attention_dim=16, decoder_dim=32, embed_dim=16,
                                    dropout=0.0, max_len=12, image_size=32)
    torch.manual_seed(0)
    model = build_model("captioner", config)
    pairs = CaptionDataset(scenes.train, scenes.train.tokens, scenes.vocab, mode="random")
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    for step in range(60):
        batch = collate([pairs[(16 * step + i) % len(pairs)] for i in range(16)])
        outputs = model(batch["images"], tokens=batch["tokens"], lengths=batch["lengths"])
        loss = model.loss(outputs, batch["tokens"])["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def scene_images(scenes) -> torch.Tensor:
    return torch.stack([scenes.val[i]["image"] for i in range(NUM_SCENES)])  # (60, 3, 32, 32)


@pytest.fixture(scope="module")
def exports(root, captioner):
    """ONNX exports of the trained captioner and of a classifier and a detector: task -> (checkpoint, folder)."""
    checkpoints = {"caption": save(root / "caption.safetensors", "captioner", "caption", captioner.config, captioner),
                   "classify": save(root / "classify.safetensors", "classifier", "classify", classifier_config()),
                   "detect": save(root / "detect.safetensors", "detector", "detect", detector_config())}
    return {task: (path, export_checkpoint(path, root / task, format="onnx")) for task, path in checkpoints.items()}


def numpy_step(model, images: torch.Tensor, beams: int):
    """The model's decoder_step as the runtime's numpy step ((B, k) rows), and its initial (B, k, D) state."""
    features, _ = model.encode(images)
    step, (h, c) = model.decoder_step(features, beam_size=beams)
    batch = images.shape[0]

    def run(prev: np.ndarray, state: tuple[np.ndarray, ...]):
        flat = [torch.from_numpy(np.ascontiguousarray(s)).reshape(batch * beams, -1) for s in state]
        log_probs, alpha, (h, c) = step(torch.from_numpy(prev).reshape(-1), tuple(flat))
        rows = lambda x: x.reshape(batch, beams, -1).numpy()  # (B·k, ·) -> (B, k, ·)
        return rows(log_probs), rows(alpha), (rows(h), rows(c))

    return run, (h.reshape(batch, beams, -1).numpy(), c.reshape(batch, beams, -1).numpy()), (step, (h, c))


@pytest.mark.parametrize("beams, n_best, max_len, length_penalty", [(1, 1, 12, 0.0), (1, 1, 4, 0.7), (3, 3, 12, 0.0),
                                                                     (5, 2, 12, 1.0), (4, 4, 3, 0.5)])
def test_numpy_search_returns_exactly_the_torch_search(captioner, scene_images, beams, n_best, max_len,
                                                       length_penalty):
    images = scene_images[:20]
    ids = dict(start_id=captioner.start_id, end_id=captioner.end_id, max_len=max_len, length_penalty=length_penalty)
    with torch.no_grad():
        run, state, (step, torch_state) = numpy_step(captioner, images, beams)
        if beams == 1:
            expected = torch_greedy_search(step, torch_state, batch_size=20, **ids)
            got = greedy_search(run, state, batch_size=20, **ids)
        else:
            expected = torch_beam_search(step, torch_state, batch_size=20, beam_size=beams, n_best=n_best, **ids)
            got = beam_search(run, state, batch_size=20, beam_size=beams, n_best=n_best, **ids)
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected):
        assert [h.tokens for h in mine] == [h.tokens for h in theirs]
        assert [h.finished for h in mine] == [h.finished for h in theirs]
        if beams > 1:
            assert [h.score for h in mine] == [h.score for h in theirs]  # the same float32 arithmetic
        else:  # greedy normalises with a float32 pow, which numpy and PyTorch may round 1 ulp apart
            assert [h.score for h in mine] == pytest.approx([h.score for h in theirs], rel=1e-6, abs=0)
        for a, b in zip(mine, theirs):
            assert a.token_logprobs == b.token_logprobs
            np.testing.assert_array_equal(a.attention, b.attention.numpy())
    if max_len <= 4:
        assert any(not h.finished for hyps in got for h in hyps)  # cut at max_len: the unfinished path ran


@pytest.mark.parametrize("beams", [1, 3, 5])
def test_onnx_captions_are_identical_to_generate_on_60_scenes(exports, captioner, scene_images, beams):
    predictor = OnnxPredictor(exports["caption"][1], threads=1)
    results = predictor.predict(scene_images.numpy(), beam_size=beams, n_best=beams, batch_size=16)
    with torch.no_grad():
        expected = captioner.generate(scene_images, beam_size=beams, n_best=beams)
    vocab = captioner.config.vocab
    lengths = set()
    for result, hyps in zip(results, expected, strict=True):
        assert [[vocab.index(w) for w in c.words] for c in result.captions] == [h.tokens for h in hyps]
        assert [c.finished for c in result.captions] == [h.finished for h in hyps]
        for caption, hyp in zip(result.captions, hyps):
            assert caption.score == pytest.approx(hyp.score, abs=TOLERANCE)
            assert caption.word_scores == pytest.approx(hyp.token_logprobs[: len(caption.words)], abs=TOLERANCE)
            np.testing.assert_allclose(caption.attention, hyp.attention[: len(caption.words)].numpy(), atol=TOLERANCE)
            lengths.add(len(caption.words))
    assert len(lengths) >= 2 and sum(r.captions[0].finished for r in results) >= NUM_SCENES // 2  # varied, ended


def test_onnx_export_of_a_top_down_encoder_attends_over_its_finer_grid(root, scenes, scene_images):
    """EncoderConfig.top_down (bilinear up-sampling plus a 1×1 projection) exports: the runtime's captions and
    their 8×8 maps on 32-pixel scenes equal the PyTorch model's."""
    config = CaptionerConfig(encoder=EncoderConfig(width=16, depth=2, num_downsample=2, stem=2, top_down=True),
                             vocab=scenes.vocab.to_list(), attention_dim=16, decoder_dim=32, embed_dim=16,
                             dropout=0.0, max_len=8, image_size=32)
    torch.manual_seed(1)
    model = build_model("captioner", config).eval()
    folder = export_checkpoint(save(root / "top_down.safetensors", "captioner", "caption", config, model),
                               root / "top_down", format="onnx")
    images = scene_images[:6]
    results = OnnxPredictor(folder, threads=1).predict(images.numpy(), beam_size=2)
    with torch.no_grad():
        expected = model.generate(images, beam_size=2)
    for result, hyps in zip(results, expected, strict=True):
        caption = result.captions[0]
        assert [config.vocab.index(w) for w in caption.words] == hyps[0].tokens
        attention = hyps[0].attention[: len(caption.words)].numpy()
        assert attention.shape[1:] == (8, 8)
        np.testing.assert_allclose(caption.attention, attention, atol=TOLERANCE)


def compare(a, b, path: str = "") -> None:
    """Equal JSON trees, floats within the tolerance."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            compare(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for x, y in zip(a, b):
            compare(x, y, path)
    elif isinstance(a, float) and a is not None:
        assert b == pytest.approx(a, abs=TOLERANCE), path
    else:
        assert a == b, path


@pytest.mark.parametrize("task, options", [("classify", {"top_k": 2}), ("detect", {"score_threshold": 0.0}),
                                           ("caption", {"beam_size": 3, "n_best": 2})])
def test_results_equal_the_predictors_from_files_at_batch_1_and_7(exports, root, task, options):
    checkpoint, folder = exports[task]
    rng = np.random.default_rng(0)
    files = []
    for i in range(7):  # not square, not the model's size: the resize is part of the parity
        files.append(root / f"{task}-{i}.png")
        Image.fromarray(rng.integers(0, 256, (30 + i, 41, 3), dtype=np.uint8)).save(files[-1])
    expected = Predictor.from_checkpoint(checkpoint, device="cpu").predict(files, **options)
    predictor = OnnxPredictor(folder, threads=1)
    for batch_size in (1, 7):
        got = predictor.predict(files, batch_size=batch_size, **options)
        assert [type(r).__name__ for r in got] == [type(r).__name__ for r in expected]
        for mine, theirs in zip(got, expected):
            compare(theirs.to_dict(), mine.to_dict())
    info = predictor.info()
    assert info["task"] == task and info["image_size"] == (32 if task == "caption" else 24)


def test_visattn_json_describes_the_export(exports, captioner):
    checkpoint, folder = exports["caption"]
    meta = json.loads((folder / "visattn.json").read_text())
    assert meta["format"] == "visattn-export" and meta["version"] == 1 and meta["task"] == "caption"
    assert meta["checkpoint"] == {"file": checkpoint.name, "sha256": file_sha256(checkpoint)}
    assert meta["vocab"] == captioner.config.vocab and meta["special_ids"] == {"pad": 0, "start": 1, "end": 2, "unk": 3}
    assert meta["image_size"] == 32 and meta["grid"] == [8, 8] and meta["max_len"] == 12
    assert meta["normalisation"]["mean"] == [0.5, 0.5, 0.5] and meta["normalisation"]["in_graph"] is True
    assert meta["exporter"]["name"] == "torch.onnx.export" and meta["exporter"]["dynamo"] is True
    for name, graph in meta["graphs"].items():
        model = onnx.load(str(folder / graph["file"]))
        onnx.checker.check_model(model)
        assert [i.name for i in model.graph.input] == graph["inputs"]
        assert [o.name for o in model.graph.output] == graph["outputs"]
        assert any(o.domain in ("", "ai.onnx") and o.version == meta["exporter"]["opset"] for o in model.opset_import)
    assert sorted(p.name for p in folder.iterdir()) == ["encoder.onnx", "step.onnx", "visattn.json"]


BLOCK_TORCH = """
import importlib.abc, json, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
        return None

sys.meta_path.insert(0, NoTorch())
from visattn.runtime import OnnxPredictor
results = OnnxPredictor(sys.argv[1], threads=1).predict(sys.argv[2:], beam_size=3)
assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
print(json.dumps([r.to_dict() for r in results]))
"""


def test_runtime_runs_with_torch_blocked(exports, root, scene_images):
    files = []
    for i in range(2):
        files.append(root / f"scene-{i}.png")
        pixels = (scene_images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (H, W, 3)
        Image.fromarray(pixels).save(files[-1])
    folder = exports["caption"][1]
    done = subprocess.run([sys.executable, "-c", BLOCK_TORCH, str(folder), *map(str, files)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    expected = [r.to_dict() for r in OnnxPredictor(folder, threads=1).predict(files, beam_size=3)]
    assert json.loads(done.stdout) == expected
    cli = subprocess.run([sys.executable, "-m", "visattn.runtime", str(folder), str(files[0]), "--json", "--threads",
                          "1"],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    compare(expected[0], json.loads(cli.stdout))


def test_bad_folders_and_inputs_give_one_line_errors_naming_the_file(exports, root):
    folder = exports["caption"][1]
    broken = root / "broken"
    shutil.copytree(folder, broken)
    (broken / "step.onnx").unlink()
    with pytest.raises(ExportFolderError, match=r"broken/step.onnx: missing 'step' graph of this export"):
        OnnxPredictor(broken)
    newer = root / "newer"
    shutil.copytree(folder, newer)
    meta = json.loads((newer / "visattn.json").read_text())
    (newer / "visattn.json").write_text(json.dumps({**meta, "version": 2}))
    with pytest.raises(ExportFolderError, match=r"newer/visattn.json: export version 2; this runtime reads version 1"):
        OnnxPredictor(newer)
    (newer / "visattn.json").write_text(json.dumps({**meta, "graph_format": "torch-export"}))
    with pytest.raises(ExportFolderError, match=r"newer/visattn.json: holds 'torch-export' graphs"):
        OnnxPredictor(newer)
    (newer / "visattn.json").write_text("{not json")
    with pytest.raises(ExportFolderError, match=r"newer/visattn.json: not readable JSON"):
        OnnxPredictor(newer)
    with pytest.raises(ExportFolderError, match=r"nowhere/visattn.json: not found"):
        OnnxPredictor(root / "nowhere")
    predictor = OnnxPredictor(exports["classify"][1])
    odd = np.random.default_rng(0).random((3, 30, 41), dtype=np.float32)  # resized with Pillow
    assert predictor.predict(odd)[0].image_size == (30, 41)
    with pytest.raises(ValueError, match=r"<image 1>: expected an RGB image array of shape \(3, H, W\), "
                                         r"got \(4, 24, 24\)"):
        predictor.predict([np.zeros((3, 24, 24), np.float32), np.zeros((4, 24, 24), np.float32)])
    with pytest.raises(ImageLoadError, match=r"missing.png: file not found"):
        predictor.predict(root / "missing.png")
    with pytest.raises(ValueError, match=r"unknown option\(s\) beam_size for a classify model; valid: top_k"):
        predictor.predict(np.zeros((3, 24, 24), np.float32), beam_size=3)
    cli = subprocess.run([sys.executable, "-m", "visattn.runtime", str(broken), "x.png"], capture_output=True,
                         text=True, timeout=120)
    assert cli.returncode == 1 and cli.stderr.strip().splitlines() == [
        f"visattn.runtime: error: {broken / 'step.onnx'}: missing 'step' graph of this export"]


def test_serve_runs_an_onnx_export_through_the_same_api(exports, root, scene_images, capsys):
    pytest.importorskip("fastapi")
    pytest.importorskip("python_multipart")
    from fastapi.testclient import TestClient

    from visattn.cli import build_parser
    from visattn.cli.serve import _onnx_predictor
    from visattn.serve import create_app

    args = build_parser().parse_args(["serve", "--runtime", "onnx", "--checkpoint", str(exports["caption"][1])])
    assert args.runtime == "onnx"
    predictor = _onnx_predictor(exports["caption"][1])
    path = root / "served.png"
    Image.fromarray((scene_images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
    with TestClient(create_app({"cap": predictor}, workers=1, queue_size=4)) as client:
        models = client.get("/api/models").json()
        response = client.post("/api/predict/cap", files={"file": ("served.png", path.read_bytes(), "image/png")},
                               data={"beam_size": "3", "n_best": "2"})
    assert response.status_code == 200, response.text
    assert any(m["name"] == "cap" and m["task"] == "caption" for m in (models if isinstance(models, list)
                                                                       else models.get("models", [])))
    body = response.json()
    expected = predictor.predict(path, beam_size=3, n_best=2)[0].to_dict()
    assert body.pop("model") == "cap"
    compare(expected, {**body, "source": expected["source"]})
