"""The runtime interface: a loaded model file that maps a float32 batch to float32 logits."""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from lesionlite.errors import LesionliteError
from lesionlite.manifest import Manifest

LAYOUTS = ("NCHW", "NHWC")


def layout_from_shape(shape: list[int] | tuple[int, ...], hint: str | None) -> str:
    """The layout of a rank-4 image tensor: the manifest's ``hint`` unless the shape contradicts it.

    A 3-channel axis at position 1 means NCHW, at position 3 NHWC; when both or neither hold
    (e.g. dynamic dims), the hint decides.
    """
    if len(shape) != 4:
        raise LesionliteError(f"model input must be rank 4 (an image batch), got shape {list(shape)}")
    nchw = shape[1] == 3
    nhwc = shape[3] == 3
    if nchw and not nhwc:
        return "NCHW"
    if nhwc and not nchw:
        return "NHWC"
    if hint in LAYOUTS:
        return hint  # type: ignore[return-value]
    raise LesionliteError(f"cannot tell the layout of input shape {list(shape)}; set input.layout in the manifest")


class Runtime(ABC):
    """A model ready to run. ``predict`` is thread-safe (calls are serialised by a lock).

    Attributes set by subclasses: ``layout`` (what ``predict`` expects), ``input_name``,
    ``output_name``, ``input_shape``/``output_shape`` (batch dim -1 when dynamic),
    ``input_datatype``/``output_datatype`` (Open Inference Protocol names, of the model tensors),
    ``max_batch`` (None = any batch size in one call, 1 = the model takes one image per call).
    """

    kind: str = ""
    platform: str = ""

    def __init__(self, model_path: Path, manifest: Manifest, threads: int = 0, spin_wait: bool = False) -> None:
        self.model_path = Path(model_path)
        self.manifest = manifest
        self.threads = threads
        #: Whether idle runtime threads may busy-wait for the next parallel section (see Settings.runtime_spin).
        self.spin_wait = spin_wait
        self._lock = threading.Lock()
        self.layout: str = "NCHW"
        self.input_name = "input"
        self.output_name = "logits"
        self.input_shape: list[int] = []
        self.output_shape: list[int] = []
        self.input_datatype = "FP32"
        self.output_datatype = "FP32"
        self.max_batch: int | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape of one preprocessed image in ``self.layout`` (no batch dim)."""
        s = self.manifest.preprocessing.input_size
        return (3, s, s) if self.layout == "NCHW" else (s, s, 3)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """float32 ``[B, *image_shape]`` → float32 logits ``[B, num_classes]``."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self.image_shape:
            raise ValueError(f"expected a batch of shape [B, {', '.join(map(str, self.image_shape))}], "
                             f"got {list(batch.shape)}")
        with self._lock:
            if self.max_batch is None or batch.shape[0] <= self.max_batch:
                out = self._run(batch)
            else:
                step = self.max_batch
                out = np.concatenate([self._run(batch[i:i + step]) for i in range(0, batch.shape[0], step)])
        out = np.asarray(out, dtype=np.float32).reshape(batch.shape[0], -1)
        if out.shape[1] != self.manifest.num_classes:
            raise LesionliteError(
                f"{self.model_path.name}: model returned {out.shape[1]} outputs but the manifest "
                f"names {self.manifest.num_classes} classes")
        return out

    @abstractmethod
    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch (size ≤ max_batch) and return dequantised logits."""

    def describe(self) -> dict[str, Any]:
        return {"platform": self.platform, "layout": self.layout, "max_batch": self.max_batch,
                "threads": self.threads or "runtime default", "spin_wait": self.spin_wait}


DTYPE_TO_OIP = {
    "float32": "FP32", "float16": "FP16", "float64": "FP64", "int8": "INT8", "uint8": "UINT8",
    "int16": "INT16", "int32": "INT32", "int64": "INT64",
}
