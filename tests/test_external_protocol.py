"""benchmarks/external_protocol.py: records with external blocks → per-method rows and paired Δ vs scratch."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.external_protocol import int8_artifact, markdown, parse_pair, table

CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def _block(labels: np.ndarray, mel_prob: np.ndarray, auc: float) -> dict:
    return {"spec": "isic-archive", "name": "ext", "n": len(labels), "fingerprint": "f", "class_names": CLASSES,
            "labels": labels.tolist(), "mel_prob": mel_prob.tolist(), "nv_prob": (1 - mel_prob).tolist(),
            "metrics": {"melanoma_auc": {"value": auc}, "melanocytic_auc": {"value": auc},
                        "balanced_accuracy_present": {"value": 0.4}}}


def _record(folder: Path, key: str, seed: int, block: dict) -> None:
    rec = {"key": key, "label": key.title(), "arch": "mobilenet_v2", "seed": seed, "overrides": {},
           "metrics": {"balanced_accuracy": 0.6}, "external": {"pytorch": block}}
    (folder / f"seed{seed}_{key}.json").write_text(json.dumps(rec))


def test_rows_per_method_with_a_paired_change_against_scratch(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = np.where(rng.random(300) < 0.3, 4, 5)
    good = np.clip(0.5 * (labels == 4) + 0.5 * rng.random(300), 0, 1)  # ranks melanomas well
    noise = rng.random(300)  # ranks them by chance
    for seed in (0, 1):
        _record(tmp_path, "scratch", seed, _block(labels, noise, 0.5))
        _record(tmp_path, "kd", seed, _block(labels, good, 0.9))
    doc = table(tmp_path, n_boot=200)
    rows = {r["method"]: r for r in doc["rows"]}
    assert [r["method"] for r in doc["rows"]] == ["scratch", "kd"]  # the protocol's order
    assert rows["kd"]["seeds"] == [0, 1] and rows["kd"]["mean"]["melanoma_auc"] == pytest.approx(0.9)
    delta = rows["kd"]["vs_scratch_mel_auc"]
    assert delta["ci_low"] > 0.2 and delta["value"] > delta["ci_low"]  # better ranking, paired on the same images
    assert "vs_scratch_mel_auc" not in rows["scratch"]
    ci = rows["kd"]["mean_ci"]["mel_auc"]  # the seed mean's own interval, recomputed from the per-image scores
    assert ci["ci_low"] <= ci["value"] <= ci["ci_high"] and ci["ci_low"] > 0.75
    scratch_ci = rows["scratch"]["mean_ci"]["mel_auc"]
    assert scratch_ci["ci_low"] < 0.5 < scratch_ci["ci_high"]  # chance ranking: the interval holds 0.5
    assert doc["external"]["melanomas"] == int((labels == 4).sum())
    assert "| Kd, mobilenet_v2 | pytorch | 0, 1 |" in markdown(doc)
    assert f"[{ci['ci_low']:.3f}, {ci['ci_high']:.3f}]" in markdown(doc)


def test_records_without_an_external_block_are_left_out(tmp_path: Path) -> None:
    (tmp_path / "seed0_scratch.json").write_text(json.dumps({"key": "scratch", "seed": 0, "metrics": {}}))
    assert table(tmp_path, n_boot=10) == {"rows": [], "n_boot": 10, "external": None}


def test_pairs_and_artifact_lookup(tmp_path: Path) -> None:
    assert parse_pair("seed1_kd=runs/kd_s1,artifacts/kd_s1") == ("seed1_kd", Path("runs/kd_s1"), Path("artifacts/kd_s1"))
    assert parse_pair("seed0_teacher=runs/t") == ("seed0_teacher", Path("runs/t"), None)
    with pytest.raises(argparse.ArgumentTypeError, match="RECORD=RUN"):
        parse_pair("runs/kd_s1")
    (tmp_path / "mobilenet_v2_tflite_int8").mkdir()
    assert int8_artifact(tmp_path) is None  # no manifest: not an artifact
    (tmp_path / "mobilenet_v2_tflite_int8" / "manifest.json").write_text("{}")
    assert int8_artifact(tmp_path) == tmp_path / "mobilenet_v2_tflite_int8"


def test_attachment_checks_accumulate_across_invocations(tmp_path: Path) -> None:
    from benchmarks.external_protocol import merged_attachments

    out = tmp_path / "external_protocol_cpu.json"
    first = [{"record": "seed0_kd", "run": "runs/kd_s0", "identical_test_predictions": True}]
    assert merged_attachments(out, first) == first  # no earlier file
    out.write_text(json.dumps({"attached": first}))
    again = {"record": "seed0_kd", "run": "runs/kd_s0", "identical_test_predictions": False}
    other = {"record": "seed1_kd", "run": "runs/kd_s1", "identical_test_predictions": True}
    assert merged_attachments(out, [other]) == [first[0], other]  # the earlier check is kept
    assert merged_attachments(out, [again]) == [again]  # the same record and run: the latest check


def test_a_run_stopped_early_counts_only_with_the_records_best_epoch(tmp_path: Path) -> None:
    from benchmarks.external_protocol import early_stop_check

    curve = [{"epoch": e, "train_loss": 1.0 / e, "val_balanced_accuracy": 0.5 + 0.01 * e} for e in range(1, 21)]
    rec = {"best_epoch": 5, "epochs_run": 20, "curve": curve}
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"extra": {"stopped_early": False, "epochs_run": 20, "best_epoch": 5}}))
    assert early_stop_check(run, rec) is None  # a full run: nothing to check beyond the test predictions
    (run / "manifest.json").write_text(json.dumps({"extra": {"stopped_early": True, "epochs_run": 8, "best_epoch": 5}}))
    mine = [dict(c) for c in curve[:8]]
    mine[6]["train_loss"] += 1e-12  # epoch 7 differs in the last bits
    (run / "metrics.json").write_text(json.dumps({"history": mine}))
    got = early_stop_check(run, rec)
    assert got["same_best_epoch"] and got["curve_identical_through_epoch"] == 6 and got["epochs_run"] == 8
    assert not early_stop_check(run, rec | {"best_epoch": 12})["same_best_epoch"]  # it stopped before the record's best
