"""Markdown of the clinical evidence (:mod:`export.evidence`), shared by the export report and the model card.

Internal and external figures side by side, each with its 95 % interval, then every artifact's change
against PyTorch with a *paired* interval, and one line per compressed artifact saying whether it costs the
external site more than it costs the internal test split.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from export.evaluation_report import FIGURES, fmt_ci
from lesionlite.referral import describe_score

#: each figure's style (auc / pct), as ``lesionlite evaluate`` prints it
_STYLE = {key: style for key, _, style in FIGURES}
#: (metric key, column title, style) of the side-by-side tables: evaluate's figures under shorter titles
COLUMNS = tuple((key, title, _STYLE[key]) for key, title in (
    ("melanoma_auc", "melanoma AUC"), ("melanocytic_auc", "melanoma AUC of P(mel)/(P(mel)+P(nv))"),
    ("sensitivity", "sensitivity @ op"), ("specificity", "specificity @ op"),
    ("balanced_accuracy_present", "bal. acc (classes present)"), ("ece", "ECE"), ("ood_rate", "out of distribution")))
#: shown after the melanoma AUCs when the referral score ranks another positive set (malignant)
SCORE_AUC = ("target_auc", "referral-score AUC", _STYLE["target_auc"])
DELTAS = (("melanoma_auc", "Δ melanoma AUC", "auc"), ("balanced_accuracy_present", "Δ bal. acc", "pct"),
          ("sensitivity", "Δ sensitivity @ op", "pct"))


def fmt_delta(m: dict[str, Any] | None, style: str) -> str:
    if not m or m.get("value") is None:
        return "—"
    scale, f = (100.0, "{:+.1f}") if style == "pct" else (1.0, "{:+.3f}")
    out = f.format(scale * m["value"]) + (" pt" if style == "pct" else "")
    if m.get("ci_low") is not None:
        out += f" [{f.format(scale * m['ci_low'])}, {f.format(scale * m['ci_high'])}]"
    return out


def operating_point_line(op: dict[str, Any] | None) -> str:
    if not op:
        return "No operating point (no validation split with positives): sensitivity and specificity are not reported."
    return (f"Operating point: refer when {describe_score(op)} ≥ {op['threshold']:.4f}, chosen on "
            f"the validation split ({op['n_positive']} positives of {op['n']}) for sensitivity {op['sensitivity_target']:.2f} "
            f"(reached {op['sensitivity']:.3f} there). It is a screening threshold for research evaluation — it says "
            "when this model would refer a lesion for a closer look, not whether a lesion is a melanoma; test and "
            "external images only check it, and the sensitivity they show is what to expect elsewhere."
            + (" The score is melanoma among melanocytic lesions (mel vs nv): it ignores the probability of the other "
               "classes, which another clinic's images inflate, and so it says nothing about non-melanocytic lesions "
               "(use --op-target malignant to refer any malignancy)." if op.get("given_classes") else ""))


def render(source_clinical: dict[str, Any], artifacts: Sequence[tuple[str, dict[str, Any]]],
           evidence: dict[str, Any], heading: str = "##") -> list[str]:
    """Markdown lines: operating point, the internal and external tables, paired changes, the one-line verdicts."""
    lines = [f"{heading} Clinical figures: internal test split and external site", "",
             operating_point_line(evidence.get("operating_point")), ""]
    rows = [("PyTorch (source)", source_clinical)] + [(n, c) for n, c in artifacts if c]
    op = evidence.get("operating_point") or {}
    columns = COLUMNS[:2] + (SCORE_AUC,) + COLUMNS[2:] if op.get("target") == "malignant" else COLUMNS
    for role, sdesc in (evidence.get("sets") or {}).items():
        title = (("Internal" if role == "internal" else "External")
                 + f": {sdesc.get('name')} ({sdesc.get('split')}, n={sdesc.get('n')})")
        if role == "external" and sdesc.get("excluded"):
            title += ("; left out (no counterpart among the model's classes): "
                      + ", ".join(f"{k} {v}" for k, v in sdesc["excluded"].items()))
        present = next((c[role].get("classes_present") for _, c in rows if role in c), [])
        nmel = next((c[role].get("n_melanoma") for _, c in rows if role in c), None)
        lines += [f"**{title}** — classes present: {', '.join(present)}; melanomas: {nmel}", "",
                  "| model | " + " | ".join(t for _, t, _ in columns) + " |", "|---|" + "---:|" * len(columns)]
        for name, c in rows:
            m = (c.get(role) or {}).get("metrics", {})
            lines.append(f"| {name} | " + " | ".join(fmt_ci(m.get(k), s) for k, _, s in columns) + " |")
        lines.append("")
    for note in evidence.get("notes") or []:
        lines.append(f"- {note}")
    if artifacts:
        lines += ["", "Change of each artifact against PyTorch on the same images (paired bootstrap, 95 % CI):", "",
                  "| artifact | "
                  + " | ".join(f"{role}: {t}" for role in (evidence.get("sets") or {}) for _, t, _ in DELTAS) + " |",
                  "|---|" + "---:|" * (len(DELTAS) * len(evidence.get("sets") or {}))]
        for name, c in artifacts:
            if not c:
                continue
            cells = [fmt_delta(((c.get(role) or {}).get("vs_pytorch") or {}).get("metrics", {}).get(k), s)
                     for role in (evidence.get("sets") or {}) for k, _, s in DELTAS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", *[f"- {v}" for v in site_verdicts(artifacts)]]
        lines += subgroup_section(artifacts)
    ci = next((c.get("internal", {}).get("bootstrap") for _, c in rows if c.get("internal")), None) or {}
    lines += ["", f"Intervals: {ci.get('n_boot')} bootstrap replicates, stratified by class, resampled by lesion where "
              "lesion ids exist (else by image); percentile method."]
    return lines


def subgroup_section(artifacts: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    """Per compressed artifact whose answers differ from PyTorch's: its change per subgroup, and a verdict line."""
    lines: list[str] = []
    for name, c in artifacts:
        for role in ("internal", "external"):
            by = ((c or {}).get(role) or {}).get("vs_pytorch_by_subgroup")
            if not by:
                continue
            overall = ((c[role].get("vs_pytorch") or {}).get("metrics") or {})
            lines += ["", f"**{name}, {role}: change against PyTorch by subgroup** (paired 95 % CI; *small*: fewer than "
                      "20 images, or 20 melanomas for the melanoma figure)", "",
                      "| subgroup | n | melanomas | Δ bal. acc | Δ melanoma AUC |", "|---|---:|---:|---:|---:|"]
            hurt = []
            for attr, rows in by.items():
                for r in rows:
                    small, mel_small = (" *small*" if r["small"] else ""), (" *small*" if r["melanoma_small"] else "")
                    lines.append(f"| {attr}: {r['group']}{small} | {r['n']} | {r['melanoma_n']}{mel_small} | "
                                 f"{fmt_delta(r.get('balanced_accuracy_present'), 'pct')} | "
                                 f"{fmt_delta(r.get('melanoma_auc'), 'auc')} |")
                    for key, small_flag, style in (("balanced_accuracy_present", r["small"], "pct"),
                                                   ("melanoma_auc", r["melanoma_small"], "auc")):
                        g, o = r.get(key) or {}, overall.get(key) or {}
                        if not small_flag and g.get("ci_high") is not None and o.get("value") is not None \
                                and g["ci_high"] < o["value"]:
                            hurt.append(f"{attr} {r['group']} ({key.replace('_', ' ')} {fmt_delta(g, style)})")
            lines += ["", f"- {name}, {role}: " + ("hurts " + "; ".join(hurt) + " beyond its overall cost" if hurt else
                                                   "no subgroup (of those not *small*) is hurt beyond its overall cost")]
    return lines


def site_verdicts(artifacts: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    """Per compressed artifact, one line: does it cost the external site more than the internal split?

    "More" means the external change's whole interval lies below the internal change (balanced accuracy
    over the classes present, then melanoma AUC): a cost the average hides.
    """
    out = []
    for name, c in artifacts:
        if not c or "external" not in c or "internal" not in c or name.endswith("_fp32"):
            continue
        worse = []
        for key, label, style in DELTAS[:2]:
            i = ((c["internal"].get("vs_pytorch") or {}).get("metrics") or {}).get(key) or {}
            e = ((c["external"].get("vs_pytorch") or {}).get("metrics") or {}).get(key) or {}
            if i.get("value") is not None and e.get("ci_high") is not None and e["ci_high"] < i["value"]:
                worse.append(f"{label} external {fmt_delta(e, style)} vs internal {fmt_delta(i, style)}")
        out.append(f"{name}: " + ("costs the external site more than the internal split — " + "; ".join(worse)
                                  if worse else "no extra cost on the external site beyond its internal cost "
                                                "(external change's interval reaches the internal change)"))
    return out
