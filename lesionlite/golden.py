"""Golden vectors: a few real images beside each artifact, with their exact model inputs and expected outputs.

Why: an artifact is verified on the export host, but it runs elsewhere (a phone, a board, another build of
the runtime, another Pillow). With the images as they came, the exact input tensor
(:func:`lesionlite.preprocessing.preprocess` with the artifact manifest's ``PreprocessConfig``, in the
artifact's layout and dtype) and the outputs export measured, three things can be checked apart wherever the
model goes: the model file (its SHA-256), the preprocessing (image → tensor) and the runtime (tensor →
outputs). ``lesionlite verify`` (:mod:`mobile_benchmarks.verify`) re-runs them; an app team asserts the same
in its own tests (docs/put_it_in_an_app.md).

Layout of ``<artifact>/golden/``: ``images/NNNN.png`` (lossless, so no JPEG decoder enters the check),
``inputs.npy`` (``[N, *model input shape]`` in the model's dtype: one row per invoke), ``expected_outputs.npy``
(``[N, classes]`` float32, dequantized where the output is integer) and ``golden.json`` (what each file is,
the model's SHA-256, tolerances, how the outputs were computed). numpy and Pillow only: no torch.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lesionlite.atomic import atomic_path, write_json_atomic
from lesionlite.errors import LesionliteError
from lesionlite.hashing import file_sha256
from lesionlite.int8_grid import quantize_affine
from lesionlite.manifest import Manifest
from lesionlite.preprocessing import preprocess

GOLDEN_DIR = "golden"
GOLDEN_JSON = "golden.json"
INPUTS_FILE = "inputs.npy"
OUTPUTS_FILE = "expected_outputs.npy"
SCHEMA = 1

#: largest |Δ| between expected and measured outputs, by output kind and precision. Loose enough for another
#: CPU's kernels (summation order, int8 rounding of another SIMD path), tight enough that a damaged weight or a
#: wrong input shows: probabilities are in [0, 1]; an int8 output moves in steps of 1/256.
OUTPUT_ATOL: dict[str, dict[str, float]] = {
    "probabilities": {"fp32": 1e-4, "fp16": 1e-2, "int8": 0.02},
    "logits": {"fp32": 1e-3, "fp16": 5e-2, "int8": 0.25},
}


def model_input(image: Any, manifest: Manifest) -> np.ndarray:
    """The exact tensor the artifact takes for ``image`` (PIL, as it came): ``[1, ...]`` in its layout and dtype.

    Float inputs are the preprocessing's float32; integer inputs are quantized with the manifest's
    ``input.quantization`` (what ``serve`` does), e.g. uint8 pixels for a TFLite int8 model with integer I/O.
    """
    layout = str(manifest.input.get("layout") or "NCHW")
    x = preprocess(image, manifest.preprocessing, layout)[None]  # type: ignore[arg-type]
    dtype = np.dtype(str(manifest.input.get("dtype") or "float32"))
    if dtype.kind in "iu":
        q = manifest.input.get("quantization") or {}
        if not q.get("scale"):
            raise LesionliteError(f"the manifest's {dtype.name} input has no quantization (scale, zero_point)")
        return quantize_affine(x, float(q["scale"]), int(q["zero_point"]), dtype)
    return x.astype(dtype, copy=False)


def output_atol(manifest: Manifest) -> float:
    kind = "probabilities" if manifest.output.get("kind") == "probabilities" else "logits"
    return OUTPUT_ATOL[kind].get(manifest.precision, OUTPUT_ATOL[kind]["int8"])


def input_atol(inputs: np.ndarray, manifest: Manifest) -> float:
    """One pixel level: Pillow's resampling may round one level apart across versions; more than that is a change."""
    if inputs.dtype.kind in "iu":
        return 1.0
    return 1.0 / 255.0 / min(manifest.preprocessing.std) * 1.001


def write_golden(artifact_dir: str | Path, manifest: Manifest, images: Sequence[Any], labels: Sequence[int],
                 outputs: np.ndarray, how: str, sources: Sequence[str] | None = None) -> Path:
    """Write ``<artifact_dir>/golden/`` for ``images`` (inputs made here) and the outputs measured on them."""
    if not len(images):
        raise LesionliteError("golden vectors need at least one image")
    gdir = Path(artifact_dir) / GOLDEN_DIR
    (gdir / "images").mkdir(parents=True, exist_ok=True)
    inputs = np.stack([model_input(im, manifest) for im in images])
    entries = []
    for i, (im, label) in enumerate(zip(images, labels)):
        name = f"images/{i:04d}.png"
        with atomic_path(gdir / name) as tmp:
            im.convert("RGB").save(tmp, format="PNG")
        entries.append({"file": name, "label": int(label), "class_name": manifest.class_names[int(label)],
                        "sha256": file_sha256(gdir / name), "size": list(im.size),
                        **({"source": sources[i]} if sources else {})})
    for fname, arr in ((INPUTS_FILE, inputs), (OUTPUTS_FILE, np.asarray(outputs, np.float32))):
        with atomic_path(gdir / fname) as tmp, open(tmp, "wb") as fh:
            np.save(fh, arr)
    model = Path(artifact_dir) / manifest.files["model"]
    spec = {
        "schema": SCHEMA, "model_file": manifest.files["model"], "model_sha256": file_sha256(model) if model.is_file() else None,
        "kind": manifest.kind, "precision": manifest.precision, "class_names": list(manifest.class_names),
        "input": {"file": INPUTS_FILE, "dtype": inputs.dtype.name, "shape": list(inputs.shape[1:]),
                  "layout": manifest.input.get("layout"), "quantization": manifest.input.get("quantization"),
                  "preprocessing": manifest.preprocessing.to_dict()},
        "output": {"file": OUTPUTS_FILE, "kind": manifest.output.get("kind", "logits"), "dequantized": True,
                   "quantization": manifest.output.get("quantization")},
        "images": entries, "expected_top1": [int(i) for i in np.asarray(outputs).argmax(1)],
        "tolerance": {"input_atol": input_atol(inputs, manifest), "output_atol": output_atol(manifest),
                      "top1": "must match wherever the expected top-2 margin exceeds 2 × output_atol"},
        "how": how,
    }
    write_json_atomic(gdir / GOLDEN_JSON, spec)
    return gdir


@dataclass
class GoldenSet:
    directory: Path
    spec: dict[str, Any]
    inputs: np.ndarray
    outputs: np.ndarray

    def image_paths(self) -> list[Path]:
        return [self.directory / e["file"] for e in self.spec["images"]]


def read_golden(artifact_dir: str | Path) -> GoldenSet:
    """The golden set of an artifact; a missing or unreadable one is one clear error."""
    gdir = Path(artifact_dir) / GOLDEN_DIR
    if not (gdir / GOLDEN_JSON).is_file():
        raise LesionliteError(f"{Path(artifact_dir).name}: no {GOLDEN_DIR}/{GOLDEN_JSON} (exported before golden "
                              "vectors existed, or a format without them); re-export it")
    try:
        spec = json.loads((gdir / GOLDEN_JSON).read_text())
        inputs = np.load(gdir / spec["input"]["file"], allow_pickle=False)
        outputs = np.load(gdir / spec["output"]["file"], allow_pickle=False)
    except (OSError, ValueError, KeyError) as exc:
        raise LesionliteError(f"{gdir}: unreadable golden set: {type(exc).__name__}: {exc}") from None
    if int(spec.get("schema", 0)) != SCHEMA:
        raise LesionliteError(f"{gdir}: golden schema {spec.get('schema')!r} is not {SCHEMA}; re-export the artifact")
    if len(inputs) != len(outputs) or len(inputs) != len(spec["images"]):
        raise LesionliteError(f"{gdir}: {len(spec['images'])} images, {len(inputs)} inputs and {len(outputs)} outputs")
    return GoldenSet(directory=gdir, spec=spec, inputs=inputs, outputs=outputs)


def compare_outputs(expected: np.ndarray, got: np.ndarray, atol: float) -> dict[str, Any]:
    """max |Δ| and top-1 agreement of ``got`` with ``expected`` (top-1 counted where the margin is clear)."""
    expected, got = np.asarray(expected, np.float64), np.asarray(got, np.float64).reshape(expected.shape)
    diff = float(np.abs(expected - got).max()) if expected.size else 0.0
    top2 = np.sort(expected, axis=1)[:, -2:] if expected.shape[1] > 1 else np.zeros((len(expected), 2))
    clear = (top2[:, 1] - top2[:, 0]) > 2 * atol
    flips = int(np.sum((expected.argmax(1) != got.argmax(1)) & clear))
    return {"max_abs_diff": diff, "atol": atol, "top1_flips": flips, "n": int(len(expected)),
            "ok": bool(diff <= atol and flips == 0)}
