"""What export's stages share without importing each other: the options and the converters' context.

:mod:`export.api` (the orchestrator), the format plug-ins (:mod:`export.formats`) and the benchmarks
all import these from here, so no module needs the orchestrator to describe its inputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.int8_prep import prepare_for_int8
from export.resize_in_graph import resolve_size
from lesionlite.errors import LesionliteError
from lesionlite.manifest import Manifest
from lesionlite.preprocessing import PreprocessConfig
from lesionlite.referral import DEFAULT_TARGET, get_target

#: Top-1 agreement with PyTorch below which an artifact counts as broken (see the module docstring).
DEFAULT_PARITY_THRESHOLDS: dict[str, float] = {"fp32": 0.99, "fp16": 0.98, "int8": 0.90}


@dataclass
class ExportOptions:
    calib_samples: int = 300
    eval_samples: int | None = None  # cap on held-out images for parity/metrics (None: the whole split)
    #: one threshold for every precision, or a {precision: threshold} map; None → the defaults below
    parity_threshold: float | dict[str, float] | None = None
    force: bool = False
    int8_io: bool = False  # TFLite int8: int8 input/output tensors instead of float
    #: TFLite: the input side of every TFLite artifact, the downscale to the model's side done in the graph with
    #: lesionlite's own filter (export.resize_in_graph): "auto", a multiple of the model's side, or 0 / None (off)
    phone_input_size: int | str | None = "auto"
    #: TFLite with a phone input: also convert each precision without the in-graph resize and report what the larger
    #: input costs (size, LiteRT p50, agreement, MediaPipe with/without); doubles the TFLite conversion time
    phone_input_cost: bool = False
    onnx_quant: str = "static"  # ONNX int8: "static" (QDQ, calibrated) or "dynamic"
    simplify: bool = False  # ONNX: run onnxslim on the fp32 graph
    #: int8: quantize a BN-folded, grid-snapped, bias-corrected copy (export.int8_prep) rather than the raw model
    bias_correction: bool = True
    opset: int = 18
    seed: int = 0
    #: an already-loaded DatasetBundle to use instead of loading ``data_spec`` (tests and fixtures)
    dataset: Any = None
    #: external validation set: "auto" (the ISIC-archive set when found under the data root), a data spec,
    #: an already-loaded evaluation-only DatasetBundle, or None / "none" (off)
    external: Any = "auto"
    #: operating point, chosen on the validation split: the referral target and its sensitivity
    op_target: str = DEFAULT_TARGET
    op_sensitivity: float = 0.90

    @classmethod
    def from_kwargs(cls, opts: dict[str, Any]) -> ExportOptions:
        names = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(opts) - names)
        if unknown:
            raise LesionliteError(f"unknown export option(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        o = cls(**opts)
        if o.onnx_quant not in ("static", "dynamic"):
            raise LesionliteError(f"unknown ONNX quantization {o.onnx_quant!r}; choose 'static' or 'dynamic'")
        if o.calib_samples < 1:
            raise LesionliteError(f"--calib-samples must be at least 1, got {o.calib_samples}")
        if o.eval_samples is not None and o.eval_samples < 1:
            raise LesionliteError(f"--eval-samples must be at least 1, got {o.eval_samples}")
        get_target(o.op_target)  # a clear error naming the targets
        if not 0.0 < o.op_sensitivity <= 1.0:
            raise LesionliteError(f"--op-sensitivity must be in (0, 1], got {o.op_sensitivity}")
        pis = o.phone_input_size
        if not (pis is None or isinstance(pis, int) or (isinstance(pis, str) and (
                pis.strip().lower() in ("auto", "none", "off", "") or pis.strip().isdigit()))) or (
                isinstance(pis, int) and pis < 0):
            raise LesionliteError(f"--phone-input-size must be auto, none/0 or a number of pixels, got {pis!r}")
        for value in o.thresholds.values():
            if value < 0:  # above 1 is allowed: it refuses everything (useful to test the gate)
                raise LesionliteError(f"--parity-threshold must not be negative, got {value}")
        return o

    @property
    def thresholds(self) -> dict[str, float]:
        """The top-1 agreement each precision must reach to be written."""
        if self.parity_threshold is None:
            return dict(DEFAULT_PARITY_THRESHOLDS)
        if isinstance(self.parity_threshold, dict):
            return {**DEFAULT_PARITY_THRESHOLDS, **{k: float(v) for k, v in self.parity_threshold.items()}}
        return {k: float(self.parity_threshold) for k in DEFAULT_PARITY_THRESHOLDS}


@dataclass
class ExportContext:
    """What a format converter may use: the eval-mode model, its manifest, calibration data, options."""

    model: Any
    source: Manifest
    preprocessing: PreprocessConfig
    calib: np.ndarray  # NCHW float32, preprocessed training images
    options: ExportOptions
    workdir: Path  # scratch space shared by the precisions of one format (e.g. the fp32 graph)
    cache: dict[str, Any] = field(default_factory=dict)
    #: export.data.ExportData the calibration came from (its images, for inputs at another size); None in tests
    data: Any = None

    @property
    def architecture(self) -> str:
        return self.source.architecture

    def model_for(self, precision: str) -> Any:
        """The float model a precision is converted from: int8 uses the prepared copy (once per export)."""
        if precision != "int8" or not self.options.bias_correction:
            return self.model
        if "int8_model" not in self.cache:
            self.cache["int8_model"], report = prepare_for_int8(self.model, self.calib)
            self.cache["int8_prep"] = report.as_dict()
        return self.cache["int8_model"]

    def float_source(self, precision: str) -> tuple[Any, str]:
        """(model, tag) ``precision`` is converted from; the tag ("fp32" or "fp32_int8prep") names that float
        model so each format converts it once per export and the precisions sharing it reuse the graph."""
        model = self.model_for(precision)
        return model, "fp32" if model is self.model else "fp32_int8prep"

    def int8_prep_info(self) -> dict[str, Any] | None:
        """What :meth:`model_for` did for int8, for the artifact manifest (None when disabled)."""
        return self.cache.get("int8_prep") if self.options.bias_correction else None

    @property
    def class_names(self) -> list[str]:
        return list(self.source.class_names)

    @property
    def temperature(self) -> float:
        return self.source.temperature

    @property
    def input_size(self) -> int:
        return self.preprocessing.input_size

    @property
    def phone_input_size(self) -> int | None:
        """The TFLite artifacts' input side when it is larger than the model's (in-graph downscale), else None."""

        pre = self.preprocessing
        return resolve_size(self.options.phone_input_size, pre.input_size, pre.resize_size)

    def inputs_at(self, cfg: PreprocessConfig, which: str = "calib") -> np.ndarray:
        """``which`` ("calib" or "eval") images preprocessed with ``cfg`` (e.g. at an artifact's larger input side);
        ``calib`` itself where ``cfg`` is the source's."""
        if which == "calib" and cfg == self.preprocessing:
            return self.calib
        if self.data is None:
            raise LesionliteError("this export context has no data to preprocess at another input size")
        return np.asarray(self.data.inputs(which, cfg)[:])
