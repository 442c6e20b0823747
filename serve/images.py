"""Uploaded image bytes → the model's preprocessed float32 input, or an ApiError naming what is wrong.

One function shared by ``/predict``, ``/predict/batch`` and the Open Inference Protocol's ``BYTES``
image input, so that every route decodes and preprocesses an image exactly the same way (the parity
test of ``/predict`` and ``/infer`` relies on it).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from lesionlite.ood import assess, model_view_statistics
from lesionlite.preprocessing import ImageDecodeError, load_image_bytes, model_size, preprocess
from serve.errors import ApiError
from serve.models import LoadedModel
from serve.uploads import ACCEPTED_FORMATS, describe_non_image, sniff_image_format


def min_image_side(entry: LoadedModel, setting: int = 0) -> int:
    """The shortest image side ``/predict`` accepts: ``setting``, or (0) half the model's input, at least 16 px.

    Below it an image holds too little of a lesion to classify (a 1×1 PNG was answered ``vasc 0.742``)."""
    return setting or max(16, model_size(entry.manifest.preprocessing) // 2)


def ood_statistics(entry: LoadedModel, x: np.ndarray) -> np.ndarray | None:
    """The image statistics the out-of-distribution check scores (None when the manifest carries no calibration).

    They need only the image, so routes compute them on the thread that decodes it, off the event loop."""
    if entry.ood_calibration is None:
        return None
    # one function with export's evidence: back to [0, 1] pixels, at the model's own side where the graph
    # downscales a larger input (TFLite phone input; through OpenCV where installed), numpy's reductions on a
    # channel-first contiguous image (over a channel-last view they cost ~3x as much, benchmarks/RESULTS.md 3a)
    return model_view_statistics(x, entry.manifest.preprocessing, entry.runtime.layout)


#: each model's OOD calibration with its mean and precision already as arrays:
#: id(cal) → (cal, its mean list, its precision list, prepared)
_PREPARED_CAL: dict[int, tuple[dict, Any, Any, dict]] = {}


def _prepared(cal: dict) -> dict:
    """``cal`` with ``mean``/``precision`` as float64 arrays (what :func:`lesionlite.ood.assess` converts the
    manifest's lists to on every call), made once per calibration (again if its lists are replaced)."""
    hit = _PREPARED_CAL.get(id(cal))
    if hit is None or hit[0] is not cal or hit[1] is not cal["mean"] or hit[2] is not cal["precision"]:
        hit = _PREPARED_CAL[id(cal)] = (cal, cal["mean"], cal["precision"],
                                        {**cal, "mean": np.asarray(cal["mean"]), "precision": np.asarray(cal["precision"])})
    return hit[3]


def assess_ood(entry: LoadedModel, x: np.ndarray | None, logits: np.ndarray,
               stats: np.ndarray | None = None) -> dict | None:
    """Out-of-distribution verdict of one preprocessed image (None when the manifest carries no calibration);
    ``stats``: its :func:`ood_statistics` when already computed (then ``x`` is not needed)."""
    cal = entry.ood_calibration
    if cal is None:
        return None
    if stats is None:
        stats = ood_statistics(entry, x)  # type: ignore[arg-type]
    return assess(_prepared(cal), stats, logits)


#: model-side pixels from which an idle model's request computes the OOD statistics beside inference instead of
#: before it: at 224 px they cost ~1 ms (~4 ms with a 448 px phone input's downscale), more than the extra thread
#: hand-off; at 64 px (~0.16 ms) the hand-off would cost more than it hides (benchmarks/RESULTS.md 3a)
OVERLAP_OOD_MIN_PIXELS = 128 * 128


def overlap_ood(entry: LoadedModel) -> bool:
    """Whether ``entry``'s OOD statistics are worth computing on another thread while its model runs."""
    return entry.ood_calibration is not None and entry.manifest.preprocessing.input_size ** 2 >= OVERLAP_OOD_MIN_PIXELS


def decode_for_prediction(data: bytes, entry: LoadedModel, max_pixels: int,
                          min_side: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`decode_image` and the image's :func:`ood_statistics`, in one call (one thread hand-off)."""
    x = decode_image(data, entry, max_pixels, min_side)
    return x, ood_statistics(entry, x)


def decode_image(data: bytes, entry: LoadedModel, max_pixels: int, min_side: int = 0) -> np.ndarray:
    """Bytes → preprocessed float32 image in ``entry``'s layout (no batch dimension).

    Raises ApiError 400 ``empty_file`` / ``corrupt_image``, 413 ``image_too_large`` (from the header,
    before decoding) or 415 ``unsupported_media_type`` (decided from the bytes, never a file name).
    """
    if not data:
        raise ApiError(400, "empty_file", "the uploaded file is empty")
    fmt = sniff_image_format(data)
    if fmt is None:
        raise ApiError(415, "unsupported_media_type",
                       f"the upload is not an accepted image (it looks like {describe_non_image(data)}); "
                       f"accepted formats: {ACCEPTED_FORMATS}")
    try:
        img = load_image_bytes(data, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        msg = str(exc)
        if msg.startswith("image too large"):
            raise ApiError(413, "image_too_large", msg) from None
        raise ApiError(400, "corrupt_image", f"the {fmt} file could not be decoded (corrupt or truncated): {msg}") from None
    except Exception as exc:  # e.g. an exotic mode that cannot be converted to RGB
        raise ApiError(400, "corrupt_image", f"the {fmt} file could not be read: {type(exc).__name__}: {exc}") from None
    need = min_image_side(entry, min_side)
    if min(img.size) < need:
        raise ApiError(422, "image_too_small", f"the image is {img.size[0]}x{img.size[1]} px; this model needs at "
                                               f"least {need} px on the shorter side (--min-image-side)")
    try:
        return preprocess(img, entry.manifest.preprocessing, layout=entry.runtime.layout)  # type: ignore[arg-type]
    except Exception as exc:
        raise ApiError(400, "corrupt_image", f"the {fmt} image could not be preprocessed: {type(exc).__name__}: {exc}") from None
