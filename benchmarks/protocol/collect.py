"""A run's record: read from its run directory, or from the committed record of a fresh checkout.

Run directories (checkpoints) are not committed; each finished run's record is
(``<results>/<stem>_runs/seed<S>_<key>.json``), so a later session knows a finished run by its record alone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from benchmarks.common import read_json
from benchmarks.protocol.plan import RunSpec
from benchmarks.protocol.settings import METRICS, Settings, results_stem
from distill.artifacts import load_student
from distill.transforms import eval_transform
from lesionlite.atomic import write_json_atomic

#: a record's fields that must equal the plan's for the record to stand for the run
RECORD_IDENTITY = ("protocol", "key", "method", "arch", "seed", "epochs", "overrides", "teacher")
#: the fields of a finished run that its committed record keeps
RECORD_FIELDS = ("protocol", "key", "role", "label", "method", "arch", "seed", "epochs", "epochs_run", "best_epoch",
                 "weights_note", "overrides", "status", "metrics", "wall_time_s", "images_per_s", "params", "macs",
                 "int8", "export_time_s", "test_pred", "test_labels", "teacher", "external")
#: the fields of each epoch of the learning curve a record keeps
CURVE_FIELDS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_accuracy", "val_balanced_accuracy",
                "time_s", "images_per_s", "data_time_s")


def run_state(spec: RunSpec) -> str:
    """done | partial | new."""
    d = spec.run_dir
    mj = read_json(d / "metrics.json")
    man = read_json(d / "manifest.json")
    if mj is not None and man is not None and (d / "student.pt").is_file():
        extra = man.get("extra") or {}
        if extra.get("epochs") == spec.epochs or extra.get("stopped_early"):
            return "done"
    if (d / "last.pt").is_file():
        return "partial"
    return "new"


def run_record_path(settings: Settings, spec: RunSpec) -> Path:
    """Where a finished run's record is committed: ``<results>/<stem>_runs/seed<S>_<key>.json``."""
    return Path(settings.results_dir) / f"{results_stem(settings.protocol)}_runs" / f"seed{spec.seed}_{spec.key}.json"


def committed_record(settings: Settings, spec: RunSpec) -> dict[str, Any] | None:
    """The committed record of this exact run (same protocol, method, arch, seed, epochs, overrides, teacher),
    finished, or None: the table is built from it and nothing is retrained."""
    if not settings.results_dir:
        return None
    rec = read_json(run_record_path(settings, spec))
    if not rec or rec.get("status") != "done" or not rec.get("metrics"):
        return None
    want = {"protocol": settings.protocol, "key": spec.key, "method": spec.method, "arch": spec.arch,
            "seed": spec.seed, "epochs": spec.epochs, "overrides": spec.overrides, "teacher": spec.teacher_id}
    return rec if all(rec.get(k) == want[k] for k in RECORD_IDENTITY) else None


def write_run_record(settings: Settings, spec: RunSpec, rec: dict[str, Any]) -> None:
    """The finished run's metrics, learning curve and test predictions, as soon as it finishes (commit it)."""
    hist = (read_json(spec.run_dir / "metrics.json") or {}).get("history") or []
    doc = {k: rec.get(k) for k in RECORD_FIELDS}
    doc["curve"] = [{k: h.get(k) for k in CURVE_FIELDS} for h in hist]
    path = run_record_path(settings, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, doc)


def summary_from_run(spec: RunSpec) -> dict[str, Any]:
    """Test metrics, best epoch, wall time and throughput of a finished run directory."""
    mj = read_json(spec.run_dir / "metrics.json") or {}
    man = read_json(spec.run_dir / "manifest.json") or {}
    s = mj.get("summary") or {}
    extra = man.get("extra") or {}
    return {
        "metrics": {m: s.get(f"test_{m}") for m in METRICS} | {
            "ece_calibrated": s.get("test_ece_calibrated"), "val_balanced_accuracy": s.get("val_balanced_accuracy"),
            "val_accuracy": s.get("val_accuracy")},
        "best_epoch": mj.get("best_epoch"), "epochs_run": mj.get("epochs_run"),
        "wall_time_s": mj.get("wall_time_s"), "images_per_s": mj.get("images_per_s"),
        "weights_in_manifest": extra.get("weights"), "data": man.get("data"),
    }


def model_stats(spec: RunSpec, image_size: int) -> dict[str, Any]:
    """Parameters and MACs of the run's student."""
    from export.modelstats import model_stats as stats  # the export extra

    model, _ = load_student(spec.run_dir)
    st = stats(model, image_size)
    return {"params": st["params"], "macs": st["macs"]}


def export_summary(export_dir: Path) -> dict[str, Any] | None:
    """Size, test scores and agreement of each int8 artifact of an ``export_report.json``; None before export."""
    rep = read_json(export_dir / "export_report.json")
    if rep is None:
        return None
    out: dict[str, Any] = {}
    for a in rep.get("artifacts", []):
        if a.get("precision") != "int8":
            continue
        m = a.get("metrics") or {}
        out[a["format"]] = {"size_bytes": a.get("size_bytes"), "accuracy": m.get("accuracy"),
                            "balanced_accuracy": m.get("balanced_accuracy"), "macro_f1": m.get("macro_f1"),
                            "n": m.get("n"), "top1_agreement": (a.get("parity") or {}).get("top1_agreement"),
                            "status": a.get("status"), "path": a.get("path")}
    out["eval_split"] = (rep.get("data") or {}).get("eval_split")
    out["pytorch_metrics"] = (rep.get("source") or {}).get("metrics")
    return out


def test_predictions(spec: RunSpec, bundle: Any) -> tuple[list[int], list[int]]:
    """(predicted, true) labels of the run's best student on the test split, with its own preprocessing."""
    model, man = load_student(spec.run_dir, map_location="cpu")
    model.eval()
    tf = eval_transform(man.preprocessing)
    test = bundle.split("test")
    preds: list[int] = []
    with torch.no_grad():
        for i in range(0, len(test), 128):
            x = torch.stack([tf(test[j][0]) for j in range(i, min(len(test), i + 128))])
            preds += model(x).argmax(1).tolist()
    return preds, [int(v) for v in test.labels]



def external_records(spec: RunSpec) -> dict[str, Any] | None:
    """The run's best student and its int8 TFLite on the external set (isic-archive under the data root),
    with per-image labels and melanoma probabilities; None when the set is not here. Evaluation only."""
    from export.evaluate import external_block  # the export extra

    try:
        out: dict[str, Any] = {"pytorch": external_block(spec.run_dir)}
        if out["pytorch"] is None:
            return None
        int8 = spec.run_dir / "export" / f"{spec.arch}_tflite_int8"
        if (int8 / "manifest.json").is_file():
            out["tflite_int8"] = external_block(int8)
        return out
    except Exception as exc:  # the table still has the run's internal figures
        return {"error": f"{type(exc).__name__}: {exc}"}


def from_committed_record(settings: Settings, spec: RunSpec) -> dict[str, Any]:
    """The row of a run finished in an earlier session (its run directory is gone), from its record."""
    rec = committed_record(settings, spec) or {}
    keep = {k: v for k, v in rec.items() if k not in ("curve", "status")}
    return {**keep, "reduced": settings.reduced, "label": spec.label, "role": spec.role,
            "weights_note": spec.weights_note, "run_dir": str(spec.run_dir), "status": "done",
            "source": "committed record", "export_status": "done" if rec.get("int8") else "skipped (record)",
            "teacher_dir": str(spec.teacher_dir) if spec.teacher_dir else None}


def base_record(settings: Settings, spec: RunSpec, status: str, export_status: Any) -> dict[str, Any]:
    return {
        "protocol": settings.protocol, "reduced": settings.reduced,
        "key": spec.key, "role": spec.role, "label": spec.label, "method": spec.method, "arch": spec.arch,
        "seed": spec.seed, "epochs": spec.epochs, "weights_note": spec.weights_note, "run_dir": str(spec.run_dir),
        "teacher_dir": str(spec.teacher_dir) if spec.teacher_dir else None, "overrides": spec.overrides,
        "teacher": spec.teacher_id, "status": status, "metrics": {}, "export_status": export_status,
    }


def add_run_directory(r: dict[str, Any], settings: Settings, spec: RunSpec) -> None:
    """What a finished run directory holds: metrics, model size, int8 artifacts, export time, GPU use."""
    r.update(summary_from_run(spec))
    try:
        r.update(model_stats(spec, settings.image_size))
    except Exception as exc:  # stats are informative; never lose a row over them
        r["params"] = r["macs"] = None
        r["stats_error"] = str(exc)
    r["int8"] = export_summary(spec.run_dir / "export")
    et = read_json(spec.run_dir / "export" / "reproduce_export_time.json")
    r["export_time_s"] = et.get("wall_s") if et else None
    r["gpu"] = read_json(spec.run_dir / "reproduce_gpu.json")


def add_predictions(r: dict[str, Any], settings: Settings, spec: RunSpec, bundle: Any) -> None:
    """Test and external predictions: the record's own when it is the same finished run on the same split,
    computed from the run directory when the data is here."""
    old = read_json(run_record_path(settings, spec)) if settings.results_dir else None
    same_split = bool(old) and (bundle is None or len(old.get("test_labels") or []) == len(bundle.split("test")))
    same_run = same_split and old.get("metrics") == r["metrics"]
    if same_run and old.get("test_pred"):
        r["test_pred"], r["test_labels"] = old["test_pred"], old["test_labels"]
    elif bundle is not None and len(bundle.split("test")):
        try:
            r["test_pred"], r["test_labels"] = test_predictions(spec, bundle)
        except Exception as exc:  # the table still has the run's own metrics
            r["test_pred_error"] = f"{type(exc).__name__}: {exc}"
    if same_run and old.get("external"):
        r["external"] = old["external"]
    elif bundle is not None:
        r["external"] = external_records(spec)


def collect(spec: RunSpec, settings: Settings, train_rec: dict[str, Any], export_rec: dict[str, Any],
            bundle: Any = None) -> dict[str, Any]:
    """The run's row of the table; a finished run's record is written (or refreshed) on the way."""
    state = run_state(spec)
    status = "done" if state == "done" else train_rec.get("status") or ("partial" if state == "partial" else "pending")
    if status == "done (committed record)":
        return from_committed_record(settings, spec)
    r = base_record(settings, spec, status, export_rec.get("status"))
    if status != "done":
        return r
    add_run_directory(r, settings, spec)
    add_predictions(r, settings, spec, bundle)
    # A preview collect (no data bundle: an interim table's not-yet-visited runs) must not replace a committed
    # record's test predictions with nothing: it writes only when it has them or could have computed them.
    if settings.results_dir and (bundle is not None or r.get("test_pred")):
        write_run_record(settings, spec, r)
    return r
