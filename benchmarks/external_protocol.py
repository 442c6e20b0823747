"""The CPU protocol's students at the other clinic, from re-trained runs proven to be the records' own.

The protocol's records (``results/paper_table_cpu_runs/seed*_*.json``) hold test predictions but no weights,
so issue 27/28's external figures need the runs re-trained. A re-trained run counts as the record's run only
if it gives **the same prediction on every test image** as the record's ``test_pred``; this script checks
that, and only then writes the run's ``external`` block into the record (per-image labels, melanoma and nevus
probabilities of the PyTorch model and of its int8 TFLite, with the figures and CIs computed from them: the
same block ``benchmarks/reproduce.py`` writes for runs it finishes itself). Then it tabulates every record
that has an external block, per method over its seeds, with each method's paired change against scratch on
the same external images and seeds. The external set is only evaluated: nothing is fitted or selected on it.

    python -m benchmarks.external_protocol seed0_kd=runs/kd128_s0,artifacts/kd128_s0 \
        seed0_scratch=runs/scratch_s0,artifacts/scratch_s0 ...

Writes the records and ``results/external_protocol_cpu.json`` / ``.md`` (``--out``); prints the table.
"""
from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, read_json
from distill.bootstrap import bootstrap
from distill.metrics import binary_auc
from export.evaluate import evaluate, external_block
from lesionlite.atomic import write_json_atomic, write_text_atomic

RECORDS = RESULTS / "paper_table_cpu_runs"
METHOD_ORDER = ("teacher", "scratch", "kd", "ssdkd", "udcd", "udcd-code")
#: the figures of an external block that the table shows (the block's own names)
FIGURES = ("melanoma_auc", "melanocytic_auc", "balanced_accuracy_present", "sensitivity")


def parse_pair(text: str) -> tuple[str, Path, Path | None]:
    """``seed0_kd=runs/kd128_s0[,artifacts/kd128_s0]`` → (record name, run folder, export folder or None)."""
    name, _, paths = text.partition("=")
    if not name or not paths:
        raise argparse.ArgumentTypeError(f"{text!r}: expected RECORD=RUN[,EXPORT_DIR], e.g. seed0_kd=runs/kd128_s0")
    run, _, art = paths.partition(",")
    return name, Path(run), Path(art) if art else None


def int8_artifact(export_dir: Path | None) -> Path | None:
    """The int8 TFLite artifact folder inside an export folder (None when there is none)."""
    if export_dir is None:
        return None
    found = sorted(p.parent for p in export_dir.glob("*_tflite_int8/manifest.json"))
    return found[0] if found else None


def attach(record_name: str, run: Path, export_dir: Path | None, records: Path, data_root: str | None) -> dict:
    """Check that ``run`` is the record's run (same test predictions); if so, write its external block."""
    path = records / f"{record_name}.json"
    rec = read_json(path)
    if rec is None:
        raise SystemExit(f"no record {path}")
    internal = evaluate(run, None, data_root, "test", progress=False)["predictions"]
    same = internal["pred"] == rec.get("test_pred") and internal["labels"] == rec.get("test_labels")
    differ = sum(a != b for a, b in zip(internal["pred"], rec.get("test_pred") or []))
    status = {"record": record_name, "run": str(run), "identical_test_predictions": same,
              "test_predictions_differing": differ if same or rec.get("test_pred") else None}
    early = early_stop_check(run, rec)
    if early is not None:
        status["stopped_early"] = early
    status["attached"] = same and (early is None or early["same_best_epoch"])
    if not status["attached"]:  # another run's weights: its external figures are not the record's
        return status
    block: dict[str, Any] = {"pytorch": external_block(run, data_root=data_root)}
    if block["pytorch"] is None:
        raise SystemExit("the external set (isic-archive) is not under the data root")
    int8 = int8_artifact(export_dir)
    if int8 is not None:
        block["tflite_int8"] = external_block(int8, data_root=data_root)
    block["source"] = (f"re-trained run {run} (same prediction on all {len(internal['pred'])} test images as this "
                       "record), evaluated with benchmarks/external_protocol.py")
    if early is not None:
        block["source"] += (f"; stopped by run.early_stop after epoch {early['epochs_run']} of {rec.get('epochs_run')}, "
                            f"keeping the record's best epoch {early['best_epoch']} (no later epoch of the record's "
                            "curve is better on validation)")
    rec["external"] = block
    write_json_atomic(path, rec)  # the format benchmarks/protocol writes records in
    status["int8"] = str(int8) if int8 else None
    return status


def early_stop_check(run: Path, rec: dict) -> dict[str, Any] | None:
    """For a re-trained run that ``run.early_stop`` ended before the record's last epoch (to re-train only as far as
    the record's best epoch and a few beyond): whether it kept the record's best epoch, and through which epoch its
    curve (train loss, validation balanced accuracy) equals the record's bit for bit. None for a run not stopped
    early. A run stopped early is the record's only if its best epoch is the record's: the record's curve then
    says that no epoch it did not train would have replaced it."""
    extra = (read_json(run / "manifest.json") or {}).get("extra") or {}
    if not extra.get("stopped_early"):
        return None
    history = (read_json(run / "metrics.json") or {}).get("history") or []  # what the record's curve was made from
    identical = 0
    for mine, theirs in zip(history, rec.get("curve") or []):
        if (mine.get("epoch"), mine.get("train_loss"), mine.get("val_balanced_accuracy")) != \
                (theirs.get("epoch"), theirs.get("train_loss"), theirs.get("val_balanced_accuracy")):
            break
        identical += 1
    best = extra.get("best_epoch")
    return {"epochs_run": extra.get("epochs_run"), "best_epoch": best, "record_best_epoch": rec.get("best_epoch"),
            "same_best_epoch": best is not None and best == rec.get("best_epoch"),
            "curve_identical_through_epoch": identical}


def _value(block: dict | None, name: str) -> float | None:
    m = (block or {}).get("metrics", {}).get(name)
    return None if m is None else m.get("value")


def _seed_mean_auc(a: Sequence[dict], b: Sequence[dict] | None, score: str, n_boot: int) -> dict[str, Any]:
    """Mean over seeds of AUC(a), or of AUC(a) − AUC(b) (paired: the same images), with a bootstrap CI over
    images (the same resample for every seed).
    ``score``: ``mel`` (P(mel)) or ``melanocytic`` (P(mel)/(P(mel)+P(nv)))."""
    labels = np.asarray(a[0]["labels"])
    mel = a[0]["class_names"].index("mel")
    is_mel = labels == mel

    def scores(block: dict) -> np.ndarray:
        p = np.asarray(block["mel_prob"], float)
        if score == "mel":
            return p
        s = p + np.asarray(block["nv_prob"], float)
        return np.divide(p, s, out=np.zeros_like(p), where=s > 0)

    sa = [scores(x) for x in a]
    sb = [scores(x) for x in b] if b is not None else None

    def delta(idx: np.ndarray) -> float | None:
        if sb is None:
            return float(np.mean([binary_auc(is_mel[idx], x[idx]) for x in sa]))
        ds = [binary_auc(is_mel[idx], x[idx]) - binary_auc(is_mel[idx], y[idx]) for x, y in zip(sa, sb)]
        return float(np.mean(ds))

    return bootstrap({"delta": delta}, labels, n_boot=n_boot)["metrics"]["delta"]


def table(records: Path, n_boot: int) -> dict[str, Any]:
    """Per method: the seeds with an external block, each figure per seed and its mean, and the paired
    change of the melanoma AUCs against scratch on the seeds both have."""
    recs = [r for r in (read_json(p) for p in sorted(records.glob("seed*_*.json")))
            if r and isinstance(r.get("external"), dict) and r["external"].get("pytorch")]
    by_method: dict[str, dict[int, dict]] = {}
    for r in recs:
        by_method.setdefault(r["key"], {})[int(r["seed"])] = r
    rows = []
    for key in sorted(by_method, key=lambda k: (METHOD_ORDER.index(k) if k in METHOD_ORDER else 99, k)):
        seeds = by_method[key]
        for model in ("pytorch", "tflite_int8"):
            blocks = {s: r["external"].get(model) for s, r in sorted(seeds.items()) if r["external"].get(model)}
            if not blocks:
                continue
            first = next(iter(seeds.values()))
            size = (first.get("overrides") or {}).get("data.image_size")
            label = f"{first.get('label', key)}, {first.get('arch')}" + (f" {size} px" if size else "")
            row: dict[str, Any] = {"method": key, "label": label, "model": model,
                                   "seeds": sorted(blocks),
                                   "internal_balanced_accuracy": {s: seeds[s]["metrics"].get("balanced_accuracy")
                                                                  for s in blocks},
                                   "per_seed": {s: {f: _value(b, f) for f in FIGURES} for s, b in blocks.items()}}
            row["mean"] = {f: _mean([row["per_seed"][s][f] for s in blocks]) for f in FIGURES}
            row["sd"] = {f: _sd([row["per_seed"][s][f] for s in blocks]) for f in FIGURES}
            row["mean_ci"] = {f"{score}_auc": _seed_mean_auc(list(blocks.values()), None, score, n_boot)
                              for score in ("mel", "melanocytic")}
            base = by_method.get("scratch", {})
            common = [s for s in blocks if s in base and base[s]["external"].get(model)]
            if key != "scratch" and common:
                row["vs_scratch_seeds"] = common
                for score in ("mel", "melanocytic"):
                    row[f"vs_scratch_{score}_auc"] = _seed_mean_auc([blocks[s] for s in common],
                                                                   [base[s]["external"][model] for s in common],
                                                                   score, n_boot)
            rows.append(row)
    return {"rows": rows, "n_boot": n_boot, "external": _external_description(recs)}


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _sd(values: Sequence[float | None]) -> float | None:
    """Sample standard deviation over seeds (None below two seeds)."""
    vals = [v for v in values if v is not None]
    return float(np.std(vals, ddof=1)) if len(vals) > 1 else None


def _external_description(recs: Sequence[dict]) -> dict[str, Any] | None:
    if not recs:
        return None
    b = recs[0]["external"]["pytorch"]
    return {"spec": b["spec"], "name": b["name"], "n": b["n"], "fingerprint": b["fingerprint"],
            "melanomas": int(np.sum(np.asarray(b["labels"]) == b["class_names"].index("mel")))}


def markdown(doc: dict[str, Any]) -> str:
    def f3(v: float | None) -> str:
        return "—" if v is None else f"{v:.3f}"

    def pct(v: float | None) -> str:
        return "—" if v is None else f"{100 * v:.1f} %"

    def auc(r: dict, f: str, score: str) -> str:
        sd, ci = r["sd"][f], (r.get("mean_ci") or {}).get(f"{score}_auc")
        return (f3(r["mean"][f]) + ("" if sd is None else f" ± {sd:.3f}")
                + ("" if not ci or ci.get("ci_low") is None else f" [{ci['ci_low']:.3f}, {ci['ci_high']:.3f}]"))

    def delta(d: dict | None) -> str:
        if not d:
            return "—"
        return f"{d['value']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"

    ext = doc["external"] or {}
    lines = [f"External set: {ext.get('name')} ({ext.get('n')} images, {ext.get('melanomas')} melanomas). "
             "Means (± sd) over the seeds listed, [95 % CI of the seed mean, bootstrap over images]; per seed (with its own "
             "CIs) in the JSON. Δ vs scratch: paired on the same images and seeds, bootstrap 95 % CI over images "
             f"({doc['n_boot']} resamples).", "",
             "| method | model | seeds | internal Bal-ACC (PyTorch) | ext. mel AUC P(mel) | ext. mel AUC P(mel)/(P(mel)+P(nv)) "
             "| ext. Bal-ACC (bkl, mel, nv) | ext. mel sens. @ op | Δ vs scratch P(mel) | Δ vs scratch P(mel)/(P(mel)+P(nv)) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in doc["rows"]:
        m = r["mean"]
        bal = _mean(list(r["internal_balanced_accuracy"].values()))
        lines.append(f"| {r['label']} | {r['model']} | {', '.join(map(str, r['seeds']))} | {pct(bal)} | "
                     f"{auc(r, 'melanoma_auc', 'mel')} | {auc(r, 'melanocytic_auc', 'melanocytic')} | "
                     f"{pct(m['balanced_accuracy_present'])} | "
                     f"{pct(m['sensitivity'])} | {delta(r.get('vs_scratch_mel_auc'))} | "
                     f"{delta(r.get('vs_scratch_melanocytic_auc'))} |")
    return "\n".join(lines) + "\n"


def merged_attachments(out: Path, new: list[dict]) -> list[dict]:
    """Every attachment check so far: the previous file's, with this invocation's replacing the same (record, run).

    Attaching one more seed must not drop the evidence of the earlier ones from the JSON (it did: the file
    listed only the last invocation's checks, although the records kept every external block)."""
    previous = read_json(out) if out.is_file() else None
    if out.is_file() and previous is None:
        raise SystemExit(f"{out} exists but is not readable JSON: its attachment checks would be lost; fix or move it")
    by_key = {(a["record"], a["run"]): a for a in (previous or {}).get("attached", [])}
    by_key.update({(a["record"], a["run"]): a for a in new})
    return [by_key[k] for k in sorted(by_key)]


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pairs", nargs="*", type=parse_pair, metavar="RECORD=RUN[,EXPORT_DIR]",
                    help="a record (e.g. seed0_kd) and the re-trained run folder, with its export folder")
    ap.add_argument("--records", type=Path, default=RECORDS)
    ap.add_argument("--data-root", default=None, help="default: LESIONLITE_DATA")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=RESULTS / "external_protocol_cpu.json")
    args = ap.parse_args(argv)
    attached = [attach(name, run, art, args.records, args.data_root) for name, run, art in args.pairs]
    for a in attached:
        print(("attached " if a["attached"] else "NOT the record's run (skipped) ") + json.dumps(a))
    doc = {"attached": merged_attachments(args.out, attached), **table(args.records, args.n_boot),
           "host": {"machine": platform.machine(), "python": platform.python_version()}}
    write_text_atomic(args.out, json.dumps(doc, indent=1) + "\n")
    md = markdown(doc)
    write_text_atomic(args.out.with_suffix(".md"), md)
    print(md)


if __name__ == "__main__":
    main()
