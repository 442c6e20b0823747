"""The single source of truth for turning an image into a model input.

Training (eval transform), export calibration/parity, `serve` and `mobile_benchmarks` all call
:func:`preprocess` so that a model sees the same numbers wherever it runs. It depends only on
numpy and Pillow so that the torch-free stages can import it; `distill` wraps it in a torch
transform and a test checks the two agree bit for bit.

Pipeline (version ``PREPROCESSING_VERSION``):
1. decode → honour EXIF orientation → convert any mode (L, LA, P, RGBA, I;16, CMYK, …) to RGB
   (alpha is dropped rather than composited: a background colour would tint dermoscopy images);
2. with ``resize_size`` unset, squash to ``input_size`` × ``input_size`` (bilinear, antialiased);
   otherwise resize the shorter side to ``resize_size`` and centre-crop ``input_size``;
4. scale to [0, 1], subtract ``mean``, divide by ``std`` (float32);
5. lay out as CHW (``layout="NCHW"``) or HWC (``layout="NHWC"``).
"""
from __future__ import annotations

import functools
import io
import struct
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageOps

from lesionlite.errors import LesionliteError

PREPROCESSING_VERSION = "1"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The ImageNet MobileNetV2 / EfficientNet-Lite weights converted from TF expect [-1, 1] inputs.
TF_MEAN = (0.5, 0.5, 0.5)
TF_STD = (0.5, 0.5, 0.5)

# Decompression-bomb guard: refuse images above this many pixels before decoding them fully.
MAX_IMAGE_PIXELS = 40_000_000


class ImageDecodeError(LesionliteError):
    """Raised when bytes are not a decodable image (corrupt, truncated, not an image)."""


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything needed to reproduce the model input from an image; stored in every manifest."""

    input_size: int = 224
    resize_size: int | None = None  # shorter side before the crop; default input_size (no crop)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    version: str = PREPROCESSING_VERSION
    interpolation: str = "bilinear"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def effective_resize(self) -> int:
        return self.resize_size or self.input_size

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        version = str(d.get("version", PREPROCESSING_VERSION))
        if version != PREPROCESSING_VERSION:
            raise LesionliteError(
                f"preprocessing version {version!r} in manifest is not supported by this "
                f"lesionlite (supports {PREPROCESSING_VERSION!r}); re-export the model"
            )
        return cls(
            input_size=int(d["input_size"]),
            resize_size=None if d.get("resize_size") is None else int(d["resize_size"]),
            mean=tuple(float(x) for x in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(x) for x in d["std"]),  # type: ignore[arg-type]
            version=version,
            interpolation=str(d.get("interpolation", "bilinear")),
            extra=dict(d.get("extra", {})),
        )


_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def load_image_bytes(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode bytes into an RGB PIL image, honouring EXIF orientation.

    Raises :class:`ImageDecodeError` with a message naming the problem for empty, corrupt,
    truncated or oversized input (never a Pillow traceback). ``max_pixels`` is the one size limit:
    it is checked on the header, before anything is decoded, and its refusal names it.
    """
    if not data:
        raise ImageDecodeError("empty image: no bytes received")
    try:
        img = _open_header(data)
        (w, h), fmt = img.size, img.format
        if w * h > max_pixels:
            raise ImageDecodeError(f"image too large: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
        img.load()
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError:  # no plugin re-read the header: the size is unknown, only "huge"
        raise ImageDecodeError(f"image too large: over {2 * Image.MAX_IMAGE_PIXELS} pixels, which exceeds the "
                               f"limit of {max_pixels}") from None
    except Exception as exc:  # PIL raises many types for corrupt input
        raise ImageDecodeError(f"cannot decode image: {type(exc).__name__}: {exc}") from None
    img.info["source_format"] = fmt
    return to_rgb(img)


def _open_header(data: bytes) -> Image.Image:
    """The image opened lazily (header read, pixels not yet decoded).

    ``Image.open`` refuses an image over twice Pillow's ``Image.MAX_IMAGE_PIXELS`` (178956970) itself, in
    its own words and with its own limit, before the caller's ``max_pixels`` could be checked: a
    20000x20000 upload answered "exceeds limit of 178956970 pixels" while the server's limit is another.
    Such an image is opened again by its format's plugin, which reads only the header, so that the
    caller's limit is the one applied and named.
    """
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        img = _open_with_plugin(data)
        if img is None:
            raise
        return img


def _open_with_plugin(data: bytes) -> Image.Image | None:
    """``Image.open`` without its decompression-bomb check: the first registered format plugin that
    accepts the bytes (as ``Image.open`` tries them), or None."""
    Image.init()
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        verdict = accept(data[:16]) if accept else True
        if not verdict or isinstance(verdict, str):  # a str is Pillow's "recognised but unsupported"
            continue
        try:
            return factory(io.BytesIO(data), "")
        except (SyntaxError, IndexError, TypeError, ValueError, OSError, struct.error):
            continue
    return None


def load_image_file(path: str) -> Image.Image:
    """Read an image file into RGB; a missing or corrupt file raises :class:`ImageDecodeError`."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ImageDecodeError(f"cannot read image file {path}: {exc.strerror or exc}") from None
    try:
        return load_image_bytes(data)
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"{path}: {exc}") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """EXIF-transpose and convert any Pillow mode (incl. 16-bit and alpha) to 8-bit RGB."""
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a malformed EXIF block must not make a readable image unusable
        pass
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 0.0
        if hi > 255:
            scale = 65535.0 if hi > 4095 else 4095.0
            arr = arr / scale * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA").convert("RGB")
    return img.convert("RGB")


def resize_and_crop(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """Resize the shorter side to ``cfg.effective_resize`` and centre-crop ``cfg.input_size``."""
    img = to_rgb(img)
    w, h = img.size
    target = cfg.effective_resize
    if cfg.resize_size is None:
        # No separate crop: squash straight to the square input (keeps the whole lesion visible).
        new_w = new_h = target
    elif w <= h:
        new_w, new_h = target, max(1, round(h * target / w))
    else:
        new_w, new_h = max(1, round(w * target / h)), target
    resample = _RESAMPLE.get(cfg.interpolation, Image.BILINEAR)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), resample=resample)
    s = cfg.input_size
    if (new_w, new_h) != (s, s):
        left = (new_w - s) // 2
        top = (new_h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    return img


def normalize_formula(arr_hwc_uint8: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """The definition: (uint8 / 255 − mean) / std in float32, HWC. :func:`normalize` equals it bit for bit."""
    x = arr_hwc_uint8.astype(np.float32) / np.float32(255.0)
    mean = np.asarray(cfg.mean, dtype=np.float32)
    std = np.asarray(cfg.std, dtype=np.float32)
    return (x - mean) / std


@functools.lru_cache(maxsize=64)
def _level_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: the normalised value of every uint8 level of each channel.

    Built with :func:`normalize_formula`'s own float32 operations, so looking a pixel up gives exactly
    the formula's result; the lookup is ~6x faster than the arithmetic on a 224 px image, which matters
    in ``serve`` where preprocessing shares the CPU with inference.
    """
    levels = np.arange(256, dtype=np.uint8).reshape(256, 1, 1).repeat(3, axis=2)
    table = normalize_formula(levels, PreprocessConfig(mean=mean, std=std))  # type: ignore[arg-type]
    table = np.ascontiguousarray(table.reshape(256, 3).T)
    table.setflags(write=False)
    return table


def normalize(arr_hwc_uint8: np.ndarray, cfg: PreprocessConfig,
              layout: Literal["NCHW", "NHWC"] = "NHWC") -> np.ndarray:
    """uint8 HWC RGB → float32 normalised with the config's mean/std, laid out as ``layout`` (CHW or HWC)."""
    if layout not in ("NCHW", "NHWC"):
        raise LesionliteError(f"unknown layout {layout!r}; expected 'NCHW' or 'NHWC'")
    arr = np.asarray(arr_hwc_uint8)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise LesionliteError(f"normalize expects a uint8 HxWx3 RGB array, got {arr.dtype} {list(arr.shape)}")
    table = _level_table(tuple(cfg.mean), tuple(cfg.std))
    h, w, _ = arr.shape
    if layout == "NCHW":
        out = np.empty((3, h, w), dtype=np.float32)
        for c in range(3):
            np.take(table[c], arr[:, :, c], out=out[c])
        return out
    out = np.empty((h, w, 3), dtype=np.float32)
    flat = arr.reshape(-1, 3)
    out_flat = out.reshape(-1, 3)
    for c in range(3):
        out_flat[:, c] = np.take(table[c], flat[:, c])
    return out


#: ``PreprocessConfig.extra`` key of an artifact whose graph takes a larger image and downscales it to the
#: model's training size itself (TFLite ``--phone-input-size``, :mod:`export.resize_in_graph`)
IN_GRAPH_RESIZE = "in_graph_resize"


def pillow_weights(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` resampling matrix of Pillow's ``Image.resize(..., BILINEAR)`` along one axis (float64).

    Pillow's antialiased bilinear resize by ``scale = n_in / n_out`` is a triangle filter of half-width
    ``max(scale, 1)`` input pixels centred on each output pixel, renormalised where the window leaves the image
    (``precompute_coeffs`` in Pillow's ``Resample.c``); this ports it exactly (Pillow then rounds to uint8).
    """
    if n_in < 1 or n_out < 1:
        raise LesionliteError(f"resize sizes must be positive, got {n_in} -> {n_out}")
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # the bilinear (triangle) filter has support 1
    out = np.zeros((n_out, n_in), np.float64)
    for o in range(n_out):
        center = (o + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)  # C's (int) truncates toward zero, as int() does
        hi = min(int(center + support + 0.5), n_in)
        w = np.maximum(0.0, 1.0 - np.abs((np.arange(lo, hi) - center + 0.5) / filterscale))
        out[o, lo:hi] = w / w.sum()
    return out


def model_size(cfg: PreprocessConfig) -> int:
    """The side the model itself sees: ``input_size``, or the in-graph downscale's target when the artifact's
    graph takes a larger image (``cfg.extra["in_graph_resize"]``)."""
    return int((cfg.extra.get(IN_GRAPH_RESIZE) or {}).get("to", cfg.input_size))


@functools.lru_cache(maxsize=16)
def banded_pillow_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`pillow_weights` as its bands: ``taps[o]`` the input pixels output ``o`` reads (padded with the
    window's last pixel at weight 0) and ``weights[o]`` theirs, both ``[n_out, width]`` (read-only, cached).

    Why: the matrix is a band a few pixels wide; applied densely (two matmuls per channel) it cost serve
    ~16 ms of every request to a 448 px phone-input artifact, and building it ~5 ms more (benchmarks/RESULTS.md 3a).
    """
    dense = pillow_weights(n_in, n_out)
    nonzero = dense != 0
    first = nonzero.argmax(axis=1)
    width = int((n_in - nonzero[:, ::-1].argmax(axis=1) - first).max())
    taps = np.minimum(first[:, None] + np.arange(width)[None, :], n_in - 1)
    weights = np.take_along_axis(dense, taps, axis=1)
    weights[first[:, None] + np.arange(width)[None, :] > n_in - 1] = 0.0  # a clipped tap reads nothing
    taps.setflags(write=False)
    weights.setflags(write=False)
    return taps, weights


def model_view(x: np.ndarray, cfg: PreprocessConfig, layout: Literal["NCHW", "NHWC"] = "NCHW") -> np.ndarray:
    """A preprocessed image (C,H,W, or H,W,C with ``layout="NHWC"``) as the model sees it after the graph's own
    downscale, as C,H,W float (the same filter as the graph), so that image statistics fitted at the training
    size (the out-of-distribution check) are computed at that size; the image itself (channels first) where
    the graph does no resize.

    A whole factor (448 → 224) is a few strided slices (:mod:`lesionlite.whole_factor_resample`, float32);
    any other is the filter's bands (:func:`banded_pillow_weights`): rows, then columns, in float64."""
    from lesionlite.whole_factor_resample import axis_plan, downscale_chw

    h, w = (x.shape[-2], x.shape[-1]) if layout == "NCHW" else (x.shape[0], x.shape[1])
    n = model_size(cfg)
    if n == h and n == w:
        return x if layout == "NCHW" else np.ascontiguousarray(x.transpose(2, 0, 1))
    rows, cols = axis_plan(h, n), axis_plan(w, n)
    if rows is not None and cols is not None:
        return downscale_chw(x, rows, cols, layout)
    x_chw = x if layout == "NCHW" else x.transpose(2, 0, 1)
    (th, wh), (tw, ww) = banded_pillow_weights(h, n), banded_pillow_weights(w, n)
    xd = np.asarray(x_chw, np.float64)
    band_rows = np.einsum("ot,cotw->cow", wh, xd[:, th, :])
    # C-contiguous as the dense form gave it: the statistics' reductions over a strided einsum result cost 5x
    return np.ascontiguousarray(np.einsum("pt,copt->cop", ww, band_rows[:, :, tw]), dtype=np.float32)


def preprocess(
    img: Image.Image, cfg: PreprocessConfig, layout: Literal["NCHW", "NHWC"] = "NCHW"
) -> np.ndarray:
    """Image → float32 array (C,H,W) or (H,W,C), ready to be batched."""
    return normalize(np.asarray(resize_and_crop(img, cfg), dtype=np.uint8), cfg, layout)


def preprocess_batch(
    images: list[Image.Image], cfg: PreprocessConfig, layout: Literal["NCHW", "NHWC"] = "NCHW"
) -> np.ndarray:
    """Stack :func:`preprocess` outputs into one float32 batch."""
    return np.stack([preprocess(im, cfg, layout) for im in images]).astype(np.float32, copy=False)
