"""Python API of the export stage: :func:`export_model` (the CLI is a thin wrapper around it).

``export_model(checkpoint_dir, out_dir, formats, precisions, data_spec=None, data_root=None, **opts)``
loads a student written by `distill` (:func:`distill.artifacts.load_student`), converts it to every
requested format × precision, runs each artifact on held-out images against the PyTorch model, and
writes ``OUT/<arch>_<format>_<precision>/{model.<ext>, manifest.json}`` plus ``OUT/export_report.{json,md}``.

All artifacts are first built in hidden staging directories inside ``OUT``. An artifact whose parity
is broken (top-1 agreement with PyTorch below its precision's threshold) is refused unless
``force=True``: it is never renamed into place, while the artifacts that pass are installed and the
report lists the refused ones; a :class:`ParityError` then tells the caller. A converter failure or
bad input leaves ``OUT`` as it was.

The default thresholds (:data:`DEFAULT_PARITY_THRESHOLDS`) catch a *broken* conversion, not a
quality target: fp32 must agree on ≥ 99% of held-out images, fp16 on ≥ 98%, int8 on ≥ 90%
(quantization legitimately flips low-margin images). The quality targets of the project (fp16 ≥ 99.5%
agreement, int8 within 1 point of balanced accuracy) are measured by ``benchmarks/export_targets.py``.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import io
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distill.clinical import OperatingPoint
from distill.data.base import DatasetBundle
from export import evidence as ev
from export.context import DEFAULT_PARITY_THRESHOLDS, ExportContext, ExportOptions  # noqa: F401  (public API)
from export.data import PreparedInputs, prepare_data
from export.evidence import measure
from export.formats import PRECISIONS, ArtifactInfo, ExportFormat, get_format, list_formats
from export.golden import write_for_artifact
from export.mediapipe_check import attach
from export.model_card import build_model_card, write_model_card
from export.modelstats import model_stats
from export.parity import classification_metrics, compare, host_int8_note
from export.report import write_report
from export.results import REPORT_JSON, REPORT_MD, ArtifactResult, ExportReport, ParityError  # noqa: F401
from lesionlite.atomic import atomic_path, remove_stale_leftovers, replace_dir
from lesionlite.cpu_features import cpu_model
from lesionlite.errors import LesionliteError, require
from lesionlite.manifest import DataSpec, Manifest, git_commit, portable
from lesionlite.preprocessing import model_size, model_view


def parse_list(value: str | Sequence[str], allowed: Sequence[str], what: str) -> list[str]:
    """'a,b' / ['a','b'] / 'all' → validated list in the given order, without duplicates."""
    items = [v.strip().lower() for v in (value.split(",") if isinstance(value, str) else value)]
    items = [v for v in items if v]
    if not items:
        raise LesionliteError(f"no {what} given; choose from {', '.join(allowed)} or 'all'")
    if "all" in items:
        return list(allowed)
    bad = [v for v in items if v not in allowed]
    if bad:
        raise LesionliteError(f"unknown {what} {bad[0]!r}; choose from {', '.join(allowed)} or 'all'")
    return list(dict.fromkeys(items))


def tool_versions(packages: Sequence[str]) -> dict[str, str]:
    out = {}
    for p in packages:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def path_size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence converters' Python-level progress output (bars, banners); errors still propagate."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _run_batched(fn: Any, x: np.ndarray, batch: int = 64) -> np.ndarray:
    return np.concatenate([fn(x[i : i + batch]) for i in range(0, len(x), batch)], axis=0)


def _torch_logits(model: Any, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return _run_batched(lambda b: model(torch.from_numpy(b)).numpy(), x)



def _latency_ms_p50(runner: Any, one: np.ndarray, runs: int = 20) -> float:
    """Median wall time of ``runs`` batch-1 calls after 3 warm-up calls (ms): a first figure for the model
    card; ``lesionlite bench`` is the measurement to quote."""
    for _ in range(3):
        runner(one)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        runner(one)
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(np.median(times))


def _cpu_model() -> str:
    """This host's CPU as the bench reports it (lesionlite.cpu_features.cpu_model), with its CPU count."""
    return f"{cpu_model() or 'unknown CPU'}, {os.cpu_count()} CPUs"


def load_checkpoint_and_export_data(checkpoint: str | os.PathLike[str], data_spec: str | None, data_root: str | None,
                                    calib_samples: int, eval_samples: int | None,
                                    seed: int = 0) -> tuple[Any, Manifest, Any, ExportOptions]:
    """(model in eval mode, manifest, prepared calibration/eval data, the options that chose them),
    exactly as ``export_model`` sees them.

    The common set-up of the int8 benchmarks (``benchmarks/int8_sensitivity.py``, ``tflite_int8_probe.py``).
    """
    from distill.artifacts import load_student

    model, manifest = load_student(checkpoint)
    model.eval()
    options = ExportOptions.from_kwargs({"seed": seed})
    bundle = load_export_data(manifest, data_spec, data_root, options)
    data = prepare_data(bundle, manifest.preprocessing, list(manifest.class_names), calib_samples, eval_samples, seed)
    return model, manifest, data, options


def load_export_data(ctx_manifest: Manifest, data_spec: str | None, data_root: str | None, options: ExportOptions) -> Any:
    """The data export calibrates and evaluates on: ``options.dataset``, else ``data_spec``, else the checkpoint's own.

    Public so that benchmarks measure on exactly the images ``export_model`` uses.
    """
    if options.dataset is not None:
        return options.dataset
    from export.data import load_bundle  # at call time: tests replace export.data.load_bundle

    if data_spec:
        return load_bundle(str(data_spec), data_root, options.seed)
    # Default: the checkpoint's own data, rebuilt from the loader spec training recorded (data.spec; a
    # manifest too old to have one offers its bundle name) and checked against the recorded fingerprint.
    info = ctx_manifest.data or {}
    candidates = list(dict.fromkeys(str(c) for c in (info.get("spec"), info.get("name")) if c))
    if not candidates:
        raise LesionliteError(
            "no data for calibration and parity: the checkpoint manifest names no data set; pass --data SPEC"
        )
    want = info.get("fingerprint")
    # the split seed and loader options the checkpoint was trained with (e.g. --set data.options=…): without
    # them the same spec builds other data (another fingerprint) and the checkpoint's data is "not found"
    split_seed = int(info.get("split_seed", options.seed))
    loader_options = dict(info.get("options") or {})
    first_error: LesionliteError | None = None
    for spec in candidates:
        try:
            bundle = load_bundle(spec, data_root, split_seed, **loader_options)
        except LesionliteError as exc:
            first_error = first_error or exc
            continue
        if not want or getattr(bundle, "fingerprint", None) == want:
            return bundle
    raise LesionliteError(
        f"cannot find the checkpoint's data {info.get('name')!r} (fingerprint {str(want)[:12]}) with spec(s) "
        f"{', '.join(candidates)}" + (f" ({first_error})" if first_error else "") + "; pass --data SPEC (and --data-root)"
    )


def export_model(
    checkpoint_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    formats: str | Sequence[str] = "all",
    precisions: str | Sequence[str] = ("fp32",),
    data_spec: str | None = None,
    data_root: str | os.PathLike[str] | None = None,
    **opts: Any,
) -> ExportReport:
    """Export a checkpoint to ``formats`` × ``precisions`` under ``out_dir``; see the module docstring.

    ``opts`` are the fields of :class:`ExportOptions` (``calib_samples``, ``eval_samples``,
    ``parity_threshold``, ``force``, ``int8_io``, ``onnx_quant``, ``simplify``, ``bias_correction``, ``opset``,
    ``seed``, ``dataset``). Raises :class:`LesionliteError` for bad input and :class:`ParityError` (nothing
    written) when an artifact's top-1 agreement is below ``parity_threshold`` and ``force`` is false.

    Steps: resolve the formats, load the source (checkpoint, data, PyTorch reference outputs), convert
    and verify every artifact into a staging folder, then publish (rename the accepted ones into place,
    write the report and the model card).
    """
    options = ExportOptions.from_kwargs(opts)
    fmts, precs = _resolve_formats(formats, precisions)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise LesionliteError(f"--out {out} exists and is not a directory")
    source = _load_source(checkpoint_dir, data_spec, data_root, options)
    out.mkdir(parents=True, exist_ok=True)
    leftovers = remove_stale_leftovers(out)  # a killed export's staging folders and temporaries
    results: list[ArtifactResult] = []
    staged: list[tuple[Path, Path]] = []
    workroot = Path(tempfile.mkdtemp(prefix="lesionlite-export-"))
    try:
        for fmt in fmts:
            ctx = ExportContext(model=source.model, source=source.manifest, preprocessing=source.manifest.preprocessing,
                                calib=source.data.calib, options=options, workdir=workroot / fmt.name, data=source.data)
            ctx.workdir.mkdir(parents=True, exist_ok=True)
            for prec in precs:
                name = f"{source.manifest.architecture}_{fmt.name}_{prec}"
                stage = Path(tempfile.mkdtemp(prefix=f".{name}.{os.getpid()}.", suffix=".staging", dir=out))
                staged.append((stage, out / name))
                results.append(_export_artifact(fmt, prec, ctx, source, stage, out / name))
        report = ExportReport(out_dir=str(out), source=source.summary, data=source.data.describe(),
                              parity_threshold=options.thresholds, artifacts=results,
                              removed_leftovers=[p.name for p in leftovers])
        staged = _publish(report, staged, source, out)
        return report
    finally:
        for stage, _ in staged:
            shutil.rmtree(stage, ignore_errors=True)
        shutil.rmtree(workroot, ignore_errors=True)


def _resolve_formats(formats: str | Sequence[str], precisions: str | Sequence[str]) -> tuple[list[ExportFormat], list[str]]:
    """The format plug-ins and precisions asked for, each checked (supported, converter installed)."""
    fmt_names = parse_list(formats, list_formats(), "export format")
    precs = parse_list(precisions, PRECISIONS, "precision")
    fmts: list[ExportFormat] = [get_format(n) for n in fmt_names]
    for f in fmts:
        unsupported = [p for p in precs if p not in f.precisions]
        if unsupported:
            raise LesionliteError(f"{f.name} export does not support precision {unsupported[0]!r}; "
                                  f"choose from {', '.join(f.precisions)}")
        with quiet():  # converters print banners on import (e.g. coremltools' missing native libs on Linux)
            f.check_available()
    require("torch", "export", "exporting a checkpoint")
    return fmts, precs


@dataclass
class _Source:
    """The checkpoint being exported and what every artifact is compared with."""

    model: Any  # the PyTorch student (eval mode)
    manifest: Manifest
    sha256: str
    data: Any  # export.data.ExportData: calibration and evaluation images
    ref_logits: np.ndarray  # PyTorch's logits on data.eval_x
    metrics: dict[str, Any]  # PyTorch's metrics on the evaluation images
    stats: dict[str, Any]  # params, MACs
    summary: dict[str, Any]  # the report's "source" block
    evidence: Any = None  # export.evidence.Evidence: operating point, internal and external image sets


def _load_source(checkpoint_dir: str | os.PathLike[str], data_spec: str | None,
                 data_root: str | os.PathLike[str] | None, options: ExportOptions) -> _Source:
    import torch

    from distill.artifacts import file_sha256, load_student

    model, src = load_student(checkpoint_dir)
    ckpt_dir = Path(checkpoint_dir)
    ckpt_dir = ckpt_dir.parent if ckpt_dir.is_file() else ckpt_dir
    model_file = ckpt_dir / src.files.get("model", "student.pt")
    sha = file_sha256(model_file)
    cfg = src.preprocessing
    bundle = load_export_data(src, data_spec, None if data_root is None else str(data_root), options)
    data = prepare_data(bundle, cfg, src.class_names, options.calib_samples, options.eval_samples, options.seed)
    torch.manual_seed(options.seed)
    ref_logits = _torch_logits(model, data.eval_x)
    metrics = classification_metrics(data.eval_y, ref_logits, src.num_classes)
    stats = model_stats(model, cfg.input_size)
    evidence = _gather_evidence(model, src, bundle, data, ref_logits, data_root, options)
    summary = {
        "checkpoint": str(ckpt_dir), "architecture": src.architecture, "sha256": sha, "params": stats["params"],
        "macs": stats["macs"], "macs_method": stats["macs_method"], "size_bytes": path_size(model_file),
        "metrics": metrics, "temperature": src.temperature, "torch": torch.__version__, "host": _cpu_model(),
        "evidence": evidence.describe(), "clinical": measure(evidence, src, None, "logits"),
    }
    return _Source(model=model, manifest=src, sha256=sha, data=data, ref_logits=ref_logits, metrics=metrics,
                   stats=stats, summary=summary, evidence=evidence)


def _gather_evidence(model: Any, src: Manifest, bundle: DatasetBundle, data: Any, ref_logits: np.ndarray,
                     data_root: str | os.PathLike[str] | None, options: ExportOptions) -> Any:
    """The operating point (the checkpoint's own, else chosen on validation) and the internal and external sets."""

    def run(x: np.ndarray) -> np.ndarray:
        return _torch_logits(model, x)

    notes: list[str] = []
    stored = (src.calibration or {}).get("operating_point")
    if stored:
        op = OperatingPoint.from_dict(stored)
    else:
        op, why = ev.operating_point(run, bundle, src, options.op_target, options.op_sensitivity)
        if why:
            notes.append(why)
    sets = [ev.internal_set(data, src, ref_logits)]
    ext_bundle, why = ev.load_external(options.external, None if data_root is None else str(data_root), src)
    if ext_bundle is not None:
        ext, why = ev.external_set(ext_bundle, src, run)
        if ext is not None:
            sets.append(ext)
    if why:
        notes.append(why)
    return ev.Evidence(operating_point=op, sets=sets, notes=notes)


def _export_artifact(fmt: ExportFormat, prec: str, ctx: ExportContext, source: _Source, stage: Path,
                     final: Path) -> ArtifactResult:
    """Convert one format × precision into ``stage``, check it against PyTorch and write its manifest."""
    dest = stage / fmt.model_file
    src = source.manifest
    t0 = time.perf_counter()
    try:
        with quiet():
            info: ArtifactInfo = fmt.convert(ctx, prec, dest)
    except LesionliteError:
        raise
    except Exception as exc:  # a converter failing on an op it cannot lower, etc.
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise LesionliteError(
            f"{fmt.name} {prec} conversion of {src.architecture} failed: {type(exc).__name__}: {msg[:300]}"
        ) from None
    seconds = time.perf_counter() - t0
    if prec == "int8" and ctx.int8_prep_info() and "quantization" in info.extra:
        info.extra["quantization"]["preparation"] = ctx.int8_prep_info()  # every format's int8
    validation = fmt.validate(dest, info, ctx)
    notes: list[str] = list(info.extra.pop("notes", []))
    check = _verify(fmt, prec, dest, info, source, ctx.options)
    _mediapipe_check(fmt, dest, info, source, check)
    _in_graph_resize_cost(fmt, prec, ctx, info, source, check)
    if not check.parity["verified"]:
        notes.append(f"not numerically verified: {check.parity['reason']}")
    status = "written" if check.accepted else ("forced" if ctx.options.force else "refused")
    _artifact_manifest(fmt, prec, info, source, check, validation).write(stage)
    golden = _write_golden(stage, source)
    if not golden["written"]:
        notes.append(f"no golden vectors: {golden['reason']}")
    return ArtifactResult(
        name=final.name, format=fmt.name, precision=prec, status=status,
        path=str(final) if status != "refused" else None,
        size_bytes=path_size(dest), convert_seconds=round(seconds, 3), parity=check.parity,
        metrics=check.metrics, validation=validation, input=info.input, output=info.output, notes=notes,
        latency_ms_p50=check.latency_ms, clinical=check.clinical,
    )


def _write_golden(stage: Path, source: _Source) -> dict[str, Any]:
    """The artifact's ``golden/`` set (:mod:`export.golden`): real images, exact inputs, expected outputs."""

    return write_for_artifact(stage, source.data)


def _mediapipe_check(fmt: ExportFormat, dest: Path, info: ArtifactInfo, source: _Source, check: _Check) -> None:
    """TFLite: run the artifact in MediaPipe's ImageClassifier on the original evaluation images
    (:mod:`export.mediapipe_check`; skipped with a note when mediapipe is not installed)."""

    with quiet():
        attach(fmt, dest, info, source.data, source.ref_logits, check.parity, check.outputs)


def _in_graph_resize_cost(fmt: ExportFormat, prec: str, ctx: ExportContext, info: ArtifactInfo, source: _Source,
                          check: _Check) -> None:
    """An artifact with the downscale in its graph (TFLite ``--phone-input-size``) beside its twin without it
    (the model's own input side, converted by the format for this comparison and not shipped): size and latency
    (measured by the format), top-1 agreement with PyTorch and balanced accuracy of each on the evaluation
    images, their agreement with each other, and MediaPipe's agreement with PyTorch for both (the gap closed)."""

    resize = info.extra.get("in_graph_resize")
    twin = ctx.cache.get(f"{fmt.name}_twin_{prec}")
    if not resize or twin is None or not check.parity.get("verified"):
        return
    twin_path, twin_info = twin
    data = source.data
    runner = fmt.load_runner(twin_path, twin_info)
    outputs = _run_batched(runner, data.eval_x)
    twin_parity = compare(source.ref_logits, outputs, fmt.output_kind, source.manifest.temperature)
    twin_metrics = classification_metrics(data.eval_y, outputs, source.manifest.num_classes)
    cost = resize.setdefault("cost", {})
    cost.update({
        "top1_agreement_pytorch_with": (check.parity.get("training_preprocessing") or check.parity)["top1_agreement"],
        "top1_agreement_pytorch_same_input_with": check.parity["top1_agreement"],
        "top1_agreement_pytorch_without": twin_parity["top1_agreement"],
        "top1_agreement_with_vs_without": float(np.mean(np.asarray(outputs).argmax(1) == np.asarray(check.outputs).argmax(1))),
        "balanced_accuracy_with": check.metrics.get("balanced_accuracy"),
        "balanced_accuracy_without": twin_metrics.get("balanced_accuracy"),
        "n": int(len(outputs)),
    })
    mp_with = check.parity.get("mediapipe") or {}
    if mp_with.get("status") == "ok":
        twin_check = {"verified": True}
        with quiet():
            attach(fmt, twin_path, twin_info, data, source.ref_logits, twin_check, outputs)
        mp = twin_check.get("mediapipe") or {}
        cost["mediapipe_top1_agreement_pytorch_with"] = mp_with.get("top1_agreement_pytorch")
        cost["mediapipe_top1_agreement_pytorch_without"] = mp.get("top1_agreement_pytorch")
        cost["mediapipe_top1_agreement_litert_without"] = mp.get("top1_agreement_litert")
    check.parity["in_graph_resize"] = resize


def _same_input_reference(info: ArtifactInfo, source: _Source, eval_x: Any) -> np.ndarray:
    """PyTorch's logits on exactly what the artifact was given: the source's reference where the artifact takes the
    source's input; for an artifact with the downscale in its graph, the model on the image it was fed, downscaled
    by the same filter in float (:func:`lesionlite.preprocessing.model_view`). Parity (the gate against a broken
    conversion) compares with this; what the larger input changes against training's one-resize preprocessing
    is reported beside it (``parity["training_preprocessing"]``)."""

    art = info.preprocessing
    if art is None or model_size(art) == art.input_size:
        return source.ref_logits
    chunks = []
    for i in range(0, len(eval_x), 64):
        batch = np.asarray(eval_x[i:i + 64])
        chunks.append(_torch_logits(source.model, np.stack([model_view(im, art) for im in batch])))
    return np.concatenate(chunks)


def _artifact_feed(info: ArtifactInfo, source: _Source) -> tuple[Any, dict[str, Any]]:
    """What the artifact's runner takes (NCHW, the source's normalisation): the source's evaluation arrays, or —
    for an artifact whose input is larger (TFLite's phone input, the downscale in its graph) — the same images
    preprocessed at that side; (internal set's inputs, {evidence role: inputs})."""
    from dataclasses import replace

    src_cfg = source.manifest.preprocessing
    art = info.preprocessing
    if art is None or (art.input_size, art.resize_size) == (src_cfg.input_size, src_cfg.resize_size):
        return source.data.eval_x, {s.role: s.x for s in source.evidence.sets}
    cfg = replace(src_cfg, input_size=art.input_size, resize_size=art.resize_size)
    internal = source.data.inputs("eval", cfg)
    sets: dict[str, Any] = {}
    for s in source.evidence.sets:
        if s.role == "internal":
            sets[s.role] = internal
        elif s.images is not None:  # made once per input config for all the artifacts of this export
            cache = s.__dict__.setdefault("_prepared", {})
            key = repr(cfg.to_dict())
            if key not in cache:
                cache[key] = PreparedInputs(s.images(), cfg)
            sets[s.role] = cache[key]
    return internal, sets


@dataclass
class _Check:
    parity: dict[str, Any]
    metrics: dict[str, Any]
    latency_ms: float | None
    accepted: bool
    clinical: dict[str, Any]  # export.evidence.measure: internal / external figures with CIs and paired changes
    outputs: np.ndarray | None = None  # the artifact's outputs on the evaluation images


def _verify(fmt: ExportFormat, prec: str, dest: Path, info: ArtifactInfo, source: _Source,
            options: ExportOptions) -> _Check:
    """Run the artifact on the evaluation images (where this host can) and compare it with PyTorch."""

    runner = fmt.load_runner(dest, info)
    if runner is None:
        reason = info.extra.get("unverified_reason", "cannot run on this host")
        return _Check(parity={"verified": False, "reason": reason}, metrics={}, latency_ms=None, accepted=True, clinical={})
    data, src, k = source.data, source.manifest, source.manifest.num_classes
    eval_x, set_x = _artifact_feed(info, source)
    outputs = _run_batched(runner, eval_x)
    latency = _latency_ms_p50(runner, eval_x[:1])
    ref = _same_input_reference(info, source, eval_x)
    parity = compare(ref, outputs, fmt.output_kind, src.temperature)
    if ref is not source.ref_logits:  # the gate checks the conversion; this is what the larger input itself changes
        parity["reference"] = ("PyTorch on the artifact's own input: the same preprocessed image through the graph's "
                               "downscale in float (lesionlite.preprocessing.model_view)")
        parity["training_preprocessing"] = {
            "top1_agreement": compare(source.ref_logits, outputs, fmt.output_kind, src.temperature)["top1_agreement"],
            "reference": "PyTorch on training's preprocessing (one resize straight to the model's side)"}
    metrics = classification_metrics(data.eval_y, outputs, k)
    threshold = options.thresholds.get(prec, 0.0)
    accepted = parity["top1_agreement"] >= threshold
    parity["threshold"] = threshold
    parity["verified"] = True
    parity["host_int8_kernels"] = dict(host_int8_note()) if prec == "int8" else None
    reference = fmt.reference_runner(dest, info)
    if reference is not None:  # the artifact as defined, beside what this host's kernels did
        ref_out = _run_batched(reference[0], eval_x)
        parity["as_defined"] = {
            **compare(ref, ref_out, fmt.output_kind, src.temperature),
            **{m: v for m, v in classification_metrics(data.eval_y, ref_out, k).items()
               if m in ("accuracy", "balanced_accuracy", "macro_f1")},
            "how": reference[1],
        }
    ext_outputs = {s.role: (outputs if s.role == "internal" else _run_batched(runner, set_x[s.role]))
                   for s in source.evidence.sets if s.role in set_x}
    clinical = measure(source.evidence, src, ext_outputs, fmt.output_kind)
    return _Check(parity=parity, metrics=metrics, latency_ms=latency, accepted=accepted, clinical=clinical,
                  outputs=outputs)


def _artifact_manifest(fmt: ExportFormat, prec: str, info: ArtifactInfo, source: _Source, check: _Check,
                       validation: Any) -> Manifest:
    src, stats = source.manifest, source.stats
    return Manifest(
        kind=fmt.kind, architecture=src.architecture, class_names=list(src.class_names),
        preprocessing=info.preprocessing or src.preprocessing, input=info.input, output=info.output, precision=prec,
        parameters=stats["params"], macs=stats["macs"], session_config=dict(info.session_config),
        parity={**check.parity, "accepted": check.accepted}, source_sha256=source.sha256,
        evaluation=source.data.describe(), weights=src.weights, data=DataSpec(**portable(dict(src.data))),
        calibration=info.calibration(_calibration_with_operating_point(src, source.evidence)),
        metrics={**check.metrics, **_clinical_scalars(check.clinical)}, files={"model": fmt.model_file},
        version=src.version,
        extra={
            "format": fmt.name, "source_metrics": source.metrics, "macs_method": stats["macs_method"],
            "metrics_split": source.data.eval_split,
            "tool_versions": tool_versions(("torch", "lesionlite", *fmt.tool_packages)),
            "validation": validation,
            **info.extra,
        },
        git_commit=git_commit(),
    )


def _calibration_with_operating_point(src: Manifest, evidence: Any) -> dict[str, Any]:
    """The checkpoint's calibration plus the operating point every artifact is checked at (serve returns it)."""
    op = evidence.operating_point if evidence is not None else None
    return {**dict(src.calibration), **({"operating_point": op.to_dict()} if op is not None else {})}


def _clinical_scalars(clinical: dict[str, Any]) -> dict[str, Any]:
    """``{internal_melanoma_auc: {value, ci_low, ci_high}, external_…}`` for the artifact's manifest."""
    return {f"{role}_{name}": m for role, block in (clinical or {}).items()
            for name, m in block.get("metrics", {}).items()}


#: PyTorch's outputs on the export's evaluation images, beside the report (read by ``bench``'s agreement)
REFERENCE_FILE = "pytorch_reference.npz"


def write_pytorch_reference(source: _Source, out: Path) -> Path:
    """Save PyTorch's logits on the evaluation images with the images' split and indices.

    ``bench --target board`` runs the same images (it reloads them by index from the data the
    manifest names) and compares the board's outputs with these per image, so "ARM vs PyTorch" is
    measured, not inferred; bench itself never needs torch. A few KB (N × classes float32).
    """

    d = source.data
    path = out / REFERENCE_FILE
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, logits=source.ref_logits.astype(np.float32), labels=np.asarray(d.eval_y, np.int64),
                 indices=np.asarray(d.eval_indices if d.eval_indices is not None else [], np.int64),
                 split=np.str_(d.eval_split), data_fingerprint=np.str_(d.fingerprint),
                 checkpoint_sha256=np.str_(source.sha256))
    return path


def _publish(report: ExportReport, staged: list[tuple[Path, Path]], source: _Source, out: Path) -> list[tuple[Path, Path]]:
    """Move every accepted artifact into place, write the report and the model card; raise
    :class:`ParityError` for refused ones. Returns the staging folders still to delete."""
    refused = {a.name for a in report.refused}
    for stage, final in staged:
        if final.name not in refused:
            replace_dir(stage, final)
    staged = [(stage, final) for stage, final in staged if final.name in refused]
    worst = ", ".join(f"{a.name} top-1 agreement {a.parity['top1_agreement']:.4f} < {a.parity['threshold']}"
                      for a in report.refused if a.parity)
    written = len(report.artifacts) - len(refused)
    if refused and written == 0:
        raise ParityError(f"refused to write: parity broken ({worst}); nothing was written; "
                          "pass --force to write anyway", report)

    write_report(report, out)
    write_model_card(build_model_card(report, source.manifest, source.data, source.ref_logits, source.evidence), out)
    write_pytorch_reference(source, out)
    if refused:
        raise ParityError(
            f"refused to write: parity broken ({worst}); wrote the other {written} artifact(s) and "
            f"{out / 'export_report.md'}; pass --force to write the refused ones anyway",
            report,
        )
    return staged
