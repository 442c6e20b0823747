"""Issue 28's generalization study: candidate recipes against a baseline run, internally and at the other clinic.

Each run is given by the folder ``lesionlite evaluate`` wrote for it, ``runs/eval_NAME`` with ``internal/`` (the
HAM10000 test split) and ``external/`` (``--data isic-archive``), each holding ``<run>/evaluation.json`` with the
per-image predictions. For every candidate and split: its own figures (from its evaluation, with their CIs) and the
change against the baseline on the same images, paired: every bootstrap replicate resamples the images once and
computes both runs on it (class-stratified; internally by lesion, as the project's evaluation does; externally by
image). Melanoma AUC on P(mel) and on the melanocytic score P(mel) / (P(mel) + P(nv)), balanced accuracy over the
classes present.

    python -m benchmarks.generalization_study --baseline scratch_s0=runs/eval_scratch_s0 \\
        illuminant_0.3=runs/eval_study_illum03_s0 --out benchmarks/results/generalization_study.json

A name given one folder per seed (``NAME=DIR_S0,DIR_S1,DIR_S2``, the baseline likewise, same seed order) is a seed
group: its row gives the mean over seeds of each figure and of each seed's paired change, with one bootstrap that
resamples the images once for every seed, so the interval holds the seed-to-seed spread as well.

Choosing between named recipes may look at these external (dev-half) figures, and RESULTS.md says so; nothing here
fits anything on them. Writes JSON and a Markdown table beside it; prints the table.
"""
from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import publish
from distill import replicate_stats as rs
from distill.bootstrap import bootstrap
from distill.data.ham10000 import DIR_NAMES, METADATA
from distill.data.paths import data_root, describe_root

HERE = Path(__file__).resolve().parent
SPLITS = ("internal", "external")
#: the figures compared (names of the evaluation's clinical metrics)
METRICS = ("melanoma_auc", "melanocytic_auc", "balanced_accuracy_present")


def parse_named(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=EVAL_DIR, e.g. scratch_s0=runs/eval_scratch_s0")
    return name, Path(path)


def parse_named_group(text: str) -> tuple[str, list[Path]]:
    """``NAME=EVAL_DIR`` or a seed group ``NAME=EVAL_DIR,EVAL_DIR,...`` (in the baseline's seed order)."""
    name, sep, paths = text.partition("=")
    parts = paths.split(",")
    if not sep or not name or not all(parts):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=EVAL_DIR[,EVAL_DIR...], e.g. "
                                         "scratch_s0=runs/eval_scratch_s0 or scratch=runs/eval_scratch_s0,runs/eval_scratch_s1")
    return name, [Path(p) for p in parts]


def _folders(dirs: Path | Sequence[Path]) -> list[Path]:
    return [dirs] if isinstance(dirs, Path) else list(dirs)


def load_evaluation(eval_dir: Path, split: str) -> dict[str, Any]:
    """The one ``evaluation.json`` under ``eval_dir/split``."""
    found = sorted((eval_dir / split).glob("*/evaluation.json"))
    if len(found) != 1:
        raise SystemExit(f"{eval_dir / split}: expected one <run>/evaluation.json (from lesionlite evaluate), "
                         f"found {len(found)}")
    return json.loads(found[0].read_text())


def ham_metadata(root: Path | None) -> dict[str, dict[str, str]]:
    """image_id → its HAM10000 metadata row (lesion_id, dx_type, …), found under the data root."""
    folders = [root / name for name in DIR_NAMES] if root is not None else []
    meta = next((f / METADATA for f in folders if (f / METADATA).is_file()), None)
    if meta is None:
        raise SystemExit(f"HAM10000's {METADATA} not found under the data root {describe_root(root)} (pass "
                         "--data-root or set LESIONLITE_DATA)")
    with meta.open(newline="") as f:
        return {row["image_id"]: row for row in csv.DictReader(f)}


def lesion_groups(ids: Sequence[str], meta: dict[str, dict[str, str]]) -> list[str]:
    """HAM10000 image id → lesion id (``meta``: :func:`ham_metadata`), for lesion-clustered resampling of the
    internal split (as the evaluation's own CIs are). Refuses rather than quietly resampling by image: the
    intervals would be too narrow."""
    missing = [i for i in ids if i not in meta]
    if missing:
        raise SystemExit(f"{len(missing)} internal image ids (e.g. {missing[0]}) are not in HAM10000's {METADATA}")
    return [meta[i]["lesion_id"] for i in ids]


def score_vectors(ev: dict[str, Any]) -> dict[str, np.ndarray]:
    """An evaluation's labels, P(mel), melanocytic score P(mel) / (P(mel) + P(nv)) and argmax, per image."""
    p = ev["predictions"]
    if p.get("nv_prob") is None:
        raise SystemExit(f"{ev['model']['name']}: no nevus probabilities (a model without 'nv'): no melanocytic score")
    mel, nv = np.asarray(p["mel_prob"], np.float64), np.asarray(p["nv_prob"], np.float64)
    return {"labels": np.asarray(p["labels"], np.int64), "mel": mel, "melanocytic": mel / np.maximum(mel + nv, 1e-12),
            "pred": np.asarray(p["pred"], np.int64)}


def _figures(sv: dict[str, np.ndarray], is_mel: np.ndarray) -> dict[str, rs.Vectorised]:
    """The compared figures of one evaluation, as replicate statistics."""
    return {"melanoma_auc": rs.auc(is_mel, sv["mel"]), "melanocytic_auc": rs.auc(is_mel, sv["melanocytic"]),
            "balanced_accuracy_present": rs.balanced_accuracy(sv["labels"], sv["pred"])}


def _same_images(evaluations: Sequence[dict[str, Any]]) -> np.ndarray:
    """The labels all the evaluations share; refuses evaluations on other images or with other labels."""
    first = evaluations[0]
    for ev in evaluations[1:]:
        if ev["predictions"]["ids"] != first["predictions"]["ids"]:
            raise SystemExit("the evaluations are not on the same images in the same order; no paired comparison")
        if ev["predictions"]["labels"] != first["predictions"]["labels"]:
            raise SystemExit("the evaluations disagree on the labels of the same images")
    return np.asarray(first["predictions"]["labels"], np.int64)


def paired(candidates: Sequence[dict[str, Any]], baselines: Sequence[dict[str, Any]], groups: list[str] | None,
           mel_index: int, n_boot: int) -> dict[str, Any]:
    """Candidate − baseline on the same images, with paired bootstrap CIs. With several seeds (the i-th candidate
    paired with the i-th baseline): the mean over seeds of each seed's change, every replicate resampling the
    images once for all of them — the seed-to-seed spread of the change is inside the interval."""
    if len(candidates) != len(baselines):
        raise SystemExit(f"{len(candidates)} candidate evaluation(s) against {len(baselines)} baseline one(s): "
                         "give one per seed, in the same seed order")
    y = _same_images([*candidates, *baselines])
    is_mel = y == mel_index
    changes = [{k: rs.delta(c[k], b[k]) for k in METRICS}
               for c, b in zip((_figures(score_vectors(ev), is_mel) for ev in candidates),
                               (_figures(score_vectors(ev), is_mel) for ev in baselines))]
    stats = changes[0] if len(changes) == 1 else {k: rs.mean([ch[k] for ch in changes]) for k in METRICS}
    return bootstrap(stats, y, groups, n_boot=n_boot, seed=0)


def own_figures(ev: dict[str, Any]) -> dict[str, Any]:
    m = ev["clinical"]["metrics"]
    return {k: m.get(k) for k in METRICS} | {"n": ev["clinical"]["n"], "n_melanoma": ev["clinical"].get("n_melanoma")}


def seed_mean_figures(evaluations: Sequence[dict[str, Any]], groups: list[str] | None, mel_index: int,
                      n_boot: int) -> dict[str, Any]:
    """Each figure's mean over seeds, with a bootstrap CI over images (the same resample for every seed)."""
    y = _same_images(evaluations)
    per_seed = [_figures(score_vectors(ev), y == mel_index) for ev in evaluations]
    boot = bootstrap({k: rs.mean([f[k] for f in per_seed]) for k in METRICS}, y, groups, n_boot=n_boot, seed=0)
    first = evaluations[0]["clinical"]
    return boot["metrics"] | {"n": first["n"], "n_melanoma": first.get("n_melanoma"), "seeds": len(evaluations)}


def study(baseline: tuple[str, Path | Sequence[Path]], candidates: Sequence[tuple[str, Path | Sequence[Path]]],
          data_root: Path | None, n_boot: int) -> dict[str, Any]:
    """Every run (or seed group) against the baseline, on both splits. A name given several evaluation folders
    is a seed group: its figures and its change are means over the seeds (paired seed by seed with the
    baseline's folders, in order)."""
    baseline = (baseline[0], _folders(baseline[1]))
    candidates = [(name, _folders(dirs)) for name, dirs in candidates]
    base_name, base_dirs = baseline
    refs = {split: [load_evaluation(d, split) for d in base_dirs] for split in SPLITS}
    meta = ham_metadata(data_root) if candidates else None
    rows = []
    for name, eval_dirs in [baseline, *candidates]:
        row: dict[str, Any] = {"name": name, "eval_dir": ",".join(map(str, eval_dirs))}
        if len(eval_dirs) > 1:
            row["seeds"] = len(eval_dirs)
        for split in SPLITS:
            evs = refs[split] if name == base_name else [load_evaluation(d, split) for d in eval_dirs]
            names = list(evs[0]["report"]["per_class"])  # the model's classes, in its output order
            if "mel" not in names:
                raise SystemExit(f"{eval_dirs[0]}: the model has no 'mel' class; no melanoma AUC to compare")
            mel_index = names.index("mel")
            groups = (lesion_groups(evs[0]["predictions"]["ids"], meta)
                      if split == "internal" and meta and (name != base_name or len(evs) > 1) else None)
            own = own_figures(evs[0]) if len(evs) == 1 else seed_mean_figures(evs, groups, mel_index, n_boot)
            block = {"own": own, "data": evs[0]["data"]["source"], "model": evs[0]["model"]["name"]}
            if name != base_name:
                block["vs_baseline"] = paired(evs, refs[split], groups, mel_index, n_boot)
            row[split] = block
        rows.append(row)
    return {"baseline": base_name, "n_boot": n_boot, "rows": rows,
            "note": "external = the dev half of isic2017_msk_256; choosing between named recipes may look at it "
                    "(RESULTS.md says so); nothing is fitted on it"}


def markdown(doc: dict[str, Any]) -> str:
    def ci(m: dict[str, Any] | None, signed: bool = False, pct: bool = False) -> str:
        if not m or m.get("value") is None:
            return "—"
        k = 100.0 if pct else 1.0
        f = (lambda v: f"{v * k:+.1f}" if pct else f"{v:+.3f}") if signed else (
            lambda v: f"{v * k:.1f}" if pct else f"{v:.3f}")
        lo, hi = m.get("ci_low"), m.get("ci_high")
        return f(m["value"]) + (f" [{f(lo)}, {f(hi)}]" if lo is not None and hi is not None else "")

    by = {split: next((r[split]["vs_baseline"]["bootstrap"]["resampled_by"] for r in doc["rows"]
                       if "vs_baseline" in r[split]), "—") for split in SPLITS}
    lines = [f"Baseline: `{doc['baseline']}`. Δ paired on the same images, 95 % bootstrap CI ({doc['n_boot']} "
             f"replicates, class-stratified; internal resampled by {by['internal']}, external by {by['external']}).",
             "",
             "| run | split | melanoma AUC, P(mel) | Δ | melanocytic-score AUC | Δ | Bal-ACC (classes present), % | Δ pt |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in doc["rows"]:
        label = r["name"] + (f" (mean of {r['seeds']} seeds)" if r.get("seeds") else "")
        for split in SPLITS:
            own, d = r[split]["own"], r[split].get("vs_baseline", {}).get("metrics", {})
            lines.append(f"| {label} | {split} | {ci(own['melanoma_auc'])} | {ci(d.get('melanoma_auc'), True)} | "
                         f"{ci(own['melanocytic_auc'])} | {ci(d.get('melanocytic_auc'), True)} | "
                         f"{ci(own['balanced_accuracy_present'], pct=True)} | "
                         f"{ci(d.get('balanced_accuracy_present'), True, True)} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("candidates", nargs="+", type=parse_named_group, metavar="NAME=EVAL_DIR[,EVAL_DIR...]")
    ap.add_argument("--baseline", required=True, type=parse_named_group, metavar="NAME=EVAL_DIR[,EVAL_DIR...]")
    ap.add_argument("--data-root", default=None,
                    help="for HAM10000's lesion ids (lesion-clustered internal CIs); default: LESIONLITE_DATA, "
                         "else ../shared/data")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "generalization_study.json")
    args = ap.parse_args(argv)
    doc = study(args.baseline, args.candidates, data_root(args.data_root), args.n_boot)
    publish(args.out, doc, markdown(doc))


if __name__ == "__main__":
    main()
