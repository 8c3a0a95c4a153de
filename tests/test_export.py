"""visattn.export: ONNX and torch.export graphs of every task and scoring function agree with eager PyTorch.

Graphs are traced at 2 images (x 2 beams) and must run at 1 and at 7; every output within 1e-4 of eager.
The captioner's ``step`` graph is compared with ``Captioner.decoder_step``, the function ``generate`` decodes
with. Bad input: an unknown task, a corrupt checkpoint, an existing folder, an unknown format.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from visattn.checkpoint import CheckpointError, save_checkpoint  # noqa: E402
from visattn.config import config_to_dict  # noqa: E402
from visattn.encoders import EncoderConfig  # noqa: E402
from visattn.export import ExportError, export_checkpoint, export_graphs, file_sha256  # noqa: E402
from visattn.heads.export_graphs import CaptionEncoderGraph  # noqa: E402
from visattn.heads.captioner import CaptionerConfig  # noqa: E402
from visattn.heads.classifier import ClassifierConfig  # noqa: E402
from visattn.heads.detector import DetectorConfig  # noqa: E402
from visattn.models import build_model, load  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

ENCODER = EncoderConfig(width=8, depth=2, num_downsample=2)  # 24 px -> a 6 x 6 grid, BatchNorm like the default
VOCAB = ["<pad>", "<start>", "<end>", "<unk>", "a", "red", "green", "circle", "two", "left", "of"]
TOLERANCE = 1e-4


def classifier_config(**kw) -> ClassifierConfig:
    return ClassifierConfig(encoder=ENCODER, class_names=["x", "y", "z"], attention_dim=8, hidden_dim=8,
                            image_size=24, **kw)


def detector_config() -> DetectorConfig:
    return DetectorConfig(encoder=ENCODER, num_classes=3, class_names=["x", "y", "z"], num_queries=4, hidden_dim=16,
                          num_heads=2, num_layers=1, ffn_dim=16, image_size=24)


def captioner_config(attention: str = "additive", mode: str = "soft", **kw) -> CaptionerConfig:
    options = dict(encoder=ENCODER, vocab=VOCAB, attention_dim=8, decoder_dim=16, embed_dim=8, dropout=0.0,
                   max_len=7, image_size=24)
    return CaptionerConfig(**{**options, **kw, "attention": attention, "attention_mode": mode})


def save(path: Path, name: str, task: str, config, model=None) -> Path:
    """A checkpoint of ``model`` (default: a fresh one, its BatchNorm statistics moved off 0 / 1)."""
    if model is None:
        torch.manual_seed(0)
        model = build_model(name, config)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):  # as after training: statistics that matter
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return save_checkpoint(path, model, task=task, model_name=name, config=config_to_dict(config))


def onnx_runner(folder: Path, graph: str):
    session = ort.InferenceSession(str(folder / f"{graph}.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return lambda *xs: [torch.from_numpy(o) for o in session.run(None, dict(zip(names, [x.numpy() for x in xs])))]


def pt2_runner(folder: Path, graph: str):
    module = torch.export.load(str(folder / f"{graph}.pt2")).module()
    return lambda *xs: list(module(*xs))



def assert_close(got: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype
        finite = torch.isfinite(e)
        assert torch.equal(finite, torch.isfinite(g))  # the same -inf (banned tokens)
        torch.testing.assert_close(g[finite], e[finite], rtol=0, atol=TOLERANCE)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.mark.parametrize("task", ["classify", "detect"])
def test_torch_export_single_graph_models_match_eager_at_batch_1_and_7(root, task):
    """(ONNX Runtime is compared with eager in tests/test_runtime.py, on the runtime's own exports.)"""
    name, config = ("classifier", classifier_config()) if task == "classify" else ("detector", detector_config())
    checkpoint = save(root / f"{task}.safetensors", name, task, config)
    folder = export_checkpoint(checkpoint, root / task, format="torch-export")
    model = load(checkpoint)
    run = pt2_runner(folder, name)
    keys = ("pred_logits", "attention") if task == "classify" else ("pred_logits", "pred_boxes", "attention")
    for batch in (1, 7):  # traced at 2
        images = torch.rand(batch, 3, 24, 24)
        with torch.no_grad():
            expected = model(images)
        assert_close(run(images), [expected[k] for k in keys])


def compare_step(model, encoder, step_graph, batch: int, beams: int) -> None:
    """The step graph against ``Captioner.decoder_step`` for ``beams`` hypotheses of ``batch`` images."""
    images = torch.rand(batch, 3, 24, 24)
    with torch.no_grad():
        keys, values, h0, c0 = encoder(images)
        features, _ = model.encode(images)
        h_ref, c_ref, _ = model._init_state(features)
        assert_close([h0, c0], [h_ref, c_ref])
        step, (h, c) = model.decoder_step(features, beam_size=beams)  # rows b·k .. b·k+k-1 of image b
        prev = torch.randint(3, len(VOCAB), (batch * beams,))
        h = h + 0.1 * torch.randn_like(h)  # the beams of an image differ, as after a few steps
        log_probs, alpha, (h_new, c_new) = step(prev, (h, c))  # (B·k, V), (B·k, L), (B·k, D)
        rows = lambda x: x.reshape(batch, beams, *x.shape[1:])  # (B·k, ...) -> (B, k, ...)
        got = step_graph(rows(prev), rows(h), rows(c), keys, values)
    assert_close(got, [rows(log_probs), rows(alpha), rows(h_new), rows(c_new)])
    assert torch.allclose(got[1].sum(-1), torch.ones(batch, beams), atol=1e-5)  # maps sum to one


VARIANTS = [("additive", "soft"), ("dot", "soft"), ("scaled_dot", "soft"), ("multihead", "soft"),
            ("concat", "soft"), ("none", "soft"), ("additive", "hard")]


@pytest.mark.parametrize("attention, mode", VARIANTS)
def test_captioner_graphs_match_decoder_step_with_every_scoring_function(root, attention, mode):
    """torch.export: both graphs through ``visattn export``; ONNX: the step graph, fed the eager encoder's keys
    (the ONNX encoder graph, of the same ``prepare`` code, runs in tests/test_runtime.py). Batch 1 and 7,
    beams 1, 3, 5."""
    config = captioner_config(attention, mode)
    checkpoint = save(root / f"cap-{attention}-{mode}.safetensors", "captioner", "caption", config)
    folder = export_checkpoint(checkpoint, root / f"cap-{attention}-{mode}", format="torch-export")
    meta = json.loads((folder / "visattn.json").read_text())
    model = load(checkpoint)
    smallest = meta["graphs"]["step"]["dynamic"]["beams"][0]
    assert smallest == (2 if attention == "multihead" else 1)  # docs/design.md: a torch.export limitation
    sizes = ((1, max(1, smallest)), (7, 3), (2, 5))
    for batch, beams in sizes:
        compare_step(model, pt2_runner(folder, "encoder"), pt2_runner(folder, "step"), batch, beams)
    if (attention, mode) == ("additive", "soft"):
        return  # its ONNX graphs run in tests/test_runtime.py (captions identical to generate's)
    onnx_folder = root / f"cap-{attention}-{mode}-onnx"
    onnx_folder.mkdir()
    export_graphs(model, "captioner", onnx_folder, format="onnx", names=("step",))
    encoder = CaptionEncoderGraph(model).eval()
    for batch, beams in ((1, 1), (7, 3), (2, 5)):
        compare_step(model, encoder, onnx_runner(onnx_folder, "step"), batch, beams)


def test_existing_folder_is_refused_without_force_and_replaced_with_it(root):
    checkpoint = save(root / "force.safetensors", "classifier", "classify", classifier_config())
    out = root / "force"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    with pytest.raises(ExportError, match=r"force: already exists; pass force=True \(--force\)"):
        export_checkpoint(checkpoint, out, format="torch-export")
    assert (out / "old.txt").read_text() == "keep me"
    export_checkpoint(checkpoint, out, format="torch-export", force=True)
    assert sorted(p.name for p in out.iterdir()) == ["classifier.pt2", "visattn.json"]


def test_unknown_task_corrupt_checkpoint_and_unknown_format(root):
    model = build_model("classifier", classifier_config())
    odd = save_checkpoint(root / "odd.safetensors", model, task="segment", model_name="classifier",
                          config=config_to_dict(model.config))
    with pytest.raises(ExportError, match=r"odd.safetensors: cannot export a checkpoint of task 'segment'; "
                                          r"valid tasks: classify, caption, detect"):
        export_checkpoint(odd, root / "odd")
    corrupt = root / "corrupt.safetensors"
    corrupt.write_bytes(odd.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt.safetensors: not a readable checkpoint"):
        export_checkpoint(corrupt, root / "corrupt")
    with pytest.raises(ExportError, match="unknown export format 'tflite'; valid: onnx, torch-export"):
        export_checkpoint(odd, root / "tflite", format="tflite")
    assert not (root / "odd").exists() and not (root / "corrupt").exists()


def test_cli_export_writes_the_folder_and_refuses_it_again_in_one_line(root, capsys):
    from visattn.cli import main

    checkpoint = save(root / "cli.safetensors", "classifier", "classify", classifier_config())
    out = root / "cli"
    command = ["export", "--checkpoint", str(checkpoint), "--format", "torch-export", "--out", str(out)]
    assert main(command) == 0
    assert "classify model 'classifier' -> classifier.pt2" in capsys.readouterr().out
    assert main(command) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"visattn: error: {out}: already exists; pass force=True (--force) to replace it"]
    corrupt = root / "cli-corrupt.safetensors"
    corrupt.write_bytes(b"not a checkpoint")
    assert main(["export", "--checkpoint", str(corrupt), "--out", str(root / "cli-corrupt")]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "cli-corrupt.safetensors" in error[0]
    assert sorted(p.name for p in out.iterdir()) == ["classifier.pt2", "visattn.json"]
