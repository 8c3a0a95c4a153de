"""Timing helpers shared by the speed benchmarks: threads, device, alternating runs, matmul peak, peak memory.

Every speed figure is measured side by side with its reference in the same process: each implementation
is warmed up, then the implementations run in alternating order (A B, B A, A B, ...) so that a slow
minute of a shared machine hits both, and the median of each one's timings is reported.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` of each implementation in this process (reset in
between). On the CPU PyTorch keeps no such counter, so each implementation runs once more in a fresh
Python process. Reported: ``peak_mib`` (that process's peak resident set while it does the work twice),
``baseline_mib`` (its resident set with the modules imported, nothing built), ``built_mib`` (after
building models, data and optimizer) and the differences ``workload_mib`` = peak − baseline and
``work_mib`` = peak − built (activations, gradients, optimizer state and temporaries of the work itself).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["configure", "device_info", "synchronize", "time_alternating", "summarise", "matmul_peak_gflops",
           "product_gflops", "memory_bandwidth_gbs", "peak_memory", "memory_child_main", "current_rss_mib",
           "max_rss_mib", "TORCH_DTYPES"]

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BENCH_DIR = Path(__file__).resolve().parent


def configure(threads: int | None, device: str = "auto") -> torch.device:
    """Set the CPU thread count (None keeps PyTorch's) and pick the device ("auto": CUDA when present)."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = torch.device(device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available")
    return chosen


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on (printed with every benchmark)."""
    info: dict[str, Any] = {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
                            "cpu": _cpu_name(), "load_average": list(os.getloadavg())}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_alternating(functions: dict[str, Callable[[], Any]], *, repeats: int, warmup: int,
                     device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each function, runs alternating in order, after ``warmup`` untimed calls each.

    Args:
        functions: name -> a callable doing one unit of work (one training step, one decode pass ...).
        repeats: timed calls per function (>= 1).
        warmup: untimed calls per function first.
        device: synchronised around each call, so asynchronous CUDA work is counted.

    Returns:
        name -> the ``repeats`` timings in seconds, in the order they ran.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    names = list(functions)
    for name in names:
        for _ in range(warmup):
            functions[name]()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        order = names if round_index % 2 == 0 else names[::-1]  # A B, B A, ...: drift hits both
        for name in order:
            start = time.perf_counter()
            functions[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def summarise(seconds: list[float]) -> dict[str, float]:
    """Median, min and max of timings."""
    return {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds)}


def matmul_peak_gflops(dtype: torch.dtype, device: torch.device, *, size: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a square ``size`` matmul in ``dtype`` on ``device`` (the same threads as the benchmark).

    The fastest of ``repeats`` timings after a warm-up (a peak is what the machine can do; a disturbance
    only slows a run down); 2·size³ floating-point operations per product.
    """
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    calls = 10 if device.type == "cuda" else 1  # one product is too short to time on a GPU
    work = lambda: [torch.matmul(a, b, out=out) for _ in range(calls)]  # noqa: E731
    seconds = time_alternating({"matmul": work}, repeats=repeats, warmup=2, device=device)["matmul"]
    return 2.0 * size**3 * calls / min(seconds) / 1e9


def product_gflops(m: int, k: int, n: int, dtype: torch.dtype, device: torch.device, *, repeats: int = 9) -> float:
    """GFLOP/s of an (m, k) @ (k, n) product, as one recurrence step runs it: the faster of ``a @ b`` and
    its feature-major form ``(b^T a^T)^T`` (BLAS libraries differ on which suits few rows), best of
    ``repeats``."""
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    b_t = b.t().contiguous()
    calls = 20  # short products: time several
    forms = {"rows": lambda: [torch.matmul(a, b) for _ in range(calls)],
             "features": lambda: [torch.matmul(b_t, a.t()).t().contiguous() for _ in range(calls)]}
    seconds = time_alternating(forms, repeats=repeats, warmup=2, device=device)
    return 2.0 * m * k * n * calls / min(min(s) for s in seconds.values()) / 1e9


def memory_bandwidth_gbs(device: torch.device, *, mib: int = 256, repeats: int = 5) -> float:
    """GB/s of a large copy (bytes read + bytes written; the fastest of ``repeats``): the rate that
    element-wise work over tensors larger than the caches cannot beat."""
    source = torch.ones(mib * 2**20 // 4, device=device)
    target = torch.empty_like(source)
    seconds = time_alternating({"copy": lambda: target.copy_(source)}, repeats=repeats, warmup=2, device=device)
    return 2.0 * source.numel() * 4 / min(seconds["copy"]) / 1e9


def current_rss_mib() -> float:
    """Resident set of this process now (Linux /proc; falls back to the peak elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return max_rss_mib()


def max_rss_mib() -> float:
    """Peak resident set of this process so far.

    On Linux this is ``VmHWM`` of /proc/self/status: ``ru_maxrss`` would not do in a child process, because
    the kernel carries the parent's high-water mark over ``fork`` + ``exec``.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def peak_memory(module: str, function: str, kwargs: dict[str, Any], *, device: torch.device,
                run: Callable[[], Any] | None = None, timeout: float = 600.0) -> dict[str, Any]:
    """Peak memory of one implementation doing its work.

    Args:
        module, function: on the CPU, ``benchmarks/<module>.py``'s ``function(**kwargs)`` is called in a
            fresh process; it builds the workload and returns a callable doing one unit of work, which is
            called twice.
        kwargs: JSON-able arguments of ``function``.
        device: CUDA measures ``run`` in this process instead.
        run: the CUDA path's unit of work (already built).
        timeout: seconds before the child process is abandoned.

    Returns:
        CUDA: ``{"kind": "cuda_max_memory_allocated", "peak_mib"}``. CPU: ``{"kind": "process_peak_rss",
        "peak_mib", "baseline_mib", "built_mib", "workload_mib", "work_mib"}`` (module docstring).
    """
    if device.type == "cuda":
        if run is None:
            raise ValueError("peak_memory on CUDA needs the unit of work as run=")
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        synchronize(device)
        return {"kind": "cuda_max_memory_allocated", "peak_mib": torch.cuda.max_memory_allocated(device) / 2**20}
    code = (f"import sys; sys.path.insert(0, {str(BENCH_DIR)!r}); import _timing; "
            f"_timing.memory_child_main({module!r}, {function!r})")
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    done = subprocess.run([sys.executable, "-c", code], input=json.dumps(kwargs), capture_output=True, text=True,
                          timeout=timeout, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"memory measurement of {module}.{function} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _reset_peak_rss() -> bool:
    """Release freed heap to the system and restart the ``VmHWM`` high-water mark from now (Linux >= 4.0)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_child_main(module: str, function: str) -> None:
    """Child side of :func:`peak_memory`: kwargs as JSON on stdin, the result as one JSON line on stdout."""
    import importlib

    kwargs = json.loads(sys.stdin.read())
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    builder = getattr(importlib.import_module(module), function)
    baseline = current_rss_mib()  # torch and the benchmark's imports loaded, nothing built
    work = builder(**kwargs)
    reset = _reset_peak_rss()
    built = current_rss_mib()  # models, data and optimizer built
    work()
    work()
    peak = max_rss_mib()
    print(json.dumps({"kind": "process_peak_rss", "peak_mib": round(peak, 1), "baseline_mib": round(baseline, 1),
                      "built_mib": round(built, 1), "workload_mib": round(peak - baseline, 1),
                      "work_mib": round(peak - built, 1) if reset else None}))
