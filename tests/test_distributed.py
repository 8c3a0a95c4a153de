"""DDP through torchrun: two CPU processes (gloo) train exactly like one process with the same global batch
(the classifier, the captioner and the detector).

This file is also the worker script: ``torchrun ... tests/test_distributed.py --worker RUN_DIR`` trains the
tiny classifier below with the engine and records, per rank, every checkpoint it writes.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from visattn import distributed as dist
from visattn.encoders import EncoderConfig
from visattn.engine import TrainConfig, fit
from visattn.models import build_model, load
from visattn.tasks import get_task

EPOCHS = 3
PER_RANK_BATCH = 4
WORLD_SIZE = 2
NUM_TRAIN = 48  # a multiple of the global batch: no sample is padded in by the DistributedSampler
NUM_VAL = 13  # odd: the ranks' evaluation shards differ in length


class Squares(Dataset):
    """A bright square whose column encodes the class; deterministic from the seed."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 3, (n,), generator=g)
        self.noise = torch.rand(n, 3, 16, 16, generator=g) * 0.3

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        image, label = self.noise[i].clone(), int(self.labels[i])
        x = 2 + 4 * label
        image[:, 5:10, x : x + 4] = 1.0
        return {"image": image, "label": label, "boxes": torch.tensor([[x, 5, x + 4, 10]], dtype=torch.float32),
                "image_id": i}


# The registered tiny models (this file is also the torchrun worker, so no fixtures), with GroupNorm and no
# dropout: nothing that depends on the per-rank share of a batch or on per-rank RNG. One halving: 8x8 grids.
ENCODER = EncoderConfig(width=8, depth=2, num_downsample=1, norm="group")


def _model():
    torch.manual_seed(0)
    return build_model("tiny_classifier", encoder=ENCODER, dropout=0.0)


def _train(run_dir: Path, batch_size: int) -> dict:
    config = TrainConfig(epochs=EPOCHS, batch_size=batch_size, lr=5e-3, device="cpu", progress=False, seed=7,
                         warmup_steps=2)
    return fit(_model(), get_task("classify"), Squares(NUM_TRAIN, 0), Squares(NUM_VAL, 1), config,
               run_dir)


CAPTION_VOCAB = ["<pad>", "<start>", "<end>", "<unk>", "a", "b", "c"]


class Strokes(Squares):
    """Squares with captions of 1-4 words (the class word repeated): ranks hold different token counts."""

    def __getitem__(self, i: int) -> dict:
        item = super().__getitem__(i)
        words = [CAPTION_VOCAB[4 + item["label"]]] * (1 + (i * 7) % 4)
        tokens = torch.tensor([1] + [CAPTION_VOCAB.index(w) for w in words] + [2])
        return {"image": item["image"], "tokens": tokens, "captions": [" ".join(words)], "caption_index": 0,
                "image_id": i}


def _train_captioner(run_dir: Path, batch_size: int) -> tuple[dict, torch.nn.Module]:
    torch.manual_seed(0)
    model = build_model("tiny_captioner", encoder=ENCODER, vocab=CAPTION_VOCAB, attention_dim=8, max_len=6)
    train = TrainConfig(epochs=2, batch_size=batch_size, lr=5e-3, device="cpu", progress=False, seed=7,
                        warmup_steps=2)
    return fit(model, get_task("caption"), Strokes(NUM_TRAIN, 0), Strokes(NUM_VAL, 1), train, run_dir), model


class Boxes(Squares):
    """Squares as detection samples; every third image has a second square below: ranks hold different
    numbers of objects."""

    def __getitem__(self, i: int) -> dict:
        item = super().__getitem__(i)
        image, boxes, labels = item["image"], [item["boxes"][0].tolist()], [int(self.labels[i])]
        if i % 3 == 0:
            second = (labels[0] + 1) % 3
            x = 2 + 4 * second
            image[:, 11:15, x : x + 4] = 1.0
            boxes.append([x, 11, x + 4, 15])
            labels.append(second)
        return {"image": image, "boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
                "image_id": i}


def _train_detector(run_dir: Path, batch_size: int) -> tuple[dict, torch.nn.Module]:
    torch.manual_seed(0)
    model = build_model("tiny_detector", encoder=ENCODER, num_queries=4, image_size=16)
    train = TrainConfig(epochs=2, batch_size=batch_size, lr=2e-3, device="cpu", progress=False, seed=7,
                        warmup_steps=2)
    return fit(model, get_task("detect", num_classes=3), Boxes(NUM_TRAIN, 0), Boxes(NUM_VAL, 1), train, run_dir), model


def _evaluate_both_ways(model: torch.nn.Module, task, dataset) -> dict:
    """The task's metrics over the whole dataset in this process, and gathered from each rank's shard."""
    from torch.utils.data import DataLoader

    whole = DataLoader(dataset, batch_size=4, collate_fn=task.collate)
    shard = DataLoader(dataset, batch_size=4, collate_fn=task.collate, sampler=dist.ShardSampler(len(dataset)))
    device = torch.device("cpu")
    return {"whole": task.evaluate(model, whole, device), "sharded": task.evaluate(model, shard, device)}


def _worker(run_dir: Path) -> None:
    """Run under torchrun: train, and log every checkpoint write of this rank to writes-rank<r>.json."""
    import visattn.engine as engine

    writes: list[str] = []
    original = engine.save_checkpoint

    def recording_save(path, *args, **kwargs):
        writes.append(Path(path).name)
        return original(path, *args, **kwargs)

    engine.save_checkpoint = recording_save
    result = _train(run_dir, PER_RANK_BATCH)
    # A NaN image in rank 0's first batch only: both ranks must stop together (not one waiting forever).
    poisoned = Squares(NUM_TRAIN, 0)
    first = torch.randperm(NUM_TRAIN, generator=torch.Generator().manual_seed(7)).tolist()[0]  # the sampler's order
    poisoned.noise[first] = float("nan")
    config = TrainConfig(epochs=1, batch_size=PER_RANK_BATCH, device="cpu", progress=False, seed=7)
    stopped = fit(_model(), get_task("classify"), poisoned, None, config, run_dir / "nan")["stopped"]
    classifier_writes = list(writes)
    captioner, caption_model = _train_captioner(run_dir / "caption", PER_RANK_BATCH)
    detector, detect_model = _train_detector(run_dir / "detect", PER_RANK_BATCH)

    evaluations = {"classify": _evaluate_both_ways(load(run_dir / "last.safetensors"), get_task("classify"),
                                                   Squares(NUM_VAL, 1)),
                   "caption": _evaluate_both_ways(caption_model, get_task("caption"), Strokes(NUM_VAL, 1)),
                   "detect": _evaluate_both_ways(detect_model, get_task("detect", num_classes=3), Boxes(NUM_VAL, 1))}
    rank = dist.rank()
    (run_dir / f"writes-rank{rank}.json").write_text(json.dumps(
        {"writes": classifier_writes, "world_size": dist.world_size(), "stopped": stopped,
         "losses": [record["train_loss"] for record in result["history"]],
         "caption_losses": [record["train_loss"] for record in captioner["history"]],
         "detect_losses": [record["train_loss"] for record in detector["history"]],
         "evaluations": evaluations,
         "val_metrics": {name: [{k: v for k, v in record.items() if k.startswith("val_")} for record in run["history"]]
                         for name, run in (("classify", result), ("caption", captioner), ("detect", detector))}}))
    dist.cleanup()


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_two_processes_match_one_process(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD_SIZE}",
               __file__, "--worker", str(tmp_path / "ddp")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    single = _train(tmp_path / "single", PER_RANK_BATCH * WORLD_SIZE)
    single_losses = [record["train_loss"] for record in single["history"]]
    ranks = [json.loads((tmp_path / "ddp" / f"writes-rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    assert all(r["world_size"] == WORLD_SIZE for r in ranks)
    # Every rank reports the same (all-reduced) per-epoch loss, equal to one process on the global batch.
    for r in ranks:
        assert r["losses"] == pytest.approx(single_losses, abs=1e-4)
    assert single_losses[-1] < single_losses[0]  # it trained
    # Rank 0 alone writes: one last.safetensors per epoch (none for the stopped run), nothing from rank 1.
    assert ranks[0]["writes"].count("last.safetensors") == EPOCHS
    assert ranks[1]["writes"] == []
    assert [r["stopped"].split(";")[0] for r in ranks] == ["non-finite loss at epoch 1, step 1"] * WORLD_SIZE
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, EPOCHS + 1))
    # The same final model as the single process. (Compared by outputs: the additive score's bias gets a
    # zero gradient up to rounding, which AdamW's normalisation turns into different +-lr steps.)
    images = torch.stack([Squares(12, 1)[i]["image"] for i in range(12)])
    with torch.no_grad():
        ddp_out = load(tmp_path / "ddp" / "last.safetensors")(images)
        single_out = load(tmp_path / "single" / "last.safetensors")(images)
    torch.testing.assert_close(ddp_out["pred_logits"], single_out["pred_logits"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ddp_out["attention"], single_out["attention"], rtol=1e-4, atol=1e-5)
    # Captions of different lengths: each rank holds a different number of target tokens, and the loss is
    # still the per-token mean over the global batch (each rank divides by the global count / world size).
    single_captioner = _train_captioner(tmp_path / "single_caption", PER_RANK_BATCH * WORLD_SIZE)
    single_caption_losses = [record["train_loss"] for record in single_captioner[0]["history"]]
    for r in ranks:
        assert r["caption_losses"] == pytest.approx(single_caption_losses, abs=1e-4)
    assert single_caption_losses[-1] < single_caption_losses[0]
    # Detection: different numbers of objects per rank; boxes and class weights are counted over all ranks.
    single_detector = _train_detector(tmp_path / "single_detect", PER_RANK_BATCH * WORLD_SIZE)
    single_detect_losses = [record["train_loss"] for record in single_detector[0]["history"]]
    for r in ranks:
        assert r["detect_losses"] == pytest.approx(single_detect_losses, abs=1e-4)
    assert single_detect_losses[-1] < single_detect_losses[0]
    # Evaluation: every rank scores its shard (7 and 6 of 13 items); gathered before scoring, the numbers are
    # those of one process reading everything, and every rank reports the same.
    for r in ranks:
        for task_name, both in r["evaluations"].items():
            assert set(both["sharded"]) == set(both["whole"]), task_name
            for key, value in both["whole"].items():
                # (float32 sums over batches of other compositions: equal to rounding)
                assert both["sharded"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (task_name, key)
    assert ranks[0]["val_metrics"] == ranks[1]["val_metrics"]
    assert ranks[0]["evaluations"]["classify"]["whole"]["accuracy"] > 0.4  # trained: chance is 1/3
    assert "val_CIDEr-D" in ranks[0]["val_metrics"]["caption"][-1]
    assert "val_map" in ranks[0]["val_metrics"]["detect"][-1]

if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker(Path(sys.argv[2]))
    else:
        sys.exit("usage: torchrun --nproc_per_node=2 tests/test_distributed.py --worker RUN_DIR")
