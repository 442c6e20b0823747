"""The table's document drawn: markdown (``paper_table*.md``), the console summary and the figure (``.png``)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import read_json
from benchmarks.protocol.settings import METHOD_LABELS, METHODS, results_stem


# ------------------------------------------------------------------------------------------------
# Numbers
# ------------------------------------------------------------------------------------------------
def fmt_pm(agg: dict[str, Any] | None, scale: float = 100.0, nd: int = 1) -> str:
    """``"78.3 ± 1.2"`` (percent by default); ``"78.3"`` for one value; ``"n/a"`` for none."""
    if not agg or agg.get("mean") is None:
        return "n/a"
    m = agg["mean"] * scale
    if agg.get("std") is None:
        return f"{m:.{nd}f}"
    return f"{m:.{nd}f} ± {agg['std'] * scale:.{nd}f}"


def fmt_bytes(agg: dict[str, Any]) -> str:
    if not agg or agg.get("mean") is None:
        return "n/a"
    return f"{agg['mean'] / 1e6:.2f} MB"


def fmt_num(v: Any, unit: str = "") -> str:
    if v is None:
        return "n/a"
    if v >= 1e9:
        return f"{v / 1e9:.2f}G{unit}"
    if v >= 1e6:
        return f"{v / 1e6:.2f}M{unit}"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k{unit}"
    return f"{v}{unit}"


def pct(v: Any) -> str:
    return "n/a" if v is None else f"{v * 100:.1f}"


def fmt_plain(agg: dict[str, Any], nd: int | None = None) -> str:
    if nd is None:
        nd = 1 if agg and agg.get("mean") is not None and agg["mean"] < 10 else 0
    return fmt_pm(agg, scale=1.0, nd=nd)


def flags_note(machine: dict[str, Any]) -> str:
    """``; avx2 fma`` — the SIMD flags of the CPU that measured the table (absent from tables made before them)."""
    flags = machine.get("cpu_flags")
    return "" if flags is None else "; " + (" ".join(flags) or "no AVX2/NEON-class SIMD flags")


# ------------------------------------------------------------------------------------------------
# Markdown
# ------------------------------------------------------------------------------------------------
def header_section(doc: dict[str, Any]) -> list[str]:
    label = doc["label"]
    lines = [f"# {doc['title']}", ""]
    if doc["protocol"] == "cpu":
        lines += [f"**{label}** — every run trained to convergence on real data, but at 64 px on 2 CPU cores: "
                  "not the papers' 224 px protocol, so not directly comparable with their tables.", ""]
    elif doc["reduced"]:
        lines += [f"**{label}** — numbers from a reduced budget, not comparable with the papers' tables.", ""]
    if not doc["complete"]:
        lines += ["**INCOMPLETE**: some runs are unfinished (time budget); call the script again to continue.", ""]
    lines += [f"![Learning curves and differences to scratch]({results_stem(doc['protocol'])}.png)", ""]
    lines += ["Test split; mean ± sample std over seeds (a single number = one seed). ACC, Bal-ACC, F1, AUC, "
              "ECE in %. int8 ACC = accuracy of the int8 artifact on the same test split. img/s = training "
              "images per second (each image counted once whatever the number of views); × scratch = relative "
              "to scratch training of the same student.", ""]
    return lines


def rows_section(doc: dict[str, Any]) -> list[str]:
    head = ("| Protocol | Method | Model | Init | Seeds | ACC | Bal-ACC | Macro-F1 | Macro-AUC | ECE | Params | MACs "
            "| int8 TFLite | int8 TFLite ACC / Bal-ACC | int8 ONNX | int8 ONNX ACC / Bal-ACC | img/s | × scratch "
            "| wall s (train) | status |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in doc["rows"]:
        proto = doc["protocol_label"]
        seeds = f"{len(r['seeds'])}/{len(r['seeds_planned'])}"
        ips = fmt_pm(r["images_per_s"], 1.0, 1)
        rel = fmt_pm(r["images_per_s_vs_scratch"], 1.0, 2)
        lines.append(
            f"| {proto} | {r['label']} | {r['arch']} | {r['weights']} | {seeds} | {fmt_pm(r['accuracy'])} | "
            f"{fmt_pm(r['balanced_accuracy'])} | {fmt_pm(r['macro_f1'])} | {fmt_pm(r['macro_auc'])} | "
            f"{fmt_pm(r['ece'])} | {fmt_num(r['params'])} | {fmt_num(r['macs'])} | "
            f"{fmt_bytes(r['int8_tflite_size_bytes'])} | {fmt_pm(r['int8_tflite_accuracy'])} / "
            f"{fmt_pm(r['int8_tflite_balanced_accuracy'])} | {fmt_bytes(r['int8_onnx_size_bytes'])} | "
            f"{fmt_pm(r['int8_onnx_accuracy'])} / {fmt_pm(r['int8_onnx_balanced_accuracy'])} | {ips} | {rel} | "
            f"{fmt_plain(r['wall_time_s'])} | {r['status']} |")
    return lines


def comparisons_section(doc: dict[str, Any]) -> list[str]:
    if not doc.get("comparisons"):
        return []
    lines = ["", "## Against scratch (same seeds, same test images)", "",
             "Difference of test Bal-ACC to scratch in points, per seed and mean; 95 % CI from a paired "
             "bootstrap over the test images (2,000 resamples, one draw shared by every seed, seeds pooled).", "",
             "| Method | seeds | per-seed Δ | mean Δ | 95 % CI |", "|---|---|---|---|---|"]
    for key, c in sorted(doc["comparisons"].items(), key=lambda kv: METHODS.index(kv[0]) if kv[0] in METHODS else 99):
        lines.append(f"| {METHOD_LABELS.get(key, key)} | {', '.join(map(str, c['seed_ids']))} | "
                     f"{', '.join(f'{d * 100:+.2f}' for d in c['per_seed'])} | {c['delta'] * 100:+.2f} | "
                     f"[{c['ci_low'] * 100:+.2f}, {c['ci_high'] * 100:+.2f}] |")
    return lines


def recall_section(doc: dict[str, Any]) -> list[str]:
    """Markdown: test recall per class and row, in %, mean over the row's finished seeds."""
    recall = doc.get("per_class_recall") or {}
    names = list(doc["data"].get("class_names") or [])
    if not recall or not names:
        return []
    order = ["teacher", *METHODS, *sorted(k for k in recall if k not in METHODS and k != "teacher")]
    lines = ["", "## Test recall per class (%, mean over the finished seeds)", "",
             "Balanced accuracy is the mean of a row; the columns say which classes a method gains or loses.", "",
             "| Row | seeds | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for key in (k for k in order if k in recall):
        cells = [pct(recall[key]["recall"].get(n)) for n in names]
        lines.append(f"| {METHOD_LABELS.get(key, key)} | {recall[key]['seeds']} | " + " | ".join(cells) + " |")
    return lines


def targets_section(doc: dict[str, Any]) -> list[str]:
    lines = ["", "## Targets (verdicts computed from the numbers above)", "",
             "| Target | Verdict | Detail | Measured reason for a miss |", "|---|---|---|---|"]
    for t in doc["targets"]:
        lines.append(f"| {t['target']} | **{t['verdict'].upper()}** | {t['detail']} | {t.get('why', '')} |")
    return lines


def export_line(s: dict[str, Any]) -> str:
    ex = s["export"]
    return (f"- export: {', '.join(ex.get('formats') or []) or 'none'} int8, calibration "
            f"{ex.get('calib_samples')} train images, parity gate off (int8 accuracy is reported instead)"
            + (f"; only {', '.join(ex['only'])} exported" if ex.get("only") else "")
            + "; teachers are not exported")


def setup_section(doc: dict[str, Any]) -> list[str]:
    s, m = doc["settings"], doc["machine"]
    ablations = "; ".join(f"{k} = {v['method']} + `{json.dumps(v['overrides'])}`"
                          for k, v in s.get("ablations", {}).items())
    return ["", "## Setup", "",
            f"- protocol: **{doc['label']}**; recipe `{s['recipe']}`; seeds {s['seeds']}; students {s['epochs']} "
            f"epochs, teacher {s['teacher_epochs']} epochs",
            f"- data: {doc['data'].get('description', s['data'])}",
            f"- input: {s['image_size']}×{s['image_size']} px",
            f"- teacher: {s['teacher_arch']} ({s['teacher_weights']}); students: {s['student_arch']} "
            f"({s['student_weights']}); UDCD self-distillation arch: {s['self_distill_arch']} "
            f"({s['self_distill_weights']})",
            f"- common overrides: `{json.dumps(s['common_overrides'])}`",
            f"- per-method overrides: `{json.dumps(s['method_overrides'])}` (udcd-code warm-up/ramp-up scaled "
            "to the epoch count: 20/80 and 30/80 of it)",
            "- ablations (rows after the students; the base method's settings with these overrides): "
            + (ablations or "none"),
            export_line(s),
            f"- machine: CPU {m['cpu']} ({m['cpu_count']} cores{flags_note(m)}), GPU {m.get('gpu') or 'none'}, "
            f"torch {m['torch']}, python {m['python']}"
            + (f"; load average at start {m.get('load_average_at_start')}" if m.get("load_average_at_start") else ""),
            f"- wall time: this call {doc['wall_time_s']:.0f} s; sum of run wall times "
            f"{doc['total_run_wall_s']:.0f} s; exports {doc['total_export_wall_s']:.0f} s",
            f"- GPU: {doc['gpu_note']}"]


def runs_section(doc: dict[str, Any]) -> list[str]:
    lines = ["", "## Runs", "", "| Seed | Run | Status | Epochs | best epoch | ACC | Bal-ACC | int8 TFLite ACC | wall s | "
             "img/s | dir |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["runs"]:
        mt = r.get("metrics") or {}
        i8 = ((r.get("int8") or {}).get("tflite") or {}).get("accuracy")
        wall = "n/a" if r.get("wall_time_s") is None else f"{r['wall_time_s']:.0f}"
        ips = "n/a" if r.get("images_per_s") is None else f"{r['images_per_s']:.1f}"
        lines.append(f"| {r['seed']} | {r['key']} ({r['arch']}) | {r['status']} | {r.get('epochs_run', 'n/a')}/"
                     f"{r['epochs']} | {r.get('best_epoch', 'n/a')} | {pct(mt.get('accuracy'))} | "
                     f"{pct(mt.get('balanced_accuracy'))} | {pct(i8)} | {wall} | {ips} | `{r['run_dir']}` |")
    return lines


def render_markdown(doc: dict[str, Any]) -> str:
    """The table's markdown (``paper_table*.md``) from its JSON document."""
    lines = header_section(doc) + rows_section(doc) + comparisons_section(doc) + recall_section(doc)
    lines += targets_section(doc) + setup_section(doc)
    if doc.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    lines += runs_section(doc)
    return "\n".join(lines) + "\n"


def short_table(doc: dict[str, Any]) -> str:
    """The console summary: one line per row, then the verdicts."""
    out = [f"{doc['title']}" + ("" if doc["complete"] else "  [INCOMPLETE]"),
           f"{'method':<28} {'model':<18} {'ACC':>13} {'Bal-ACC':>13} {'int8 ACC':>13} {'x scratch':>10} {'status'}"]
    for r in doc["rows"]:
        out.append(f"{r['label'][:28]:<28} {r['arch'][:18]:<18} {fmt_pm(r['accuracy']):>13} "
                   f"{fmt_pm(r['balanced_accuracy']):>13} {fmt_pm(r['int8_tflite_accuracy']):>13} "
                   f"{fmt_pm(r['images_per_s_vs_scratch'], 1.0, 2):>10} {r['status']}")
    for t in doc["targets"]:
        out.append(f"[{t['verdict'].upper()}] {t['target']}: {t['detail']}")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
# Figure
# ------------------------------------------------------------------------------------------------
def plot_curves(ax: Any, records: list[dict[str, Any]], colors: dict[str, Any]) -> None:
    """Val Bal-ACC per epoch of every finished run (line style = seed; dot = best epoch, kept for test)."""
    import matplotlib

    styles = ["-", "--", ":", "-."]
    for r in records:
        ep = [c["epoch"] for c in r["curve"]]
        ys = [c.get("val_balanced_accuracy") for c in r["curve"]]
        ax.plot(ep, [100 * y if y is not None else np.nan for y in ys], color=colors.get(r["key"], "k"),
                linestyle=styles[int(r["seed"]) % len(styles)], alpha=0.85,
                label=f"{METHOD_LABELS.get(r['key'], r['key'])} s{r['seed']}")
        if r.get("best_epoch"):
            b = int(r["best_epoch"])
            if 0 < b <= len(ys) and ys[b - 1] is not None:
                ax.plot([b], [100 * ys[b - 1]], marker="o", color=colors.get(r["key"], "k"), markersize=4)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val balanced accuracy (%)")
    ax.set_title("learning curves (dot = best epoch, kept for test)")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)


def plot_deltas(ax: Any, comps: dict[str, Any], colors: dict[str, Any]) -> None:
    """Each method's test Bal-ACC difference to scratch with its paired 95 % CI, × = seeds."""
    names = [k for k in METHODS if k in comps]
    if names:
        d = [100 * comps[k]["delta"] for k in names]
        lo = [100 * (comps[k]["delta"] - comps[k]["ci_low"]) for k in names]
        hi = [100 * (comps[k]["ci_high"] - comps[k]["delta"]) for k in names]
        ax.errorbar(range(len(names)), d, yerr=[lo, hi], fmt="o", capsize=4, color="k")
        for i, k in enumerate(names):
            for s_ in comps[k]["per_seed"]:
                ax.plot([i], [100 * s_], marker="x", color=colors.get(k, "gray"), alpha=0.8)
        ax.set_xticks(range(len(names)), [METHOD_LABELS.get(k, k) for k in names], rotation=20, fontsize=8)
    else:
        ax.text(0.5, 0.5, "no method has finished\nthe seeds scratch has", ha="center", va="center",
                transform=ax.transAxes, color="gray")
        ax.set_xticks([])
    ax.axhline(0, color="gray", linewidth=1)
    ax.set_ylabel("test Bal-ACC − scratch (points)")
    ax.set_title("vs scratch: mean, paired 95% CI, × = seeds")
    ax.grid(alpha=0.3, axis="y")


def plot_protocol(doc: dict[str, Any], path: Path) -> Path | None:
    """Learning curves (val Bal-ACC per epoch of every finished run, from the committed run records)
    beside each method's test Bal-ACC difference to scratch with its paired 95 % CI."""
    import matplotlib  # the bench extra: a figure is a convenience, the table is written without it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs_dir = Path(doc["settings"]["results_dir"]) / f"{results_stem(doc['protocol'])}_runs"
    records = [r for r in (read_json(p) for p in sorted(runs_dir.glob("seed*_*.json"))) if r and r.get("curve")]
    if not records:
        return None
    keys = [k for k in ("teacher", *METHODS) if any(r["key"] == k for r in records)]
    colors = {k: plt.cm.tab10(i % 10) for i, k in enumerate(keys)}
    fig, (ax_c, ax_d) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [1.5, 1]})
    plot_curves(ax_c, records, colors)
    plot_deltas(ax_d, doc.get("comparisons") or {}, colors)
    fig.suptitle(doc["title"] + ("" if doc["complete"] else "  [INCOMPLETE]"), fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
