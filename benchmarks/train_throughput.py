"""Training throughput of the project's loop against a bare PyTorch loop, side by side in one process.

Answers issue 13's targets with measurements on the host at hand:

* **bare loop** — the same student (``build_model``), batch, input size, threads, AdamW step and
  class-weighted cross-entropy on random tensors already in memory: no data loading, nothing but
  forward, loss, backward, step. Timed in both memory formats (contiguous, channels_last); the faster
  is the reference ("best memory format"). Measured before and after the project's runs, to bracket
  drift of the host.
* **project loop** — :func:`distill.train.train` on real data (default HAM10000 at 64 px, as the
  ``cpu`` protocol) for ``--epochs`` epochs of ``--steps`` steps, with its defaults (decode-once
  cache, channels_last, automatic workers). The last epoch's ``images_per_s`` (end to end, data
  loading included) and ``compute_images_per_s`` (the same epoch minus the time spent waiting for
  the loader) are read from the run's history. KD and SSD-KD runs use a teacher of ``--teacher-arch``
  (random init: speed does not depend on weights) and report their cost per image relative to scratch.
  ``--teacher-image-size 128`` gives the teacher a larger input than the student, distilled at its
  native size (``model.teacher_input=native``), as the ``cpu`` protocol's 128 px MobileNetV2 teacher.

Both loops run with the same glibc allocator settings (:mod:`lesionlite.cpu_malloc`, applied at start
unless ``LESIONLITE_MALLOC_TUNING=0``): the project's loop applies them when it configures the backends,
and a bare loop measured under a different allocator would compare allocators, not loops.

Ratios printed and written to ``benchmarks/results/train_throughput_<device>.json``:
``loop / bare`` (target ≥ 0.9), ``end-to-end / bare`` (target ≥ 0.8), ``KD / scratch`` cost per image
(target ≤ 1.5), ``SSD-KD / scratch`` (target ≤ 6). Run it alone: a second heavy process on a 2-core
host makes every number meaningless.

    python benchmarks/train_throughput.py                      # HAM10000, 64 px, 2 threads
    python benchmarks/train_throughput.py --methods scratch --data synthetic --steps 10
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from distill.config import resolve_config
from distill.data import load_dataset
from distill.models import build_model
from distill.train import train
from lesionlite.cpu_malloc import tune_glibc_malloc
from mobile_benchmarks.hostinfo import cpu_model, simd_flags

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def bare_loop(arch: str, num_classes: int, batch: int, size: int, steps: int, warmup: int,
              channels_last: bool) -> dict[str, Any]:
    """Images/s of forward + weighted CE + backward + AdamW on in-memory random tensors."""
    torch.manual_seed(0)
    model = build_model(arch, num_classes=num_classes)
    model.train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, num_classes, (batch,))
    w = torch.rand(num_classes) + 0.5
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y, weight=w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"memory_format": "channels_last" if channels_last else "contiguous", "step_ms_median": 1e3 * med,
            "images_per_s": batch / med, "images_per_s_mean": batch * len(times) / sum(times), "steps": steps}


def project_loop(method: str, args: argparse.Namespace, teacher_dir: str | None, out: Path) -> dict[str, Any]:
    flags: dict[str, Any] = {
        "method.name": method, "data.name": args.data, "data.image_size": args.image_size,
        "model.arch": args.model, "optim.batch_size": args.batch_size, "run.epochs": args.epochs,
        "run.max_steps_per_epoch": args.steps, "run.threads": args.threads, "run.device": "cpu",
        "run.progress": False, "run.plots": False, "run.out": str(out / method),
    }
    if teacher_dir:
        flags["model.teacher"] = teacher_dir
        if teacher_size(args) != args.image_size:
            flags["model.teacher_input"] = "native"
    if method == "ssdkd":
        flags["method.ss_epochs"] = 0  # stage A is a one-off before training, not part of a step
    res = train(resolve_config(flags=flags), overwrite=True)
    last = res.history[-1]
    return {"method": method, "teacher_input": flags.get("model.teacher_input", "student") if teacher_dir else None,
            "epochs": args.epochs, "steps_per_epoch": args.steps,
            "images_per_s": last["images_per_s"], "compute_images_per_s": last["compute_images_per_s"],
            "data_time_s": last["data_time_s"], "epoch_time_s": last["time_s"],
            "data_fraction": last["data_time_s"] / max(last["time_s"], 1e-9)}


def teacher_size(args: argparse.Namespace) -> int:
    """The teacher's input size: ``--teacher-image-size``, or the student's when not given."""
    return args.teacher_image_size or args.image_size


def make_teacher(args: argparse.Namespace, out: Path) -> str:
    """A teacher run directory of ``--teacher-arch`` at :func:`teacher_size` (random init, one step: only its
    cost matters)."""
    d = out / "teacher"
    train(resolve_config(flags={
        "method.name": "scratch", "data.name": args.data, "data.image_size": teacher_size(args),
        "model.arch": args.teacher_arch, "run.epochs": 1, "run.max_steps_per_epoch": 1, "run.device": "cpu",
        "run.threads": args.threads, "run.progress": False, "run.plots": False, "run.out": str(d)}), overwrite=True)
    return str(d)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--teacher-arch", default="efficientnet_lite2")
    ap.add_argument("--teacher-image-size", type=int, default=None,
                    help="teacher input size (default: the student's); larger = distilled at its native size")
    ap.add_argument("--data", default="ham10000")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40, help="steps per epoch of the project's loop (and bare steps)")
    ap.add_argument("--epochs", type=int, default=2, help="project-loop epochs; the last one is reported")
    ap.add_argument("--methods", default="scratch,kd,ssdkd")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--name", default=None, help="result file name under --out (default train_throughput_cpu.json)")
    return ap


def bare_pair(args: argparse.Namespace, num_classes: int, tag: str) -> list[dict[str, Any]]:
    """The bare loop in both memory formats."""
    rows = []
    for cl in (False, True):
        r = bare_loop(args.model, num_classes, args.batch_size, args.image_size, args.steps, 5, cl)
        r["when"] = tag
        rows.append(r)
        print(f"bare {tag:6s} {r['memory_format']:14s} {r['images_per_s']:7.1f} img/s", flush=True)
    return rows


def project_loops(args: argparse.Namespace, methods: list[str]) -> list[dict[str, Any]]:
    """The project's loop for each method (one teacher made for the distilling ones)."""
    loops = []
    with tempfile.TemporaryDirectory(prefix="lesionlite-throughput-") as tmp:
        tmp_p = Path(tmp)
        teacher = make_teacher(args, tmp_p) if any(m in ("kd", "ssdkd") for m in methods) else None
        for m in methods:
            r = project_loop(m, args, teacher if m in ("kd", "ssdkd") else None, tmp_p)
            loops.append(r)
            print(f"loop   {m:21s} {r['images_per_s']:7.1f} img/s end to end, {r['compute_images_per_s']:7.1f} "
                  f"without data waits ({100 * r['data_fraction']:.0f}% data)", flush=True)
    return loops


def compare_loops(bare: list[dict[str, Any]], loops: list[dict[str, Any]]) -> tuple[str, float, list[dict]]:
    """(the faster bare memory format, its img/s, targets); each loop gets its ratios to bare and to scratch."""
    best_fmt = max(("contiguous", "channels_last"),
                   key=lambda f: statistics.fmean(b["images_per_s"] for b in bare if b["memory_format"] == f))
    ref = statistics.fmean(b["images_per_s"] for b in bare if b["memory_format"] == best_fmt)
    scratch = next((r for r in loops if r["method"] == "scratch"), None)
    for r in loops:
        r["end_to_end_vs_bare"] = r["images_per_s"] / ref
        r["compute_vs_bare"] = r["compute_images_per_s"] / ref
        if scratch:
            r["cost_per_image_vs_scratch"] = scratch["images_per_s"] / r["images_per_s"]
    targets = []
    if scratch:
        targets += [
            {"target": "scratch loop (no data waits) >= 0.9 x bare", "value": scratch["compute_vs_bare"],
             "verdict": "pass" if scratch["compute_vs_bare"] >= 0.9 else "fail"},
            {"target": "scratch loop end to end (data included) >= 0.8 x bare", "value": scratch["end_to_end_vs_bare"],
             "verdict": "pass" if scratch["end_to_end_vs_bare"] >= 0.8 else "fail"},
        ]
        for m, lim in (("kd", 1.5), ("ssdkd", 6.0)):
            r = next((x for x in loops if x["method"] == m), None)
            if r:
                targets.append({"target": f"{m} cost per image <= {lim} x scratch",
                                "value": r["cost_per_image_vs_scratch"],
                                "verdict": "pass" if r["cost_per_image_vs_scratch"] <= lim else "fail"})
    return best_fmt, ref, targets


def print_table(args: argparse.Namespace, payload: dict[str, Any]) -> None:
    best_fmt, ref = payload["bare_reference"]["memory_format"], payload["bare_reference"]["images_per_s"]
    header = f"{'run':<26}{'img/s':>8}{'no-data img/s':>15}{'data %':>8}{'÷ bare':>8}{'cost ×scratch':>15}"
    print(f"\n{args.model} {args.image_size}px B={args.batch_size} threads={args.threads} data={args.data} "
          f"teacher={args.teacher_arch}@{teacher_size(args)}px "
          f"malloc={'tuned' if payload['malloc']['tuned'] else 'default'} "
          f"| bare reference: {best_fmt} {ref:.1f} img/s | {cpu_model() or 'unknown CPU'}")
    print(header)
    print("-" * len(header))
    for b in payload["bare"]:
        print(f"{'bare ' + b['memory_format'] + ' (' + b['when'] + ')':<26}{b['images_per_s']:>8.1f}{'':>15}{'':>8}"
              f"{b['images_per_s'] / ref:>8.2f}")
    for r in payload["loops"]:
        print(f"{'loop ' + r['method']:<26}{r['images_per_s']:>8.1f}{r['compute_images_per_s']:>15.1f}"
              f"{100 * r['data_fraction']:>8.0f}{r['end_to_end_vs_bare']:>8.2f}"
              f"{r.get('cost_per_image_vs_scratch', 1):>15.2f}")
    for t in payload["targets"]:
        print(f"  [{t['verdict']}] {t['target']}: {t['value']:.2f}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.simplefilter("ignore")
    logging.getLogger("distill").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    malloc = tune_glibc_malloc()  # before the bare loop: both loops measured under one allocator
    num_classes = load_dataset(args.data).num_classes
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bare = bare_pair(args, num_classes, "before")
    loops = project_loops(args, methods)
    bare += bare_pair(args, num_classes, "after")
    best_fmt, ref, targets = compare_loops(bare, loops)
    payload = {
        "benchmark": "train_throughput", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"cpu": cpu_model(), "cpu_flags": simd_flags(), "cpu_count": os.cpu_count(),
                 "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__},
        "args": vars(args), "teacher_image_size": teacher_size(args),
        "malloc": {"tuned": bool(malloc), "settings": malloc or {}},
        "bare_reference": {"memory_format": best_fmt, "images_per_s": ref},
        "bare": bare, "loops": loops, "targets": targets,
        "notes": "images_per_s of a project loop = its last epoch, data loading included; compute_images_per_s = "
                 "the same epoch minus the time spent waiting for the loader. SSD-KD: 4 rotation views per image; "
                 "its cost is per original image. Teacher random init (speed does not depend on weights).",
    }
    print_table(args, payload)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / (args.name or "train_throughput_cpu.json")
    tmp_path = path.with_suffix(".json.tmp")
    tmp_path.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp_path, path)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
