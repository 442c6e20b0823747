"""The table's numbers: rows over seeds, the differences to scratch, per-class recall, and the table's document
(the JSON that :mod:`benchmarks.protocol.render` draws). Pure functions of the runs' records."""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks.protocol.settings import METHODS, METRICS, Settings
from benchmarks.protocol.verdicts import evaluate_targets, explain_misses, read_accuracy_gap, read_qat_rows
from distill.metrics import paired_bootstrap_balanced_accuracy_delta

PROTOCOL_LABELS = {"gpu": "GPU protocol", "cpu": "CPU protocol", "cpu-reduced": "CPU-REDUCED protocol",
                   "smoke": "SMOKE protocol"}


def aggregate(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean ± sample standard deviation (ddof = 1) of the finite values; std is None below 2 values."""
    vals = [float(v) for v in values if v is not None and isinstance(v, (int, float)) and math.isfinite(float(v))]
    n = len(vals)
    if n == 0:
        return {"mean": None, "std": None, "n": 0, "values": []}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if n >= 2 else None, "n": n,
            "values": vals}


def aggregate_row(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row of the table over the seeds of one (role, method, arch): the finished runs' numbers."""
    done = [r for r in rs if r["status"] == "done"]
    first = rs[0]
    row: dict[str, Any] = {
        "role": first["role"], "key": first["key"], "method": first["method"], "arch": first["arch"],
        "label": first["label"], "protocol": first["protocol"], "weights": first["weights_note"],
        "seeds": [r["seed"] for r in done], "seeds_planned": [r["seed"] for r in rs],
        "status": "done" if len(done) == len(rs) else f"{len(done)}/{len(rs)} seeds done",
        # what ties a seed's later measurements (a QAT probe of its directory) to this very run
        "per_seed": {r["seed"]: {"run_dir": r.get("run_dir"),
                                 "balanced_accuracy": r["metrics"].get("balanced_accuracy")} for r in done},
    }
    for m in METRICS:
        row[m] = aggregate([r["metrics"].get(m) for r in done])
    for k in ("params", "macs"):
        vals = [r.get(k) for r in done if r.get(k) is not None]
        row[k] = vals[0] if vals else None
    for fmt in ("tflite", "onnx"):
        ex = [(r.get("int8") or {}).get(fmt) or {} for r in done]
        row[f"int8_{fmt}_size_bytes"] = aggregate([e.get("size_bytes") for e in ex])
        for m in ("accuracy", "balanced_accuracy", "macro_f1", "top1_agreement"):
            row[f"int8_{fmt}_{m}"] = aggregate([e.get(m) for e in ex])
    for k in ("wall_time_s", "export_time_s", "images_per_s", "images_per_s_vs_scratch"):
        row[k] = aggregate([r.get(k) for r in done])
    row["gpu_util_percent"] = aggregate([(r.get("gpu") or {}).get("util_mean") for r in done])
    return row


def aggregate_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (role, method, arch) over the seeds of its finished runs, teacher first, then table order."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["role"], r["key"], r["arch"]), []).append(r)
    rows = [aggregate_row(rs) for rs in groups.values()]
    order = {"teacher": 0, "student": 1}
    mi = {m: i for i, m in enumerate(METHODS)}
    rows.sort(key=lambda r: (order.get(r["role"], 2), mi.get(r["key"], 99)))
    return rows


def paired_comparisons(runs: list[dict[str, Any]], num_classes: int, n_boot: int = 2000) -> dict[str, dict[str, Any]]:
    """For every student method: Bal-ACC difference to scratch per seed, mean, paired bootstrap 95 % CI.

    Uses the test predictions each finished run stored (``test_pred``) on the seeds that both the
    method and scratch have finished.
    """
    done = {(r["key"], r["seed"]): r for r in runs if r["status"] == "done" and r.get("test_pred") is not None
            and r["role"] == "student"}
    labels = next((r.get("test_labels") for r in runs if r.get("test_labels") is not None), None)
    out: dict[str, dict[str, Any]] = {}
    if labels is None:
        return out
    for key in {k for k, _ in done if k != "scratch"}:
        seeds = sorted(s for k, s in done if k == key and ("scratch", s) in done)
        if not seeds:
            continue
        res = paired_bootstrap_balanced_accuracy_delta(
            labels, [done[(key, s)]["test_pred"] for s in seeds], [done[("scratch", s)]["test_pred"] for s in seeds],
            num_classes, n_boot=n_boot)
        res["seed_ids"] = seeds
        out[key] = res
    return out


def per_class_recall(runs: list[dict[str, Any]], class_names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Mean test recall per class over each row's finished seeds, from the stored test predictions.

    Balanced accuracy is the mean of these; which classes a method gains or loses is what a clinical user
    asks next (melanoma above all), and two methods with the same Bal-ACC can trade classes very differently.
    """
    per_key: dict[str, list[list[float | None]]] = {}
    for r in runs:
        if r["status"] != "done" or r.get("test_pred") is None or r.get("test_labels") is None:
            continue
        y, p = np.asarray(r["test_labels"]), np.asarray(r["test_pred"])
        per_key.setdefault(r["key"], []).append(
            [float(np.mean(p[y == c] == c)) if np.any(y == c) else None for c in range(len(class_names))])
    out: dict[str, dict[str, Any]] = {}
    for key, recs in per_key.items():
        cols = [[v[c] for v in recs if v[c] is not None] for c in range(len(class_names))]
        out[key] = {"seeds": len(recs),
                    "recall": {name: (sum(col) / len(col) if col else None) for name, col in zip(class_names, cols)}}
    return out


def _data_why(bundle: Any, name: str, spec: str) -> str:
    if name.startswith("ham10000"):
        return ("HAM10000 200×150 JPEGs from ../shared/data with the 7 DermaMNIST classes and a 70/10/20 split by "
                "lesion_id (no lesion in two splits); chosen over the only DermaMNIST file here (28×28, rebuilt from "
                "lossy JPEGs): it is real data at 64–224 px and its split cannot leak a lesion between train and test "
                "(DermaMNIST's official split is per image). Not DermaMNIST's official split: numbers are not "
                "directly comparable with MedMNIST's.")
    if "dermamnist" in name:
        return "DermaMNIST (official split) from ../shared/data: 28×28 rebuilt from lossy JPEGs."
    if getattr(bundle, "synthetic", False):
        return "SYNTHETIC generated images (not real data): the numbers say nothing about any method."
    return str(getattr(bundle, "source", spec))


def data_description(bundle: Any, spec: str, image_size: int) -> dict[str, Any]:
    """What the table says about its data: name, source, fingerprint, classes, split sizes and why this set."""
    name = getattr(bundle, "name", spec)
    n = {s: len(bundle.split(s)) for s in ("train", "val", "test")}
    why = _data_why(bundle, name, spec)
    return {"spec": spec, "name": name, "source": str(getattr(bundle, "source", "")),
            "fingerprint": getattr(bundle, "fingerprint", None), "synthetic": bool(getattr(bundle, "synthetic", False)),
            "class_names": list(bundle.class_names), "split_sizes": n, "image_size": image_size,
            "description": f"{name}: train {n['train']} / val {n['val']} / test {n['test']} images. {why}"}


def add_relative_throughput(runs: list[dict[str, Any]]) -> None:
    """images/s relative to scratch training of the same student, same seed (``images_per_s_vs_scratch``)."""
    scratch_ips = {(r["seed"], r["arch"]): r.get("images_per_s") for r in runs
                   if r["key"] == "scratch" and r["status"] == "done"}
    for r in runs:
        base = scratch_ips.get((r["seed"], r["arch"]))
        r["images_per_s_vs_scratch"] = (r["images_per_s"] / base) if (r.get("images_per_s") and base) else None


def teacher_note(settings: Settings, rows: list[dict[str, Any]]) -> str | None:
    """A note when the teacher is not better than the scratch student (KD then distils a weaker model)."""
    by_key = {(r["role"], r["key"]): r for r in rows}
    t_row, s_row = by_key.get(("teacher", "teacher")), by_key.get(("student", "scratch"))
    t_bal = (t_row or {}).get("balanced_accuracy", {}).get("mean")
    s_bal = (s_row or {}).get("balanced_accuracy", {}).get("mean")
    if t_bal is None or s_bal is None or t_bal > s_bal:
        return None
    return (f"the teacher ({settings.teacher.arch}, test Bal-ACC {t_bal * 100:.1f}) is not better than "
            f"the scratch student ({s_bal * 100:.1f}): KD and SSD-KD distil a weaker model here, so they are "
            "not expected to beat scratch; the papers' teachers are far stronger than their students.")


def table_notes(settings: Settings, rows: list[dict[str, Any]]) -> list[str]:
    """The notes under the table: how this protocol differs from the papers' and what to read with care."""
    plabel = PROTOCOL_LABELS[settings.protocol]
    notes: list[str] = []
    if settings.protocol != "gpu":
        notes.append(f"{plabel}: not the papers' protocol (see the setup above); every row is labelled with it.")
    if len(settings.seeds) < 3:
        notes.append(f"{len(settings.seeds)} seed(s) instead of the papers' 3: no standard deviation is shown "
                     "for a single seed.")
    if settings.common_overrides.get("run.max_steps_per_epoch"):
        k = settings.common_overrides["run.max_steps_per_epoch"]
        notes.append(f"training subset: at most {k} optimizer steps per epoch (a fresh random subset of the "
                     "training split each epoch); val/test are always the whole splits.")
    if settings.recipe == "uniform":
        notes.append("uniform recipe: every method uses the same optimizer/schedule/batch (common overrides) so "
                     "that only the loss differs; the authors' recipes (their default_overrides) are used by the "
                     "GPU protocol.")
    if "udcd-densenet121" not in settings.methods:
        notes.append("UDCD on DenseNet-121 (the UDCD paper's own self-distillation setting) is not in this run.")
    if "random init" in settings.teacher.weights_note:
        notes.append(f"teacher {settings.teacher.arch} trained from scratch (no ImageNet weights available here).")
    weaker = teacher_note(settings, rows)
    if weaker:
        notes.append(weaker)
    notes.append("img/s and wall times are those of this machine while the run went on: runs that shared the "
                 "CPU with other work are slower; compare them with care (load average at start in the setup).")
    notes.append("torch.compile is not used: the shared training loop has no compile hook (bf16 autocast and "
                 "channels_last are the loop's defaults on CUDA).")
    return notes


def table_targets(settings: Settings, rows: list[dict[str, Any]], comparisons: dict[str, Any]) -> list[dict[str, Any]]:
    """The verdicts on the papers' claims and the protocol's targets, with the measured reason of each miss."""
    protocol = settings.protocol
    targets = evaluate_targets(rows, settings.image_size, settings.student.arch, comparisons,
                               accuracy_gap=read_accuracy_gap(protocol), qat_rows=read_qat_rows(protocol),
                               qat_recipe=settings.qat_recipe)
    return explain_misses(targets, rows, protocol)


def build_doc(settings: Settings, runs: list[dict[str, Any]], machine: dict[str, Any], data: dict[str, Any],
              wall: float, complete: bool) -> dict[str, Any]:
    """The table's JSON document: rows, runs (without their predictions), comparisons, verdicts, notes, setup."""
    add_relative_throughput(runs)
    rows = aggregate_rows(runs)
    comparisons = paired_comparisons(runs, len(data.get("class_names") or []) or 1)
    protocol = settings.protocol
    plabel = PROTOCOL_LABELS[protocol]
    title = settings.title
    if protocol != "gpu" and plabel.split()[0] not in title:
        title += f" [{plabel}]"
    gpu_note = ("utilisation sampled once a second during every run (torch.cuda.utilization / nvidia-smi)"
                if machine.get("gpu") else "no GPU on this machine; CPU run")
    return {
        "benchmark": "reproduce_paper_table", "title": title, "protocol": protocol, "protocol_label": plabel,
        "reduced": protocol != "gpu", "label": plabel, "complete": complete,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine, "data": data,
        "settings": settings.as_dict(),
        "rows": rows, "runs": [{k: v for k, v in r.items() if k not in ("test_pred", "test_labels")} for r in runs],
        "comparisons": comparisons, "per_class_recall": per_class_recall(runs, data.get("class_names") or []),
        "targets": table_targets(settings, rows, comparisons),
        "notes": table_notes(settings, rows), "gpu_note": gpu_note, "wall_time_s": wall,
        "total_run_wall_s": sum(r.get("wall_time_s") or 0 for r in runs),
        "total_export_wall_s": sum(r.get("export_time_s") or 0 for r in runs),
    }
