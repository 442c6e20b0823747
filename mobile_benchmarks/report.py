"""Render bench.json as Markdown + HTML with plots, and compare two bench.json files."""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from lesionlite.atomic import atomic_path, write_json_atomic, write_text_atomic
from lesionlite.errors import LesionliteError
from lesionlite.ship import describe, recommend
from mobile_benchmarks import BENCH_SCHEMA, op_profile
from mobile_benchmarks.artifacts import RUNNABLE_KINDS
from mobile_benchmarks.repeats import agreement

LAT_PLOT = "latency_distribution.png"
ACC_PLOT = "accuracy_vs_latency.png"


def load_bench(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / "bench.json"
    if not p.is_file():
        raise LesionliteError(f"bench file not found: {p}")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LesionliteError(f"{p}: unreadable bench.json ({exc})") from None
    if not isinstance(doc, dict) or doc.get("schema") != BENCH_SCHEMA:
        schema = doc.get("schema") if isinstance(doc, dict) else None
        raise LesionliteError(f"{p}: not a lesionlite bench.json (schema {schema!r})")
    return doc


def _f(v: Any, nd: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _big(v: Any) -> str:
    if v is None:
        return "—"
    v = float(v)
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= div:
            return f"{v / div:.2f}{unit}"
    return f"{v:.0f}"


def emulated(doc: dict[str, Any]) -> str | None:
    """The emulator a bench file's times come from, or None for real measurements."""
    if doc.get("emulated"):
        return (doc["emulated"] or {}).get("emulator") or "emulated"
    return next((r["emulated"] for r in doc.get("results") or [] if r.get("emulated")), None)


EMULATED_BANNER = ("**EMULATED** — every time below was measured under {emu} on the host's CPU: it is an "
                   "emulator's time, not the latency of a phone or of any ARM board, and `bench compare` refuses "
                   "to compare it with real measurements. What this run tells is in 'ARM vs host agreement'.")


def agreement_rows(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The ARM(target)-vs-host agreement table, one row per ONNX/TFLite artifact."""
    emu = emulated(doc)
    head = ["artifact", "kind", "precision", "images", "top-1 agreement target vs host", "max |Δ| logits", "mean |Δ|",
            "bit-identical", "accuracy target / host", "target vs PyTorch top-1 (max |Δ|)",
            "export: host vs PyTorch top-1 (max |Δ|, n)",
            "target ms/inference" + (" (EMULATED)" if emu else "")]
    rows = []
    for r in (doc.get("agreement") or {}).get("rows") or []:
        ref = r.get("export_vs_pytorch") or {}
        mx = ref.get("max_abs_logits")
        ref_cell = (f"{ref['top1_agreement']:.4f} ({'—' if mx is None else f'{mx:.3g}'}, {ref.get('n', '?')})"
                    if ref.get("top1_agreement") is not None else "not recorded by export")
        if r.get("status") != "ok":
            rows.append([r["artifact"], r["kind"], _f(r.get("precision")), "—", f"failed: {r.get('reason')}", "—", "—",
                         "—", "—", "—", ref_cell, "—"])
            continue
        acc = (f"{r['accuracy_target']:.4f} / {r['accuracy_host']:.4f}" if r.get("accuracy_target") is not None
               else "no labels")
        vs = r.get("vs_pytorch")
        vs_cell = (f"{vs['target_top1_agreement']:.4f} ({vs['target_max_abs_diff']:.3g})" if vs
                   else "no per-image reference from export")
        rows.append([r["artifact"], r["kind"], _f(r.get("precision")), str(r["n"]), f"{r['top1_agreement']:.4f}",
                     f"{r['max_abs_diff']:.3g}", f"{r['mean_abs_diff']:.3g}", "yes" if r["bit_identical"] else "no",
                     acc, vs_cell, ref_cell, _f(r.get("target_ms_per_inference"), 1)])
    return head, rows


def _agreement_text(doc: dict[str, Any]) -> list[str]:
    """Paragraphs that go with the agreement table (inputs, method, what is and is not compared)."""
    ag = doc.get("agreement") or {}
    if ag.get("not_run"):
        return [f"Not run: {ag['not_run']}."]
    t = doc.get("target") or {}
    machine = (t.get("device") or {}).get("machine") or "the target"
    return [f"Inputs: {'; '.join(ag.get('inputs') or ['?'])}.",
            f"Method: {ag.get('method', '?')}. Target = {machine}"
            + (f" under {emulated(doc)}" if emulated(doc) else "") + ".",
            "PyTorch: 'target vs PyTorch' compares the target's outputs per image with PyTorch's logits on the same "
            "images, which lesionlite export saves (pytorch_reference.npz beside its report; exports made before "
            "it did show 'no per-image reference'); the export column is export's own summary on all its "
            "evaluation images, on the export host."]


def artifact_rows(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = ["artifact", "kind", "precision", "size (MB)", "params", "params source", "MACs", "MACs source", "accuracy",
            "accuracy source"]
    rows = []
    for a in doc["artifacts"]:
        rows.append([a["name"], a["kind"], _f(a.get("precision")), _f(a.get("size_mb"), 3), _big(a.get("params")),
                     _f(a.get("params_source")), _big(a.get("macs")), _f(a.get("macs_source")),
                     _f(a.get("accuracy"), 4), _f(a.get("accuracy_source"))])
    return head, rows


def result_rows(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = ["artifact", "threads", "load (ms)", "first (ms)", "mean ± std (ms)", "min", "p50", "p50 noise", "p90", "p95",
            "p99", "max", "throughput (inf/s)", "peak RSS (MB)", "Δ peak (MB)", "delegate share"]
    rows = []
    for r in doc["results"]:
        if r["status"] != "ok":
            continue
        lat = r["latency_ms"]
        mem = r.get("memory") or {}
        d = r.get("delegate") or {}
        if d.get("share") is not None:
            share = f"{d['share'] * 100:.0f}% ({d.get('name') or '?'})"
        else:
            share = d.get("source") or "—"
        rows.append([
            r["artifact"], str(r["threads"]), _f(r.get("load_ms")), _f(r.get("first_inference_ms")),
            f"{_f(lat.get('mean'), 4)} ± {_f(lat.get('std'), 4)}", _f(lat.get("min"), 4), _f(lat.get("p50"), 4),
            _noise(r, "p50"), _f(lat.get("p90"), 4), _f(lat.get("p95"), 4), _f(lat.get("p99"), 4), _f(lat.get("max"), 4),
            _f(r.get("throughput_ips"), 1), _f(mem.get("peak_rss_mb"), 1), _f(mem.get("peak_delta_mb"), 1), share,
        ])
    return head, rows


def md_table(head: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _host_pairs(doc: dict[str, Any]) -> list[tuple[str, str]]:
    h = doc.get("host") or {}
    t = doc.get("target") or {}
    pairs = [("target", t.get("spec", "?"))]
    if t.get("name") != "local":
        for k, v in (t.get("device") or {}).items():
            pairs.append((f"device {k}", _f(v)))
    keys = ["cpu_model", "cpu_flags", "machine", "logical_cores", "physical_cores", "affinity_mask", "affinity",
            "memory_total_gib", "os", "python", "numpy", "onnxruntime", "ai_edge_litert", "executorch", "lesionlite"]
    label = "host " if t.get("name") != "local" else ""
    pairs += [(f"{label}{k}", " ".join(h[k]) if k == "cpu_flags" and isinstance(h.get(k), list) else _f(h.get(k)))
              for k in keys]
    return pairs


def _noise(r: dict[str, Any], figure: str) -> str:
    """'± x ms (y %, R proc.)': half the range of the figure over the repeats' processes."""
    n = (r.get("noise_ms") or {}).get(figure)
    v = (r.get("latency_ms") or {}).get(figure)
    if n is None or not v:
        return "— (1 process)" if r.get("repeats") == 1 else "—"
    return f"± {n:.4f} ({100 * n / v:.1f} %, {r.get('repeats')} proc.)"


def ship_recommendations(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """:func:`lesionlite.ship.recommend` over the measured artifacts at the fewest threads benchmarked."""
    if not doc["settings"].get("threads"):
        return []
    t = min(doc["settings"]["threads"])
    p50 = {r["artifact"]: (r.get("latency_ms") or {}).get("p50") for r in doc["results"]
           if r.get("threads") == t and r.get("status") == "ok"}
    rows = [{"name": a["name"], "format": a["kind"], "precision": a.get("precision"), "size_bytes": a.get("size_bytes"),
             "balanced_accuracy": a.get("balanced_accuracy"), "latency_ms": p50.get(a["name"]),
             "ok": a["name"] in p50} for a in doc["artifacts"] if a.get("kind") in RUNNABLE_KINDS]
    return recommend(rows)


#: the banner of a bench whose artifacts were trained on generated images (the demo)
SYNTHETIC_BANNER = ("SYNTHETIC TRAINING DATA: these models were trained on generated images; their accuracy says "
                    "nothing about dermoscopy (times and sizes are real).")


def synthetic(doc: dict[str, Any]) -> bool:
    return any(a.get("synthetic_training_data") for a in doc.get("artifacts", []))


def render_markdown(doc: dict[str, Any], plots: dict[str, str | None]) -> str:
    s = doc["settings"]
    emu = emulated(doc)
    out = [f"# Benchmark: {doc['model_dir']}" + (" — EMULATED times" if emu else ""), "",
           *([f"> **{SYNTHETIC_BANNER}**", ""] if synthetic(doc) else []),
           f"Created {doc['created']} (git {doc.get('git_commit') or 'n/a'}) on target `{doc['target'].get('spec')}`.", "",
           *([f"> {EMULATED_BANNER.format(emu=emu)}", ""] if emu else []),
           "## Host", "", md_table(["field", "value"], [list(p) for p in _host_pairs(doc)]), "",
           *([f"> **Warning:** {w}" for w in doc.get("warnings") or []] + ([""] if doc.get("warnings") else [])),
           "## Method", "",
           f"- threads {s['threads']}, {s['runs']} timed runs after {s['warmup']} warmup runs in each of "
           f"{s.get('repeats', 1)} fresh process(es), delegate: {s['delegate']}, "
           f"taskset: {s.get('taskset') or 'none (affinity as inherited)'}",
           f"- timing: {s['timing']}", f"- isolation and memory: {s['isolation']}", "",
           "## Artifacts", "", md_table(*artifact_rows(doc)), "",
           "## Results (" + ("EMULATED times in ms — not a device's latency" if emu else "latencies in ms") + ")", "",
           md_table(*result_rows(doc)), ""]
    if doc.get("agreement"):
        out += ["## ARM vs host agreement" if emu or (doc.get("target") or {}).get("name") in ("board", "qemu")
                else "## Target vs host agreement", "", *_agreement_text(doc), "", md_table(*agreement_rows(doc)), ""]
    out += op_profile.markdown_section(doc)
    recs = [] if emu else ship_recommendations(doc)
    if emu:
        out += ["## Which precision to ship", "", "Not judged from this run: its times are an emulator's.", ""]
    elif recs:
        out += ["## Which precision to ship", "",
                f"Per format, at {min(s['threads'])} thread(s) on this target: the fastest p50 within 1 point of fp32's "
                "balanced accuracy (from the export report), ties within 5 % to the smaller file.", ""]
        out += [f"- {line}" for line in describe(recs)] + [""]
    notes = [r for r in doc["results"] if r["status"] != "ok"]
    if notes:
        out += ["## Not measured", ""]
        out += [f"- **{r['artifact']}** (threads {r['threads']}): {r['status']} — {r['reason']}" for r in notes]
        out.append("")
    extra = [(r["artifact"], r["threads"], n) for r in doc["results"] for n in r.get("notes") or []]
    if extra:
        out += ["## Notes", ""] + [f"- {a} (threads {t}): {n}" for a, t, n in extra] + [""]
    out += ["## Plots", ""]
    for key, title in (("latency", "Latency distribution"), ("accuracy", "Accuracy vs latency")):
        if plots.get(key):
            out.append(f"![{title}]({plots[key]})")
        else:
            out.append(f"- {title}: {plots.get(key + '_reason') or 'not drawn'}")
        out.append("")
    return "\n".join(out)


def render_html(doc: dict[str, Any], plots: dict[str, str | None]) -> str:
    e = html.escape

    def table(head: list[str], rows: list[list[str]]) -> str:
        h = "".join(f"<th>{e(c)}</th>" for c in head)
        b = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows)
        return f"<table><thead><tr>{h}</tr></thead><tbody>{b}</tbody></table>"

    s = doc["settings"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>lesionlite bench</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;"
        "margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}</style></head><body>",
        f"<h1>Benchmark: {e(doc['model_dir'])}{' — EMULATED times' if emulated(doc) else ''}</h1>",
        f"<p>Created {e(doc['created'])} (git {e(str(doc.get('git_commit') or 'n/a'))}) on target "
        f"<code>{e(str(doc['target'].get('spec')))}</code>.</p>",
        *([f"<p style='border:2px solid #c00;padding:6px'>{e(EMULATED_BANNER.format(emu=emulated(doc))).replace('**', '')}</p>"]
          if emulated(doc) else []),
        *([f"<p style='border:2px solid #c00;padding:6px'><strong>{e(SYNTHETIC_BANNER)}</strong></p>"] if synthetic(doc) else []),
        "<h2>Host</h2>", table(["field", "value"], [list(p) for p in _host_pairs(doc)]),
        *[f"<p><b>Warning:</b> {e(w)}</p>" for w in doc.get("warnings") or []],
        "<h2>Method</h2><ul>",
        f"<li>threads {e(str(s['threads']))}, {s['runs']} timed runs after {s['warmup']} warmup runs, "
        f"delegate: {e(str(s['delegate']))}, taskset: {e(str(s.get('taskset') or 'none'))}</li>",
        f"<li>timing: {e(s['timing'])}</li><li>isolation and memory: {e(s['isolation'])}</li></ul>",
        "<h2>Artifacts</h2>", table(*artifact_rows(doc)),
        "<h2>Results (" + ("EMULATED times in ms — not a device's latency" if emulated(doc) else "latencies in ms")
        + ")</h2>", table(*result_rows(doc)),
    ]
    if doc.get("agreement"):
        parts += ["<h2>ARM vs host agreement</h2>" if emulated(doc) else "<h2>Target vs host agreement</h2>",
                  *[f"<p>{e(t)}</p>" for t in _agreement_text(doc)], table(*agreement_rows(doc))]
    if doc.get("op_profiles") is not None:
        parts.append("<h2>Where the time goes (op profile)</h2>")
        for prof in doc["op_profiles"]:
            if prof["status"] == "ok":
                parts += [f"<p><b>{e(op_profile.caption(prof))}</b></p>", table(*op_profile.table_rows(prof))]
            else:
                parts.append(f"<p><b>{e(prof['artifact'])}</b>: {e(prof['status'])} — {e(str(prof.get('reason')))}</p>")
    notes = [r for r in doc["results"] if r["status"] != "ok"]
    if notes:
        parts.append("<h2>Not measured</h2><ul>" + "".join(
            f"<li><b>{e(r['artifact'])}</b> (threads {r['threads']}): {e(r['status'])} — {e(str(r['reason']))}</li>"
            for r in notes) + "</ul>")
    parts.append("<h2>Plots</h2>")
    for key, title in (("latency", "Latency distribution"), ("accuracy", "Accuracy vs latency")):
        if plots.get(key):
            parts.append(f"<h3>{title}</h3><img src='{e(plots[key])}' alt='{title}'>")
        else:
            parts.append(f"<p>{title}: {e(str(plots.get(key + '_reason') or 'not drawn'))}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _plain(v: float) -> str:
    """A tick value as a plain number ("0.5", "6", "20", "1500"), never "6×10⁰" or "1e+03"."""
    return np.format_float_positional(float(v), precision=3, unique=True, fractional=False, trim="-")


def log_ticks(lo: float, hi: float) -> list[float]:
    """Round tick values (1-2-5, then finer mantissas) inside ``[lo, hi]`` for a log axis in ms; at least two."""
    import math

    lo, hi = max(float(lo), 1e-9), max(float(hi), float(lo) * 1.0001, 1e-9)
    decades = range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
    ticks: list[float] = []
    for mantissas in ((1,), (1, 2, 5), (1, 2, 3, 5, 7), tuple(range(1, 10))):
        ticks = sorted({float(_plain(m * 10.0 ** k)) for k in decades for m in mantissas if lo <= m * 10.0 ** k <= hi})
        if len(ticks) >= 3:
            return ticks
    if len(ticks) < 2:  # a narrow range between two round values: evenly spaced (in log), rounded to 3 digits
        ticks = sorted({float(_plain(v)) for v in np.geomspace(lo, hi, 4)})
    return ticks


def accuracy_metric(artifact: dict[str, Any]) -> tuple[float | None, str]:
    """(value, axis name) of the accuracy plotted for an artifact: balanced accuracy — the metric the project
    reports everywhere else — when known (a ``balanced_accuracy`` field, or ``accuracy`` read from a
    ``*balanced_accuracy`` key), else plain accuracy."""
    if artifact.get("balanced_accuracy") is not None:
        return float(artifact["balanced_accuracy"]), "balanced accuracy"
    if artifact.get("accuracy") is not None and str(artifact.get("accuracy_source") or "").endswith("balanced_accuracy"):
        return float(artifact["accuracy"]), "balanced accuracy"
    if artifact.get("accuracy") is not None:
        return float(artifact["accuracy"]), "accuracy"
    return None, "accuracy"


def latency_figure(results: list[dict[str, Any]], emulator: str | None = None) -> Any:
    """Box plot of per-run latencies (``results`` with ``latencies_ms``), log axis with plain ms tick labels."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullFormatter

    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(results) + 2), 4.5))
    ax.boxplot([r["latencies_ms"] for r in results], showfliers=True, whis=(1, 99))
    ax.set_xticks(range(1, len(results) + 1))
    ax.set_xticklabels([f"{r['artifact']}\n{r['threads']} thr" for r in results], rotation=30, ha="right", fontsize=8)
    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    ticks = log_ticks(lo, hi)
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FixedFormatter([_plain(t) for t in ticks]))
    ax.yaxis.set_minor_formatter(NullFormatter())  # the log formatter would write "6×10⁰" here
    ax.set_ylim(lo, hi)
    if emulator:
        ax.set_ylabel("EMULATED time per inference (ms, log scale)")
        ax.set_title(f"EMULATED — not a device's latency\n{emulator}\n"
                     "box: p25–p75, whiskers: p1–p99, dots: beyond", fontsize=9)
    else:
        ax.set_ylabel("latency per inference (ms, log scale)")
        ax.set_title("Warm latency distribution (box: p25–p75, whiskers: p1–p99, dots: beyond)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def accuracy_figure(best: dict[str, dict[str, Any]], artifacts: dict[str, dict[str, Any]], emulator: str | None = None) -> Any:
    """Balanced accuracy (plain accuracy where it is unknown; the axis label says which) vs p50 latency."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    markers = {"onnx": "o", "tflite": "s", "coreml": "^", "executorch": "D"}
    kinds = set()
    for name, r in sorted(best.items()):
        a = artifacts[name]
        value, metric = accuracy_metric(a)
        kinds.add(metric)
        noise = (r.get("noise_ms") or {}).get("p50")
        suffix = "" if metric == "balanced accuracy" else ", plain accuracy"
        ax.errorbar(r["latency_ms"]["p50"], value, xerr=noise, fmt=markers.get(a["kind"], "x"),
                    markersize=7, capsize=3,
                    label=f"{name} ({a['kind']}, {a.get('precision') or '?'}, {r['threads']} thr{suffix})")
    if kinds == {"balanced accuracy"}:
        ylabel, what = "balanced accuracy", "Balanced accuracy"
    elif kinds == {"accuracy"}:
        ylabel, what = "accuracy (balanced accuracy not available)", "Accuracy"
    else:
        ylabel, what = "balanced accuracy (plain accuracy where marked)", "Balanced accuracy"
    ax.set_ylabel(ylabel)
    if emulator:
        ax.set_xlabel("EMULATED p50 time (ms) — an emulator's, not a device's latency")
        ax.set_title(f"{what} vs EMULATED time\n{emulator}", fontsize=9)
    else:
        ax.set_xlabel("p50 latency (ms), best thread count per artifact; bars: noise between processes")
        ax.set_title(f"{what} vs latency across formats and precisions")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def draw_plots(doc: dict[str, Any], out: Path) -> dict[str, str | None]:
    plots: dict[str, str | None] = {"latency": None, "accuracy": None}
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        plots["latency_reason"] = plots["accuracy_reason"] = "matplotlib is not installed (pip install 'lesionlite[bench]')"
        return plots
    ok = [r for r in doc["results"] if r["status"] == "ok"]
    dist = [r for r in ok if r.get("latencies_ms")]
    if dist:
        fig = latency_figure(dist, emulated(doc))
        with atomic_path(out / LAT_PLOT) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
        plots["latency"] = LAT_PLOT
    else:
        plots["latency_reason"] = ("no per-run latencies (the target reported summaries only)" if ok
                                   else "no artifact was measured")
    acc = {a["name"]: a for a in doc["artifacts"] if accuracy_metric(a)[0] is not None}
    best: dict[str, dict[str, Any]] = {}  # per artifact: the thread count with the lowest p50
    for r in ok:
        if r["artifact"] in acc and r["latency_ms"].get("p50") is not None:
            if r["artifact"] not in best or r["latency_ms"]["p50"] < best[r["artifact"]]["latency_ms"]["p50"]:
                best[r["artifact"]] = r
    if best:
        fig = accuracy_figure(best, acc, emulated(doc))
        with atomic_path(out / ACC_PLOT) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
        plots["accuracy"] = ACC_PLOT
    else:
        plots["accuracy_reason"] = ("accuracy is not known for any measured artifact (no metrics.accuracy in the "
                                    "manifests: export measures it on each artifact)")
    return plots


def write_reports(doc: dict[str, Any], out: str | Path, write_json: bool = True) -> dict[str, str]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = draw_plots(doc, out)
    paths = {"json": str(out / "bench.json"), "markdown": str(out / "bench.md"), "html": str(out / "bench.html")}
    for k in ("latency", "accuracy"):
        if plots.get(k):
            paths[f"plot_{k}"] = str(out / plots[k])  # type: ignore[operator]
    doc["outputs"] = paths
    doc["plots"] = plots
    doc["ship"] = [] if emulated(doc) else ship_recommendations(doc)  # never chosen by an emulator's times
    if write_json:
        write_json_atomic(out / "bench.json", doc)
    write_text_atomic(out / "bench.md", render_markdown(doc, plots))
    write_text_atomic(out / "bench.html", render_html(doc, plots))
    return paths


COMPARE_METRICS = (
    ("p50", lambda r, a: r["latency_ms"].get("p50")),
    ("p90", lambda r, a: r["latency_ms"].get("p90")),
    ("p99", lambda r, a: r["latency_ms"].get("p99")),
    ("throughput", lambda r, a: r.get("throughput_ips")),
    ("peak_rss", lambda r, a: (r.get("memory") or {}).get("peak_rss_mb")),
    ("peak_delta", lambda r, a: (r.get("memory") or {}).get("peak_delta_mb")),
    ("size", lambda r, a: a.get("size_bytes")),
)


def check_comparable(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Emulated times are never compared with real ones (either way round): one line, exit status 2."""
    ea, eb = emulated(a), emulated(b)
    if bool(ea) != bool(eb):
        which = "A" if ea else "B"
        raise LesionliteError(f"{which} was measured under emulation ({ea or eb}) and the other on real hardware; "
                              "emulated times are not compared with real measurements")


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (artifact, threads) present and measured in both: B/A ratio of each metric (None if missing).
    Raises when only one of the two is emulated (:func:`check_comparable`)."""
    check_comparable(a, b)
    arts_a = {x["name"]: x for x in a["artifacts"]}
    arts_b = {x["name"]: x for x in b["artifacts"]}
    ra = {(r["artifact"], r["threads"]): r for r in a["results"] if r["status"] == "ok"}
    rb = {(r["artifact"], r["threads"]): r for r in b["results"] if r["status"] == "ok"}
    rows = []
    for key in sorted(set(ra) & set(rb), key=lambda k: (k[0], k[1])):
        row: dict[str, Any] = {"artifact": key[0], "threads": key[1]}
        for name, get in COMPARE_METRICS:
            va, vb = get(ra[key], arts_a.get(key[0], {})), get(rb[key], arts_b.get(key[0], {}))
            row[name] = {"a": va, "b": vb, "ratio": (vb / va) if (va and vb is not None) else None}
        row["p50_agreement"] = agreement(ra[key], rb[key], "p50")
        rows.append(row)
    return rows


#: Settings whose difference between two bench files makes their figures incomparable as a noise test.
METHOD_SETTINGS = ("runs", "warmup", "min_secs", "warmup_min_secs", "repeats", "delegate", "taskset")


def method_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """'name: A → B' for each measurement setting (and the host CPU) that differs between two bench files."""
    sa, sb = a.get("settings") or {}, b.get("settings") or {}
    out = [f"{k}: {sa.get(k)!r} → {sb.get(k)!r}" for k in METHOD_SETTINGS if sa.get(k) != sb.get(k)]
    ca, cb = (a.get("host") or {}).get("cpu_model"), (b.get("host") or {}).get("cpu_model")
    if ca != cb:
        out.append(f"cpu_model: {ca!r} → {cb!r}")
    return out


def _agreement_cell(g: dict[str, Any] | None) -> str:
    if not g:
        return "— (no noise band)"
    verdict = "within noise" if g["within_noise"] else "OUTSIDE noise"
    return f"{g['difference_ms']:.4f} vs {g['noise_ms']:.4f} ms: {verdict}"


def format_compare(rows: list[dict[str, Any]], only_a: list, only_b: list) -> str:
    names = [n for n, _ in COMPARE_METRICS]
    head = ["artifact", "threads"] + [f"{n} B/A" for n in names] + ["p50 |B−A| vs noise"]
    body = [[r["artifact"], str(r["threads"])] + ["—" if r[n]["ratio"] is None else f"{r[n]['ratio']:.3f}" for n in names]
            + [_agreement_cell(r.get("p50_agreement"))] for r in rows]
    widths = [max(len(h), *(len(x[i]) for x in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in body]
    lines.append("ratio = B / A: latency and memory below 1 mean B is faster / smaller; throughput above 1 means B is faster")
    judged = [r["p50_agreement"] for r in rows if r.get("p50_agreement")]
    if judged:
        inside = sum(g["within_noise"] for g in judged)
        lines.append(f"p50 difference within the two runs' between-process noise (noise A + noise B): {inside} of {len(judged)}; "
                     "a difference outside it is a real change, one inside it is not distinguishable from noise")
    else:
        lines.append("no noise bands to judge differences by (runs made with --repeats 1)")
    if only_a:
        lines.append("only in A: " + ", ".join(f"{a}@{t}" for a, t in only_a))
    if only_b:
        lines.append("only in B: " + ", ".join(f"{a}@{t}" for a, t in only_b))
    return "\n".join(lines)
