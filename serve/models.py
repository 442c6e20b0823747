"""Find and load the models under MODEL_DIR.

MODEL_DIR is either one artifact directory (``manifest.json`` + the model file it names) or a parent
directory holding several, at any depth up to :data:`MAX_DEPTH`. Each servable artifact (kind
``onnx`` or ``tflite``) becomes a :class:`LoadedModel` named after its directory path relative to
MODEL_DIR (``/`` → ``-``; the directory's own name for a single artifact). Artifacts of other kinds
(checkpoints, CoreML) are skipped with a log line. Hidden folders (an interrupted export's staging)
are never loaded.

A damaged artifact (unreadable manifest, missing or corrupt model file, a manifest that contradicts
its model file) does not stop the others: it is listed with its reason in the log, in ``/v2/models``
(``unavailable``) and on the page. Serve refuses to start only when nothing is servable, or with
``--strict`` when anything is broken.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lesionlite import opencv_view
from lesionlite.classes import display_name
from lesionlite.discovery import MAX_DEPTH, walk
from lesionlite.errors import LesionliteError
from lesionlite.hashing import file_sha256
from lesionlite.manifest import MANIFEST_NAME, Manifest, read_manifest
from lesionlite.ood import view_backend
from lesionlite.preprocessing import model_size
from serve.runtimes import Runtime, load_runtime, servable_kinds

log = logging.getLogger("serve")
#: Open Inference Protocol names of the extra tensors serve offers beside the model's own:
#: encoded images in (decoded and preprocessed like ``/predict``) and calibrated probabilities out.
IMAGE_INPUT = "image"
PROBABILITIES_OUTPUT = "probabilities"
#: Open Inference Protocol outputs of the operating point (models whose manifest carries one)
REFERRAL_SCORE = "referral_score"
REFER = "refer"
_NAME_OK = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class LoadedModel:
    name: str
    version: str
    directory: Path
    manifest: Manifest
    runtime: Runtime

    @property
    def class_names(self) -> list[str]:
        return self.manifest.class_names

    @property
    def ood_calibration(self) -> dict[str, Any] | None:
        """Out-of-distribution thresholds fitted on validation at training time (lesionlite.ood), if any."""
        cal = (self.manifest.calibration or {}).get("ood")
        return cal if isinstance(cal, dict) and "image_threshold" in cal else None

    @property
    def operating_point(self) -> dict[str, Any] | None:
        """The referral threshold export chose on validation (``calibration.operating_point``), if any."""
        op = (self.manifest.calibration or {}).get("operating_point")
        return op if isinstance(op, dict) and "threshold" in op else None

    @property
    def synthetic(self) -> bool:
        """Trained on generated images (the demo): every answer must say so."""
        return bool((self.manifest.data or {}).get("synthetic"))

    @property
    def temperature(self) -> float:
        """Calibration temperature to divide the model's outputs by (1 if the graph already did)."""
        return 1.0 if self.manifest.output.get("temperature_applied") else self.manifest.temperature

    # ------------------------------------------------------------------ Open Inference Protocol tensors
    # ``/v2/models/{name}/infer`` takes ONE of two inputs — the preprocessed float32 batch under the
    # model's own input name, or encoded images — and always takes float32 (serve quantizes for int8
    # models) with any batch size (fixed-batch models are run item by item), so the metadata describes
    # that contract; ``runtime_tensors`` keeps what the model file itself declares.

    @property
    def tensor_input(self) -> str:
        return self.runtime.input_name

    @property
    def image_input(self) -> str:
        return IMAGE_INPUT if self.runtime.input_name != IMAGE_INPUT else IMAGE_INPUT + "_bytes"

    @property
    def logits_output(self) -> str:
        return self.runtime.output_name

    @property
    def probabilities_output(self) -> str:
        out = PROBABILITIES_OUTPUT
        return out if self.runtime.output_name != out else "calibrated_" + out

    @property
    def image_shape(self) -> list[int]:
        return list(self.runtime.image_shape)

    def oip_inputs(self) -> list[dict[str, Any]]:
        return [{"name": self.tensor_input, "datatype": "FP32", "shape": [-1, *self.image_shape]},
                {"name": self.image_input, "datatype": "BYTES", "shape": [-1]}]

    def oip_outputs(self) -> list[dict[str, Any]]:
        c = self.manifest.num_classes
        outs = [{"name": self.logits_output, "datatype": "FP32", "shape": [-1, c]},
                {"name": self.probabilities_output, "datatype": "FP32", "shape": [-1, c]}]
        if self.operating_point is not None:
            outs += [{"name": REFERRAL_SCORE, "datatype": "FP32", "shape": [-1]},
                     {"name": REFER, "datatype": "BOOL", "shape": [-1]}]
        return outs

    def metadata(self) -> dict[str, Any]:
        """Open Inference Protocol model metadata, plus what a client needs to read the outputs."""
        rt = self.runtime
        m = self.manifest
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": rt.platform,
            "inputs": self.oip_inputs(),
            "outputs": self.oip_outputs(),
            "runtime_tensors": {
                "input": {"name": rt.input_name, "datatype": rt.input_datatype, "shape": rt.input_shape},
                "output": {"name": rt.output_name, "datatype": rt.output_datatype, "shape": rt.output_shape},
            },
            "class_names": list(m.class_names),
            "architecture": m.architecture,
            "kind": m.kind,
            "layout": rt.layout,
            "max_batch": rt.max_batch,
            "preprocessing": m.preprocessing.to_dict(),
            "calibration": {"temperature": m.temperature, "applied_by": "model" if self.temperature == 1.0
                            and m.temperature != 1.0 else "server",
                            "out_of_distribution": None if self.ood_calibration is None else {
                                k: self.ood_calibration.get(k) for k in ("method", "quantile", "n",
                                                                         "val_abstain_rate")}},
            "precision": m.precision,
            "metrics": m.metrics,
            "class_labels": {c: display_name(c) for c in m.class_names},
            "parity": self.parity(),
            "synthetic_training_data": self.synthetic,
            "operating_point": self.operating_point,
        }

    def parity(self) -> dict[str, Any]:
        """Export's numerical check of this artifact against PyTorch (None fields when it was not run)."""
        p = self.manifest.parity or {}
        return {"verified": bool(p.get("verified")), "accepted": p.get("accepted"),
                "top1_agreement": p.get("top1_agreement"), "threshold": p.get("threshold"),
                "max_abs_probs": p.get("max_abs_probs")}


def _file_version(path: Path) -> str:
    """A model's version: the first 12 hex digits of its file's SHA-256 (changes exactly when the file does)."""
    return file_sha256(path)[:12]


def _model_name(root: Path, directory: Path) -> str:
    rel = directory.relative_to(root)
    raw = directory.name if rel == Path(".") else "-".join(rel.parts)
    return _NAME_OK.sub("_", raw) or "model"


def find_artifacts(model_dir: str | Path) -> tuple[list[Path], list[Path]]:
    """(directories under ``model_dir``, itself included, that hold a manifest; hidden folders holding one),
    both sorted, from one walk. The hidden ones (an interrupted export's staging) are never loaded, only
    named in the log (:mod:`lesionlite.discovery`)."""
    root = Path(model_dir)
    if not root.is_dir():
        raise LesionliteError(f"model directory {root} does not exist or is not a directory")
    return walk(root, MAX_DEPTH)


@dataclass(frozen=True)
class BrokenArtifact:
    """An artifact serve found but cannot serve, and why (shown in the log, ``/v2/models`` and the page)."""
    name: str
    directory: Path
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "directory": str(self.directory), "reason": self.reason}


@dataclass
class ModelSet:
    """What ``load_models`` found: the servable models, the broken artifacts, the kinds serve skips."""
    models: dict[str, LoadedModel]
    broken: list[BrokenArtifact]
    skipped: list[str]


def manifest_contradictions(runtime: Runtime, manifest: Manifest) -> list[str]:
    """Facts the manifest states that the model file contradicts (empty when they agree).

    Checked at load time so that a manifest edited or copied beside the wrong model is refused with
    its reason instead of being served as ready and answering every request with a 500.
    """
    problems = []
    shape = list(runtime.input_shape)
    s = manifest.preprocessing.input_size
    if len(shape) == 4:
        spatial, channels = (shape[2:], shape[1]) if runtime.layout == "NCHW" else (shape[1:3], shape[3])
        fixed = [d for d in spatial if isinstance(d, int) and d > 0]
        if fixed and fixed != [s] * len(fixed):
            problems.append(f"the model's input is {'x'.join(map(str, spatial))} px but the manifest's "
                            f"preprocessing.input_size is {s}")
        if isinstance(channels, int) and channels > 0 and channels != 3:
            problems.append(f"the model's input has {channels} channels, not 3 (RGB)")
    declared = (manifest.input or {}).get("layout")
    if declared and str(declared).upper() != runtime.layout:
        problems.append(f"the manifest's input.layout is {declared} but the model's input shape {shape} is "
                        f"{runtime.layout}")
    out = list(runtime.output_shape)
    classes = out[-1] if out else None
    if isinstance(classes, int) and classes > 0 and classes != manifest.num_classes:
        problems.append(f"the model has {classes} outputs but the manifest names {manifest.num_classes} classes "
                        f"({', '.join(manifest.class_names)})")
    return problems


def parity_refusal(manifest: Manifest) -> str | None:
    """Why export refused this artifact (written anyway with ``--force``), or None when it was accepted."""
    p = manifest.parity or {}
    if p.get("accepted") is not False:
        return None
    agree, thr = p.get("top1_agreement"), p.get("threshold")
    what = (f"top-1 agreement with PyTorch {agree:.4f} < threshold {thr}" if isinstance(agree, (int, float))
            and isinstance(thr, (int, float)) else "its parity check failed")
    return f"export refused this artifact ({what}) and it was written with --force"


def _load_one(root: Path, d: Path, threads: int, spin_wait: bool, allow_unverified: bool = False) -> LoadedModel | str:
    """The loaded model, or the manifest kind string when serve does not run that kind.

    Raises LesionliteError naming what is wrong with a damaged artifact, or why a refused one is not
    served (export's parity check failed; ``--allow-unverified`` serves it anyway, with a warning)."""
    manifest = read_manifest(d)
    if manifest.kind not in servable_kinds():
        return manifest.kind
    refused = parity_refusal(manifest)
    if refused and not allow_unverified:
        raise LesionliteError(f"{refused}; pass --allow-unverified to serve it anyway")
    if refused:
        log.warning("serving %s although %s (--allow-unverified)", d, refused)
    fname = manifest.files.get("model")
    if not fname:
        raise LesionliteError(f"{d / MANIFEST_NAME}: files.model is missing (the model file name)")
    path = d / fname
    if not path.is_file():
        raise LesionliteError(f"{d / MANIFEST_NAME}: model file {fname!r} not found beside it")
    try:
        runtime = load_runtime(path, manifest, threads, spin_wait=spin_wait)
    except LesionliteError:
        raise
    except Exception as exc:  # a truncated or corrupt model file: the runtime's own parser fails
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise LesionliteError(f"{path}: the {manifest.kind} runtime cannot load it ({type(exc).__name__}: {first})") from None
    problems = manifest_contradictions(runtime, manifest)
    if problems:
        raise LesionliteError(f"{d / MANIFEST_NAME} contradicts {fname}: " + "; ".join(problems))
    version = manifest.version or _file_version(path)
    return LoadedModel(_model_name(root, d), version, d, manifest, runtime)


def load_model_set(model_dir: str | Path, threads: int = 0, spin_wait: bool = False,
                   allow_unverified: bool = False) -> ModelSet:
    """Load every servable artifact under ``model_dir``; a damaged one is recorded with its reason, not fatal.

    Raises only when nothing was found at all; the caller decides what to do when nothing is servable.
    """
    root = Path(model_dir)
    dirs, hidden = find_artifacts(root)
    if not dirs:
        raise LesionliteError(f"no {MANIFEST_NAME} found in {root} (or its visible subdirectories up to depth "
                              f"{MAX_DEPTH}); point serve at an exported model directory")
    result = ModelSet({}, [], [])
    for d in dirs:
        name = _model_name(root, d)
        try:
            loaded = _load_one(root, d, threads, spin_wait, allow_unverified)
        except LesionliteError as exc:
            result.broken.append(BrokenArtifact(name, d, str(exc)))
            log.error("cannot serve %s: %s", name, exc)
            continue
        if isinstance(loaded, str):
            result.skipped.append(f"{d} ({loaded})")
            log.info("skipping artifact that serve cannot run: %s (%s)", d, loaded)
            continue
        if name in result.models:
            raise LesionliteError(f"two artifacts map to the model name {name!r}: {result.models[name].directory} and {d}")
        result.models[name] = loaded
        log.info("loaded model %s (%s, %s, version %s) from %s", name, loaded.manifest.kind,
                 loaded.manifest.architecture, loaded.version, d)
        _log_ood_view(name, loaded)
    if hidden:
        log.warning("ignored %d hidden folder(s) (an interrupted export's staging; the next export removes them): %s",
                    len(hidden), ", ".join(str(h) for h in hidden))
    return result


def _log_ood_view(name: str, loaded: LoadedModel) -> None:
    """Say what computes the OOD check's view of a model whose graph downscales its input (a phone input):
    without OpenCV it is numpy's slower path, which a user tuning throughput should know."""
    pre = loaded.manifest.preprocessing
    backend = view_backend(pre) if loaded.ood_calibration is not None else None
    if backend == "opencv":
        log.info("%s: the out-of-distribution check reads the model's %d px view of its %d px input through OpenCV",
                 name, model_size(pre), pre.input_size)
    elif backend == "numpy":
        why = ("OpenCV is not importable here; `pip install opencv-python-headless` makes it ~2x cheaper"
               if opencv_view.opencv() is None else "not a whole-factor downscale, which OpenCV's path needs")
        log.info("%s: the out-of-distribution check reads the model's %d px view of its %d px input through numpy (%s)",
                 name, model_size(pre), pre.input_size, why)


def load_models(model_dir: str | Path, threads: int = 0, spin_wait: bool = False,
                strict: bool = False, allow_unverified: bool = False) -> ModelSet:
    """:func:`load_model_set`, refusing to go on when nothing is servable, or (``strict``) when anything is broken."""
    found = load_model_set(model_dir, threads, spin_wait, allow_unverified)
    if found.broken and (strict or not found.models):
        reasons = "\n".join(f"  - {b.name}: {b.reason}" for b in found.broken)
        lead = ("strict mode: refusing to start with broken artifacts" if found.models
                else f"no servable model in {model_dir}: every artifact is broken")
        raise LesionliteError(f"{lead}\n{reasons}")
    if not found.models:
        raise LesionliteError(f"no servable model in {model_dir}: found only {', '.join(found.skipped)}; "
                              f"serve runs kinds {', '.join(servable_kinds())}")
    return found


def default_model_name(models: dict[str, LoadedModel]) -> str:
    """The model a request that names none gets: the most accurate verified one, then the smallest file.

    Verified = export's parity check ran and accepted it; accuracy = the test balanced accuracy export
    measured on the artifact itself (``metrics.balanced_accuracy``). Unmeasured models rank last; the
    name breaks remaining ties, so the choice is stable.
    """
    def key(name: str) -> tuple:
        m = models[name].manifest
        verified = m.parity_verified
        bal = (m.metrics or {}).get("balanced_accuracy")
        bal = float(bal) if isinstance(bal, (int, float)) else -1.0
        try:
            size = models[name].runtime.model_path.stat().st_size
        except OSError:
            size = 1 << 62
        return (not verified, -bal, size, name)

    return min(models, key=key)
