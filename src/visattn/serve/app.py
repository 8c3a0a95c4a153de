"""The web app: a page that shows where a model looked, and the JSON API it calls.

A thin layer over :class:`visattn.predictor.Predictor`: routes validate a request (:mod:`.limits`) and
delegate, the models run in an :class:`~.pool.InferencePool` off the event loop, and every answer is the
Predictor's own ``to_dict()``. Errors are JSON ``{"error": "<what is wrong>", "field": "<which field>"}``.

    GET  /                         the page (static HTML, CSS and JS shipped with the package)
    GET  /api/models               one object per model: name, task, image size, grid, options, samples
    GET  /healthz                  workers alive, queue length; 503 when a worker has died
    POST /api/predict/{name}       multipart: the image in ``file``, options as further fields
    POST /api/{task}/{name}        the same, refusing a model of another task (caption, classify, detect)
    GET  /api/sample/{name}        a fresh procedural scene of the model's kind, with its references
    GET  /docs                     FastAPI's OpenAPI page
"""

from __future__ import annotations

import json
import logging
import math
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from visattn.serve.limits import (DEFAULT_MAX_PIXELS, TASK_OPTIONS, ApiError, BodyLimit, decode_upload,
                                  parse_options)
from visattn.serve.pool import InferencePool, PoolClosed, QueueFull
from visattn.serve.samples import draw_sample, sample_support

__all__ = ["create_app", "describe_model", "STATIC_DIR"]

log = logging.getLogger("visattn")

STATIC_DIR = Path(__file__).parent / "static"
TASKS = ("caption", "classify", "detect")
_SAMPLE_NOTE = ("Trained on procedural scenes: it knows coloured digits and shapes on dark backgrounds, "
                "and nothing else (it will not caption a holiday photo).")


def describe_model(name: str, predictor: Any) -> dict[str, Any]:
    """What ``/api/models`` says of one model: the Predictor's ``info()`` plus the server's view of it.

    Returns:
        ``info()`` with ``name`` (the server's name), ``options`` (per option: type, default, range, help),
        ``sample`` (whether ``/api/sample`` works) and ``sample_note`` (why not, or what the model knows).
    """
    info = dict(predictor.info())
    info["model"] = info.get("model", info.get("name"))
    info["name"] = name
    task = info["task"]
    config = getattr(getattr(predictor, "model", None), "config", None)
    reason = sample_support(task, class_names=info.get("class_names"), vocab=getattr(config, "vocab", None),
                            image_size=info.get("image_size"))
    defaults = info.get("options") or {}
    info["options"] = {key: {"type": spec.kind.__name__, "default": defaults.get(key), "min": spec.low,
                             "max": spec.high, "help": spec.help} for key, spec in TASK_OPTIONS[task].items()}
    info["sample"] = reason is None
    info["sample_note"] = _SAMPLE_NOTE if reason is None else f"no procedural samples: {reason}"
    return info


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN or infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    try:
        body = json.dumps(payload, allow_nan=False, separators=(",", ":"))
    except ValueError:  # a -inf log-probability or a NaN somewhere: send null there
        body = json.dumps(_finite(payload), allow_nan=False, separators=(",", ":"))
    return Response(body, status_code=status, media_type="application/json", headers=dict(headers or {}))


def _error(error: ApiError) -> Response:
    return _json(error.body(), error.status, error.headers)


def create_app(predictors: Mapping[str, Any], *, workers: int = 2, queue_size: int = 32, max_batch: int = 8,
               max_upload_mb: float = 10.0, max_pixels: int = DEFAULT_MAX_PIXELS, retry_after: int = 1) -> FastAPI:
    """Build the app serving ``predictors``.

    Args:
        predictors: model name (as it appears in URLs) -> a loaded Predictor.
        workers: inference threads; queue_size: requests allowed to wait for one (more get 503);
            max_batch: most waiting requests run as one batch (see :class:`~.pool.InferencePool`).
        max_upload_mb: the largest upload (413 above it).
        max_pixels: the decompression-bomb limit of an upload (413 above it).
        retry_after: seconds a 503 tells the client to wait (``Retry-After``).

    Raises:
        ValueError: no predictors, a bad name, or a bad limit.
    """
    if not predictors:
        raise ValueError("create_app needs at least one predictor")
    for name in predictors:
        if not name or "/" in name or name != name.strip():
            raise ValueError(f"model name {name!r} cannot appear in a URL; use letters, digits, '-' and '_'")
    if not max_upload_mb > 0 or not max_pixels > 0:
        raise ValueError(f"max_upload_mb and max_pixels must be positive, got {max_upload_mb}, {max_pixels}")
    max_bytes = int(max_upload_mb * 2**20)
    pool = InferencePool(predictors, workers=workers, queue_size=queue_size, max_batch=max_batch)
    models = {name: describe_model(name, predictor) for name, predictor in predictors.items()}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        pool.start()
        yield
        await run_in_threadpool(pool.close)

    app = FastAPI(title="visattn", version="0.1.0", lifespan=lifespan,
                  description="Where the model looked: captions word by word, classifier glimpses and detection "
                              "queries, with one attention map each. Errors are JSON {error, field}.")
    app.state.pool = pool
    app.state.models = models
    app.add_middleware(BodyLimit, max_upload_bytes=max_bytes)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # ------------------------------------------------------------------------------------------ errors
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> Response:
        return _error(error)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, error: QueueFull) -> Response:
        return _error(busy(str(error)))

    @app.exception_handler(PoolClosed)
    async def pool_closed(request: Request, error: PoolClosed) -> Response:
        return _error(busy(str(error)))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> Response:
        first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid request"}
        field = str(first["loc"][-1]) if first.get("loc") else None
        return _error(ApiError(422, f"{field}: {first['msg']}" if field else first["msg"], field=field))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        return _error(ApiError(error.status_code, str(error.detail), headers=error.headers))

    def model_named(name: str, task: str | None = None) -> dict[str, Any]:
        if name not in models:
            raise ApiError(404, f"unknown model {name!r}; this server has: {', '.join(models)}")
        if task is not None and models[name]["task"] != task:
            same = [n for n, m in models.items() if m["task"] == task]
            raise ApiError(400, f"model {name!r} is a {models[name]['task']} model; /api/{task}/ takes {task} models "
                                f"({', '.join(same) or 'this server has none'}); or use /api/predict/{name}")
        return models[name]

    def busy(detail: str) -> ApiError:
        return ApiError(503, f"the server is busy ({detail}); try again in {retry_after} s",
                        headers={"Retry-After": str(retry_after)})

    # ------------------------------------------------------------------------------------------ routes
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/api/models", summary="The models this server runs")
    async def list_models() -> Response:
        return _json(list(models.values()))

    @app.get("/healthz", summary="Liveness: workers alive, queue length")
    async def healthz() -> Response:
        healthy = pool.alive == pool.workers or not pool.started  # started by the lifespan or the first job
        return _json({"status": "ok" if healthy else "degraded", "models": list(models),
                      "workers": pool.workers, "workers_alive": pool.alive, "queued": pool.queued,
                      "queue_size": pool.queue_size, "running": pool.running, "completed": pool.completed,
                      "rejected": pool.rejected, "batches": pool.batches}, 200 if healthy else 503)

    async def predict(name: str, request: Request, task: str | None) -> Response:
        entry = model_named(name, task)
        form = await request.form()
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            if key in fields:
                raise ApiError(422, f"field {key!r} given more than once", field=key)
            fields[key] = value
        upload = fields.get("file")
        if upload is None:
            raise ApiError(422, "no file: send the image as multipart/form-data in the field 'file'", field="file")
        if isinstance(upload, str):
            raise ApiError(422, "file must be an uploaded file (multipart/form-data with a filename), got text",
                           field="file")
        options = parse_options(entry["task"], fields, model=name)
        if pool.queued >= pool.queue_size:  # refuse before decoding what would be refused anyway
            raise busy(f"{pool.queued} requests waiting")
        data = await upload.read()
        if len(data) > max_bytes or not data:  # refuse at once what decoding would refuse
            decode_upload(data, upload.filename, max_bytes=max_bytes, max_pixels=max_pixels)
        try:
            result = await pool.submit(name, data, options, decode=partial(
                decode_upload, filename=upload.filename, max_bytes=max_bytes, max_pixels=max_pixels))
        except (ApiError, QueueFull, PoolClosed):
            raise
        except ValueError as error:  # the Predictor refused the options
            raise ApiError(422, f"{name}: {error}") from None
        except Exception as error:  # noqa: BLE001 - logged by the pool; the client gets one line
            raise ApiError(500, f"{name}: prediction failed ({type(error).__name__}: {error})") from None
        return _json({"model": name, **result.to_dict()})

    def upload_schema(task: str | None) -> dict[str, Any]:
        """The OpenAPI request body of a predict route: the file and the options of ``task`` (all for None).

        Documented here rather than declared as FastAPI parameters: the route reads the form once itself, with
        the task's rules, and skips FastAPI's per-parameter validation (a measurable part of a request)."""
        specs = {k: v for t, opts in TASK_OPTIONS.items() if task in (None, t) for k, v in opts.items()}
        properties: dict[str, Any] = {"file": {"type": "string", "format": "binary",
                                               "description": "the image: PNG, JPEG, WebP, BMP, GIF or TIFF"}}
        for key, spec in specs.items():
            properties[key] = {"type": "integer" if spec.kind is int else "number", "minimum": spec.low,
                               "maximum": spec.high, "description": spec.help}
        schema = {"type": "object", "required": ["file"], "properties": properties}
        return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}

    @app.post("/api/predict/{name}", summary="Predict with any model: the Predictor's JSON",
              openapi_extra=upload_schema(None))
    async def predict_any(name: str, request: Request) -> Response:
        return await predict(name, request, None)

    for task in TASKS:
        def route(task: str = task):
            async def predict_task(name: str, request: Request) -> Response:
                return await predict(name, request, task)
            return predict_task

        app.post(f"/api/{task}/{{name}}", summary=f"Predict with a {task} model (another task is a 400)",
                 openapi_extra=upload_schema(task))(route())

    @app.get("/api/sample/{name}", summary="A fresh procedural scene of the model's kind, with its references")
    async def sample(name: str, seed: int | None = None) -> Response:
        entry = model_named(name)
        if not entry["sample"]:
            raise ApiError(404, f"model {name!r}: {entry['sample_note']}; upload an image instead")
        if seed is not None and not 0 <= seed < 2**31:
            raise ApiError(422, f"seed must be in [0, 2**31), got {seed}", field="seed")
        drawn = await run_in_threadpool(draw_sample, entry["task"], image_size=entry["image_size"], seed=seed)
        return _json({"model": name, "task": entry["task"], **drawn, "note": entry["sample_note"]})

    return app
