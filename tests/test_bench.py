"""The speed benchmarks on tiny dimensions: the textbook reference computes what visattn computes, the FLOP
count is right, every report has its fields, and ``visattn bench`` finds (or clearly misses) benchmarks/.

No timing is asserted anywhere: these are smoke runs of the measuring code.
"""

import json
import math
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


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_caption_train_report(dtype):
    report = caption_train.run(TINY, dtype=dtype, steps=2, warmup=1, memory=False, peak_size=64)
    assert report["benchmark"] == "caption-train" and report["device"] == "cpu" and report["threads"] >= 1
    names = ["reference", "visattn"] + (["visattn_fp32", "visattn_autocast"] if dtype == "bf16" else [])
    for name in names:
        entry = report[name]
        for key in ("seconds_per_step", "tokens_per_s", "gflop_per_step", "achieved_gflops", "peak_gflops",
                    "fraction_of_peak"):
            assert entry[key] > 0, (name, key)
        assert len(entry["losses"]) == 3 and all(math.isfinite(x) for x in entry["losses"])
    assert report["visattn"]["dtype"] == dtype and report["reference"]["dtype"] == "fp32"
    assert report["speedup"] == pytest.approx(report["reference"]["seconds_per_step"]
                                              / report["visattn"]["seconds_per_step"])
    assert report["tokens_per_step"] == int((caption_train.make_batch(TINY)[2] - 1).sum())
    json.dumps(report)


def test_beam_report_counts_identical_captions():
    report = beam.run(TINY, num_images=5, beam_size=3, max_len=5, decode_batch=2, repeats=1, memory=False)
    for name in ("batched", "visattn_one_at_a_time", "reference"):
        assert report[name]["images_per_s"] > 0
        assert report[name]["identical_to_batched"] == 5
    assert report["identical_captions"] is True and report["speedup"] > 0


def test_cache_report_trains_from_both_paths():
    report = cache.run(encoder="small_cnn", image_size=32, num_images=8, attention_dim=8, decoder_dim=12,
                       embed_dim=8, batch_size=4, repeats=1, memory=False)
    assert report["steps_per_epoch"] == 2 and report["grid"] == [4, 4]
    for name in ("recompute", "cache"):
        assert report[name]["seconds_per_epoch"] > 0
        assert len(report[name]["losses"]) == 2 and all(math.isfinite(x) for x in report[name]["losses"])
    assert report["speedup"] > 0


def test_data_report_with_workers():
    report = data_pipeline.run(image_size=32, num_images=6, workers=1, batch_size=4, sources=("decode", "memory"),
                               repeats=1, memory=False)
    for source in ("decode", "memory"):
        assert report[source]["workers_0"]["images_per_s"] > 0
        assert report[source]["workers_1"]["images_per_s"] > 0
    assert "procedural" not in report


def test_peak_memory_runs_the_workload_in_a_child_process():
    args = {"which": "visattn", "dims": vars(TINY), "dtype": "fp32", "device": "cpu", "seed": 0}
    memory = _timing.peak_memory("caption_train", "memory_workload", args, device=torch.device("cpu"))
    assert memory["kind"] == "process_peak_rss"
    assert memory["peak_mib"] >= memory["baseline_mib"] > 0 and memory["workload_mib"] >= 0
    assert memory["peak_mib"] >= memory["built_mib"] > 0
    assert memory["work_mib"] is None or memory["work_mib"] >= 0


def test_alternating_timer_runs_every_function_in_turn():
    calls = []
    times = _timing.time_alternating({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3,
                                     warmup=1, device=torch.device("cpu"))
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert [len(t) for t in times.values()] == [3, 3]


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
