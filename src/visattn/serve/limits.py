"""What the server accepts: upload size, image decoding, and the prediction options of each task.

Every refusal is an :class:`ApiError`: an HTTP status, a one-line message that says what is wrong and how
to fix it, and the request field it is about. The app turns it into ``{"error": ..., "field": ...}``.

- :class:`BodyLimit` (ASGI middleware) refuses a request body over the upload limit with 413 before it is
  read: at once from ``Content-Length``, or as soon as a streamed body passes the limit.
- :func:`decode_upload` reads the image bytes with :func:`visattn.data.images.load_image`, so an upload
  meets exactly the checks of a file on disk: empty (400), not an image (415), truncated or corrupt (400),
  more pixels than the decompression-bomb limit (413).
- :func:`parse_options` checks the form fields against the options of the model's task: an unknown field,
  an option of another task, a value of the wrong type or out of range are 422 naming the field.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from PIL import Image

from visattn.data.images import ImageLoadError, load_image

__all__ = ["ApiError", "BodyLimit", "OptionSpec", "TASK_OPTIONS", "decode_upload", "parse_options",
           "DEFAULT_MAX_PIXELS"]

DEFAULT_MAX_PIXELS = 40_000_000  # a 40-megapixel photo decodes to 120 MB of RGB; a bomb would be far larger
_MULTIPART_SLACK = 64 * 1024  # boundary lines, part headers and the option fields around the file


class ApiError(Exception):
    """A request the server refuses: HTTP ``status``, a readable ``message``, the ``field`` it concerns."""

    def __init__(self, status: int, message: str, *, field: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "field": self.field}


# ------------------------------------------------------------------------------------------------ body size
class BodyLimit:
    """ASGI middleware: 413 for a request body over ``max_upload_bytes`` (plus room for the form around it).

    Args:
        app: the ASGI app to protect.
        max_upload_bytes: the largest image file accepted.
    """

    def __init__(self, app: Callable, *, max_upload_bytes: int) -> None:
        self.app = app
        self.max_upload_bytes = max_upload_bytes
        self.max_body = max_upload_bytes + _MULTIPART_SLACK

    def _error(self) -> ApiError:
        mb = self.max_upload_bytes / 2**20
        return ApiError(413, f"upload too large: the limit is {mb:.3g} MB (server option --max-upload-mb)",
                        field="file")

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await _send_json(send, self._error())
            return
        seen = 0
        started = False  # the app began its response
        refused = False  # we answered 413 ourselves; the app's answer is dropped

        async def counting_receive() -> dict:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body and not started:
                    # Answer now, then tell the app the client left: whatever it makes of that is not sent.
                    refused = True
                    await _send_json(send, self._error())
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not refused:
                raise


async def _send_json(send: Callable, error: ApiError) -> None:
    payload = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
               (b"connection", b"close")]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


# ------------------------------------------------------------------------------------------------ images
def decode_upload(data: bytes, filename: str | None, *, max_bytes: int,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an uploaded image completely, with the checks :func:`~visattn.data.images.load_image` makes.

    Args:
        data: the file's bytes.
        filename: the name the browser sent (for messages only; never used as a path).
        max_bytes: the upload limit.
        max_pixels: the decompression-bomb limit (width x height).

    Returns:
        A decoded RGB image.

    Raises:
        ApiError: 413 over ``max_bytes`` or ``max_pixels``, 400 empty or truncated/corrupt, 415 not an image.
    """
    name = os.path.basename(filename or "") or "upload"
    if len(data) > max_bytes:
        raise ApiError(413, f"{name}: {len(data)} bytes is over the upload limit of {max_bytes / 2**20:.3g} MB "
                            "(server option --max-upload-mb)", field="file")
    if not data:
        raise ApiError(400, f"{name}: empty file (0 bytes)", field="file")
    # load_image reads paths: one temporary file, so an upload passes exactly the checks a file on disk does.
    fd, tmp = tempfile.mkstemp(prefix="visattn-upload-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return load_image(tmp, max_pixels=max_pixels)
    except ImageLoadError as error:
        reason = error.reason
        if "decompression-bomb" in reason:
            status = 413
        elif "unrecognised format" in reason:
            status = 415
            reason = "not an image (no format Pillow reads; send a PNG, JPEG, WebP, BMP, GIF or TIFF)"
        else:
            status = 400
        raise ApiError(status, f"{name}: {reason}", field="file") from None
    finally:
        os.unlink(tmp)


# ------------------------------------------------------------------------------------------------ options
@dataclass(frozen=True)
class OptionSpec:
    """One prediction option: its type, inclusive range, and what it does."""

    kind: type
    low: float
    high: float
    help: str

    def parse(self, name: str, text: Any) -> Any:
        """The value of form field ``name``; ApiError 422 naming it when not a ``kind`` within range."""
        try:
            value = self.kind(text) if self.kind is float else int(str(text).strip())
        except (TypeError, ValueError):
            raise ApiError(422, f"{name} must be {'a number' if self.kind is float else 'an integer'}, "
                                f"got {text!r}", field=name) from None
        if (isinstance(value, float) and not math.isfinite(value)) or not self.low <= value <= self.high:
            raise ApiError(422, f"{name} must be in [{self.low:g}, {self.high:g}], got {text!r}", field=name)
        return value


# Per task, the options of Predictor.predict that a request may set (the rest keep the Predictor's defaults).
TASK_OPTIONS: dict[str, dict[str, OptionSpec]] = {
    "caption": {
        "beam_size": OptionSpec(int, 1, 20, "beams searched (1 = greedy)"),
        "n_best": OptionSpec(int, 1, 20, "captions returned, best first (at most beam_size)"),
        "max_len": OptionSpec(int, 1, 100, "most words per caption"),
        "length_penalty": OptionSpec(float, 0.0, 5.0, "score / length ** length_penalty"),
    },
    "classify": {
        "top_k": OptionSpec(int, 1, 1000, "classes returned, most probable first"),
    },
    "detect": {
        "score_threshold": OptionSpec(float, 0.0, 1.0, "keep detections scoring at least this"),
        "top_k": OptionSpec(int, 1, 1000, "most detections returned"),
    },
}


def parse_options(task: str, fields: Mapping[str, Any], *, model: str) -> dict[str, Any]:
    """The prediction options of a request's form fields (every field but ``file``).

    Args:
        task: the model's task.
        fields: the form fields, as sent.
        model: the model's name (for messages).

    Raises:
        ApiError: 422 naming the field: unknown, of another task, or a bad value; ``n_best > beam_size``.
    """
    specs = TASK_OPTIONS[task]
    options: dict[str, Any] = {}
    for name, text in fields.items():
        if name == "file":
            continue
        if name not in specs:
            others = [t for t, s in TASK_OPTIONS.items() if name in s and t != task]
            hint = f" (it is an option of {' and '.join(others)} models)" if others else ""
            raise ApiError(422, f"{name} is not an option of {task} model {model!r}{hint}; valid: "
                                f"{', '.join(specs)}", field=name)
        options[name] = specs[name].parse(name, text)
    if task == "caption" and options.get("n_best", 1) > options.get("beam_size", 3):
        raise ApiError(422, f"n_best ({options['n_best']}) cannot exceed beam_size ({options.get('beam_size', 3)})",
                       field="n_best")
    return options
