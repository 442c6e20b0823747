"""benchmarks/generalization_study.py: paired comparison of evaluations, on small generated ones."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.generalization_study import main, markdown, study

CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def _evaluation(root: Path, name: str, split: str, mel: np.ndarray, nv: np.ndarray, labels: np.ndarray) -> None:
    pred = np.where(mel > nv, 4, 5)
    auc = float(np.mean([(m > o) + 0.5 * (m == o) for m in mel[labels == 4] for o in mel[labels != 4]]))
    ev = {"model": {"name": name}, "data": {"source": f"generated {split}"},
          "report": {"per_class": {c: {} for c in CLASSES}},
          "clinical": {"n": int(labels.size), "n_melanoma": int((labels == 4).sum()),
                       "metrics": {"melanoma_auc": {"value": auc, "ci_low": None, "ci_high": None}}},
          "predictions": {"ids": [f"img{i}" for i in range(labels.size)], "labels": labels.tolist(),
                          "mel_prob": mel.tolist(), "nv_prob": nv.tolist(), "pred": pred.tolist()}}
    d = root / split / name
    d.mkdir(parents=True)
    (d / "evaluation.json").write_text(json.dumps(ev))


def _run(root: Path, name: str, noise: float, seed: int) -> Path:
    rng = np.random.default_rng(0)
    labels = np.array([4] * 30 + [5] * 60 + [2] * 10)
    signal = (labels == 4).astype(float)
    for split in ("internal", "external"):
        mel = np.clip(0.3 * signal + np.random.default_rng(seed).normal(0, noise, labels.size) + 0.3, 0.01, 0.99)
        nv = np.clip(0.5 - 0.3 * signal + rng.normal(0, 0.05, labels.size), 0.01, 0.99)
        _evaluation(root / f"eval_{name}", name, split, mel, nv, labels)
    return root / f"eval_{name}"


def _ham_root(tmp_path: Path) -> Path:
    """A data root whose HAM10000 metadata gives the generated images lesion ids (two images per lesion)."""
    folder = tmp_path / "data" / "ham10000_200x150"
    folder.mkdir(parents=True)
    rows = ["lesion_id,image_id,dx"] + [f"L{i // 2},img{i},nv" for i in range(100)]
    (folder / "HAM10000_metadata.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "data"


def test_a_run_against_itself_changes_nothing_and_a_better_run_gains(tmp_path: Path) -> None:
    base = _run(tmp_path, "base", noise=0.3, seed=1)
    better = _run(tmp_path, "better", noise=0.05, seed=2)
    doc = study(("base", base), [("same", base), ("better", better)], _ham_root(tmp_path), n_boot=200)
    same = doc["rows"][1]["external"]["vs_baseline"]["metrics"]
    assert all(m["value"] == 0 and m["ci_low"] == 0 and m["ci_high"] == 0 for m in same.values())
    gain = doc["rows"][2]["external"]["vs_baseline"]["metrics"]["melanoma_auc"]
    assert gain["value"] > 0 and gain["ci_low"] > 0  # less noise on P(mel): a higher AUC, paired CI above 0
    assert "vs_baseline" not in doc["rows"][0]["external"]
    assert doc["rows"][2]["internal"]["vs_baseline"]["bootstrap"]["resampled_by"] == "lesion"
    assert "internal resampled by lesion, external by image" in markdown(doc)
    with pytest.raises(SystemExit, match="metadata.csv not found"):  # never a quiet fall-back to resampling by image
        study(("base", base), [("better", better)], tmp_path / "empty", n_boot=50)


def test_refuses_evaluations_on_other_images(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = _run(tmp_path, "base", noise=0.3, seed=1)
    other = _run(tmp_path, "other", noise=0.3, seed=3)
    ev_path = other / "external" / "other" / "evaluation.json"
    ev = json.loads(ev_path.read_text())
    ev["predictions"]["ids"][0] = "somewhere_else"
    ev_path.write_text(json.dumps(ev))
    with pytest.raises(SystemExit, match="not on the same images"):
        main(["--baseline", f"base={base}", f"other={other}", "--out", str(tmp_path / "s.json"), "--n-boot", "50",
              "--data-root", str(_ham_root(tmp_path))])
    with pytest.raises(SystemExit, match="expected one"):
        main(["--baseline", f"base={base}", f"missing={tmp_path / 'nowhere'}", "--out", str(tmp_path / "s.json")])


def test_a_seed_group_averages_each_seeds_paired_change_and_refuses_unmatched_seeds(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bases = [_run(tmp_path, f"base{s}", noise=0.3, seed=10 + s) for s in range(3)]
    betters = [_run(tmp_path, f"better{s}", noise=0.1, seed=20 + s) for s in range(3)]
    root = _ham_root(tmp_path)
    single = [study((f"b{s}", [bases[s]]), [(f"c{s}", [betters[s]])], root, n_boot=100)["rows"][1] for s in range(3)]
    doc = study(("base", bases), [("better", betters)], root, n_boot=100)
    assert doc["rows"][1]["seeds"] == 3 and "(mean of 3 seeds)" in markdown(doc)
    for split in ("internal", "external"):
        pooled = doc["rows"][1][split]["vs_baseline"]["metrics"]["melanoma_auc"]
        per_seed = [r[split]["vs_baseline"]["metrics"]["melanoma_auc"]["value"] for r in single]
        assert pooled["value"] == pytest.approx(np.mean(per_seed), abs=1e-12)
        assert pooled["ci_low"] <= pooled["value"] <= pooled["ci_high"]
        own = doc["rows"][0][split]["own"]["melanoma_auc"]  # the baseline group's own figure: its seed mean
        base_values = [study((f"b{s}", [bases[s]]), [], root, n_boot=10)["rows"][0][split]["own"]["melanoma_auc"]
                       ["value"] for s in range(3)]
        assert own["value"] == pytest.approx(np.mean(base_values), abs=1e-12)
    with pytest.raises(SystemExit, match="give one per seed"):
        study(("base", bases), [("better", betters[:2])], root, n_boot=10)
    with pytest.raises(SystemExit):
        main(["--baseline", f"base={bases[0]},", f"better={betters[0]}"])
    assert "expected NAME=EVAL_DIR[,EVAL_DIR...]" in capsys.readouterr().err
