"""``export_report.json`` + ``export_report.md``: size, params, MACs, parity and accuracy per artifact.

The markdown table puts the PyTorch source first, then every artifact with its size relative to the
fp32 artifact of the same format, its parity with PyTorch (max |Δ| of logits and of probabilities,
top-1 agreement) and its own metrics on the held-out split, including the change in balanced accuracy
against PyTorch, so the accuracy cost of each quantization is visible at a glance.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from export.evidence_report import render
from export.mediapipe_check import report_lines
from export.results import REPORT_JSON, REPORT_MD
from lesionlite.atomic import write_json_atomic, write_text_atomic
from lesionlite.ship import describe, recommend

if TYPE_CHECKING:  # pragma: no cover
    from export.results import ExportReport


def _fmt_size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _num(v: Any, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def ship_recommendations(report: ExportReport) -> list[dict[str, Any]]:
    """:func:`lesionlite.ship.recommend` over this export's artifacts (accepted and verified ones qualify)."""
    return recommend(({"name": a.name, "format": a.format, "precision": a.precision, "size_bytes": a.size_bytes,
                      "balanced_accuracy": (a.metrics or {}).get("balanced_accuracy"), "latency_ms": a.latency_ms_p50,
                      "ok": a.status == "written" and bool((a.parity or {}).get("verified"))}
                      for a in report.artifacts), reference=(report.source.get("metrics") or {}).get("balanced_accuracy"))


def render_markdown(report: ExportReport) -> str:
    src = report.source
    sm = src["metrics"]
    data = report.data
    lines = [
        f"# Export report: {src['architecture']}",
        "",
        *(["> **SYNTHETIC TRAINING DATA** — trained and evaluated on generated images: no figure here says anything "
           "about dermoscopy.", ""] if data.get("synthetic") else []),
        f"- checkpoint: `{src['checkpoint']}` (sha256 `{src['sha256'][:16]}…`, torch {src['torch']})",
        f"- parameters: {src['params']:,}; MACs: {src['macs']:,} ({src['macs_method']})",
        f"- data: {data['name']}{' (synthetic)' if data['synthetic'] else ''}; calibration: "
        f"{data['calibration_samples']} {data['calibration_split']} images; parity and metrics: "
        f"{data['eval_samples']} {data['eval_split']} images",
        "- parity gate (top-1 agreement with PyTorch): "
        + ", ".join(f"{k} ≥ {v}" for k, v in report.parity_threshold.items()),
        "",
        "| artifact | size | size / fp32 | max Δlogit | max Δprob | top-1 agree | accuracy | bal. acc | Δ bal. acc "
        "| macro-F1 | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| PyTorch (source) | {_fmt_size(src['size_bytes'])} | | | | | {sm['accuracy']:.4f} | "
        f"{sm['balanced_accuracy']:.4f} | | {sm['macro_f1']:.4f} | reference |",
    ]
    fp32_size = {a.format: a.size_bytes for a in report.artifacts if a.precision == "fp32"}
    for a in report.artifacts:
        p = a.parity or {}
        m = a.metrics or {}
        ratio = f"{a.size_bytes / fp32_size[a.format]:.1%}" if a.format in fp32_size else ""
        dbal = None if "balanced_accuracy" not in m else 100 * (m["balanced_accuracy"] - sm["balanced_accuracy"])
        status = a.status if p.get("verified", False) else f"{a.status} (not numerically verified)"
        lines.append(
            f"| {a.name} | {_fmt_size(a.size_bytes)} | {ratio} | {_num(p.get('max_abs_logits'), '.2e')} | "
            f"{_num(p.get('max_abs_probs'), '.2e')} | {_num(p.get('top1_agreement'), '.2%')} | "
            f"{_num(m.get('accuracy'), '.4f')} | {_num(m.get('balanced_accuracy'), '.4f')} | "
            f"{_num(dbal, '+.2f')} pt | {_num(m.get('macro_f1'), '.4f')} | {status} |"
        )
    lines += ["", "Δ bal. acc is in percentage points against the PyTorch model on the same images."]
    defined = [(a, a.parity["as_defined"]) for a in report.artifacts if (a.parity or {}).get("as_defined")]
    if defined:
        host = next((a.parity.get("host_int8_kernels") for a, _ in defined if a.parity.get("host_int8_kernels")), None)
        lines += ["", "The same artifacts evaluated as defined (QDQ arithmetic as written, without this host's fused int8 "
                  "kernels)" + (f" — this host: {host['note']}" if host else "") + ":", ""]
        for a, d in defined:
            dbal = 100 * (d["balanced_accuracy"] - sm["balanced_accuracy"])
            lines.append(f"- {a.name}: top-1 agree {d['top1_agreement']:.2%}, bal. acc {d['balanced_accuracy']:.4f} "
                         f"({dbal:+.2f} pt), max Δlogit {d['max_abs_logits']:.2e}")
    recs = ship_recommendations(report)
    if recs:
        lines += ["", f"Which precision to ship on this host ({report.source.get('host') or 'unknown CPU'}; batch-1 "
                  "latency measured during export, `lesionlite bench` for a target): the fastest within 1 point of "
                  "fp32's balanced accuracy, ties to the smaller file.", ""]
        lines += [f"- {line}" for line in describe(recs)]
    if report.source.get("evidence"):
        lines += ["", *render(report.source.get("clinical") or {}, [(a.name, a.clinical) for a in report.artifacts],
                              report.source["evidence"])]

    lines += report_lines(report.artifacts)
    notes = [f"- {a.name}: {n}" for a in report.artifacts for n in a.notes]
    if notes:
        lines += ["", "Notes:", *notes]
    lines += ["", "Inputs:", *[f"- {a.name}: {a.input.get('layout')} {a.input.get('dtype')} {a.input.get('shape')}"
                                + (f" quantization {a.input['quantization']}" if a.input.get("quantization") else "")
                                for a in report.artifacts]]
    return "\n".join(lines) + "\n"


def write_report(report: ExportReport, out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)

    j = write_json_atomic(out / REPORT_JSON, {**report.to_dict(), "ship": ship_recommendations(report)})
    m = write_text_atomic(out / REPORT_MD, render_markdown(report))
    return j, m
