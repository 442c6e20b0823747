"""Cost of one SSD-KD training step against one scratch step of the same student.

A *step* = forward, loss, backward and optimizer step on one batch of ``--batch-size`` images:

* ``scratch``: the student on the B images (one view), class-weighted cross-entropy;
* ``ssdkd``:   :meth:`SSDKD.training_loss` on the B images × 4 rotation views (4B rows through the
  frozen teacher and the student, all five loss terms), backward, SGD step on the student + heads.

Each method runs in its own subprocess so that peak-memory numbers do not leak into each other.
Time: median (and p10/p90) over ``--steps`` timed steps after ``--warmup`` steps (CUDA: synchronised).
Memory: CUDA ``torch.cuda.max_memory_allocated`` (absolute, and the increase over what was allocated
before the first step); CPU: the process's peak RSS (``ru_maxrss``) and its increase over the RSS
right before the first step (models, optimizer and batch already built).

Models are randomly initialised (speed and memory do not depend on the weights). If ``--teacher``
is not in the model registry and names a torchvision ResNet (resnet18/34/50/101), a
:class:`LesionClassifier` is built from torchvision's backbone (last stage → 7×7 at 224 px).

    python benchmarks/distill_step.py --student mobilenet_v2 --teacher resnet50 \\
        --batch-size 8 --image-size 112 --device cpu --steps 5

Writes ``benchmarks/results/distill_step_<device>.json`` (``--out`` to change) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from distill.methods.base import Batch, MethodContext
from distill.methods.ssdkd import SSDKD, SSDKDConfig
from distill.models import LesionClassifier, build_model, list_models

REPO = Path(__file__).resolve().parents[1]


def build_classifier(name: str, num_classes: int) -> nn.Module:
    if name in list_models():
        return build_model(name, num_classes)
    if name in ("resnet18", "resnet34", "resnet50", "resnet101"):
        tv = getattr(torchvision.models, name)(weights=None)
        features = nn.Sequential(*list(tv.children())[:-2])
        return LesionClassifier(features, tv.fc.in_features, num_classes, dropout=0.0, arch=name)
    raise SystemExit(f"unknown model {name!r}; registry has: {', '.join(list_models())}")


def _rss_bytes() -> int:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def make_step(args: argparse.Namespace) -> tuple[Callable[[], float], bool]:
    """(one optimizer step on a fixed random batch, whether it is SSD-KD): scratch = weighted CE of the student;
    SSD-KD = the method's full training loss over 4 rotation views through teacher and student."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    nc = args.num_classes
    counts = [max(1, 100 // (c + 1)) for c in range(nc)]  # imbalanced, like the lesion datasets
    mem_fmt = torch.channels_last if (cuda and args.channels_last) else torch.contiguous_format
    student = build_classifier(args.student, nc).to(dev).to(memory_format=mem_fmt)
    method = None
    if args.method == "ssdkd":
        teacher = build_classifier(args.teacher, nc).to(dev).to(memory_format=mem_fmt)
        ctx = MethodContext(num_classes=nc, class_counts=counts, num_train=sum(counts), device=dev,
                            epochs=1, steps_per_epoch=1)
        method = SSDKD(student, teacher, SSDKDConfig(ss_epochs=0, gram_mode=args.gram_mode, progress=False), ctx)
        method.to(dev)
        method.ss_prepared.fill_(True)  # stage A is not part of a step; skip it silently
        method.train()
        params = list(method.trainable_parameters())
    else:
        student.train()
        params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-3)
    weights = torch.tensor([sum(counts) / c for c in counts], device=dev)
    g = torch.Generator().manual_seed(1)
    views = 4 if method is not None else 1
    images = torch.randn(args.batch_size, views, 3, args.image_size, args.image_size, generator=g)
    labels = torch.randint(0, nc, (args.batch_size,), generator=g)
    batch = Batch(images=images.to(dev), labels=labels.to(dev), indices=torch.arange(args.batch_size, device=dev))
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and args.amp)

    def step() -> float:
        with amp:
            if method is not None:
                loss = method.training_loss(batch, 0, 0).loss
            else:
                x = batch.images[:, 0].contiguous(memory_format=mem_fmt)
                loss = F.cross_entropy(student(x).float(), batch.labels, weight=weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step, method is not None


def time_steps(step: Callable[[], float], args: argparse.Namespace, cuda: bool) -> tuple[list[float], list[float],
                                                                                            int, int]:
    """(sorted wall seconds, CPU seconds per timed step, memory in use before, peak memory) after the warm-up."""
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    for _ in range(args.warmup):
        step()
    times, cpu_times = [], []
    for _ in range(args.steps):
        if cuda:
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    peak = torch.cuda.max_memory_allocated() if cuda else _peak_rss_bytes()
    return sorted(times), cpu_times, base, peak


def child(args: argparse.Namespace) -> dict:
    """One method's step cost, measured in this (child) process."""
    step, ssdkd = make_step(args)
    cuda = torch.device(args.device).type == "cuda"
    times, cpu_times, base, peak = time_steps(step, args, cuda)

    def q(f: float) -> float:
        return times[min(len(times) - 1, int(f * (len(times) - 1) + 0.5))]

    return {
        "method": args.method,
        "rows_per_step": args.batch_size * (4 if ssdkd else 1),
        "step_ms_median": 1e3 * statistics.median(times),
        "step_ms_p10": 1e3 * q(0.1),
        "step_ms_p90": 1e3 * q(0.9),
        "images_per_s": args.batch_size / statistics.median(times),
        # CPU time of the whole process (all threads) per step: the work done, robust to other
        # processes competing for the cores (wall time is not)
        "step_cpu_ms_median": 1e3 * statistics.median(cpu_times),
        "torch_threads": torch.get_num_threads(),
        "peak_bytes": int(peak),
        "peak_increase_bytes": int(max(0, peak - base)),
        "memory_kind": "cuda max_memory_allocated" if cuda else "process peak RSS (ru_maxrss)",
        "gram_mode": args.gram_mode if ssdkd else None,
    }


def _env(device: str) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
           "cpu_count": os.cpu_count()}
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", default="mobilenet_v2")
    ap.add_argument("--teacher", default="resnet50")
    ap.add_argument("--batch-size", type=int, default=8, help="images per step (SSD-KD: ×4 rotation rows)")
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--num-classes", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--gram-modes", default="auto", help="comma list of SSD-KD gram modes to time (auto,naive,...)")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    ap.add_argument("--channels-last", action="store_true", help="channels_last memory format (CUDA only)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="output folder for the JSON")
    ap.add_argument("--_child", dest="method", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_gram-mode", dest="gram_mode", default="auto", help=argparse.SUPPRESS)
    return ap


def run_children(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Scratch, then SSD-KD in each gram mode, each in a fresh process (its own peak memory)."""
    passthrough = ["--student", args.student, "--teacher", args.teacher, "--batch-size", str(args.batch_size),
                   "--image-size", str(args.image_size), "--device", args.device, "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--num-classes", str(args.num_classes),
                   "--threads", str(args.threads)]
    passthrough += ["--amp"] * args.amp + ["--channels-last"] * args.channels_last
    runs = [("scratch", "auto")] + [("ssdkd", m.strip()) for m in args.gram_modes.split(",") if m.strip()]
    results: list[dict[str, Any]] = []
    for method, gmode in runs:
        cmd = [sys.executable, str(Path(__file__).resolve()), *passthrough, "--_child", method, "--_gram-mode", gmode]
        print(f"running {method}{'' if method == 'scratch' else f' (gram {gmode})'} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO))
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            results.append({"method": method, "gram_mode": gmode, "error": " | ".join(tail)})
            print(f"  failed: {results[-1]['error']}", file=sys.stderr)
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return results


def print_results(args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    """The table; each result gets its ratios to scratch on the way."""
    base = next((r for r in results if r["method"] == "scratch" and "error" not in r), None)
    mib = 1024 * 1024
    header = (f"{'method':<18}{'rows':>5}{'wall ms':>10}{'p10-p90 ms':>18}{'cpu ms':>9}{'peak MiB':>10}{'Δ MiB':>8}"
              f"{'wall ×':>8}{'cpu ×':>7}{'Δmem ×':>8}")
    print(f"\n{args.student} student, {args.teacher} teacher, B={args.batch_size}, {args.image_size}px, "
          f"device={args.device}, {args.steps} timed steps after {args.warmup} warm-up")
    print(header)
    print("-" * len(header))
    for r in results:
        label = r["method"] + (f" ({r['gram_mode']})" if r["method"] == "ssdkd" else "")
        if "error" in r:
            print(f"{label:<18}  error: {r['error'][:80]}")
            continue
        if base:
            r["time_ratio_vs_scratch"] = r["step_ms_median"] / base["step_ms_median"]
            r["cpu_time_ratio_vs_scratch"] = r["step_cpu_ms_median"] / max(1e-9, base["step_cpu_ms_median"])
            r["peak_increase_ratio_vs_scratch"] = r["peak_increase_bytes"] / max(1, base["peak_increase_bytes"])
        rng = f"{r['step_ms_p10']:.0f}-{r['step_ms_p90']:.0f}"
        print(f"{label:<18}{r['rows_per_step']:>5}{r['step_ms_median']:>10.0f}{rng:>18}{r['step_cpu_ms_median']:>9.0f}"
              f"{r['peak_bytes'] / mib:>10.0f}{r['peak_increase_bytes'] / mib:>8.0f}"
              f"{r.get('time_ratio_vs_scratch', float('nan')):>8.2f}"
              f"{r.get('cpu_time_ratio_vs_scratch', float('nan')):>7.2f}"
              f"{r.get('peak_increase_ratio_vs_scratch', float('nan')):>8.2f}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.method:  # subprocess: one method, JSON on the last stdout line
        warnings.simplefilter("ignore")
        print(json.dumps(child(args)))
        return 0
    results = run_children(args)
    print_results(args, results)
    dev_tag = args.device.split(":")[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"distill_step_{dev_tag}.json"
    payload = {
        "benchmark": "distill_step",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "args": {k: v for k, v in vars(args).items() if k not in ("method", "gram_mode", "out")},
        "environment": _env(args.device),
        "results": results,
        "notes": "ssdkd rows = 4 x batch (rotation views) through teacher and student; scratch = batch rows through "
                 "the student only. Δ = peak minus memory in use before the first step. cpu ms = process CPU time "
                 "(all threads) per step, robust to competing processes; wall ms is not.",
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
    print(f"\nwrote {path}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
