"""benchmarks/case_mix.py: melanoma AUC against each kind of nevus, on small generated evaluations."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from test_generalization_study import _evaluation

from benchmarks.case_mix import main


def test_splits_the_nevi_by_how_they_were_confirmed(tmp_path: Path) -> None:
    # 20 melanomas, 40 excised nevi the model confuses with them, 40 followed-up nevi it separates perfectly
    labels = np.array([4] * 20 + [5] * 80)
    mel = np.r_[np.linspace(0.3, 0.7, 20), np.linspace(0.3, 0.7, 40), np.full(40, 0.01)]
    nv = 1 - mel
    ids = [f"img{i}" for i in range(100)]
    for split in ("internal", "external"):
        _evaluation(tmp_path / "eval_m", "m", split, mel, nv, labels)
    data = tmp_path / "data" / "ham10000_200x150"
    data.mkdir(parents=True)
    rows = ["lesion_id,image_id,dx,dx_type"] + [
        f"L{i},{iid},{'mel' if i < 20 else 'nv'},{'histo' if i < 60 else 'follow_up'}" for i, iid in enumerate(ids)]
    (data / "HAM10000_metadata.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "case_mix.json"
    main([f"m={tmp_path / 'eval_m'}", "--data-root", str(tmp_path / "data"), "--n-boot", "100", "--out", str(out)])
    internal = json.loads(out.read_text())["rows"][0]["internal"]
    assert internal["nv (follow_up)"]["metrics"]["P(mel)"]["value"] == 1.0
    assert abs(internal["nv (histo)"]["metrics"]["P(mel)"]["value"] - 0.5) < 0.05  # indistinguishable
    assert internal["nv (histo)"]["n_melanoma"] == 20 and internal["nv (histo)"]["n_other"] == 40
    assert internal["nv (consensus)"]["n_other"] == 0 and internal["nv (consensus)"]["metrics"]["P(mel)"]["value"] is None
    assert 0.5 < internal["all"]["metrics"]["P(mel)"]["value"] < 1.0
    assert "| m | internal | nv (histo) | 20 | 40 |" in out.with_suffix(".md").read_text()
