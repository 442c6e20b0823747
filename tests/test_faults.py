"""Fault injection: the faults users meet, tried on every CI run with small models.

* a killed export (SIGKILL of a real subprocess at staged points) leaves nothing ``serve`` or ``bench``
  load, loses nothing already committed, and the next export cleans up (or restores) what it left;
* ENOSPC during export loses nothing already there;
* ``kill -9`` of training during an epoch and during the checkpoint write, then ``--resume``, gives the
  weights of an uninterrupted run;
* damaged artifacts of each kind: ``serve`` serves the healthy ones and names every broken one with its
  reason (``--strict`` refuses to start), ``bench`` reports them as failed rows and measures the rest;
* SIGTERM under load: every request already in the server is answered.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from test_serve_support import ServerThread, build_onnx, encode, free_port, pattern, wait_until_ready
from tiny_checkpoint import SMALL_BUNDLE_ARGS, SMALL_EXPORT_KW, synthetic_bundle

from lesionlite.errors import LesionliteError
from lesionlite.manifest import MANIFEST_NAME

pytestmark = pytest.mark.slow  # killed exports and trainings in subprocesses, a server under SIGTERM

REPO = Path(__file__).resolve().parents[1]
BUNDLE_ARGS = SMALL_BUNDLE_ARGS  # conftest's small_run / small_export: the checkpoint and first export shared
EXPORT_KW = SMALL_EXPORT_KW


def _hidden(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith("."))


def _model_bytes(out: Path) -> dict[str, bytes]:
    return {d.name: (d / "model.onnx").read_bytes() for d in out.iterdir()
            if not d.name.startswith(".") and (d / "model.onnx").is_file()}


def _served_and_benched(out: Path) -> tuple[set[str], set[str]]:
    from mobile_benchmarks.artifacts import discover_all
    from serve.models import load_model_set

    found = load_model_set(out)
    assert not found.broken, found.broken
    arts, unreadable = discover_all(out)
    assert not unreadable
    return set(found.models), {a.name for a in arts}


# ------------------------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def checkpoint(small_run: Path) -> Path:
    return small_run


def _export(ckpt: Path, out: Path):
    from export.api import export_model

    return export_model(ckpt, out, dataset=synthetic_bundle(**BUNDLE_ARGS), **EXPORT_KW)


@pytest.fixture(scope="module")
def first_export(small_export: Path) -> Path:
    """One finished ``_export`` of ``checkpoint`` (conftest's, read-only): each test starts from a copy of it, as it
    would from its own first ``_export`` (the same files), and faults what comes next."""
    return small_export


def _exported_copy(first_export: Path, tmp_path: Path) -> Path:
    out = tmp_path / "export"
    shutil.copytree(first_export, out)
    return out


#: the export in a child process that SIGKILLs itself at a chosen point of the commit:
#: "staged" = every artifact staged, none renamed; "one-committed" = after the first artifact's rename;
#: "between-renames" = inside the second rename, the old artifact moved aside and the new one not yet in
_KILLED_EXPORT = r"""
import os, signal, sys
from pathlib import Path
import export.api as api
from tiny_checkpoint import synthetic_bundle
ckpt, out, point = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
real = api.replace_dir
calls = []
def dying_replace(stage, final):
    calls.append(final)
    if point == "staged" or (point == "one-committed" and len(calls) == 2):
        os.kill(os.getpid(), signal.SIGKILL)
    if point == "between-renames" and len(calls) == 2:
        os.replace(final, final.with_name(f".{final.name}.old-{os.getpid()}"))
        os.kill(os.getpid(), signal.SIGKILL)
    return real(stage, final)
api.replace_dir = dying_replace
api.export_model(ckpt, out, dataset=synthetic_bundle(**%(bundle)r), **%(kw)r)
"""


@pytest.mark.parametrize("point", ["staged", "one-committed", "between-renames"])
def test_killed_export_changes_nothing_serve_or_bench_load(checkpoint: Path, first_export: Path, tmp_path: Path,
                                                          point: str) -> None:
    out = _exported_copy(first_export, tmp_path)
    before = _model_bytes(out)
    names = {"tiny_cnn_onnx_fp32", "tiny_cnn_onnx_fp16"}
    assert set(before) == names

    script = _KILLED_EXPORT % {"bundle": BUNDLE_ARGS, "kw": EXPORT_KW}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent),
                                                                      os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", script, str(checkpoint), str(out), point], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=env)  # finds tests/tiny_checkpoint.py
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    left = _hidden(out)
    assert any(n.endswith(".staging") for n in left), left  # the kill left staged work behind

    served, benched = _served_and_benched(out)
    assert served == benched  # serve and bench agree on what the folder holds
    after = _model_bytes(out)
    if point == "between-renames":  # fp16 was set aside and never replaced: neither stage sees a staging copy
        assert served == names - {"tiny_cnn_onnx_fp16"}
    else:
        assert served == names
    if point == "staged":
        assert after == before  # nothing committed was touched

    report = _export(checkpoint, out)  # the next export cleans up (and restores what was set aside)
    assert report.removed_leftovers and set(report.removed_leftovers) == set(left)
    assert _hidden(out) == []
    assert _served_and_benched(out) == (names, names)


def test_export_cleanup_spares_a_live_writers_staging(tmp_path: Path) -> None:
    """Only leftovers of dead processes are removed: a concurrent export's staging survives."""
    from lesionlite.atomic import remove_stale_leftovers

    live = tmp_path / f".m_onnx_fp32.{os.getpid()}.abc123.staging"
    dead_pid = 2 ** 22 + 12345  # above the default pid_max: never a running process
    dead = tmp_path / f".m_onnx_fp32.{dead_pid}.abc123.staging"
    old_style = tmp_path / ".m_onnx_fp16.x1y2z3.staging"  # before staging names carried a PID
    tmp_file = tmp_path / f".export_report.json.{dead_pid}.q9.tmp"
    for d in (live, dead, old_style):
        d.mkdir()
        (d / MANIFEST_NAME).write_text("{}")
    tmp_file.write_text("{")
    (tmp_path / "visible").mkdir()
    removed = remove_stale_leftovers(tmp_path)
    assert sorted(p.name for p in removed) == sorted([dead.name, old_style.name, tmp_file.name])
    assert live.is_dir() and (tmp_path / "visible").is_dir()


def test_enospc_during_export_loses_nothing(checkpoint: Path, first_export: Path, tmp_path: Path, monkeypatch) -> None:
    """The disk fills while the second artifact is written: a clear error, nothing already there changes,
    no staging left behind."""
    from export.formats import get_format

    out = _exported_copy(first_export, tmp_path)
    before = _model_bytes(out)
    report_before = (out / "export_report.json").read_bytes()

    fmt = type(get_format("onnx"))
    real = fmt.convert

    def full_disk(self, ctx, precision, dest):
        if precision == "fp16":
            dest.write_bytes(b"\0" * 1024)  # a partial file, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dest))
        return real(self, ctx, precision, dest)

    monkeypatch.setattr(fmt, "convert", full_disk)
    with pytest.raises(LesionliteError, match="No space left on device"):
        _export(checkpoint, out)
    assert _model_bytes(out) == before
    assert (out / "export_report.json").read_bytes() == report_before
    assert _hidden(out) == []


# ------------------------------------------------------------------------------------------ training

TINY = {
    "data.name": "synthetic", "data.image_size": 16, "data.workers": 0,
    "data.options": {"synthetic_counts": [84, 21, 21]}, "model.arch": "tiny_cnn", "optim.lr": 0.01,
    "optim.batch_size": 16, "run.threads": 1, "run.device": "cpu", "run.progress": False, "run.plots": False,
    "run.epochs": 4, "schedule.name": "cosine", "optim.name": "sgd",
}

#: training in a child process that SIGKILLs itself: "epoch" = at the 2nd optimizer step of epoch 3
#: (5 steps per epoch); "checkpoint" = half-way through writing last.pt after epoch 2
_KILLED_TRAINING = r"""
import json, os, signal, sys
import torch
from distill.config import resolve_config
from distill.train import train
flags, point = json.loads(sys.argv[1]), sys.argv[2]
if point == "epoch":
    real_step, n = torch.optim.SGD.step, [0]
    def step(self, *a, **k):
        n[0] += 1
        if n[0] == 12:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_step(self, *a, **k)
    torch.optim.SGD.step = step
else:
    real_save = torch.save
    def save(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get("epoch") == 2 and ".last.pt." in str(f):
            with open(f, "wb") as fh:
                fh.write(b"PK\x03\x04 half a checkpoint")
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *a, **k)
    torch.save = save
train(resolve_config(flags=flags))
"""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory):
    import torch

    from distill.config import resolve_config
    from distill.train import train

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("train") / "full"
    return train(resolve_config(flags={**TINY, "run.out": str(out)}))


@pytest.mark.parametrize("point", ["epoch", "checkpoint"])
def test_kill9_of_training_then_resume_gives_the_uninterrupted_weights(uninterrupted, tmp_path: Path,
                                                                       point: str) -> None:
    import torch

    from distill.config import resolve_config
    from distill.train import train

    out = tmp_path / "run"
    flags = {**TINY, "run.out": str(out)}
    proc = subprocess.run([sys.executable, "-c", _KILLED_TRAINING, json.dumps(flags), point], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not (out / "student.pt").exists()
    if point == "checkpoint":
        assert list(out.glob(".last.pt.*.tmp"))  # the half-written temporary

    torch.set_num_threads(1)
    res = train(resolve_config(flags=flags), resume=True)
    assert not list(out.glob(".*.tmp"))
    assert [json.loads(x)["epoch"] for x in (out / "train_log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    a = torch.load(uninterrupted.run_dir / "last.pt", weights_only=True)["model"]
    b = torch.load(out / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert res.metrics == uninterrupted.metrics


# ------------------------------------------------------------------------------------ damaged artifacts


@pytest.fixture(scope="module")
def damaged_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One healthy ONNX artifact beside one damaged copy of each kind."""
    root = tmp_path_factory.mktemp("damaged")
    good = build_onnx(root / "good")

    def copy(name: str) -> Path:
        return Path(shutil.copytree(good, root / name))

    (copy("bad_json") / MANIFEST_NAME).write_text('{"kind": "onnx", "architec')
    (copy("no_model") / "model.onnx").unlink()
    d = copy("truncated_model")
    (d / "model.onnx").write_bytes((good / "model.onnx").read_bytes()[:300])
    for name, edit in (("wrong_size", lambda m: m["preprocessing"].update(input_size=64)),
                       ("wrong_classes", lambda m: m.update(class_names=m["class_names"][:5]))):
        d = copy(name)
        m = json.loads((d / MANIFEST_NAME).read_text())
        edit(m)
        (d / MANIFEST_NAME).write_text(json.dumps(m))
    staging = copy(".tiny_onnx_fp32.999999.ab12.staging")  # an interrupted export's work in progress
    assert staging.is_dir()
    return root


BROKEN = {
    "bad_json": "unreadable manifest",
    "no_model": "not found beside it",
    "truncated_model": "cannot load this model",
    "wrong_size": "model's input is 32x32 px but the manifest's preprocessing.input_size is 64",
    "wrong_classes": "model has 7 outputs but the manifest names 5 classes",
}


def test_serve_loads_the_healthy_and_names_every_broken_one(damaged_root: Path) -> None:
    from serve.models import load_model_set, load_models

    found = load_model_set(damaged_root)
    assert set(found.models) == {"good"}  # never the hidden staging copy
    reasons = {b.name: b.reason for b in found.broken}
    assert reasons.keys() == BROKEN.keys()
    for name, needle in BROKEN.items():
        assert needle in reasons[name], (name, reasons[name])
    with pytest.raises(LesionliteError) as exc:
        load_models(damaged_root, strict=True)
    assert "strict" in str(exc.value) and all(name in str(exc.value) for name in BROKEN)
    only_broken = damaged_root.parent / "only_broken"
    shutil.copytree(damaged_root / "wrong_size", only_broken / "wrong_size")
    with pytest.raises(LesionliteError, match="every artifact is broken"):
        load_models(only_broken)


def test_server_answers_with_the_healthy_model_and_lists_the_broken(damaged_root: Path) -> None:
    from serve.app import create_app

    with ServerThread(create_app(damaged_root)) as srv:
        listing = httpx.get(srv.url + "/v2/models", timeout=10).json()
        assert listing["default"] == "good" and [m["name"] for m in listing["models"]] == ["good"]
        assert {u["name"] for u in listing["unavailable"]} == set(BROKEN)
        jpeg = encode(Image.fromarray(pattern()), "JPEG")
        r = httpx.post(srv.url + "/predict", files={"file": ("a.jpg", jpeg, "image/jpeg")}, timeout=30)
        assert r.status_code == 200 and r.json()["model"] == "good"
        r = httpx.post(srv.url + "/predict?model=wrong_size", files={"file": ("a.jpg", jpeg, "image/jpeg")},
                       timeout=30)
        assert r.status_code == 404  # a broken model is never run (no 500 from a contradicting manifest)


def test_cli_strict_refuses_to_start_with_one_line(damaged_root: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "serve", str(damaged_root), "--strict", "--port",
                           str(free_port())], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "strict mode: refusing to start" in proc.stderr and "wrong_classes" in proc.stderr


def test_bench_measures_the_healthy_and_reports_every_broken_one(damaged_root: Path, tmp_path: Path) -> None:
    from mobile_benchmarks.bench import run_bench
    from mobile_benchmarks.targets import BenchOptions

    doc = run_bench(damaged_root, "local", BenchOptions(threads=[1], runs=3, warmup=1, min_secs=0.0,
                                                        warmup_min_secs=0.0, repeats=1),
                    out_dir=tmp_path / "bench", log=lambda s: None)
    status = {r["artifact"]: r["status"] for r in doc["results"]}
    assert status["good"] == "ok", doc["results"]
    assert not any(name.startswith(".") for name in status)
    for name in ("bad_json", "no_model"):
        assert status[name] == "failed", (name, status)
    reason = {r["artifact"]: r.get("reason") or "" for r in doc["results"]}
    assert "unreadable manifest" in reason["bad_json"]


# ------------------------------------------------------------------------------------ SIGTERM under load


def test_sigterm_under_load_answers_every_request_in_the_server(damaged_root: Path) -> None:
    """Requests already being handled when SIGTERM arrives all get their answer (uvicorn drains them)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "serve", str(damaged_root / "good"), "--port", str(port),
                             "--log-level", "warning", "--preprocess-threads", "1", "--max-pixels", "40000000"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(proc, url)
        yy, xx = np.mgrid[0:4000, 0:4000]  # a smooth 4000 px PNG: small to send, slow to decode
        big = encode(Image.fromarray(np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.uint8)), "PNG")
        n = 6
        answers: list[int | str] = []

        def post() -> None:
            try:
                answers.append(httpx.post(url + "/predict", files={"file": ("a.png", big, "image/png")},
                                          timeout=60).status_code)
            except httpx.HTTPError as exc:
                answers.append(type(exc).__name__)

        threads = [threading.Thread(target=post) for _ in range(n)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while True:  # wait until every request is inside the server
            metrics = httpx.get(url + "/metrics", timeout=10).text
            inflight = next(float(line.split()[-1]) for line in metrics.splitlines()
                            if line.startswith("lesionlite_requests_in_flight"))
            if inflight >= n + 1 or time.monotonic() > deadline:  # + this /metrics request
                break
            time.sleep(0.01)
        assert inflight >= n + 1, "the requests did not reach the server"
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=60)
        assert answers == [200] * n, answers
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
