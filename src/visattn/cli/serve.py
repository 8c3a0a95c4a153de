"""``visattn serve``: the browser page where you hover a word and see where the model looked."""

from __future__ import annotations

import argparse
import errno
import ipaddress
import logging
import re
import socket
from pathlib import Path

from visattn.cli.common import CliError, UsageError, add_device_option, positive_int

__all__ = ["register", "run_serve", "parse_checkpoint_spec", "bind_socket"]

log = logging.getLogger("visattn")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def register(commands: dict) -> None:
    serve = commands["root"].add_parser(
        "serve", help="a local web page showing where each model looked (needs the 'serve' extra)",
        description="Serve checkpoints on a local web page: drop an image (or try a procedural sample) and "
                    "hover the caption's words to see each word's attention map; classifier glimpses and "
                    "detection queries likewise. The JSON API is documented at /docs.")
    serve.add_argument("--checkpoint", action="append", required=True, metavar="[NAME=]PATH",
                       help="a .safetensors checkpoint; repeat for several models. NAME (default: the model's "
                            "registry name) is how URLs call it")
    serve.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                       help="torch: checkpoints with PyTorch; onnx: each --checkpoint is a folder written by "
                            "`visattn export --format onnx`, run by ONNX Runtime (default: torch)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on; anything but loopback exposes the models to your network "
                            "(default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one (default: 8000)")
    serve.add_argument("--workers", type=positive_int, default=2, help="inference threads (default: 2)")
    serve.add_argument("--queue-size", type=positive_int, default=32,
                       help="requests allowed to wait for a worker; more are answered 503 with Retry-After "
                            "(default: 32)")
    serve.add_argument("--max-batch", type=positive_int, default=8,
                       help="most waiting requests of one model run together as one batch; 1: no batching "
                            "(default: 8)")
    serve.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload; bigger ones get 413 (default: 10)")
    add_device_option(serve)
    serve.set_defaults(handler=run_serve)


def parse_checkpoint_spec(spec: str) -> tuple[str | None, Path]:
    """``NAME=PATH`` -> (NAME, PATH); a plain ``PATH`` -> (None, PATH). UsageError for a bad NAME."""
    name, sep, path = spec.partition("=")
    if not sep or "/" in name or "\\" in name:
        return None, Path(spec)
    if not _NAME.match(name):
        raise UsageError(f"--checkpoint {spec!r}: the name {name!r} must be letters, digits, '.', '-' or '_'")
    return name, Path(path)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; CliError naming the address when it cannot be had."""
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be in 0..65535, got {port}")
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET  # a host name such as "localhost"
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and without it the
    # last segment of every answer waits for the client's delayed ACK (about 40 ms a request on keep-alive).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise CliError(f"port {port} on {host} is in use; pass another --port (0 picks a free one)") from None
        raise CliError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _onnx_predictor(folder: Path):
    try:
        from visattn.runtime import OnnxPredictor
    except ImportError as error:
        raise CliError(f"visattn serve --runtime onnx needs the 'export' extra ({error.name} is missing): "
                       "pip install 'visattn[export]'") from None
    return OnnxPredictor(folder)


def run_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from visattn.serve import create_app
    except ImportError as error:
        raise CliError(f"visattn serve needs the 'serve' extra ({error.name} is missing): "
                       "pip install 'visattn[serve]'") from None
    from visattn.predictor import Predictor

    if not args.max_upload_mb > 0:
        raise UsageError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    predictors: dict = {}
    paths: dict[str, Path] = {}
    for spec in args.checkpoint:
        name, path = parse_checkpoint_spec(spec)
        if args.runtime == "onnx":
            predictor = _onnx_predictor(path)
        else:
            predictor = Predictor.from_checkpoint(path, device=args.device)
        if name is None:
            name, count = predictor.model_name, 2
            while name in predictors:
                name, count = f"{predictor.model_name}-{count}", count + 1
        elif name in predictors:
            raise UsageError(f"--checkpoint {spec!r}: the name {name!r} is taken by {paths[name]}")
        predictors[name], paths[name] = predictor, path
    app = create_app(predictors, workers=args.workers, queue_size=args.queue_size, max_batch=args.max_batch,
                     max_upload_mb=args.max_upload_mb)
    sock = bind_socket(args.host, args.port)
    port = sock.getsockname()[1]
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"visattn serve: open http://{shown}:{port}/  (API docs: http://{shown}:{port}/docs)")
    for name, info in app.state.models.items():
        data = info.get("data") or ("procedural scenes" if info["sample"] else "its own images (no samples)")
        grid = "x".join(map(str, info["grid"])) if info.get("grid") else "?"
        print(f"  {name}: {info['task']} ({info['model']}), trained on {data}, {info['image_size']} px images, "
              f"{grid} attention grid, on {info.get('device', 'cpu')}  <- {paths[name]}")
    if not _is_loopback(args.host):
        print(f"  warning: listening on {args.host}, not loopback: anyone who can reach this machine can use it")
    print("Ctrl-C stops the server.", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])  # Ctrl-C: uvicorn finishes the requests in flight, then re-raises the signal
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    print("visattn serve: stopped", flush=True)
    return 0

