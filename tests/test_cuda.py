"""The CUDA paths, on a real GPU: device placement, bf16/fp16 training, CUDA checkpoints on the CPU, host
syncs inside a training step, the Predictor on ``cuda``, and torchrun with the NCCL backend.

Every test here skips without CUDA (the CI machines have none); ``benchmarks/gpu.sh`` runs them on a GPU.
This file is also the torchrun worker of the NCCL test: ``torchrun --nproc_per_node=1 tests/test_cuda.py
--nccl-worker RUN_DIR`` joins an NCCL process group of one and trains each task for one epoch through the
command line, so the engine takes its distributed path (DDP, SyncBatchNorm, NCCL all-reduce of the loss
counts, ``all_gather_object`` of the evaluation shards).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")


def _tiny_encoder(**overrides):
    from visattn.encoders import EncoderConfig

    return EncoderConfig(**{"width": 16, "depth": 2, "num_downsample": 2, **overrides})


@pytest.fixture(scope="module")
def classify_data():
    from visattn.tasks.classify import scene_data

    return scene_data(num_train=64, num_val=16, image_size=32, seed=0)


@pytest.fixture(scope="module")
def caption_data():
    from visattn.data.caption_data import scene_data

    return scene_data(num_train=48, num_val=8, image_size=32, num_objects=(1, 2), seed=0)


@pytest.fixture(scope="module")
def detect_data():
    pytest.importorskip("pycocotools")
    from visattn.tasks.detect import scene_data

    return scene_data(num_train=48, num_val=8, image_size=32, num_objects=(1, 2), seed=0)


def _classifier_config():
    from visattn.heads.classifier import ClassifierConfig

    return ClassifierConfig(encoder=_tiny_encoder(), attention_dim=16, hidden_dim=32, dropout=0.0)


def _captioner_config():
    from visattn.heads.captioner import CaptionerConfig

    return CaptionerConfig(encoder=_tiny_encoder(), attention_dim=16, decoder_dim=32, embed_dim=16, dropout=0.0,
                           max_len=10)


def _detector_config():
    from visattn.heads.detector import DetectorConfig

    return DetectorConfig(encoder=_tiny_encoder(), num_queries=6, hidden_dim=32, num_heads=2, num_layers=2,
                          ffn_dim=64)


def _train(task: str, data, run_dir: Path, *, dtype: str = "fp32", epochs: int = 3, device: str = "cuda"):
    """The task's own training function (model built for the data, then the engine); fit's result."""
    from visattn.engine import TrainConfig

    config = TrainConfig(epochs=epochs, batch_size=16, lr=2e-3, dtype=dtype, device=device, progress=False, seed=3)
    torch.manual_seed(3)
    if task == "classify":
        from visattn.tasks.classify import train_classifier

        return train_classifier(_classifier_config(), data, config, run_dir)
    if task == "caption":
        from visattn.tasks.caption import train_captioner

        return train_captioner(_captioner_config(), data, config, run_dir, beam_size=2)
    from visattn.tasks.detect import train_detector

    return train_detector(_detector_config(), data, config, run_dir)


def _outputs_close(a, b, *, rtol: float, atol: float) -> None:
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a.detach().float().cpu(), b.detach().float().cpu(), rtol=rtol, atol=atol)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _outputs_close(a[key], b[key], rtol=rtol, atol=atol)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _outputs_close(x, y, rtol=rtol, atol=atol)


def _all_on(value, device_type: str) -> bool:
    if isinstance(value, torch.Tensor):
        return value.device.type == device_type
    if isinstance(value, dict):
        return all(_all_on(v, device_type) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_all_on(v, device_type) for v in value)
    return True


# ------------------------------------------------------------------------------------------ device placement
@pytest.mark.parametrize("name", ["classifier", "captioner", "detector"])
def test_every_model_runs_on_cuda_with_every_tensor_there_and_matches_the_cpu(name, monkeypatch):
    from visattn.models import build_model, list_models

    assert name in list_models()  # a new model needs a case here
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # strict fp32 convolutions for the parity
    configs = {"classifier": _classifier_config, "captioner": _captioner_config, "detector": _detector_config}
    torch.manual_seed(0)
    config = configs[name]()
    if name == "captioner":
        config = replace(config, vocab=["<pad>", "<start>", "<end>", "<unk>"] + [f"w{i}" for i in range(8)])
    model = build_model(name, config).eval()
    images = torch.rand(3, 3, 32, 32)
    tokens = torch.tensor([[1, 5, 6, 2, 0], [1, 4, 2, 0, 0], [1, 7, 8, 9, 2]])

    def run(m, device):
        x = images.to(device)
        with torch.no_grad():
            return m(x, tokens=tokens.to(device)) if name == "captioner" else m(x)

    on_cpu = run(model, "cpu")
    model.to(CUDA)
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert all(b.device.type == "cuda" for b in model.buffers())
    on_gpu = run(model, CUDA)
    assert _all_on(on_gpu, "cuda")
    _outputs_close(on_gpu, on_cpu, rtol=1e-3, atol=1e-4)


def test_all_models_list_is_covered():
    from visattn.models import list_models

    assert sorted(list_models()) == ["captioner", "classifier", "detector"]


# --------------------------------------------------------------------------- mixed precision and checkpoints
@pytest.fixture(scope="module")
def runs(tmp_path_factory, classify_data, caption_data, detect_data):
    """Each task trained for 3 epochs on CUDA in fp32, bf16 and fp16 (the engine's autocast; fp16 with its
    gradient scaler): (task, dtype) -> (fit's result, run folder)."""
    out = {}
    datasets = {"classify": classify_data, "caption": caption_data, "detect": detect_data}
    for task, data in datasets.items():
        for dtype in ("fp32", "bf16", "fp16"):
            run_dir = tmp_path_factory.mktemp(f"{task}-{dtype}")
            out[task, dtype] = (_train(task, data, run_dir, dtype=dtype), run_dir)
    return out


@pytest.mark.parametrize("task", ["classify", "caption", "detect"])
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_low_precision_training_is_finite_and_follows_fp32(runs, task, dtype):
    reference, _ = runs[task, "fp32"]
    result, _ = runs[task, dtype]
    assert result["stopped"] == "completed"
    ours = [r["train_loss"] for r in result["history"]]
    fp32 = [r["train_loss"] for r in reference["history"]]
    assert len(ours) == len(fp32) == 3 and all(math.isfinite(x) for x in ours)
    assert ours[-1] < ours[0]  # it trains
    for epoch, (low, full) in enumerate(zip(ours, fp32)):
        assert abs(low - full) <= 0.1 * abs(full) + 0.05, f"{task} {dtype} epoch {epoch + 1}: {low} vs fp32 {full}"


@pytest.mark.parametrize("task", ["classify", "caption", "detect"])
def test_checkpoint_saved_on_cuda_loads_on_the_cpu_with_identical_weights_and_outputs(runs, task):
    from safetensors.torch import load_file

    from visattn.models import load

    _, run_dir = runs[task, "fp32"]
    path = run_dir / "last.safetensors"
    on_cpu = load(path, map_location="cpu")
    on_gpu = load(path, map_location="cuda")
    stored = load_file(str(path))
    for key, value in on_cpu.state_dict().items():
        assert value.device.type == "cpu"
        assert torch.equal(value, on_gpu.state_dict()[key].cpu()), key
        if key in stored:
            assert torch.equal(value, stored[key]), key
    images = torch.rand(2, 3, 32, 32)
    tokens = torch.tensor([[1, 4, 5, 2], [1, 6, 2, 0]])

    def run(model, device):
        with torch.no_grad():
            x = images.to(device)
            return model(x, tokens=tokens.to(device)) if task == "caption" else model(x)

    # the same weights on the CPU give the same outputs as a fresh CPU load, and follow the GPU's
    _outputs_close(run(on_cpu, "cpu"), run(load(path, map_location="cpu"), "cpu"), rtol=0, atol=0)
    with torch.backends.cudnn.flags(allow_tf32=False):
        _outputs_close(run(on_gpu, "cuda"), run(on_cpu, "cpu"), rtol=1e-3, atol=1e-4)


# ----------------------------------------------------------------------------------------------- host syncs
def _step(task: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import train_step

    return train_step, train_step.build_step(task, batch_size=8, image_size=32, device=CUDA)


@pytest.mark.parametrize("task", ["classify", "caption"])
def test_a_training_step_makes_no_host_sync(task):
    train_step, step = _step(task)
    step()  # optimizer state and library handles are created outside the check
    syncs = train_step.host_syncs(step)
    assert syncs == [], f"{task} step synchronised with the host: {syncs}"


def test_a_detection_step_syncs_only_for_the_hungarian_matching_and_one_label_check():
    from visattn.heads.detector import DetectorConfig

    train_step, step = _step("detect")
    step()
    syncs = train_step.host_syncs(step)
    # the Hungarian assignment runs on the CPU (scipy): one copy of the cost per decoder layer; the labels are
    # checked once per batch
    assert syncs, "the matcher's copy of the cost to the CPU should show"
    assert all("matcher.py" in s["where"] or "detection_loss.py" in s["where"] for s in syncs), syncs
    assert sum(s["count"] for s in syncs) <= 1 + DetectorConfig().num_layers, syncs


# ------------------------------------------------------------------------------------------------ Predictor
def test_predictor_on_cuda_gives_the_cpu_predictions(runs):
    predictor_module = pytest.importorskip("visattn.predictor")
    Predictor = predictor_module.Predictor
    images = torch.rand(3, 3, 32, 32)
    for task in ("classify", "caption", "detect"):
        _, run_dir = runs[task, "fp32"]
        path = run_dir / "last.safetensors"
        gpu = Predictor.from_checkpoint(path, device="cuda")
        cpu = Predictor.from_checkpoint(path, device="cpu")
        assert gpu.task.name == task and gpu.device.type == "cuda"
        assert all(p.device.type == "cuda" for p in gpu.model.parameters())
        with torch.backends.cudnn.flags(allow_tf32=False):
            on_gpu = gpu.predict(images)
        on_cpu = cpu.predict(images)
        assert len(on_gpu) == len(on_cpu) == 3
        for ours, theirs in zip(on_gpu, on_cpu):
            assert ours.task == task
            attention = ours.attention
            assert attention.device.type == "cpu" and attention.dtype == torch.float32
            if attention.numel():
                sums = attention.flatten(1).sum(dim=1)
                torch.testing.assert_close(sums, torch.ones_like(sums), rtol=1e-4, atol=1e-4)
            json.dumps(ours.to_dict())
            if task == "classify":
                assert ours.label == theirs.label
                assert ours.score == pytest.approx(theirs.score, rel=1e-3, abs=1e-4)
            elif task == "caption":
                assert ours.caption == theirs.caption
            else:
                assert torch.equal(ours.label_ids, theirs.label_ids)
                torch.testing.assert_close(ours.boxes, theirs.boxes, rtol=1e-3, atol=1e-2)


# ------------------------------------------------------------------------------------ torchrun with NCCL
_CLI = {
    "classify": ["--num-train", "64", "--num-val", "16", "--image-size", "32", "--encoder-width", "16"],
    "caption": ["--num-train", "48", "--num-val", "8", "--image-size", "32", "--encoder-width", "16",
                "--decoder-dim", "32", "--attention-dim", "16", "--embed-dim", "16", "--beam-size", "2"],
    "detect": ["--num-train", "48", "--num-val", "8", "--image-size", "32", "--hidden-dim", "32", "--num-layers", "2"],
}


def _nccl_worker(run_root: Path) -> None:
    """torchrun worker: an NCCL group of one, then one epoch of each task through ``visattn train``."""
    import torch.distributed as torch_dist

    import visattn.cli as cli

    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch_dist.init_process_group(backend="nccl")
    cli.cleanup = lambda: None  # one process group for the three runs; left at the end
    report = {"backend": torch_dist.get_backend(), "world_size": torch_dist.get_world_size()}
    for task, options in _CLI.items():
        code = cli.main(["train", task, "--run-dir", str(run_root / task), "--epochs", "1", "--batch-size", "16",
                     "--no-progress", "--device", "cuda", *options])
        metrics = [json.loads(line) for line in (run_root / task / "metrics.jsonl").read_text().splitlines()]
        report[task] = {"exit_code": code, "epochs": len(metrics), "train_loss": metrics[-1]["train_loss"],
                        "val": {k: v for k, v in metrics[-1].items() if k.startswith("val_")}}
    torch_dist.destroy_process_group()
    (run_root / "report.json").write_text(json.dumps(report))


def test_torchrun_one_process_nccl_trains_one_epoch_of_each_task(tmp_path):
    pytest.importorskip("pycocotools")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                           str(Path(__file__).resolve()), "--nccl-worker", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["backend"] == "nccl" and report["world_size"] == 1
    for task in _CLI:
        assert report[task]["exit_code"] == 0 and report[task]["epochs"] == 1, report
        assert math.isfinite(report[task]["train_loss"]) and report[task]["val"], report
        assert (tmp_path / task / "best.safetensors").is_file()


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--nccl-worker":
    _nccl_worker(Path(sys.argv[2]))
