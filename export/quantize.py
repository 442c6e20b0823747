"""Calibration data for post-training int8 quantization, one reader per toolchain.

All readers serve the same images: a seeded subset (``--calib-samples``, default 300) of the
checkpoint's training split, preprocessed by :func:`lesionlite.preprocessing.preprocess` (see
:mod:`export.data`). Only the layout differs: ONNX takes NCHW, the TFLite graph takes NHWC.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def onnx_calibration_reader(calib: np.ndarray, input_name: str, batch_size: int = 1) -> Any:
    """An :class:`onnxruntime.quantization.CalibrationDataReader` over ``calib`` (N, 3, H, W)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[dict[str, np.ndarray]] | None = None

        def _batches(self) -> Iterator[dict[str, np.ndarray]]:
            for i in range(0, len(calib), batch_size):
                yield {input_name: np.ascontiguousarray(calib[i : i + batch_size], dtype=np.float32)}

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._it is None:
                self._it = self._batches()
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = None

        def __len__(self) -> int:
            return (len(calib) + batch_size - 1) // batch_size

    return _Reader()


def tflite_calibration_data(calib: np.ndarray, signature_key: str, input_name: str) -> dict[str, list[dict[str, np.ndarray]]]:
    """The representative dataset in ai-edge-quantizer's form: {signature: [{input: NHWC[1,H,W,3]}, …]}."""
    nhwc = nchw_to_nhwc(calib.astype(np.float32, copy=False))
    return {signature_key: [{input_name: nhwc[i : i + 1]} for i in range(len(nhwc))]}
