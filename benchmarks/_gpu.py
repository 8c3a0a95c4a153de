"""GPU pieces of the speed benchmarks: TF32 steps, a training step captured in a CUDA graph, kernel profiles.

- :class:`TF32` runs a step with TF32 matrix products and restores the previous setting after it, so that
  strict-fp32 and TF32 implementations alternate in one process;
- :func:`cuda_graph_step` captures a whole training step (forward, backward, a capturable optimizer) once
  and replays it: one launch instead of the hundreds of small kernels a recurrence step is made of;
- :func:`matmul_peak` is the square-matmul peak of a precision ("fp32", "tf32", "bf16", "fp16");
- :func:`profile_step_cuda` counts one step's kernels and adds up their GPU time by kind.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

import _timing

__all__ = ["allow_tf32", "TF32", "cuda_graph_step", "matmul_peak", "profile_step_cuda"]


@contextmanager
def allow_tf32() -> Iterator[None]:
    """TF32 matrix products and convolutions inside the block (CUDA); the previous setting after it."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


class TF32:
    """A step run under :func:`allow_tf32`."""

    def __init__(self, step: Callable[[], Tensor]) -> None:
        self.step = step

    def __call__(self) -> Tensor:
        with allow_tf32():
            return self.step()


class _FixedPlan:
    """Stands in for the captioner's ``RunningBatch``: plans once per (lengths, steps, device), then returns
    the same plan, whose device tensors the graph reads (planning copies from the CPU, which a graph
    capture cannot do; the benchmark's batch has the same lengths at every step)."""

    def __init__(self, planner: type) -> None:
        self.planner, self.plans = planner, {}

    def __call__(self, decode: Tensor, steps: int, device: torch.device) -> Any:
        key = (tuple(decode.tolist()), steps, str(device))
        if key not in self.plans:
            self.plans[key] = self.planner(decode, steps, device)
        return self.plans[key]


def cuda_graph_step(step: Callable[[], Tensor], device: torch.device, *, warmup: int = 3) -> Callable[[], Tensor]:
    """``step`` captured once in a CUDA graph after ``warmup`` calls on a side stream; each call replays it.

    The step's optimizer must be capturable (``capturable=True``). The captioner's running-batch plan
    is held fixed while warming up and capturing (:class:`_FixedPlan`). Returns a callable that replays
    the graph and returns a copy of the captured step's loss (the graph overwrites it at every replay).
    """
    from visattn.heads import captioner as captioner_module

    fixed = _FixedPlan(captioner_module.RunningBatch)
    captioner_module.RunningBatch = fixed
    try:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                step()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_loss = step()
    finally:
        captioner_module.RunningBatch = fixed.planner

    def replay() -> Tensor:
        graph.replay()
        return static_loss.clone()

    return replay


def matmul_peak(kind: str, device: torch.device, size: int) -> float:
    """GFLOP/s of a square ``size`` matmul in ``kind`` ("tf32": fp32 operands, TF32 products)."""
    if kind == "tf32":
        with allow_tf32():
            return _timing.matmul_peak_gflops(torch.float32, device, size=size)
    return _timing.matmul_peak_gflops(_timing.TORCH_DTYPES[kind], device, size=size)


_MATMUL_WORDS = ("gemm", "cutlass", "nvjet", "cublas", "xmma", "gemv", "wgmma")


def profile_step_cuda(step: Callable[[], Any]) -> dict[str, Any]:
    """One step's GPU kernels (torch.profiler with CUDA activity), after one untimed step.

    Returns:
        ``kernels`` (launched in the step), ``gpu_busy_ms`` (their summed GPU time, copies included),
        ``wall_ms_profiled`` (the step's wall time under the profiler) and ``kernel_ms`` by kind:
        ``matmul`` (cuBLAS/CUTLASS products), ``optimizer`` (AdamW), ``copy`` (memcpy/memset), ``other``
        (element-wise, reductions, indexing, softmax).
    """
    from torch.profiler import ProfilerActivity, profile

    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    kinds = {"matmul": 0.0, "optimizer": 0.0, "copy": 0.0, "other": 0.0}
    count = 0
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        name = event.name.lower()
        if "memcpy" in name or "memset" in name:
            kind = "copy"
        else:
            count += 1
            kind = ("matmul" if any(word in name for word in _MATMUL_WORDS)
                    else "optimizer" if "adam" in name else "other")
        kinds[kind] += event.time_range.elapsed_us() / 1e3
    return {"kernels": count, "gpu_busy_ms": round(sum(kinds.values()), 3), "wall_ms_profiled": round(1e3 * wall, 3),
            "kernel_ms": {k: round(v, 3) for k, v in kinds.items()}}
