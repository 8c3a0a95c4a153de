"""Serving speed: ``visattn serve`` over HTTP vs calling the Predictor directly, in the same run.

One procedural scene (PNG, at the checkpoint's image size) is captioned again and again:

- ``direct``: ``Predictor.predict(image)`` on an already decoded image, from C client threads at once
  (C = 1 is the Predictor's own batch-of-one speed, the reference);
- ``http``: ``POST /api/predict/NAME`` with the PNG as an upload, from C client threads each holding a
  keep-alive connection, against ``visattn serve`` running in its own process (its workers, bounded queue
  and batching of waiting requests as configured). This path adds the upload, decoding the PNG, the
  queue and the JSON answer.

For each concurrency C (default 1, 4, 16) and each way, ``--requests`` requests (after a warm-up) give
requests per second and the p50/p95 latency. The two ways run in alternating rounds (direct, HTTP, HTTP,
direct, ...), so that a slow minute of a shared machine hits both. Every HTTP answer must be a 200 whose best
caption equals the direct one (a 503 would be counted and reported, and fails the run).

Targets (from issue 10): the HTTP path adds at most 15% to p50 at C = 1, and its throughput at C = 16 is
at least the direct batch-of-one throughput (direct at C = 1). The report says whether each is met.

Run: ``visattn bench serve [--checkpoint runs/demo/run/best.safetensors] [--threads 2] [--json]``.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

import _timing

DEFAULT_CHECKPOINT = Path("runs/demo/run/best.safetensors")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def summarise(latencies: list[float], seconds: float) -> dict[str, float]:
    """req/s over the whole wall time, and the latency percentiles in milliseconds."""
    return {"requests": len(latencies), "req_per_s": round(len(latencies) / seconds, 2),
            "p50_ms": round(1000 * statistics.median(latencies), 2),
            "p95_ms": round(1000 * _percentile(latencies, 0.95), 2),
            "mean_ms": round(1000 * statistics.fmean(latencies), 2)}


def hammer(call: Callable[[], Any], *, concurrency: int, requests: int) -> tuple[list[float], float, list[Any]]:
    """``requests`` calls of ``call`` from ``concurrency`` threads; (latencies, wall seconds, answers)."""
    latencies: list[float] = []
    answers: list[Any] = []
    lock = threading.Lock()
    remaining = [requests]

    def worker() -> None:
        while True:
            with lock:
                if remaining[0] == 0:
                    return
                remaining[0] -= 1
            start = time.perf_counter()
            answer = call()
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                answers.append(answer)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, time.perf_counter() - started, answers


def multipart(png: bytes, fields: dict[str, Any]) -> tuple[bytes, str]:
    """A multipart/form-data body with the image in ``file`` and the options as fields; (body, content type)."""
    boundary = "visattn-bench-boundary"
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n".encode()
             for k, v in fields.items()]
    parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"scene.png\"\r\n"
                 f"Content-Type: image/png\r\n\r\n".encode() + png + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class HttpClient:
    """One keep-alive connection per thread to the server (the standard library's http.client: a light client,
    so the client's own cost stays small next to the server's)."""

    def __init__(self, host: str, port: int, path: str, body: bytes, content_type: str) -> None:
        self.host, self.port, self.path, self.body = host, port, path, body
        self.headers = {"Content-Type": content_type, "Content-Length": str(len(body))}
        self.local = threading.local()

    def __call__(self) -> tuple[int, bytes]:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        conn.request("POST", self.path, self.body, self.headers)
        response = conn.getresponse()
        return response.status, response.read()


def start_server(checkpoint: Path, *, threads: int, workers: int, max_batch: int, queue_size: int,
                 device: str) -> tuple[subprocess.Popen, str, int]:
    """``visattn serve`` in its own process on a free port; (process, host, port)."""
    command = [sys.executable, "-m", "visattn.cli", "serve", "--checkpoint", f"bench={checkpoint}", "--port", "0",
               "--threads", str(threads), "--workers", str(workers), "--max-batch", str(max_batch),
               "--queue-size", str(queue_size), "--device", device]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    while True:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError("visattn serve did not start:\n" + "".join(seen))
        seen.append(line)
        found = re.search(r"open http://([\d.]+):(\d+)/", line)
        if found:
            threading.Thread(target=process.stdout.read, daemon=True).start()  # keep its pipe drained
            return process, found.group(1), int(found.group(2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                        help="a captioner checkpoint (default: the demo's; 'make demo' trains it)")
    parser.add_argument("--concurrency", default="1,4,16", help="client threads, comma-separated")
    parser.add_argument("--requests", type=int, default=64, help="timed requests per concurrency and way")
    parser.add_argument("--warmup", type=int, default=8, help="untimed requests before each measurement")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds the requests are split into")
    parser.add_argument("--threads", type=int, default=None,
                        help="PyTorch threads, for the direct calls and for the server (default: PyTorch's)")
    parser.add_argument("--workers", type=int, default=2, help="the server's inference threads")
    parser.add_argument("--max-batch", type=int, default=8, help="the server's batching of waiting requests")
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda, for both ways")
    parser.add_argument("--seed", type=int, default=4, help="the procedural scene's seed")
    parser.add_argument("--json", action="store_true", help="print one JSON line (default: indented JSON)")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    if not args.checkpoint.is_file():
        print(f"bench serve: no checkpoint at {args.checkpoint}; train the demo captioner first "
              "(make demo, or visattn demo --out runs/demo) or pass --checkpoint", file=sys.stderr)
        return 1
    device = _timing.configure(args.threads, args.device)
    from visattn.predictor import Predictor
    from visattn.serve.samples import draw_sample

    predictor = Predictor.from_checkpoint(args.checkpoint, device=str(device), task="caption")
    scene = draw_sample("caption", image_size=predictor.image_size, seed=args.seed)
    png = base64.b64decode(scene["image"].split(",", 1)[1])
    image = Image.open(io.BytesIO(png)).convert("RGB")
    options = {"beam_size": args.beam_size}
    expected = predictor.predict(image, **options)[0].caption

    def direct() -> str:
        return predictor.predict(image, **options)[0].caption

    threads = args.threads or torch.get_num_threads()
    process, host, port = start_server(args.checkpoint, threads=threads, workers=args.workers,
                                       max_batch=args.max_batch, queue_size=max(levels) * 2, device=str(device))
    try:
        body, content_type = multipart(png, options)
        client = HttpClient(host, port, "/api/predict/bench", body, content_type)
        ways = {"direct": direct, "http": client}
        results = []
        for concurrency in levels:
            row: dict[str, Any] = {"concurrency": concurrency}
            for call in ways.values():
                hammer(call, concurrency=concurrency, requests=args.warmup)
            measured: dict[str, tuple[list[float], float, list[Any]]] = {w: ([], 0.0, []) for w in ways}
            for round_index in range(args.rounds):  # A B, B A, ...: a slow minute of the machine hits both
                order = list(ways) if round_index % 2 == 0 else list(ways)[::-1]
                for way in order:
                    latencies, seconds, answers = hammer(ways[way], concurrency=concurrency,
                                                         requests=max(1, args.requests // args.rounds))
                    before = measured[way]
                    measured[way] = (before[0] + latencies, before[1] + seconds, before[2] + answers)
            for way, (latencies, seconds, answers) in measured.items():
                row[way] = summarise(latencies, seconds)
                if way == "http":
                    codes = [status for status, _ in answers]
                    row[way]["status_503"] = codes.count(503)
                    captions = {json.loads(data)["captions"][0]["text"] for status, data in answers if status == 200}
                    row[way]["same_caption"] = captions == {expected}
                    if set(codes) != {200}:
                        raise RuntimeError(f"HTTP answers at concurrency {concurrency}: {sorted(set(codes))}")
                else:
                    row[way]["same_caption"] = set(answers) == {expected}
            row["p50_overhead"] = round(row["http"]["p50_ms"] / row["direct"]["p50_ms"] - 1, 4)
            results.append(row)
    finally:
        process.terminate()
        process.wait(30)
    by_level = {row["concurrency"]: row for row in results}
    targets = {}
    if 1 in by_level:
        targets["http_p50_overhead_at_1_at_most_15pct"] = by_level[1]["p50_overhead"] <= 0.15
    if 1 in by_level and 16 in by_level:
        targets["http_rps_at_16_at_least_direct_rps_at_1"] = (
            by_level[16]["http"]["req_per_s"] >= by_level[1]["direct"]["req_per_s"])
    report = {"benchmark": "serve", **_timing.device_info(device), "checkpoint": str(args.checkpoint),
              "model": {k: predictor.info().get(k) for k in ("task", "model", "image_size", "grid")},
              "caption": expected, "settings": {"beam_size": args.beam_size, "workers": args.workers,
                                                 "max_batch": args.max_batch, "requests": args.requests,
                                                 "warmup": args.warmup, "rounds": args.rounds},
              "levels": results, "targets": targets}
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
