"""Plots that mislead: the figures the report functions build, inspected as matplotlib objects.

* reliability diagram: every bin's sample count is written on the plot and tiny bins (< 10 samples or
  < 1 % of them) are drawn grey, with the rule in the legend;
* training curves: epoch axes tick at whole epochs only;
* bench latency plot: plain-number tick labels on its log axis (no "6×10⁰");
* bench accuracy-vs-latency plot: balanced accuracy on the y axis (plain accuracy only as a labelled fallback).
"""
from __future__ import annotations

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg", force=True)
import matplotlib.pyplot as plt
from matplotlib.colors import to_rgba
from matplotlib.patches import Rectangle


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _rgb(c) -> tuple:
    return tuple(np.round(to_rgba(c)[:3], 3))


# --------------------------------------------------------------------------- reliability diagram

def _reliability_case(n_big: int = 500):
    """Logits whose top-label confidences fall mostly in one bin, with 3 samples in a low-confidence bin."""
    rng = np.random.default_rng(0)
    k = 3
    # most samples: confidence ≈ 0.93 (bin 14 of 15); 3 samples: confidence ≈ 0.40 (bin 6)
    big = np.zeros((n_big, k))
    big[:, 0] = np.log(0.93 / 0.035)
    small = np.zeros((3, k))
    small[:, 0] = np.log(0.40 / 0.30)
    logits = np.concatenate([big, small])
    labels = np.concatenate([np.where(rng.random(n_big) < 0.9, 0, 1), [0, 0, 0]])  # tiny bin: accuracy 1.0
    return labels, logits


def test_tiny_bins_rule():
    from distill.reports import tiny_bins

    count = np.array([0, 3, 9, 10, 50, 10000])
    # n = 10072 → 1 % ≈ 100.7: 10 and 50 are tiny by the fraction rule, 3 and 9 by both; empty bins are not bins
    assert tiny_bins(count).tolist() == [False, True, True, True, True, False]
    assert tiny_bins(np.array([0, 9, 10, 40])).tolist() == [False, True, False, False]


def test_reliability_tiny_bin_is_grey_and_counts_are_written():
    from distill.reports import TINY_BIN_COLOR, reliability_figure

    labels, logits = _reliability_case()
    fig = reliability_figure(labels, logits, 1.0, n_bins=15)
    for ax in fig.axes[:2]:
        # filled bars (the gap outlines have a transparent face)
        bars = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_height() > 0 and p.get_facecolor()[3] > 0]
        grey = [p for p in bars if _rgb(p.get_facecolor()) == _rgb(TINY_BIN_COLOR)]
        blue = [p for p in bars if _rgb(p.get_facecolor()) == _rgb("tab:blue")]
        # the tiny bin (3 samples at confidence 0.4, all correct) would be a full-height bar: it is grey
        assert len(grey) == 1 and grey[0].get_x() < 0.5 and grey[0].get_height() == pytest.approx(1.0)
        # the well-populated bin keeps the normal colour
        assert blue and all(p.get_x() > 0.8 for p in blue)
        assert len(grey) + len(blue) == len(bars)
        texts = {t.get_text() for t in ax.texts}
        assert {"3", "500"} <= texts, f"per-bin counts not annotated: {texts}"
        legend = " ".join(t.get_text() for t in ax.get_legend().get_texts())
        assert "< 10 samples" in legend and "1%" in legend.replace(" %", "%")


def test_reliability_without_tiny_bins_draws_no_grey(tmp_path):
    from distill.reports import TINY_BIN_COLOR, plot_reliability, reliability_figure

    labels, logits = _reliability_case()
    labels, logits = labels[:500], logits[:500]
    fig = reliability_figure(labels, logits, 1.0)
    grey = [p for ax in fig.axes for p in ax.patches if p.get_fill() and _rgb(p.get_facecolor()) == _rgb(TINY_BIN_COLOR)]
    assert not grey
    assert plot_reliability(labels, logits, 1.0, tmp_path / "r.png").stat().st_size > 0


# --------------------------------------------------------------------------- training curves

@pytest.mark.parametrize("n_epochs", [2, 3, 5, 13])
def test_training_curves_tick_whole_epochs(n_epochs, tmp_path):
    from distill.reports import plot_training_curves, training_curves_figure

    history = [{"epoch": e, "train_ce": 1.0 / e, "train_acc": 0.5, "val_loss": 1.1 / e, "val_accuracy": 0.4 + 0.01 * e,
                "val_balanced_accuracy": 0.3 + 0.01 * e, "best": e == n_epochs} for e in range(1, n_epochs + 1)]
    fig = training_curves_figure(history)
    fig.canvas.draw()
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo - 1e-9 <= t <= hi + 1e-9]
        assert len(ticks) >= 2
        assert all(float(t).is_integer() for t in ticks), ticks
    assert plot_training_curves(history, tmp_path / "c.png").stat().st_size > 0


# --------------------------------------------------------------------------- bench plots

def _result(name: str, threads: int, lats: list[float], noise: float | None = None) -> dict:
    return {"artifact": name, "threads": threads, "status": "ok", "latencies_ms": lats,
            "latency_ms": {"p50": float(np.median(lats))}, "noise_ms": {"p50": noise} if noise else {}}


@pytest.mark.parametrize("lo,hi", [(5.2, 7.4), (0.31, 0.52), (4.0, 250.0), (1.0, 1.05), (900.0, 3000.0)])
def test_latency_axis_has_plain_tick_labels(lo, hi):
    from mobile_benchmarks.report import latency_figure

    rng = np.random.default_rng(1)
    results = [_result("a", 1, list(rng.uniform(lo, hi, 50))), _result("b", 2, list(rng.uniform(lo, hi, 50)))]
    fig = latency_figure(results)
    fig.canvas.draw()
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    ymin, ymax = ax.get_ylim()
    major = [t for t in ax.yaxis.get_major_ticks() if ymin <= t.get_loc() <= ymax]
    labels = [t.label1.get_text() for t in major if t.label1.get_visible()]
    assert len([s for s in labels if s]) >= 2, labels
    minor = [t.label1.get_text() for t in ax.yaxis.get_minor_ticks() if t.label1.get_visible()]
    for s in labels + minor:
        assert "×10" not in s and "\\times" not in s and "e+" not in s and "e-" not in s and "$" not in s, s
    for t in major:  # the label is the tick's own value
        if t.label1.get_text():
            assert float(t.label1.get_text()) == pytest.approx(t.get_loc(), rel=1e-3)


def _points(ax) -> list[float]:
    """y of each plotted point (the data line of each errorbar container, not its caps)."""
    return [float(y) for c in ax.containers for y in c.lines[0].get_ydata()]


def _bench_artifacts():
    return {
        "m_fp32": {"name": "m_fp32", "kind": "onnx", "precision": "fp32", "accuracy": 0.90, "balanced_accuracy": 0.61},
        "m_int8": {"name": "m_int8", "kind": "tflite", "precision": "int8", "accuracy": 0.88, "balanced_accuracy": 0.55},
    }


def test_accuracy_plot_uses_balanced_accuracy():
    from mobile_benchmarks.report import accuracy_figure

    arts = _bench_artifacts()
    best = {"m_fp32": _result("m_fp32", 1, [10.0, 11.0, 12.0]), "m_int8": _result("m_int8", 2, [4.0, 5.0, 6.0], 0.2)}
    ax = accuracy_figure(best, arts).axes[0]
    assert ax.get_ylabel() == "balanced accuracy"
    assert "balanced accuracy" in ax.get_title().lower()
    assert sorted(_points(ax)) == pytest.approx([0.55, 0.61])


def test_accuracy_plot_balanced_accuracy_from_the_accuracy_source():
    from mobile_benchmarks.report import accuracy_metric

    metric = {"accuracy": 0.7, "accuracy_source": "manifest metrics.test_balanced_accuracy"}
    assert accuracy_metric(metric) == (0.7, "balanced accuracy")
    assert accuracy_metric({"accuracy": 0.7, "accuracy_source": "manifest metrics.accuracy"}) == (0.7, "accuracy")
    assert accuracy_metric({"accuracy": None}) == (None, "accuracy")


def test_accuracy_plot_falls_back_to_accuracy_and_says_so():
    from mobile_benchmarks.report import accuracy_figure

    arts = {k: {kk: vv for kk, vv in a.items() if kk != "balanced_accuracy"} for k, a in _bench_artifacts().items()}
    best = {"m_fp32": _result("m_fp32", 1, [10.0]), "m_int8": _result("m_int8", 1, [5.0])}
    ax = accuracy_figure(best, arts).axes[0]
    assert ax.get_ylabel().startswith("accuracy") and "balanced" in ax.get_ylabel()  # "(balanced accuracy not available)"
    assert sorted(_points(ax)) == pytest.approx([0.88, 0.90])
    # mixed: balanced where known, the fallback marked in the legend
    arts["m_fp32"]["balanced_accuracy"] = 0.61
    ax = accuracy_figure(best, arts).axes[0]
    assert ax.get_ylabel() == "balanced accuracy (plain accuracy where marked)"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("m_int8" in s and "plain accuracy" in s for s in legend)
    assert not any("m_fp32" in s and "plain accuracy" in s for s in legend)


def test_draw_plots_writes_both_files(tmp_path):
    from mobile_benchmarks.report import draw_plots

    arts = list(_bench_artifacts().values())
    doc = {"artifacts": arts, "results": [_result("m_fp32", 1, [10.0, 11.0]), _result("m_int8", 1, [5.0, 6.0])]}
    plots = draw_plots(doc, tmp_path)
    assert plots["latency"] and plots["accuracy"]
    assert (tmp_path / plots["latency"]).stat().st_size > 0 and (tmp_path / plots["accuracy"]).stat().st_size > 0


def test_bench_describe_reads_balanced_accuracy_beside_accuracy(tmp_path):
    """bench's artifact description carries the balanced accuracy the plot prefers (manifest metrics)."""
    from lesionlite.manifest import Manifest
    from lesionlite.preprocessing import PreprocessConfig
    from mobile_benchmarks.artifacts import describe, discover

    d = tmp_path / "m_onnx_fp32"
    d.mkdir()
    (d / "model.onnx").write_bytes(b"not a real model")
    Manifest(kind="onnx", architecture="tiny_cnn", class_names=["a", "b"], preprocessing=PreprocessConfig(input_size=16),
             input={"layout": "NCHW", "dtype": "float32", "shape": [1, 3, 16, 16]}, files={"model": "model.onnx"},
             metrics={"test_accuracy": 0.8, "test_balanced_accuracy": 0.55}).write(d)
    (art,) = discover(tmp_path)
    info = describe(art)
    assert info["accuracy"] == 0.8 and info["balanced_accuracy"] == 0.55
    assert info["balanced_accuracy_source"] == "manifest metrics.test_balanced_accuracy"
