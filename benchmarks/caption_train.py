"""Caption training speed: one step (forward, backward, AdamW) of visattn's captioner vs the textbook decoder.

Both decoders start from the same weights (``reference_sat.copy_to_captioner``), train on the same batch of
annotation vectors (B, L, C) and captions with the same optimizer (fused AdamW), in the same process,
alternating, median of ``--steps`` timed steps after warm-up. Defaults are the paper's dimensions: encoder
2048, grid 14×14, attention, decoder and embedding 512, vocabulary 10,000, batch 32, captions of up to 22
tokens (lengths drawn uniformly between half that and that; the longest caption of the batch has the maximum
length). ``--equal-lengths`` gives every caption of the batch the maximum length instead, as the paper's
training does (it samples a length, then a minibatch of captions of that length). Both decoders drop
captions as they end (the textbook shrinks its batch step by step over length-sorted captions; visattn
runs each step on the captions still running and the output layer on real targets only), so neither
spends work on padding, and the difference is what each does per running caption.

``--dtype bf16`` runs visattn's decoder with bf16 weights and activations and fp32 master weights in the
optimizer, next to the fp32 reference, visattn in fp32 and visattn under plain bf16 autocast (fp32
weights; the casts make it slow on CPUs); every step's loss is reported (warm-up steps included) so that
bf16 training can be seen to follow fp32.

FLOP count (``gflop_per_step``), matrix products only, 2·m·n·k each; backward counts 2× forward (input
and weight gradients) except where the input is the annotations, which need no gradient (1×). With B
captions, S = the longest decode length, b_t the captions still running at step t, and (L, C, A, D, E, V)
the widths above:

    both        init h_0, c_0       2 · 2·B·C·D                                   (fwd+bwd 2×)
    visattn     keys, once          2·B·L·C·A                                     (2×)
                per step t          query 2·b_t·D·A, score 2·b_t·L·A (3×), context 2·b_t·L·C (2×),
                                    gate 2·b_t·D·C, LSTM state 2·b_t·(C+D)·4D (3×)
                all steps at once   LSTM word 2·(Σ_t b_t)·E·4D, output 2·(Σ_t b_t)·D·V (3×)
    reference   per step t          keys 2·b_t·L·C·A (2×), query 2·b_t·D·A, score 2·b_t·L·A (3×),
                                    context 2·b_t·L·C (2×), gate 2·b_t·D·C, LSTM 2·b_t·(E+C+D)·4D,
                                    output 2·b_t·D·V (3×)

``--dtype tf32`` (CUDA) runs visattn in fp32 with TF32 matrix products (``allow_tf32``, set around its own
steps only) next to the strict-fp32 reference and visattn in strict fp32. ``--cuda-graphs`` (CUDA) adds
``visattn_graph``: visattn's step at ``--dtype`` (forward, backward and a capturable fused AdamW) captured
once in a CUDA graph and replayed, which removes the launch cost of its hundreds of small kernels; the
captioner's running-batch plan depends only on the lengths, so the graph keeps the one it was captured
with (the batch's lengths are fixed). ``--compile MODE`` adds ``visattn_compiled``: the captioner under
``torch.compile(mode=MODE)``, with its first step's seconds (compilation included). ``--profile`` on CUDA
adds each implementation's kernels per step, GPU-busy milliseconds and kernel time by kind.

``achieved_gflops`` = gflop_per_step / seconds_per_step; ``peak_gflops`` is a square matmul measured in
the same run with the same dtype and threads (``--peak-size``; use 8192 on a GPU); on CUDA every entry also
has ``fraction_of_bf16_peak``, against the bf16 matmul peak measured in the same run.

Run: ``visattn bench caption-train [--dtype bf16] [--json]`` or ``python benchmarks/caption_train.py``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

import _gpu
import _timing
from visattn.encoders import EncoderConfig
from visattn.heads.captioner import Captioner, CaptionerConfig
from reference_sat import ReferenceDecoder, copy_to_captioner, reference_loss


@dataclass
class Dims:
    encoder_dim: int = 2048
    grid: int = 14
    attention_dim: int = 512
    decoder_dim: int = 512
    embed_dim: int = 512
    vocab_size: int = 10_000
    batch_size: int = 32
    max_len: int = 22  # tokens per caption, <start> and <end> included

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.max_len < 3 or self.vocab_size < 5:
            raise ValueError("--max-len must be >= 3 and --vocab-size >= 5 (4 special tokens and a word)")


def make_batch(dims: Dims, *, seed: int = 0, equal_lengths: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Annotations (B, L, C) >= 0 like a ReLU CNN's, tokens (B, T) and lengths (B,), deterministic from seed."""
    gen = torch.Generator().manual_seed(seed)
    batch, steps = dims.batch_size, dims.max_len
    features = torch.randn(batch, dims.grid**2, dims.encoder_dim, generator=gen).relu_()
    lengths = torch.randint((steps + 1) // 2, steps + 1, (batch,), generator=gen)
    lengths[0] = steps
    if equal_lengths:
        lengths.fill_(steps)
    tokens = torch.randint(4, dims.vocab_size, (batch, steps), generator=gen)
    tokens[:, 0] = 1  # <start>
    for row, length in enumerate(lengths.tolist()):
        tokens[row, length - 1] = 2  # <end>
        tokens[row, length:] = 0  # <pad>
    return features, tokens, lengths


def vocabulary(size: int) -> list[str]:
    return ["<pad>", "<start>", "<end>", "<unk>"] + [f"w{i}" for i in range(size - 4)]


def build_models(dims: Dims, *, dropout: float = 0.5, alpha_c: float = 0.0,
                 seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(reference, visattn captioner) with the same weights; the captioner's (unused) encoder is dropped."""
    torch.manual_seed(seed)
    reference = ReferenceDecoder(vocab_size=dims.vocab_size, encoder_dim=dims.encoder_dim,
                                 attention_dim=dims.attention_dim, decoder_dim=dims.decoder_dim,
                                 embed_dim=dims.embed_dim, dropout=dropout, alpha_c=alpha_c)
    # Features are given, so the encoder never runs: a one-block CNN of the right width, frozen, then emptied
    # so that its weights count neither in the optimizer nor in memory.
    encoder = EncoderConfig(width=dims.encoder_dim, depth=1, num_downsample=0, trainable_from="none")
    config = CaptionerConfig(encoder=encoder, vocab=vocabulary(dims.vocab_size), attention="additive",
                             gate="channel", deep_output=False, output_context=False,
                             init_activation="tanh",  # the reference's tanh
                             attention_dim=dims.attention_dim, decoder_dim=dims.decoder_dim,
                             embed_dim=dims.embed_dim, dropout=dropout,
                             alpha_c=alpha_c, max_len=dims.max_len)
    captioner = Captioner(config)
    captioner.encoder.trunk = nn.Sequential()
    copy_to_captioner(reference, captioner)
    return reference, captioner


class MasterWeightStep:
    """One optimizer step of a low-precision copy of a model whose fp32 master weights AdamW updates.

    Forward and backward run in ``dtype`` (weights and activations); the gradients are copied to the
    fp32 master parameters, AdamW steps there, and the result is copied back.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype, *, lr: float, capturable: bool = False) -> None:
        self.model = copy.deepcopy(model).to(dtype)
        self.master = [p for p in model.parameters() if p.requires_grad]
        self.low = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.master, lr=lr, fused=True, capturable=capturable)

    def __call__(self, loss_fn: Callable[[nn.Module], Tensor]) -> Tensor:
        for p in self.low:
            p.grad = None
        loss = loss_fn(self.model)
        loss.backward()
        for master, low in zip(self.master, self.low):
            master.grad = low.grad.float()
        self.optimizer.step()
        with torch.no_grad():
            torch._foreach_copy_(self.low, self.master)
        return loss.detach()


def build_step(which: str, dims: Dims, *, dtype: str = "fp32", device: str = "cpu", seed: int = 0,
               dropout: float = 0.5, lr: float = 4e-4, equal_lengths: bool = False, graph: bool = False,
               compile_mode: str | None = None) -> Callable[[], Tensor]:
    """A callable doing one training step of ``which`` ("reference" or "visattn") and returning its loss.

    ``dtype``: "fp32"; "tf32" (fp32 with TF32 matrix products on CUDA); "bf16" (bf16 weights and
    activations, fp32 master weights); "bf16-autocast" (fp32 weights under ``torch.autocast``). The models
    and the batch are built from ``seed``, so every implementation starts from the same state. ``graph``
    (CUDA) captures visattn's step in a CUDA graph; ``compile_mode`` wraps the captioner in
    ``torch.compile(mode=compile_mode)``.
    """
    reference, captioner = build_models(dims, dropout=dropout, seed=seed)
    features, tokens, lengths = (t.to(device) for t in make_batch(dims, seed=seed, equal_lengths=equal_lengths))
    cpu_lengths = lengths.cpu()  # as the caption task passes them: the captioner plans on the CPU, no sync
    grid = (dims.grid, dims.grid)
    if graph and (which != "visattn" or torch.device(device).type != "cuda" or dtype == "bf16-autocast"):
        raise ValueError("CUDA graphs need visattn on a CUDA device, in fp32, tf32 or bf16")
    if which == "reference":
        if dtype != "fp32":
            raise ValueError("the reference runs in fp32 only")
        model = reference.to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, fused=True)  # same optimizer as visattn

        def reference_step() -> Tensor:
            optimizer.zero_grad(set_to_none=True)
            loss = reference_loss(model, features, tokens, lengths)
            loss.backward()
            optimizer.step()
            return loss.detach()

        return reference_step
    if which != "visattn":
        raise ValueError(f"unknown implementation {which!r}")
    captioner = captioner.to(device).train()
    low = _timing.TORCH_DTYPES[dtype.split("-")[0]]
    inputs = features.to(low)  # a feature cache can store them in the training dtype

    def loss_fn(model: nn.Module) -> Tensor:
        if compile_mode is not None and id(model) not in compiled:
            compiled[id(model)] = torch.compile(model, mode=compile_mode)
        run = compiled.get(id(model), model)
        outputs = run(features=inputs, tokens=tokens, lengths=cpu_lengths, grid=grid)
        return model.loss(outputs, tokens)["loss"]

    compiled: dict[int, nn.Module] = {}
    step: Callable[[], Tensor]
    if dtype == "bf16":
        master_step = MasterWeightStep(captioner, low, lr=lr, capturable=graph)
        step = lambda: master_step(loss_fn)  # noqa: E731
    else:
        params = [p for p in captioner.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, fused=True, capturable=graph)
        autocast = dtype == "bf16-autocast"  # what the engine's --dtype bf16 does: fp32 weights, bf16 autocast
        if autocast:
            inputs = features

        def visattn_step() -> Tensor:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=autocast):
                loss = loss_fn(captioner)
            loss.backward()
            optimizer.step()
            return loss.detach()

        step = _gpu.TF32(visattn_step) if dtype == "tf32" else visattn_step
    return _gpu.cuda_graph_step(step, torch.device(device)) if graph else step


def _product(m: int, n: int, k: int, passes: int) -> float:
    return 2.0 * m * n * k * passes


def train_gflop(which: str, dims: Dims, lengths: Tensor) -> float:
    """GFLOP of one training step, forward and backward (module docstring)."""
    B, L, C, A, D, E, V = (dims.batch_size, dims.grid**2, dims.encoder_dim, dims.attention_dim, dims.decoder_dim,
                           dims.embed_dim, dims.vocab_size)
    decode = (lengths - 1).tolist()
    S = max(decode)
    total = 2 * _product(B, D, C, 2)  # init_h, init_c on the mean annotation
    running = [sum(length > t for length in decode) for t in range(S)]  # b_t: captions still running
    if which == "visattn":
        total += _product(B * L, A, C, 2)  # keys, once per image
        for b in running:
            total += (_product(b, A, D, 3) + _product(b, L, A, 3) + _product(b, C, L, 2) + _product(b, C, D, 3)
                      + _product(b, 4 * D, C + D, 3))
        total += _product(sum(running), 4 * D, E, 3) + _product(sum(running), V, D, 3)
    else:
        for b in running:
            total += (_product(b * L, A, C, 2) + _product(b, A, D, 3) + _product(b, L, A, 3) + _product(b, C, L, 2)
                      + _product(b, C, D, 3) + _product(b, 4 * D, E + C + D, 3) + _product(b, V, D, 3))
    return total / 1e9


def _product_shape(name: str, shapes: list[list[int]]) -> tuple[int, int, int] | None:
    """(m, k, n) of an aten matrix product from the profiler's input shapes, or None."""
    try:
        if name == "aten::mm":
            (m, k), (_, n) = shapes[0], shapes[1]
        elif name == "aten::addmm":
            (m, k), (_, n) = shapes[1], shapes[2]
        elif name == "aten::bmm":
            (_, m, k), (_, _, n) = shapes[0], shapes[1]
        else:
            return None
    except (IndexError, ValueError):
        return None
    return m, k, n


def profile_step(step: Callable[[], Tensor], batch_size: int) -> dict[str, Any]:
    """Where one training step's time goes: self CPU milliseconds by kind of work (torch.profiler).

    - ``large_products``: matrix products whose every side exceeds the batch (keys, output layer,
      gradients gathered over all steps): these run near the matmul peak;
    - ``recurrence_products``: products with at most ``batch_size`` rows or columns, one per decoding
      step (the LSTM, gate and query projections and their input gradients): their weights stream
      through memory for a few rows each;
    - ``attention_matvec``: batched products with a side of 1 (the context Σ α·a and its gradient, the
      score vector): memory-bound reads of the annotations;
    - ``optimizer``; ``other``: element-wise work, copies, reductions, indexing, softmax.

    The profiler's own overhead inflates the small operations, so the total exceeds a timed step.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    totals = {"large_products": 0.0, "recurrence_products": 0.0, "attention_matvec": 0.0, "optimizer": 0.0,
              "other": 0.0}
    for event in prof.key_averages(group_by_input_shape=True):
        milliseconds = event.self_cpu_time_total / 1e3
        shape = _product_shape(event.key, event.input_shapes)
        if "adam" in event.key.lower():
            kind = "optimizer"
        elif shape is None:
            kind = "other"
        elif min(shape) == 1 or event.key == "aten::bmm":
            kind = "attention_matvec"
        elif min(shape[0], shape[2]) <= batch_size:
            kind = "recurrence_products"
        else:
            kind = "large_products"
        totals[kind] += milliseconds
    report = {name: round(value, 1) for name, value in totals.items()}
    report["total"] = round(sum(totals.values()), 1)
    return {"milliseconds": report}


def memory_workload(which: str, dims: dict[str, int], dtype: str, device: str, seed: int,
                    equal_lengths: bool = False) -> Callable[[], Tensor]:
    """Entry point of the peak-memory child process (see ``_timing.peak_memory``)."""
    return build_step(which, Dims(**dims), dtype=dtype, device=device, seed=seed, equal_lengths=equal_lengths)


def run(dims: Dims, *, dtype: str = "fp32", steps: int = 5, warmup: int = 2, device: str = "cpu",
        threads: int | None = None, seed: int = 0, memory: bool = True, peak_size: int = 2048,
        equal_lengths: bool = False, profile: bool = False, cuda_graphs: bool = False,
        compile_mode: str | None = None) -> dict[str, Any]:
    """Measure both implementations side by side; returns the JSON-able report (module docstring).

    ``peak_size`` is the side of the square matmul that measures the peak. The report also measures
    what bounds a recurrence besides the peak: ``recurrence_product_gflops`` (one LSTM step's product,
    batch rows × (C + D) × 4D, in the same dtype and threads) and ``memory_bandwidth_gbs`` (a large
    copy). ``profile`` adds visattn's step broken down by kind of work (:func:`profile_step`, CPU;
    :func:`_gpu.profile_step_cuda`, CUDA). ``cuda_graphs`` adds ``visattn_graph``, ``compile_mode``
    ``visattn_compiled`` (module docstring).
    """
    if dtype not in ("fp32", "tf32", "bf16"):
        raise ValueError(f"dtype must be fp32, tf32 or bf16, got {dtype!r}")
    chosen = _timing.configure(threads, device)
    if (cuda_graphs or dtype == "tf32") and chosen.type != "cuda":
        raise ValueError("--cuda-graphs and --dtype tf32 need a CUDA device")
    device = str(chosen)
    # report name -> (implementation, precision)
    kinds = {"reference": ("reference", "fp32"), "visattn": ("visattn", dtype)}
    if dtype == "bf16":  # how bf16 training compares with fp32 training, and with plain autocast
        kinds.update(visattn_fp32=("visattn", "fp32"), visattn_autocast=("visattn", "bf16-autocast"))
    elif dtype == "tf32":
        kinds.update(visattn_fp32=("visattn", "fp32"))
    steppers = {name: build_step(which, dims, dtype=kind, device=device, seed=seed, equal_lengths=equal_lengths)
                for name, (which, kind) in kinds.items()}
    losses: dict[str, list[Tensor]] = {name: [] for name in steppers}
    first_step: dict[str, float] = {}
    failed: dict[str, str] = {}  # a graph capture or a compiler that fails is a result, not a crash
    extra = {"visattn_graph": {"graph": True}} if cuda_graphs else {}
    if compile_mode is not None:
        extra["visattn_compiled"] = {"compile_mode": compile_mode}
    for name, option in extra.items():
        try:
            _timing.synchronize(chosen)
            start = time.perf_counter()
            step = build_step("visattn", dims, dtype=dtype, device=device, seed=seed, equal_lengths=equal_lengths,
                              **option)
            losses[name] = [step()]  # a compiled step compiles here; a graph was captured in build_step
            _timing.synchronize(chosen)
            first_step[name] = time.perf_counter() - start
            steppers[name], kinds[name] = step, ("visattn", dtype)
        except Exception as err:  # noqa: BLE001
            failed[name] = f"{type(err).__name__}: {str(err)[:400]}"

    def recorder(name: str) -> Callable[[], None]:
        return lambda: losses[name].append(steppers[name]())

    times = _timing.time_alternating({name: recorder(name) for name in steppers}, repeats=steps, warmup=warmup,
                                     device=chosen)
    precisions = {"fp32", dtype} | ({"bf16"} if chosen.type == "cuda" else set())
    peaks = {kind: _gpu.matmul_peak(kind, chosen, peak_size) for kind in sorted(precisions)}
    _, _, lengths = make_batch(dims, seed=seed, equal_lengths=equal_lengths)
    tokens_per_step = int((lengths - 1).sum())
    report: dict[str, Any] = {"benchmark": "caption-train", **_timing.device_info(chosen), "dims": asdict(dims),
                              "equal_lengths": equal_lengths, "dtype": dtype, "steps": steps, "warmup": warmup,
                              "tokens_per_step": tokens_per_step, "peak_gflops": peaks[dtype], "peaks_gflops": peaks,
                              "peak_size": peak_size}
    if chosen.type == "cuda":
        report["cuda"] = torch.version.cuda
    report["recurrence_product_gflops"] = {
        kind: _timing.product_gflops(dims.batch_size, dims.encoder_dim + dims.decoder_dim, 4 * dims.decoder_dim,
                                     _timing.TORCH_DTYPES[kind], chosen) for kind in sorted({"fp32", dtype} - {"tf32"})}
    report["memory_bandwidth_gbs"] = _timing.memory_bandwidth_gbs(chosen, mib=1024 if chosen.type == "cuda" else 256)
    for name, (which, kind) in kinds.items():
        seconds = _timing.summarise(times[name])
        gflop = train_gflop(which, dims, lengths)
        peak = peaks[kind.split("-")[0]]
        history = [float(x) for x in losses[name]]
        entry = {"dtype": kind, "seconds_per_step": seconds["median"], "seconds_min": seconds["min"],
                 "seconds_max": seconds["max"], "tokens_per_s": tokens_per_step / seconds["median"],
                 "gflop_per_step": gflop, "achieved_gflops": gflop / seconds["median"], "peak_gflops": peak,
                 "fraction_of_peak": gflop / seconds["median"] / peak, "losses": history}
        if "bf16" in peaks:
            entry["fraction_of_bf16_peak"] = gflop / seconds["median"] / peaks["bf16"]
        if name in first_step:
            entry["first_step_seconds"] = first_step[name]
        if memory:
            entry["memory"] = _timing.peak_memory(
                "caption_train", "memory_workload",
                {"which": which, "dims": asdict(dims), "dtype": kind, "device": device, "seed": seed,
                 "equal_lengths": equal_lengths},
                device=chosen, run=steppers[name])
        if profile:
            try:
                entry["profile"] = (profile_step(steppers[name], dims.batch_size) if chosen.type == "cpu"
                                    else _gpu.profile_step_cuda(steppers[name]))
            except Exception as err:  # noqa: BLE001 - a profiler failure must not lose the timings
                entry["profile"] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
        report[name] = entry
    for name, error in failed.items():
        report[name] = {"error": error}
    reference = report["reference"]["seconds_per_step"]
    report["speedup"] = reference / report["visattn"]["seconds_per_step"]
    report["speedups"] = {name: reference / report[name]["seconds_per_step"] for name in kinds if name != "reference"}
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="visattn bench caption-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, value in asdict(Dims()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=value, help=f"(default: {value})")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per implementation (default: 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    parser.add_argument("--dtype", choices=["fp32", "tf32", "bf16"], default="fp32",
                        help="visattn's precision (tf32: CUDA only)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="add visattn's step captured in a CUDA graph (CUDA only)")
    parser.add_argument("--compile", default=None, dest="compile_mode",
                        choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs"],
                        help="add visattn's step with the captioner under torch.compile(mode=...)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-size", type=int, default=2048, help="side of the peak-measuring matmul (default: 2048)")
    parser.add_argument("--equal-lengths", action="store_true",
                        help="every caption of the batch has --max-len tokens (the paper's batching)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--profile", action="store_true",
                        help="add each implementation's step broken down by kind of work (torch.profiler)")
    parser.add_argument("--json", action="store_true", help="print only the JSON report")
    args = parser.parse_args(argv)
    try:
        dims = Dims(**{name: getattr(args, name) for name in asdict(Dims())})
        report = run(dims, dtype=args.dtype, steps=args.steps, warmup=args.warmup, device=args.device,
                     threads=args.threads, seed=args.seed, memory=not args.no_memory, peak_size=args.peak_size,
                     equal_lengths=args.equal_lengths, profile=args.profile, cuda_graphs=args.cuda_graphs,
                     compile_mode=args.compile_mode)
    except ValueError as err:
        print(f"caption-train: error: {err}", file=sys.stderr)
        return 2
    if not args.json:
        for name in ("reference", "visattn", "visattn_fp32", "visattn_autocast", "visattn_graph", "visattn_compiled"):
            if name in report:
                e = report[name]
                print(f"{name:16s} {e['dtype']:13s} {e['seconds_per_step']:.3f} s/step, "
                      f"{e['tokens_per_s']:.0f} tokens/s, "
                      f"{e['achieved_gflops']:.0f} GFLOP/s ({100 * e['fraction_of_peak']:.0f}% of peak), "
                      f"loss {e['losses'][0]:.3f} -> {e['losses'][-1]:.3f}", file=sys.stderr)
        print(f"speedup {report['speedup']:.2f}x on {report['device']} ({report['threads']} threads)", file=sys.stderr)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
