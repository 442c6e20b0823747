"""benchmarks/reproduce.py (:mod:`benchmarks.protocol`): aggregation on hand-made numbers, target verdicts, typed
recipes, and the smoke protocol end to end (synthetic data, tiny_cnn, 1 epoch, int8 exports), its skip/resume and
time-budget logic."""
from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _fixtures_data import real_data_root

from benchmarks.protocol import verdicts as V
from benchmarks.protocol.aggregate import aggregate, build_doc
from benchmarks.protocol.cli import build_parser, main
from benchmarks.protocol.collect import collect, committed_record, run_record_path
from benchmarks.protocol.plan import build_plan
from benchmarks.protocol.render import fmt_pm, render_markdown
from benchmarks.protocol.run import EXIT_INCOMPLETE
from benchmarks.protocol.settings import METHOD_LABELS, METHODS, load_recipe
from lesionlite.errors import LesionliteError

pytestmark = pytest.mark.slow  # runs the reproduction protocol on tiny data end to end

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# Pure functions
# ------------------------------------------------------------------------------------------------
def test_aggregate_mean_and_sample_std():
    a = aggregate([0.7, 0.8, 0.9])
    assert a["n"] == 3
    assert a["mean"] == pytest.approx(0.8)
    assert a["std"] == pytest.approx(0.1)  # sample std (ddof = 1): sqrt((0.01 + 0 + 0.01) / 2)
    assert fmt_pm(a) == "80.0 ± 10.0"
    b = aggregate([2.0, 4.0])
    assert b["mean"] == 3.0 and b["std"] == pytest.approx(math.sqrt(2.0))


def test_aggregate_edge_cases():
    one = aggregate([0.5])
    assert one == {"mean": 0.5, "std": None, "n": 1, "values": [0.5]}
    assert fmt_pm(one) == "50.0"
    skip = aggregate([None, float("nan"), 1.0, float("inf")])
    assert skip["n"] == 1 and skip["mean"] == 1.0
    empty = aggregate([])
    assert empty["mean"] is None and empty["n"] == 0
    assert fmt_pm(empty) == "n/a"
    assert fmt_pm(aggregate([120.0, 140.0]), scale=1.0, nd=0) == "130 ± 14"


def _run(key, seed, acc, bal, ips, arch="mobilenet_v2", role="student", status="done"):
    return {"protocol": "cpu-reduced", "reduced": True, "key": key, "role": role, "label": METHOD_LABELS[key],
            "method": "udcd" if key == "udcd-densenet121" else ("scratch" if key == "teacher" else key),
            "arch": arch, "seed": seed, "epochs": 2, "weights_note": "w", "run_dir": f"/x/{key}{seed}", "status": status,
            "metrics": {"accuracy": acc, "balanced_accuracy": bal, "macro_f1": 0.5, "macro_auc": 0.8, "ece": 0.05},
            "params": 1000, "macs": 5000, "images_per_s": ips, "wall_time_s": 10.0 + seed, "export_time_s": 1.0,
            "int8": {"tflite": {"size_bytes": 100, "accuracy": acc - 0.01}, "onnx": {"size_bytes": 120, "accuracy": acc}}}


def test_rows_targets_and_relative_throughput():
    runs = [
        _run("teacher", 0, 0.80, 0.60, 50.0, arch="efficientnet_lite0", role="teacher"),
        _run("scratch", 0, 0.70, 0.50, 100.0), _run("scratch", 1, 0.72, 0.52, 110.0),
        _run("ssdkd", 0, 0.76, 0.55, 25.0), _run("ssdkd", 1, 0.78, 0.57, 22.0),
        _run("udcd", 0, 0.69, 0.45, 50.0), _run("udcd", 1, 0.71, 0.47, 55.0),
        _run("kd", 0, 0.7, 0.5, 90.0), _run("kd", 1, 0.7, 0.5, 90.0, status="partial (budget)"),
    ]
    settings, _ = build_plan(build_parser().parse_args(["--protocol", "smoke"]), load_recipe("smoke"))
    settings = dataclasses.replace(
        settings, protocol="cpu-reduced", seeds=[0, 1], methods=["scratch", "kd", "ssdkd", "udcd"], image_size=64,
        student=dataclasses.replace(settings.student, arch="mobilenet_v2"),
        teacher=dataclasses.replace(settings.teacher, arch="efficientnet_lite0"), title="T")
    doc = build_doc(settings, runs, {"cpu": "c", "cpu_count": 2, "torch": "t", "python": "p"}, {"description": "d"},
                      1.0, complete=False)
    rows = {r["key"]: r for r in doc["rows"]}
    assert [r["key"] for r in doc["rows"]] == ["teacher", "scratch", "kd", "ssdkd", "udcd"]
    assert rows["scratch"]["accuracy"]["mean"] == pytest.approx(0.71)
    assert rows["scratch"]["accuracy"]["std"] == pytest.approx(math.sqrt(2) * 0.01)
    assert rows["ssdkd"]["balanced_accuracy"]["mean"] == pytest.approx(0.56)
    # images/s relative to scratch of the same seed: (25/100 + 22/110) / 2
    assert rows["ssdkd"]["images_per_s_vs_scratch"]["mean"] == pytest.approx((0.25 + 0.2) / 2)
    assert rows["teacher"]["images_per_s_vs_scratch"]["mean"] is None  # another architecture
    assert rows["kd"]["status"] == "1/2 seeds done" and rows["kd"]["seeds"] == [0]
    assert rows["ssdkd"]["int8_tflite_accuracy"]["mean"] == pytest.approx(0.76)
    v = {t["target"].split(" beats")[0].split(" at")[0]: t["verdict"] for t in doc["targets"]}
    assert v["SSD-KD"] == "pass" and v["UDCD"] == "fail" and v["UDCD (public code)"] == "n/a"
    # SSD-KD's complete row reaches 75.4 %: that decides the "any student" target whatever KD's last seed does
    acc_target = next(t for t in doc["targets"] if "MedMNIST" in t["target"])
    assert acc_target["verdict"] == "pass" and "ssdkd" in acc_target["detail"]  # 77% >= 75.4%
    v2 = {t["target"]: t for t in doc["targets"]}
    assert v2["teacher >= scratch + 3 Bal-ACC points"]["verdict"] == "pass"  # 60 vs 51
    assert v2["Hinton KD beats scratch on balanced accuracy"]["provisional_verdict"] == "fail"  # 50 vs 51
    assert v2["best mobilenet_v2 student >= 65% balanced accuracy"]["provisional_verdict"] == "fail"  # 56
    assert "n/a" == next(t for t in doc["targets"] if t["target"].startswith("SSD-KD >="))["verdict"]  # no preds
    md = render_markdown(doc)
    assert "CPU-REDUCED protocol" in md and "INCOMPLETE" in md and "76.0 ± 1.4" in md
    assert next(t for t in V.evaluate_targets(doc["rows"], 28, "mobilenet_v2")
                if "MedMNIST" in t["target"])["verdict"] == "n/a"


def test_accuracy_operating_point_verdict_reads_accuracy_gap_per_method():
    """The ACC target at the accuracy operating point: per-method means over seeds from accuracy_gap.json,
    teacher and other architectures ignored, pass when one method's mean reaches 75.4 %."""
    def run(path, arch, acc):
        return {"run": path, "architecture": arch, "prior_restored": {"accuracy": acc}}

    gap = {"runs": [run("runs/cpu/teacher_mobilenet_v2", "mobilenet_v2", 0.99),
                    run("runs/cpu/seed0/scratch_mobilenet_v2", "mobilenet_v2", 0.76),
                    run("runs/cpu/seed1/scratch_mobilenet_v2", "mobilenet_v2", 0.75),
                    run("runs/cpu/seed0/kd_mobilenet_v2", "mobilenet_v2", 0.74),
                    run("runs/cpu/seed0/kd_resnet18", "resnet18", 0.99)]}
    t = V.operating_point_target(gap, "mobilenet_v2")
    assert t["verdict"] == "pass" and "scratch 75.50% (2 seed(s))" in t["detail"] and "kd 74.00%" in t["detail"]
    gap["runs"][1]["prior_restored"]["accuracy"] = 0.70
    assert V.operating_point_target(gap, "mobilenet_v2")["verdict"] == "fail"  # scratch mean 72.5, kd 74
    assert V.operating_point_target({"runs": gap["runs"][:1]}, "mobilenet_v2")["verdict"] == "n/a"


def test_cpu_protocol_plan_shares_one_teacher_and_runs_method_major(tmp_path):
    args = build_parser().parse_args(["--protocol", "cpu", "--out", str(tmp_path / "r")])
    settings, plan = build_plan(args, load_recipe("cpu"))
    teachers = [p for p in plan if p.key == "teacher"]
    assert len(teachers) == 1 and teachers[0].run_dir == tmp_path / "r" / "teacher_mobilenet_v2"
    assert teachers[0].overrides == {"data.image_size": 128}
    assert [(p.key, p.seed) for p in plan[:7]] == [("teacher", 0), ("scratch", 0), ("scratch", 1), ("scratch", 2),
                                                   ("kd", 0), ("kd", 1), ("kd", 2)]
    assert {p.teacher_dir for p in plan if p.method in ("kd", "ssdkd")} == {teachers[0].run_dir}
    distilled = [p for p in plan if p.method in ("kd", "ssdkd")]
    assert all(p.overrides["model.teacher_input"] == "native" for p in distilled)
    # the teacher is part of a distilled run's identity; runs without a teacher carry none
    assert all(p.teacher_id == {"arch": "mobilenet_v2", "weights": teachers[0].weights_note, "epochs": 15,
                                "overrides": {"data.image_size": 128}, "shared": True} for p in distilled)
    assert all(p.teacher_id is None for p in plan if p.method not in ("kd", "ssdkd"))
    assert len(plan) == 1 + 5 * 3 and settings.seeds == [0, 1, 2] and settings.image_size == 64
    # a run of one seed (a second core) plans the same shared teacher: the recipe's first seed, one record
    _, one = build_plan(build_parser().parse_args(["--protocol", "cpu", "--out", str(tmp_path / "r"),
                                                       "--seeds", "1", "--methods", "kd"]), load_recipe("cpu"))
    assert [(p.key, p.seed) for p in one] == [("teacher", 0), ("kd", 1)]


def test_unknown_ablation_is_a_one_line_error(tmp_path, capsys):
    rc = main(["--protocol", "smoke", "--ablations", "nope", "--out", str(tmp_path / "r"), "--results", str(tmp_path)])
    assert rc == 2
    assert "unknown ablation 'nope'; the recipe defines: ssdkd-no-relations" in capsys.readouterr().err


def test_bad_method_is_a_one_line_error(tmp_path, capsys):
    rc = main(["--protocol", "smoke", "--methods", "scratch,nope", "--out", str(tmp_path / "r"),
                 "--results", str(tmp_path)])
    assert rc == 2
    assert "unknown method 'nope'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# Smoke protocol end to end
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    args = ["--protocol", "smoke", "--out", str(root / "runs"), "--results", str(root / "results")]
    rc = main(args)
    return root, args, rc


def test_smoke_writes_every_row_with_numbers_in_range(smoke):
    root, _, rc = smoke
    assert rc == 0
    doc = json.loads((root / "results" / "paper_table_smoke.json").read_text())
    md = (root / "results" / "paper_table_smoke.md").read_text()
    assert doc["complete"] is True and doc["protocol"] == "smoke" and doc["reduced"] is True
    assert doc["data"]["synthetic"] is True
    keys = [r["key"] for r in doc["rows"]]
    assert keys == ["teacher", *METHODS, "ssdkd-no-relations"]  # ablation rows after the students
    ab = doc["rows"][-1]
    assert ab["role"] == "ablation" and ab["method"] == "ssdkd" and ab["int8_tflite_size_bytes"]["mean"] is None
    ab_cfg = (root / "runs" / "seed0" / "ssdkd-no-relations_tiny_cnn" / "config.yaml").read_text()
    assert "hr_weight: 0.0" in ab_cfg and "ss_max_batches: 2" in ab_cfg  # ablation overrides on the base method's
    assert "ssdkd-no-relations = ssdkd + `{\"method.hr_weight\": 0.0}`" in md
    for r in doc["rows"]:
        assert r["status"] == "done" and r["seeds"] == [0]
        for m in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece"):
            assert 0.0 <= r[m]["mean"] <= 1.0, (r["key"], m)
        assert r["params"] > 0 and r["macs"] > 0
        assert r["wall_time_s"]["mean"] > 0 and r["images_per_s"]["mean"] > 0
        assert f"| SMOKE protocol | {r['label']} |" in md
    for run in doc["runs"]:
        assert run["protocol"] == "smoke" and run["reduced"] is True
    rows = {r["key"]: r for r in doc["rows"]}
    assert rows["scratch"]["images_per_s_vs_scratch"]["mean"] == pytest.approx(1.0)
    for key in ("scratch", "ssdkd"):  # the smoke recipe exports these two
        for fmt in ("tflite", "onnx"):
            assert rows[key][f"int8_{fmt}_size_bytes"]["mean"] > 0
            assert 0.0 <= rows[key][f"int8_{fmt}_accuracy"]["mean"] <= 1.0
    assert rows["kd"]["int8_tflite_size_bytes"]["mean"] is None  # not exported in smoke: n/a, not invented
    assert {t["verdict"] for t in doc["targets"]} <= {"pass", "fail", "n/a"}
    assert len(doc["targets"]) == 9
    # every finished run has its committed record with test predictions, and the paired comparison uses them
    rec = json.loads((root / "results" / "paper_table_smoke_runs" / "seed0_kd.json").read_text())
    assert rec["status"] == "done" and len(rec["test_pred"]) == len(rec["test_labels"]) == 28
    assert rec["curve"] and rec["curve"][0]["epoch"] == 1
    assert set(doc["comparisons"]) == {"kd", "ssdkd", "udcd", "udcd-code", "udcd-densenet121"}
    # per-class test recall of every finished row, from the same stored predictions (Bal-ACC is their mean)
    recall = doc["per_class_recall"]
    assert {"scratch", "kd", "ssdkd"} <= set(recall) and recall["kd"]["seeds"] == 1
    kd = [v for v in recall["kd"]["recall"].values() if v is not None]
    assert all(0.0 <= v <= 1.0 for v in kd) and len(recall["kd"]["recall"]) == len(doc["data"]["class_names"])
    assert np.mean(kd) == pytest.approx(rows["kd"]["balanced_accuracy"]["mean"], abs=1e-9)
    assert "## Test recall per class" in md
    c = doc["comparisons"]["kd"]
    assert c["ci_low"] <= c["delta"] <= c["ci_high"] and c["seed_ids"] == [0]
    assert "## Against scratch" in md
    assert (root / "results" / "paper_table_smoke.png").stat().st_size > 10_000  # curves + deltas plot
    assert "## Targets" in md and "SYNTHETIC" in md


def test_smoke_rerun_skips_finished_runs(smoke, capsys):
    root, args, _ = smoke
    before = json.loads((root / "results" / "paper_table_smoke.json").read_text())
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "[reproduce] train" not in out and "[reproduce] export" not in out
    after = json.loads((root / "results" / "paper_table_smoke.json").read_text())
    assert [r["accuracy"] for r in after["rows"]] == [r["accuracy"] for r in before["rows"]]


def test_fresh_checkout_builds_the_table_from_committed_records(smoke, capsys, tmp_path):
    """Run directories are not committed: on a fresh checkout a finished run is known by its record
    alone — nothing is retrained and its row keeps its numbers; a teacher still needed by an
    unfinished student is retrained (its weights are not in the record)."""
    import shutil

    root, args, _ = smoke
    before = {r["key"]: r for r in json.loads((root / "results" / "paper_table_smoke.json").read_text())["rows"]}
    fresh = tmp_path / "fresh_runs"  # an empty run root: the fresh checkout
    argv = [a if a != str(root / "runs") else str(fresh) for a in args] + ["--methods", "scratch,kd", "--ablations", "none"]
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "[reproduce] train" not in out and "[reproduce] export" not in out
    after = {r["key"]: r for r in json.loads((root / "results" / "paper_table_smoke.json").read_text())["rows"]}
    for key in ("teacher", "scratch", "kd"):
        assert after[key]["status"] == "done" and after[key]["accuracy"] == before[key]["accuracy"], key
    assert after["kd"]["int8_tflite_size_bytes"] == before["kd"]["int8_tflite_size_bytes"]
    # kd's record gone (unfinished): the teacher it needs is trained again, kd too
    rec = root / "results" / "paper_table_smoke_runs" / "seed0_kd.json"
    saved = rec.read_text()
    rec.unlink()
    try:
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "train teacher seed 0" in out and "train kd seed 0" in out and "train scratch" not in out
    finally:
        rec.write_text(saved)
    shutil.rmtree(fresh, ignore_errors=True)


def test_an_interim_table_keeps_the_committed_test_predictions(smoke):
    """An interim table collects the runs not yet visited without the data bundle: for a finished run it must
    keep its committed record's test predictions (the paired CI needs them), not write the record without them."""
    root, args, _ = smoke
    settings, plan = build_plan(build_parser().parse_args(args), load_recipe("smoke"))
    spec = next(p for p in plan if p.key == "scratch")
    path = run_record_path(settings, spec)
    before = json.loads(path.read_text())
    assert before["test_pred"] and before["test_labels"]
    r = collect(spec, settings, {}, {"status": "pending"})  # write_table's preview of a not-yet-visited run
    assert r["test_pred"] == before["test_pred"]
    assert json.loads(path.read_text())["test_pred"] == before["test_pred"]
    stripped = json.dumps({**before, "test_pred": None, "test_labels": None, "marker": "untouched"})
    path.write_text(stripped)
    try:  # without committed predictions, a preview writes nothing (it cannot compute them without the data)
        collect(spec, settings, {}, {"status": "pending"})
        assert path.read_text() == stripped
    finally:
        path.write_text(json.dumps(before))


def test_more_epochs_resumes_the_run(smoke, capsys):
    root, _, _ = smoke
    args = ["--protocol", "smoke", "--methods", "scratch", "--epochs", "2", "--no-export",
            "--out", str(root / "runs"), "--results", str(root / "results2")]
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "[reproduce] resume scratch seed 0" in out
    doc = json.loads((root / "results2" / "paper_table_smoke.json").read_text())
    run = [r for r in doc["runs"] if r["key"] == "scratch"][0]
    assert run["status"] == "done" and run["epochs_run"] == 2


def test_time_budget_stops_before_starting(tmp_path, capsys):
    rc = main(["--protocol", "smoke", "--methods", "scratch,udcd", "--no-export", "--time-budget", "0",
                 "--out", str(tmp_path / "r"), "--results", str(tmp_path)])
    assert rc == EXIT_INCOMPLETE
    doc = json.loads((tmp_path / "paper_table_smoke.json").read_text())
    assert doc["complete"] is False
    assert all(r["status"].startswith("pending") for r in doc["runs"])
    assert "INCOMPLETE" in (tmp_path / "paper_table_smoke.md").read_text()


def test_a_record_distilled_from_another_teacher_does_not_stand(tmp_path):
    """A KD record stands for a planned run only when it learned from the planned teacher: changing the
    recipe's teacher (arch, input size, epochs) must retrain the distilled rows, not reuse them."""
    from lesionlite.atomic import write_json_atomic

    args = build_parser().parse_args(["--protocol", "cpu", "--out", str(tmp_path / "r"),
                                        "--results", str(tmp_path / "results")])
    settings, plan = build_plan(args, load_recipe("cpu"))
    assert settings.qat_recipe == {"epochs": 1, "lr": 1e-5, "alpha": 0.9, "chosen_on_seeds": [0]}  # the verdict's
    kd = next(p for p in plan if p.key == "kd" and p.seed == 0)
    rec = {"protocol": "cpu", "key": "kd", "method": "kd", "arch": kd.arch, "seed": 0, "epochs": kd.epochs,
           "overrides": kd.overrides, "teacher": kd.teacher_id, "status": "done", "metrics": {"accuracy": 0.7}}
    path = run_record_path(settings, kd)
    path.parent.mkdir(parents=True)
    write_json_atomic(path, rec)
    assert committed_record(settings, kd) == rec
    write_json_atomic(path, {**rec, "teacher": {**kd.teacher_id, "arch": "efficientnet_lite2"}})
    assert committed_record(settings, kd) is None
    write_json_atomic(path, {k: v for k, v in rec.items() if k != "teacher"})  # a record from before teachers were named
    assert committed_record(settings, kd) is None


def test_gpu_protocol_plan_is_ready(tmp_path):
    """``--protocol gpu`` (run on the day a device is lent) resolves: 224 px, three seeds, every method of the
    table, one ResNet-50 teacher per seed shared by that seed's KD and SSD-KD, on the accelerator's settings."""
    args = build_parser().parse_args(["--protocol", "gpu", "--out", str(tmp_path / "g")])
    settings, plan = build_plan(args, load_recipe("gpu"))
    assert settings.image_size == 224 and settings.student.arch == "mobilenet_v2"
    students = [p for p in plan if p.key not in ("teacher",) and p.arch == "mobilenet_v2"]
    assert {p.seed for p in students} == {0, 1, 2}
    assert {p.method for p in students} >= {"scratch", "kd", "ssdkd", "udcd", "udcd-code"}
    teachers = [p for p in plan if p.key == "teacher"]
    assert [(t.arch, t.seed) for t in teachers] == [("resnet50", 0), ("resnet50", 1), ("resnet50", 2)]
    for p in plan:
        if p.method in ("kd", "ssdkd"):
            assert p.teacher_dir == next(t.run_dir for t in teachers if t.seed == p.seed)
    assert all(p.overrides.get("method.ss_amp") is True for p in students if p.method == "ssdkd")


def test_failed_targets_carry_their_measured_reason(monkeypatch):
    """A miss of the CPU protocol names the committed measurement that explains it (read, never typed in); a
    pass gets none, and without the result file there is no reason rather than an invented one."""
    files = {"teacher_ensemble_probe.json": {"ensemble": {"balanced_accuracy": 0.69}},
             "ablation_kd_kl_class_weighted.json": {"rows": {"KD seed 2": {"test_balanced_accuracy": 0.625},
                                                             "KD + class-weighted KL seed 2": {"test_balanced_accuracy": 0.649}}}}
    monkeypatch.setattr(V, "read_result", lambda name: files.get(name))
    rows = [{"role": "teacher", "key": "teacher", "balanced_accuracy": {"mean": 0.67}},
            {"role": "student", "key": "scratch", "balanced_accuracy": {"mean": 0.643}}]
    targets = [{"target": "teacher >= scratch + 3 Bal-ACC points", "verdict": "fail"},
               {"target": "Hinton KD beats scratch on balanced accuracy", "verdict": "fail"},
               {"target": "best mobilenet_v2 student >= 65% balanced accuracy", "verdict": "fail"},
               {"target": "int8 TFLite of every student within 1 Bal-ACC point", "verdict": "pass"}]
    out = V.explain_misses([dict(t) for t in targets], rows, "cpu")
    assert "69.0 (+4.7)" in out[0]["why"] and "64.9 vs 62.5" in out[1]["why"] and "67.0" in out[2]["why"]
    assert "why" not in out[3]
    files.clear()
    out = V.explain_misses([dict(t) for t in targets], rows, "cpu")
    assert "why" not in out[0] and "why" not in out[1]
    assert V.explain_misses([dict(t) for t in targets], rows, "gpu") == targets
    files["int8_qat.json"] = {"rows": [{"run": "runs/cpu/seed0/ssdkd_mobilenet_v2", "ptq_tflite_drop": 0.013,
                                        "qat_tflite_drop": 0.0178, "qat_epochs": 2, "qat_lr": 1e-4}]}
    int8 = V.explain_misses([{"target": "int8 TFLite of every student within 1 Bal-ACC point", "verdict": "pending",
                              "provisional_verdict": "fail"}], rows, "cpu")[0]
    assert int8["why"] == "QAT measured on seed0/ssdkd: PTQ -1.30, QAT (2 epoch(s), lr 0.0001) -1.78 points: int8_qat.json"
    files["int8_qat.json"]["rows"][0]["qat_alpha"] = 0.9
    int8 = V.explain_misses([{"target": "int8 TFLite of every student within 1 Bal-ACC point", "verdict": "fail"}],
                            rows, "cpu")[0]
    assert "QAT (2 epoch(s), lr 0.0001, KD weight 0.9) -1.78" in int8["why"]


def test_a_verdict_on_a_method_with_unfinished_seeds_is_pending_not_pass():
    """1 of 3 SSD-KD seeds done: its comparison with 3-seed scratch is shown as provisional, never as PASS; targets
    over complete rows keep their verdict."""
    rows = [{"key": "scratch", "seeds": [0, 1, 2], "seeds_planned": [0, 1, 2]},
            {"key": "ssdkd", "seeds": [0], "seeds_planned": [0, 1, 2]},
            {"key": "udcd", "seeds": [0, 1, 2], "seeds_planned": [0, 1, 2]}]
    targets = [{"target": "SSD-KD beats scratch", "verdict": "pass", "detail": "68.0 vs 64.3", "uses": ["ssdkd", "scratch"]},
               {"target": "UDCD beats scratch", "verdict": "fail", "detail": "63.7 vs 64.3", "uses": ["udcd", "scratch"]},
               {"target": "best student", "verdict": "pass", "detail": "ssdkd", "uses": ["scratch", "ssdkd", "udcd"]},
               {"target": "SSD-KD CI", "verdict": "n/a", "detail": "not measured", "uses": ["ssdkd", "scratch"]}]
    out = V.mark_provisional([dict(t) for t in targets], rows)
    assert out[0]["verdict"] == "pending" and out[0]["provisional_verdict"] == "pass"
    assert out[0]["detail"] == "provisional pass (ssdkd 1/3 seeds done): 68.0 vs 64.3"
    assert out[1]["verdict"] == "fail" and "provisional_verdict" not in out[1]
    assert out[2]["verdict"] == "pending" and out[3]["verdict"] == "n/a"
    # a complete row alone decides an "any student reaches" pass or an "every student within" fail
    decided = [{"target": "best student", "verdict": "pass", "detail": "udcd", "uses": ["scratch", "ssdkd", "udcd"],
                "decided_by": ["udcd"]},
               {"target": "int8 every student", "verdict": "fail", "detail": "udcd -1.5", "uses": ["scratch", "ssdkd", "udcd"],
                "decided_by": ["udcd", "ssdkd"]},
               {"target": "int8 every student", "verdict": "fail", "detail": "ssdkd -1.3", "uses": ["scratch", "ssdkd", "udcd"],
                "decided_by": ["ssdkd"]}]
    out = V.mark_provisional([dict(t) for t in decided], rows)
    assert [t["verdict"] for t in out] == ["pass", "fail", "pending"]


def test_int8_target_counts_qat_only_from_the_declared_recipe_on_every_seed():
    """"QAT allowed; say which": a method whose PTQ int8 misses counts with its QAT export, but only rows of the
    protocol's declared QAT recipe, of this very run and float model, and only once every finished seed has one
    (else pending, provisionally what the measured seeds say); the seeds that chose the recipe are reported apart
    and the others must be within the point too."""
    recipe = V.declared_qat_recipe({"export": {"qat": {"epochs": 1, "lr": "1e-5", "alpha": 0.9,
                                                       "chosen_on_seeds": [0]}}})
    assert recipe == {"epochs": 1, "lr": 1e-5, "alpha": 0.9, "chosen_on_seeds": [0]}  # YAML's "1e-5" is a string
    floats = {0: 0.68, 1: 0.66, 2: 0.67}

    def seeds_of(key):
        return {s: {"run_dir": f"runs/cpu/seed{s}/{key}_mobilenet_v2", "balanced_accuracy": f}
                for s, f in floats.items()}

    by_key = {"scratch": {"seeds": [0, 1, 2], "per_seed": seeds_of("scratch")},
              "ssdkd": {"seeds": [0, 1, 2], "per_seed": seeds_of("ssdkd")}}
    ptq = {"scratch": 0.004, "ssdkd": 0.013}

    def row(seed: int, drop: float, **changes) -> dict:
        r = {"run": f"runs/cpu/seed{seed}/ssdkd_mobilenet_v2", "qat_tflite_drop": drop, "qat_epochs": 1,
             "qat_lr": 1e-5, "qat_alpha": 0.9, "float_balanced_accuracy": floats[seed]}
        return {**r, **changes}

    def target(rows, drops=ptq, recipe=recipe):
        return V.int8_with_qat_target(by_key, drops, rows, recipe)

    t = target([row(0, 0.007)])
    assert t["verdict"] == "pending" and t["provisional_verdict"] == "pass"  # what seed 0 says so far
    assert "ssdkd PTQ -1.30, QAT -0.70 over seed(s) 0" in t["detail"] and "scratch PTQ -0.40" in t["detail"]
    assert "QAT not yet measured on 2 of 3 seed(s)" in t["detail"]
    assert target([row(0, 0.015)])["provisional_verdict"] == "fail"
    # rows that are not the declared recipe (lr alone differs), not this run, or not this float model never count
    others = [row(s, 0.001, qat_lr=1e-4) for s in (0, 1, 2)] + [
        row(s, 0.001, run=f"runs/cpu-reduced/seed{s}/ssdkd_mobilenet_v2") for s in (0, 1, 2)] + [
        row(s, 0.001, float_balanced_accuracy=0.5) for s in (0, 1, 2)] + [row(s, 0.001, qat_alpha=None) for s in (0, 1, 2)]
    assert target([row(0, 0.007), *others])["verdict"] == "pending"
    t = target([row(0, 0.007), row(1, 0.004), row(2, 0.010)])
    assert t["verdict"] == "pass"
    assert "QAT -0.70 over seed(s) 0, 1, 2 (-0.70 without seed(s) 0, which chose the recipe)" in t["detail"]
    t = target([row(0, 0.001), row(1, 0.004), row(2, 0.025)])  # all-seed mean within, held-out mean not
    assert t["verdict"] == "fail" and t["decided_by"] == ["ssdkd"]
    # PTQ within the point: no QAT needed, whatever QAT rows say
    t = target([row(0, 0.05)], drops={"scratch": 0.004, "ssdkd": 0.009})
    assert t["verdict"] == "pass" and "ssdkd PTQ -0.90" in t["detail"]
    assert target([], drops={})["verdict"] == "n/a"
    # a recipe without a KD weight matches rows without one
    plain = V.declared_qat_recipe({"export": {"qat": {"epochs": 2, "lr": 1e-4}}})
    assert target([row(s, 0.005, qat_epochs=2, qat_lr=1e-4, qat_alpha=None) for s in (0, 1, 2)],
                  recipe=plain)["verdict"] == "pass"
    assert V.declared_qat_recipe({"export": {}}) is None
    for bad, msg in (({"epochs": 1}, "needs 'lr'"), ("1 epoch", "must be a mapping"),
                     ({"epochs": 1, "lr": "fast"}, "qat.lr: 'fast' is not a valid"),
                     ({"epochs": 1, "lr": 1e-5, "alhpa": 0.9}, "unknown key")):
        with pytest.raises(LesionliteError, match=msg):
            V.declared_qat_recipe({"export": {"qat": bad}})
    assert V.run_seed_and_key("runs/cpu/seed12/kd_mobilenet_v2", "mobilenet_v2") == (12, "kd")
    assert V.run_seed_and_key("runs/qat/seed0_ssdkd", "mobilenet_v2") is None


def test_a_broken_recipe_file_is_a_clear_error(tmp_path):
    """A recipe that is not valid YAML (or not a mapping) is named in a LesionliteError, never a parser traceback;
    reproduce.py and qat_probe.py both read recipes through load_recipe."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1\n")
    with pytest.raises(LesionliteError, match="bad.yaml: cannot read it as YAML"):
        load_recipe("cpu", str(bad))
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(LesionliteError, match="must be a YAML mapping"):
        load_recipe("cpu", str(bad))


# ------------------------------------------------------------------------------------------------
# Typed recipes, the entry points, and the committed CPU table
# ------------------------------------------------------------------------------------------------
def test_a_recipe_key_of_the_wrong_name_or_type_is_a_clear_error(tmp_path):
    """The recipe is typed: a misspelt key or a value of the wrong type names the file and the key."""
    import yaml

    good = yaml.safe_load((REPO / "benchmarks" / "recipes" / "smoke.yaml").read_text())
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**good, "teacher": {**good["teacher"], "epoch": 3}}))
    with pytest.raises(LesionliteError, match=r"r\.yaml: unknown config key 'teacher\.epoch'; did you mean 'teacher\.epochs'"):
        load_recipe("smoke", str(path))
    path.write_text(yaml.safe_dump({**good, "image_size": "large"}))
    with pytest.raises(LesionliteError, match="config key 'image_size': expected int"):
        load_recipe("smoke", str(path))
    path.write_text(yaml.safe_dump({**good, "export": {**good["export"], "calib": 3}}))
    with pytest.raises(LesionliteError, match="unknown config key 'export.calib'"):
        load_recipe("smoke", str(path))
    path.write_text(yaml.safe_dump({**good, "ablations": {"x": {"method": "nope"}}}))
    with pytest.raises(LesionliteError, match="ablation 'x': needs"):
        load_recipe("smoke", str(path))


def test_the_cpu_settings_are_those_of_the_committed_table():
    """The typed settings resolve the CPU recipe to exactly the settings block the committed table was made with."""
    committed = json.loads((REPO / "benchmarks" / "results" / "paper_table_cpu.json").read_text())["settings"]
    args = build_parser().parse_args(["--protocol", "cpu", "--out", "runs/cpu", "--results", committed["results_dir"]])
    settings, _ = build_plan(args, load_recipe("cpu"))
    assert settings.as_dict() == committed
    assert list(settings.as_dict()) == list(committed)  # same keys in the same order


@pytest.mark.parametrize("how", ["script", "module"])
def test_reproduce_runs_as_a_script_and_as_a_module(tmp_path, how):
    """``python benchmarks/reproduce.py`` (from any folder) and ``python -m benchmarks.reproduce``, no path edits."""
    cmd = ([sys.executable, str(REPO / "benchmarks" / "reproduce.py")] if how == "script"
           else [sys.executable, "-m", "benchmarks.reproduce"])
    out = subprocess.run([*cmd, "--help"], cwd=tmp_path if how == "script" else REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--protocol {gpu,cpu,cpu-reduced,smoke}" in out.stdout


def _ham10000_reason() -> str | None:
    root = real_data_root()
    return None if root and (root / "ham10000_200x150").is_dir() else "HAM10000 not found (set LESIONLITE_DATA)"


@pytest.mark.skipif(_ham10000_reason() is not None, reason=str(_ham10000_reason()))
def test_the_cpu_table_regenerates_from_its_committed_records_without_training(tmp_path, monkeypatch, capsys):
    """A fresh checkout has no run directories: ``--protocol cpu`` builds the committed table from the committed
    records alone (training and export blocked here), to the same markdown but for the machine and wall-time lines."""
    import shutil

    import distill.train
    import export.api

    def refuse(*a, **k):
        raise AssertionError("the CPU protocol is complete: nothing may train or export")

    monkeypatch.setattr(distill.train, "train", refuse)
    monkeypatch.setattr(export.api, "export_model", refuse)
    results = REPO / "benchmarks" / "results"
    shutil.copytree(results / "paper_table_cpu_runs", tmp_path / "paper_table_cpu_runs")
    assert main(["--protocol", "cpu", "--out", str(tmp_path / "no_runs"), "--results", str(tmp_path)]) == 0
    assert "[reproduce] train" not in capsys.readouterr().out

    def table(md: str) -> list[str]:
        return [line.replace(str(tmp_path / "no_runs"), "runs/cpu") for line in md.splitlines()
                if not line.startswith(("- machine:", "- wall time:"))]

    assert table((tmp_path / "paper_table_cpu.md").read_text()) == table((results / "paper_table_cpu.md").read_text())
    assert not (tmp_path / "no_runs").exists()
