"""Helpers of ``benchmarks/gpu.sh``: the environment as JSON, and the key numbers of a run's gpu.jsonl.

    python benchmarks/gpu_summary.py env                       # one JSON line: GPU, driver, torch, CUDA
    python benchmarks/gpu_summary.py RESULTS.jsonl SUMMARY.json  # key numbers -> SUMMARY.json, and a table
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def environment() -> dict[str, Any]:
    """What the run measured on: GPU, driver, memory, torch, CUDA and cuDNN versions."""
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda,
                            "cudnn": torch.backends.cudnn.version(), "python": platform.python_version(),
                            "cpu_count": os.cpu_count(), "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count, capability=f"{props.major}.{props.minor}")
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        info["nvidia_smi"] = done.stdout.strip() or done.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as err:
        info["nvidia_smi"] = f"unavailable: {err}"
    return info


def _pytest_counts(lines: list[str]) -> dict[str, Any]:
    """Counts from pytest's last summary line ("3 failed, 10 passed, 2 skipped in 4.2s")."""
    for line in reversed(lines):
        found = dict((word, int(n)) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed)", line))
        if found:
            seconds = re.search(r"in ([\d.]+)s", line)
            failures = [x for x in lines if x.startswith(("FAILED", "ERROR"))]
            return {**found, "seconds": float(seconds.group(1)) if seconds else None, "failures": failures[:20]}
    return {"unparsed": lines[-5:]}


def _caption(report: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"batch_size": report["dims"]["batch_size"], "dtype": report["dtype"],
                           "peaks_tflops": {k: round(v / 1e3, 1) for k, v in report["peaks_gflops"].items()},
                           "memory_bandwidth_gbs": round(report["memory_bandwidth_gbs"]),
                           "speedups_vs_reference": {k: round(v, 2) for k, v in report["speedups"].items()}}
    for name in ("reference", "visattn", "visattn_fp32", "visattn_autocast", "visattn_graph", "visattn_compiled"):
        if name not in report:
            continue
        e = report[name]
        row = {"dtype": e["dtype"], "ms_per_step": round(1e3 * e["seconds_per_step"], 2),
               "tflops": round(e["achieved_gflops"] / 1e3, 2), "fraction_of_peak": round(e["fraction_of_peak"], 4),
               "loss_first_last": [round(e["losses"][0], 4), round(e["losses"][-1], 4)]}
        if "fraction_of_bf16_peak" in e:
            row["fraction_of_bf16_peak"] = round(e["fraction_of_bf16_peak"], 4)
        if "first_step_seconds" in e:
            row["first_step_seconds"] = round(e["first_step_seconds"], 1)
        if "memory" in e:
            row["peak_mib"] = round(e["memory"]["peak_mib"])
        if "profile" in e and "kernels" in e["profile"]:
            row["profile"] = e["profile"]
        out[name] = row
    return out


def _beam(report: dict[str, Any]) -> dict[str, Any]:
    return {"num_images": report["num_images"], "beam_size": report["beam_size"],
            "decode_batch": report["decode_batch"], "identical_captions": report["identical_captions"],
            "speedup": round(report["speedup"], 1), "speedup_batching_alone": round(report["speedup_batching_alone"], 1),
            **{name: {"images_per_s": round(report[name]["images_per_s"], 1),
                      "identical_to_batched": report[name]["identical_to_batched"]}
               for name in ("batched", "visattn_one_at_a_time", "reference")}}


def _steps(report: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"dtype": report["dtype"], "batch_size": report["batch_size"]}
    for task in ("classify", "caption", "detect"):
        if task not in report:
            continue
        e = report[task]
        row: dict[str, Any] = {"eager_ms": round(1e3 * e["eager"]["seconds_per_step"], 2)}
        if "compiled" in e:
            c = e["compiled"]
            row["compiled"] = ({"error": c["error"]} if "error" in c else
                               {"ms": round(1e3 * c["seconds_per_step"], 2),
                                "first_step_seconds": round(c["first_step_seconds"], 1),
                                "speedup_over_eager": round(c["speedup_over_eager"], 2)})
        if "host_syncs" in e:
            row["host_syncs"] = e["host_syncs"]
        out[task] = row
    return out


def summarise(results: Path) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for line in results.read_text().splitlines():
        entry = json.loads(line)
        name = entry["section"]
        if "not_run" in entry:
            summary[name] = {"not_run": entry["not_run"]}
            continue
        head = {"rc": entry["rc"], "seconds": entry["seconds"], **({"timed_out": True} if entry.get("timed_out") else {})}
        report = entry.get("report")
        try:
            if name == "env":
                summary[name] = report if report is not None else head
            elif name.startswith(("test", "pytest")):
                summary[name] = {**head, **_pytest_counts(entry.get("output_tail", []))}
            elif report is None:
                summary[name] = {**head, "output_tail": entry.get("output_tail", [])[-8:]}
            elif report.get("benchmark") == "caption-train":
                summary[name] = {**head, **_caption(report)}
            elif report.get("benchmark") == "beam":
                summary[name] = {**head, **_beam(report)}
            elif report.get("benchmark") == "train-step":
                summary[name] = {**head, **_steps(report)}
            else:
                summary[name] = {**head, "report": report}
        except (KeyError, IndexError, TypeError) as err:  # a partial report: keep what there is
            summary[name] = {**head, "summary_error": repr(err)}
    return summary


def _table(summary: dict[str, Any]) -> str:
    rows = []
    for name, s in summary.items():
        if "not_run" in s:
            rows.append(f"{name:20s} not run: {s['not_run']}")
        elif name.startswith("caption"):
            parts = [f"{k} {v['ms_per_step']}ms" + (f" ({100 * v['fraction_of_bf16_peak']:.1f}% bf16 peak)"
                                                    if "fraction_of_bf16_peak" in v else "")
                     for k, v in s.items() if isinstance(v, dict) and "ms_per_step" in v]
            rows.append(f"{name:20s} rc={s['rc']} " + "; ".join(parts) + f"; x{s.get('speedups_vs_reference')}")
        elif name == "beam" and "speedup" in s:
            rows.append(f"{name:20s} rc={s['rc']} speedup {s['speedup']}x, identical {s['identical_captions']}")
        elif name.startswith(("test", "pytest")):
            rows.append(f"{name:20s} rc={s['rc']} " + ", ".join(f"{k} {s[k]}" for k in
                                                               ("passed", "failed", "skipped", "errors", "seconds") if k in s))
        elif name != "env":
            rows.append(f"{name:20s} rc={s.get('rc')} " + json.dumps({k: v for k, v in s.items()
                                                                     if k not in ("rc", "seconds")})[:400])
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    if argv[:1] == ["env"]:
        print(json.dumps(environment()))
        return 0
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    results, target = Path(argv[0]), Path(argv[1])
    summary = summarise(results)
    with tempfile.NamedTemporaryFile("w", dir=target.parent, delete=False, suffix=".tmp") as handle:
        json.dump(summary, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(handle.name, target)
    print(_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
