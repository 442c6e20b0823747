"""Write each exported artifact's golden vectors (:mod:`lesionlite.golden`) from the export's evaluation images.

A few held-out images (the first of each class in evaluation order, then the next ones, up to
:data:`N_IMAGES`) as they came, their exact input tensors made by the artifact manifest's preprocessing, and
the artifact's own outputs on those tensors, computed here in-process with the runtime the artifact targets
(onnxruntime with the manifest's session config, the LiteRT interpreter, executorch.runtime) on one thread. ``lesionlite verify``
then re-runs them through bench's runner on any target, a second path to the same numbers.

CoreML gets none: it cannot run on Linux, so there is no measured output to ship (the app's own tests
compare with the TFLite golden set's probabilities instead; docs/put_it_in_an_app.md).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from export.formats.executorch import load_method
from lesionlite.golden import model_input, write_golden
from lesionlite.manifest import read_manifest

N_IMAGES = 8  # one of each of the 7 HAM10000 classes, and one more


def pick(labels: np.ndarray, n: int = N_IMAGES) -> list[int]:
    """Indices of the first image of each class (in evaluation order), then the next images, up to ``n``."""
    first = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)]
    rest = [i for i in range(len(labels)) if i not in set(first)]
    return sorted((first + rest)[:n])


def raw_outputs(kind: str, model_path: Path, inputs: np.ndarray, session_config: dict[str, str]) -> np.ndarray:
    """The model's outputs (dequantized to float) for each row of ``inputs`` (one invoke per row)."""
    if kind == "onnx":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
        for key, value in session_config.items():
            so.add_session_config_entry(key, str(value))
        sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return np.stack([np.asarray(sess.run(None, {name: x})[0], np.float64).reshape(-1) for x in inputs])
    if kind == "executorch":
        import torch

        method = load_method(model_path)
        return np.stack([method.execute([torch.from_numpy(np.ascontiguousarray(x))])[0].numpy().astype(np.float64)
                         .reshape(-1) for x in inputs])
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(model_path), num_threads=1)
    it.allocate_tensors()
    ind, outd = it.get_input_details()[0], it.get_output_details()[0]
    outs = []
    for x in inputs:
        it.set_tensor(ind["index"], x)
        it.invoke()
        y = it.get_tensor(outd["index"]).astype(np.float64)
        scale, zero = outd.get("quantization", (0.0, 0))
        outs.append(((y - zero) * scale if np.dtype(outd["dtype"]).kind in "iu" and scale else y).reshape(-1))
    return np.stack(outs)


def write_for_artifact(stage: Path, data: Any) -> dict[str, Any]:
    """Golden vectors for the artifact staged in ``stage`` (its manifest already written); a note for the report."""
    manifest = read_manifest(stage / "manifest.json")
    if manifest.kind not in ("onnx", "tflite", "executorch"):
        return {"written": False, "reason": f"{manifest.kind} cannot run on this host: no measured outputs to ship"}
    loader = getattr(data, "eval_images", None)
    if loader is None:
        return {"written": False, "reason": "the evaluation data cannot give its original images"}
    idx = pick(np.asarray(data.eval_y))
    images = loader()
    chosen = [images[i] for i in idx]
    inputs = np.stack([model_input(im, manifest) for im in chosen])
    outputs = raw_outputs(manifest.kind, stage / manifest.files["model"], inputs, dict(manifest.session_config))
    sources = [f"{data.name}:{data.eval_split}[{data.eval_indices[i]}]" if data.eval_indices else f"{data.eval_split} #{i}"
               for i in idx]
    write_golden(stage, manifest, chosen, [int(data.eval_y[i]) for i in idx], outputs, sources=sources,
                 how=f"{manifest.kind} runtime in-process on 1 thread at export (export/golden.py)")
    return {"written": True, "images": len(idx)}
