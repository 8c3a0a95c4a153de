"""The speed benchmarks on tiny dimensions: the textbook reference computes what visattn computes, the FLOP
count is right, every report's figures follow from its measurements, peak memory sees a known allocation,
and ``visattn bench`` finds (or clearly misses) benchmarks/.

No speed is asserted anywhere (tests never assert wall-clock times): the report runs check that each derived
figure (throughput, achieved GFLOP/s, fraction of peak, speedups) is computed from the measured seconds as
its docstring says, and that the implementations compared give the same results.
"""

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import _timing  # noqa: E402
import beam  # noqa: E402
import cache  # noqa: E402
import caption_train  # noqa: E402
import data_pipeline  # noqa: E402
from reference_sat import reference_beam_search, reference_loss  # noqa: E402

from visattn.cli import main  # noqa: E402

TINY = caption_train.Dims(encoder_dim=24, grid=3, attention_dim=8, decoder_dim=12, embed_dim=10, vocab_size=30,
                          batch_size=5, max_len=7)


def _grads(module):
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


def test_reference_and_visattn_compute_the_same_loss_and_gradients_on_the_same_weights():
    reference, captioner = caption_train.build_models(TINY, dropout=0.0, alpha_c=1.0, seed=3)
    features, tokens, lengths = caption_train.make_batch(TINY, seed=3)
    assert len(set(lengths.tolist())) > 1  # the reference really shrinks its batch
    ref_loss = reference_loss(reference, features, tokens, lengths)
    outputs = captioner(features=features, tokens=tokens, lengths=lengths, grid=(3, 3))
    ours = captioner.loss(outputs, tokens)
    assert float(ours["loss_attention_reg"].detach()) > 0
    torch.testing.assert_close(ours["loss"], ref_loss, rtol=1e-5, atol=1e-6)
    ref_loss.backward()
    ours["loss"].backward()
    ref, mine = _grads(reference), _grads(captioner)
    for theirs, own in (("fc.weight", "out_vocab.weight"), ("embedding.weight", "embedding.weight"),
                        ("attention.encoder_att.weight", "attention.key_proj.weight"),
                        ("attention.decoder_att.weight", "attention.query_proj.weight"),
                        ("f_beta.weight", "gate.weight"), ("init_h.weight", "init_h.weight")):
        torch.testing.assert_close(mine[own], ref[theirs], rtol=1e-4, atol=1e-6, msg=f"{own} vs {theirs}")


def test_tutorial_reference_and_its_captioner_compute_the_same_loss(tiny_config):
    """The caption benchmark's reference (the tutorial's decoder, ReLU score, no tanh on h_0) is scored
    through a Captioner: on the same weights and images both give the same cross entropy."""
    from tutorial_decoder import TutorialDecoder, to_captioner, train_tutorial

    from visattn.data.caption_data import CaptionDataset, collate, scene_data

    data = scene_data(num_train=12, num_val=2, num_test=2, image_size=32, num_objects=(1, 2), seed=0)
    config = tiny_config("captioner", vocab=data.vocab.to_list(), image_size=32, dropout=0.0)
    torch.manual_seed(0)
    reference = TutorialDecoder(config)
    pairs = CaptionDataset(data.train, data.train.tokens, data.vocab, mode="pairs")
    run = train_tutorial(reference, pairs, collate, steps=2, batch_size=8, lr=1e-2)
    assert run["steps"] == 2 and run["images"] == 16
    batch = collate([pairs[i] for i in range(0, 24, 3)])
    assert len(set(batch["lengths"].tolist())) > 1  # the reference really shrinks its batch
    reference.eval()
    captioner = to_captioner(reference)
    outputs = captioner(batch["images"], tokens=batch["tokens"])
    torch.testing.assert_close(captioner.loss(outputs, batch["tokens"])["loss_ce"],
                               reference(batch["images"], batch["tokens"]), rtol=1e-5, atol=1e-6)


def test_reference_beam_search_gives_the_captions_of_batched_beam_search():
    reference, captioner, features = beam.build(TINY, num_images=6, sharpness=8.0, seed=1)
    batched = captioner.generate(features=features, beam_size=3, max_len=6)
    for i in range(len(features)):
        mine = reference_beam_search(reference, features[i : i + 1], beam_size=3, max_len=6,
                                     start_id=captioner.start_id, end_id=captioner.end_id,
                                     banned=(captioner.pad_id, captioner.start_id))
        assert mine == batched[i][0].tokens


def test_flop_count_differs_only_by_the_recomputed_keys():
    B, L, C, A = TINY.batch_size, TINY.grid**2, TINY.encoder_dim, TINY.attention_dim
    keys = 2 * (2 * L * C * A) / 1e9  # forward and weight gradient of W_k·a for one image
    steps = TINY.max_len - 1
    full = caption_train.make_batch(TINY, equal_lengths=True)[2]  # the paper's batching: one length per batch
    assert full.tolist() == [TINY.max_len] * B
    extra = caption_train.train_gflop("reference", TINY, full) - caption_train.train_gflop("visattn", TINY, full)
    # once per step and image instead of once per image
    assert extra == pytest.approx((steps - 1) * B * keys)
    # Both drop captions as they end, so shorter captions cost both less, and the difference stays the keys.
    _, _, lengths = caption_train.make_batch(TINY, seed=0)
    assert lengths.tolist() != full.tolist()
    for which in ("reference", "visattn"):
        assert caption_train.train_gflop(which, TINY, lengths) < caption_train.train_gflop(which, TINY, full)
    extra = caption_train.train_gflop("reference", TINY, lengths) - caption_train.train_gflop("visattn", TINY, lengths)
    assert extra == pytest.approx((int((lengths - 1).sum()) - B) * keys)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_caption_train_report(dtype):
    report = caption_train.run(TINY, dtype=dtype, steps=2, warmup=1, memory=False, peak_size=64)
    assert report["benchmark"] == "caption-train" and report["device"] == "cpu" and report["threads"] >= 1
    names = ["reference", "visattn"] + (["visattn_fp32", "visattn_autocast"] if dtype == "bf16" else [])
    lengths = caption_train.make_batch(TINY)[2]
    for name in names:
        entry = report[name]
        seconds = entry["seconds_per_step"]
        assert entry["seconds_min"] <= seconds <= entry["seconds_max"], name
        which = "reference" if name == "reference" else "visattn"
        assert entry["gflop_per_step"] == pytest.approx(caption_train.train_gflop(which, TINY, lengths)), name
        assert entry["tokens_per_s"] == pytest.approx(report["tokens_per_step"] / seconds), name
        assert entry["achieved_gflops"] == pytest.approx(entry["gflop_per_step"] / seconds), name
        assert entry["fraction_of_peak"] == pytest.approx(entry["achieved_gflops"] / entry["peak_gflops"]), name
        assert len(entry["losses"]) == 3 and all(math.isfinite(x) for x in entry["losses"])
    # Each implementation is measured against the peak of the dtype it computes in.
    assert report["visattn"]["peak_gflops"] == report["peak_gflops"]
    fp32 = "visattn" if dtype == "fp32" else "visattn_fp32"
    assert report["reference"]["peak_gflops"] == report[fp32]["peak_gflops"]
    if dtype == "bf16":
        assert report["visattn_autocast"]["peak_gflops"] == report["visattn"]["peak_gflops"]
    assert report["visattn"]["dtype"] == dtype and report["reference"]["dtype"] == "fp32"
    assert report["speedup"] == pytest.approx(report["reference"]["seconds_per_step"]
                                              / report["visattn"]["seconds_per_step"])
    assert report["tokens_per_step"] == int((caption_train.make_batch(TINY)[2] - 1).sum())
    json.dumps(report)


@pytest.mark.slow
def test_beam_report_counts_identical_captions():
    report = beam.run(TINY, num_images=5, beam_size=3, max_len=5, decode_batch=2, repeats=1, memory=False)
    for name in ("batched", "visattn_one_at_a_time", "reference"):
        assert report[name]["images_per_s"] == pytest.approx(5 / report[name]["seconds"])
        assert report[name]["identical_to_batched"] == 5
    assert report["identical_captions"] is True
    assert report["speedup"] == pytest.approx(report["batched"]["images_per_s"] / report["reference"]["images_per_s"])
    assert report["speedup_batching_alone"] == pytest.approx(report["batched"]["images_per_s"]
                                                             / report["visattn_one_at_a_time"]["images_per_s"])


@pytest.mark.slow
def test_cache_report_trains_from_both_paths():
    report = cache.run(encoder="small_cnn", image_size=32, num_images=8, attention_dim=8, decoder_dim=12,
                       embed_dim=8, batch_size=4, repeats=1, memory=False)
    assert report["steps_per_epoch"] == 2 and report["grid"] == [4, 4]
    for name in ("recompute", "cache"):
        entry = report[name]
        assert entry["seconds_min"] <= entry["seconds_per_epoch"] <= entry["seconds_max"]
        assert entry["items_per_s"] == pytest.approx(report["items_per_epoch"] / entry["seconds_per_epoch"])
        assert len(entry["losses"]) == 2 and all(math.isfinite(x) for x in entry["losses"])
    assert report["speedup"] == pytest.approx(report["recompute"]["seconds_per_epoch"]
                                              / report["cache"]["seconds_per_epoch"])


@pytest.mark.slow
def test_data_report_with_workers():
    report = data_pipeline.run(image_size=32, num_images=6, workers=1, batch_size=4, sources=("decode", "memory"),
                               repeats=1, memory=False)
    for source in ("decode", "memory"):
        entry = report[source]
        for workers in ("workers_0", "workers_1"):
            assert entry[workers]["images_per_s"] == pytest.approx(6 / entry[workers]["seconds_per_pass"])
        assert entry["speedup_workers"] == pytest.approx(entry["workers_1"]["images_per_s"]
                                                         / entry["workers_0"]["images_per_s"])
    assert "procedural" not in report


WORKLOAD = """
import torch


def allocate(mib):
    def work():
        block = torch.ones(mib * 2**18)  # mib MiB of float32, every page written; freed on return
        return float(block[-1])

    return work
"""


def test_peak_memory_measures_a_known_allocation_in_a_child_process(tmp_path, monkeypatch):
    # The child imports the workload by module name: put a 96 MiB workload on its path.
    (tmp_path / "known_workload.py").write_text(WORKLOAD)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    memory = _timing.peak_memory("known_workload", "allocate", {"mib": 96}, device=torch.device("cpu"))
    assert memory["kind"] == "process_peak_rss"
    assert memory["workload_mib"] == pytest.approx(memory["peak_mib"] - memory["baseline_mib"], abs=0.11)
    # Allocated twice and freed in between: the peak holds it once (plus the interpreter's own bookkeeping).
    measured = memory["work_mib"] if memory["work_mib"] is not None else memory["workload_mib"]
    assert 96 * 0.95 <= measured <= 96 * 1.5, memory


def test_the_caption_memory_workload_is_one_training_step():
    # What peak_memory runs in the child for caption-train: a step that returns the finite loss it trained on.
    step = caption_train.memory_workload(which="visattn", dims=vars(TINY), dtype="fp32", device="cpu", seed=0)
    first, second = float(step()), float(step())
    assert math.isfinite(first) and math.isfinite(second) and first != second  # the second step sees new weights


def test_alternating_timer_runs_every_function_in_turn():
    calls = []
    times = _timing.time_alternating({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3,
                                     warmup=1, device=torch.device("cpu"))
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert [len(t) for t in times.values()] == [3, 3]


@pytest.mark.slow
def test_cli_bench_prints_the_json_report(capsys):
    code = main(["bench", "caption-train", "--encoder-dim", "16", "--grid", "2", "--attention-dim", "8",
                 "--decoder-dim", "8", "--embed-dim", "8", "--vocab-size", "12", "--batch-size", "2",
                 "--max-len", "4", "--steps", "1", "--warmup", "0", "--threads", "1", "--peak-size", "64",
                 "--no-memory", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["benchmark"] == "caption-train" and report["dims"]["vocab_size"] == 12


def test_cli_bench_usage_error_and_missing_checkout(capsys, monkeypatch, tmp_path):
    assert main(["bench", "caption-train", "--vocab-size", "0", "--no-memory"]) == 2
    assert "--vocab-size must be >= 1" in capsys.readouterr().err
    import visattn.cli.bench as bench_cli

    monkeypatch.setattr(bench_cli, "_candidates", lambda: [tmp_path / "benchmarks"])
    assert main(["bench", "beam"]) == 1
    err = capsys.readouterr().err
    assert "source checkout" in err and str(tmp_path / "benchmarks") in err
