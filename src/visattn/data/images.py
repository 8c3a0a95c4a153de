"""Robust image loading: every bad file becomes one clear :class:`ImageLoadError` naming the file.

:func:`load_image` returns a fully decoded RGB ``PIL.Image``. It refuses, with a message saying what is wrong:

- a missing path, a directory, an empty (0 byte) file;
- a file Pillow cannot identify as an image;
- truncated or corrupt image data (a cut-off JPEG or PNG, a bad chunk); the file is decoded completely, so this
  is caught at load time and not later inside a training step;
- an image larger than the decompression-bomb limit (``max_pixels``, by default Pillow's own
  ``PIL.Image.MAX_IMAGE_PIXELS``). Pillow warns between one and two times its limit and raises above; both
  are refused here.

and it converts, rather than refuses, every other pixel format (see :func:`to_rgb`):

- ``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: Pillow's conversion to RGB;
- anything with transparency (``LA``, ``PA``, ``RGBA``, ``RGBa``, ``P`` or ``L`` with a transparent colour):
  composited over a white background (``background``), so transparent regions become white, not black;
- 16-bit greyscale (``I;16``, ``I;16B``, ...): scaled from 0-65535 to 0-255 (Pillow's own conversion clips);
- 32-bit integer ``I``: treated as 16-bit data (scaled by 1/257) when any value exceeds 255, else as 8-bit;
- float ``F``: treated as [0, 1] data when its maximum is <= 1, else clipped to 0-255.

The EXIF orientation tag is applied, so photographs come out upright.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from visattn.data.core import DataError, write_atomic

if TYPE_CHECKING:  # torch is imported where it is used: visattn.runtime loads images without PyTorch
    import torch

__all__ = ["IMAGE_EXTENSIONS", "ImageLoadError", "image_to_tensor", "load_image", "save_image", "tensor_to_image",
           "to_rgb"]

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm",
)
"""File extensions (lower case) that the readers treat as images."""

_DIRECT_MODES = ("1", "L", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX")
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
# What Pillow raises on broken data: decoders raise OSError, some plugins SyntaxError/struct.error/EOFError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)


class ImageLoadError(DataError):
    """An image file could not be read. ``str(error)`` is ``"<path>: <what is wrong>"``.

    Attributes:
        path: the file, as given.
        reason: what is wrong, without the path.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str | None = None) -> None:
        super().__init__(path, reason=reason)


def _composite(img: Image.Image, background: Sequence[int]) -> Image.Image:
    rgba = img.convert("RGBA")
    base = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(base, rgba).convert("RGB")


def _grey_from_array(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(values + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")


def to_rgb(img: Image.Image, *, background: Sequence[int] = (255, 255, 255), source: str = "image") -> Image.Image:
    """Convert an image of any Pillow mode to RGB (rules in the module docstring).

    Args:
        img: any Pillow image (decoded).
        background: RGB colour that transparent pixels are composited onto.
        source: name used in the error message (usually the file path).

    Returns:
        A mode ``"RGB"`` image of the same size (``img`` itself when it already is RGB).

    Raises:
        ImageLoadError: for a mode with no sensible RGB conversion.
    """
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in _ALPHA_MODES or "transparency" in img.info:
        if mode == "La":  # premultiplied; Pillow cannot convert it, so composite by hand: L + bg * (1 - a)
            values = np.asarray(img).astype(np.float32)  # (H, W, 2) premultiplied grey, alpha
            alpha = values[:, :, 1:] / 255.0  # (H, W, 1)
            rgb = values[:, :, :1] + np.asarray(background, dtype=np.float32) * (1.0 - alpha)  # (H, W, 3)
            return Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), "RGB")
        return _composite(img, background)
    if mode.startswith("I;16"):
        values = np.asarray(img).astype(np.float32)  # (H, W) 0..65535, any byte order
        return _grey_from_array(values / 257.0)
    if mode == "I":
        values = np.asarray(img).astype(np.float64)  # (H, W) int32
        if values.size and values.max() > 255:
            values = np.clip(values, 0, 65535) / 257.0
        return _grey_from_array(values)
    if mode == "F":
        values = np.nan_to_num(np.asarray(img).astype(np.float64))  # (H, W)
        if values.size and values.max() <= 1.0:
            values = values * 255.0
        return _grey_from_array(values)
    if mode in _DIRECT_MODES:
        return img.convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as error:
        raise ImageLoadError(source, f"unsupported pixel mode {mode!r} ({error})") from None


def load_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int | None = None,
    background: Sequence[int] = (255, 255, 255),
) -> Image.Image:
    """Read an image file completely and return it as RGB.

    Args:
        path: the file.
        max_pixels: refuse images with more pixels than this; None uses ``PIL.Image.MAX_IMAGE_PIXELS``
            (Pillow's decompression-bomb limit, ~89 million; None there too disables the check).
        background: RGB colour that transparent pixels are composited onto.

    Returns:
        A decoded mode ``"RGB"`` image, EXIF orientation applied, detached from the file.

    Raises:
        ImageLoadError: the file is missing, a directory, empty, not an image, truncated or corrupt, too large,
            or in a pixel mode with no RGB conversion. The message names the file and the problem.
    """
    file = Path(path)
    if not file.exists():
        raise ImageLoadError(path, "file not found")
    if file.is_dir():
        raise ImageLoadError(path, "is a directory, not an image file")
    try:
        if file.stat().st_size == 0:
            raise ImageLoadError(path, "empty file (0 bytes)")
    except OSError as error:
        raise ImageLoadError(path, f"cannot read file ({error})") from None
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its limit; refuse those images too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as img:
                if limit is not None and img.width * img.height > limit:
                    raise ImageLoadError(
                        path, f"image of {img.width}x{img.height} pixels exceeds the decompression-bomb limit of "
                        f"{limit} pixels (pass a larger max_pixels if the file is trusted)",
                    )
                img.load()  # decode everything now, so that truncation shows here
                oriented = ImageOps.exif_transpose(img)
                return to_rgb(oriented, background=background, source=os.fspath(path))
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageLoadError(path, f"refused by Pillow's decompression-bomb guard: {error}") from None
    except UnidentifiedImageError:
        raise ImageLoadError(path, "not an image Pillow can read (unrecognised format)") from None
    except FileNotFoundError:
        raise ImageLoadError(path, "file not found") from None
    except PermissionError as error:
        raise ImageLoadError(path, f"cannot read file ({error})") from None
    except _DECODE_ERRORS as error:
        raise ImageLoadError(path, f"truncated or corrupt image data ({error})") from None


def image_to_tensor(img: Image.Image, size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """Convert a PIL image to a float tensor.

    Args:
        img: any Pillow image; non-RGB modes are converted with :func:`to_rgb`.
        size: None keeps the size; an int gives a square ``size x size``; a pair is ``(height, width)``.
            Resizing is bilinear with Pillow's anti-aliasing.

    Returns:
        float32 tensor (3, H, W) with values in [0, 1].
    """
    img = to_rgb(img)
    if size is not None:
        height, width = (size, size) if isinstance(size, int) else size
        if height < 1 or width < 1:
            raise ValueError(f"image_to_tensor size must be positive, got {size!r}")
        if img.size != (width, height):
            img = img.resize((width, height), resample=Image.Resampling.BILINEAR)
    import torch

    array = np.array(img, dtype=np.uint8)  # (H, W, 3), a writable copy
    return torch.from_numpy(array).permute(2, 0, 1).contiguous().float().div_(255.0)  # (3, H, W)


def tensor_to_image(image: torch.Tensor | np.ndarray | Image.Image, *, clip: bool = False,
                    source: str = "image") -> Image.Image:
    """The inverse of :func:`image_to_tensor`: an image tensor (or array) as an RGB PIL image.

    Args:
        image: float tensor (3, H, W) in [0, 1], uint8 tensor (3, H, W), numpy array (H, W, 3) (uint8, or
            float in [0, 1]), or a PIL image (converted to RGB).
        clip: clip float values outside [0, 1] (figures); by default they are an error, so that an exporter
            never writes a normalised image as if it were pixels.
        source: names the image in error messages (e.g. the sample being exported).

    Returns:
        A mode ``"RGB"`` image; float values are rounded to the nearest of 256 levels, so
        ``image_to_tensor(tensor_to_image(x))`` gives ``x`` back for any ``x`` that came from 8-bit pixels.

    Raises:
        ValueError: another shape or type, or float values outside [0, 1] without ``clip``.
    """
    import torch

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"{source}: image tensor must be (3, H, W), got {tuple(image.shape)}")
        array = image.detach().cpu().permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)
    elif isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"{source}: image array must be (H, W, 3), got {image.shape}")
        array = image
    else:
        raise ValueError(f"{source}: image must be a PIL image, a (3, H, W) tensor or an (H, W, 3) array, "
                         f"got {type(image).__name__}")
    if array.dtype != np.uint8:
        array = array.astype(np.float32)
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if not clip and (low < 0.0 or high > 1.0):
            raise ValueError(f"{source}: float image values must be in [0, 1] (got {low:.3f}..{high:.3f}); "
                             "export before normalising")
        array = (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array), "RGB")


def save_image(image: torch.Tensor | np.ndarray | Image.Image, path: str | os.PathLike[str], *,
               source: str = "image") -> Path:
    """Write an image file atomically (:func:`~visattn.data.core.write_atomic`), format from the suffix.

    Args:
        image: anything :func:`tensor_to_image` takes (float values must lie in [0, 1]).
        path: the file to write, e.g. ``images/00000007.png``; parent folders are created.
        source: names the image in error messages.

    Returns:
        ``path``.
    """
    path = Path(path)
    file_format = Image.registered_extensions().get(path.suffix.lower())
    if file_format is None:
        raise ValueError(f"{path}: unknown image file suffix {path.suffix!r}; valid: {', '.join(IMAGE_EXTENSIONS)}")
    picture = tensor_to_image(image, source=source)
    return write_atomic(path, lambda tmp: picture.save(tmp, format=file_format))
