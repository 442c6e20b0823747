"""Which precision to ship, per format, on the host that measured it.

The rule, shared by ``export`` (its report and model card) and ``bench``: among the verified artifacts of
a format whose balanced accuracy is within ``tolerance_points`` (1) of that format's fp32, the fastest
(median batch-1 latency); ties within 5 % go to the smaller file. Any int8 artifact slower than its fp32
sibling is flagged: on x86 without VNNI onnxruntime's precise int8 kernels can be slower than fp32.
Inputs are plain dicts, so the rule runs without torch.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

TOLERANCE_POINTS = 1.0


def recommend(rows: Iterable[dict[str, Any]], tolerance_points: float = TOLERANCE_POINTS,
              reference: float | None = None) -> list[dict[str, Any]]:
    """``rows``: ``{name, format, precision, balanced_accuracy, latency_ms, size_bytes, ok}`` per artifact.

    ``reference``: the PyTorch source's balanced accuracy, the yardstick of a format exported without an
    fp32 artifact (an int8-only export must still stay within the tolerance, of PyTorch then).

    Returns one entry per format: ``{format, ship, reason, slower_int8: [names]}`` (ship None when no
    artifact qualifies, with the reason).
    """
    by_format: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_format.setdefault(str(r["format"]), []).append(r)
    out = []
    for fmt, items in sorted(by_format.items()):
        fp32 = next((r for r in items if r["precision"] == "fp32"), None)
        slower = [r["name"] for r in items if r["precision"] == "int8" and fp32 is not None
                  and r.get("latency_ms") is not None and fp32.get("latency_ms") is not None
                  and r["latency_ms"] > fp32["latency_ms"]]
        ref = reference if fp32 is None else fp32.get("balanced_accuracy")
        yardstick = "PyTorch" if fp32 is None and reference is not None else "fp32"
        ok = [r for r in items if r.get("ok", True) and r.get("latency_ms") is not None
              and (ref is None or (r.get("balanced_accuracy") is not None
                                   and 100.0 * (ref - r["balanced_accuracy"]) <= tolerance_points))]
        if not ok:
            out.append({"format": fmt, "ship": None, "slower_int8": slower,
                        "reason": "no verified artifact with a measured latency"
                                  + ("" if ref is None else f" within {tolerance_points:g} point of {yardstick}")
                                  + _outside(items, ref)})
            continue
        fastest = min(r["latency_ms"] for r in ok)
        near = [r for r in ok if r["latency_ms"] <= 1.05 * fastest]
        best = min(near, key=lambda r: (r.get("size_bytes") or 0, r["latency_ms"]))
        acc = best.get("balanced_accuracy")
        cost = "" if ref is None or acc is None else f", {100.0 * (acc - ref):+.1f} pt balanced accuracy vs {yardstick}"
        out.append({"format": fmt, "ship": best["name"], "slower_int8": slower,
                    "reason": f"{best['precision']}: {best['latency_ms']:.2f} ms p50, "
                              f"{(best.get('size_bytes') or 0) / 1e6:.2f} MB{cost}"})
    return out


def _outside(items: list[dict[str, Any]], ref: float | None) -> str:
    """``" (mobilenet_v2_tflite_int8: -1.3 pt)"``: what the artifacts left out cost, so nobody ships one unawares."""
    if ref is None:
        return ""
    costs = [f"{r['name']}: {100.0 * (r['balanced_accuracy'] - ref):+.1f} pt" for r in items
             if r.get("balanced_accuracy") is not None]
    return f" ({'; '.join(costs)})" if costs else ""


def describe(recs: list[dict[str, Any]]) -> list[str]:
    """One line per format for a person (report, CLI)."""
    lines = []
    for r in recs:
        head = f"{r['format']}: ship {r['ship']} ({r['reason']})" if r["ship"] else f"{r['format']}: {r['reason']}"
        if r["slower_int8"]:
            head += f" — WARNING: {', '.join(r['slower_int8'])} is slower than fp32 on this host"
        lines.append(head)
    return lines
