"""Which nevi make the other clinic hard: melanoma AUC against each kind of nevus, internally and externally.

HAM10000 says how each diagnosis was confirmed (``dx_type``): a nevus may have been excised (``histo``), followed
up without change (``follow_up``: lesions that never looked worrying enough to cut), or agreed on by experts
(``consensus``). The test split's melanoma AUC mixes them. This script splits it: for each run, melanoma
against the nevi of one confirmation type (internal), and melanoma against nevi / benign keratoses (external),
on P(mel) and on the melanocytic score P(mel) / (P(mel) + P(nv)), each with a 95 % bootstrap CI (class-stratified;
internally resampled by lesion). Read from the per-image predictions ``lesionlite evaluate`` wrote
(``runs/eval_NAME/{internal,external}/<run>/evaluation.json``); nothing is fitted.

    python -m benchmarks.case_mix scratch_s0=runs/eval_scratch_s0 kd_s0=runs/eval_kd128_s0 \\
        --out benchmarks/results/case_mix.json
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import publish
from benchmarks.generalization_study import ham_metadata, load_evaluation, parse_named, score_vectors
from distill import replicate_stats as rs
from distill.bootstrap import bootstrap
from distill.data.paths import data_root

HERE = Path(__file__).resolve().parent
#: internal comparisons: melanoma against the nevi confirmed this way ("all": every nevus, and every other class)
INTERNAL = ("histo", "consensus", "follow_up")


def _auc_block(y: np.ndarray, scores: dict[str, np.ndarray], keep: np.ndarray, mel: int,
               groups: list[str] | None, n_boot: int) -> dict[str, Any]:
    """Melanoma-vs-rest AUC of each score on the images ``keep``, with CIs; n of each side."""
    yk = y[keep]
    stats = {name: rs.auc(yk == mel, s[keep]) for name, s in scores.items()}
    g = [groups[i] for i in np.flatnonzero(keep)] if groups is not None else None
    out = bootstrap(stats, yk, g, n_boot=n_boot, seed=0)
    return {**out, "n_melanoma": int((yk == mel).sum()), "n_other": int((yk != mel).sum())}


def analyse(ev: dict[str, Any], split: str, meta: dict[str, dict[str, str]] | None, n_boot: int) -> dict[str, Any]:
    names = list(ev["report"]["per_class"])
    mel, nv = names.index("mel"), names.index("nv")
    v = score_vectors(ev)
    y = v["labels"]
    scores = {"P(mel)": v["mel"], "melanocytic": v["melanocytic"]}
    is_mel = y == mel
    everything = np.ones_like(is_mel)
    if split == "internal":
        assert meta is not None
        rows = [meta[i] for i in ev["predictions"]["ids"]]
        groups = [r["lesion_id"] for r in rows]
        confirmed = np.array([r.get("dx_type", "") for r in rows])
        out: dict[str, Any] = {"all": _auc_block(y, scores, everything, mel, groups, n_boot)}
        for how in INTERNAL:
            out[f"nv ({how})"] = _auc_block(y, scores, is_mel | ((y == nv) & (confirmed == how)), mel, groups, n_boot)
    else:
        out = {"all": _auc_block(y, scores, everything, mel, None, n_boot)}
        out["nv"] = _auc_block(y, scores, is_mel | (y == nv), mel, None, n_boot)
        bkl = names.index("bkl") if "bkl" in names else None
        if bkl is not None and (y == bkl).any():
            out["bkl"] = _auc_block(y, scores, is_mel | (y == bkl), mel, None, n_boot)
    return out


def markdown(doc: dict[str, Any]) -> str:
    def ci(m: dict[str, Any]) -> str:
        if m.get("value") is None:
            return "—"
        lo, hi = m.get("ci_low"), m.get("ci_high")
        return f"{m['value']:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "")

    lines = ["Melanoma against … (AUC, 95 % bootstrap CI, class-stratified; internal by lesion, external by image)", "",
             "| run | split | melanoma against | melanomas | others | AUC, P(mel) | AUC, melanocytic score |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in doc["rows"]:
        for split in ("internal", "external"):
            for against, b in r[split].items():
                m = b["metrics"]
                lines.append(f"| {r['name']} | {split} | {'everything' if against == 'all' else against} | "
                             f"{b['n_melanoma']} | {b['n_other']} | {ci(m['P(mel)'])} | {ci(m['melanocytic'])} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=parse_named, metavar="NAME=EVAL_DIR")
    ap.add_argument("--data-root", default=None, help="for HAM10000's metadata; default LESIONLITE_DATA, else "
                                                       "../shared/data")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "case_mix.json")
    args = ap.parse_args(argv)
    meta = ham_metadata(data_root(args.data_root))
    rows = [{"name": name, "eval_dir": str(d),
             **{split: analyse(load_evaluation(d, split), split, meta, args.n_boot) for split in ("internal", "external")}}
            for name, d in args.runs]
    doc = {"rows": rows, "n_boot": args.n_boot,
           "note": "internal = HAM10000 test split, nevi by dx_type; external = isic2017_msk_256 (dev half), whose "
                   "labels carry no confirmation type"}
    publish(args.out, doc, markdown(doc))


if __name__ == "__main__":
    main()
