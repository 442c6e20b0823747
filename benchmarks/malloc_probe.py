"""Page faults and kernel-time share of a CPU training step, with glibc's default malloc and with
:func:`lesionlite.cpu_malloc.tune_glibc_malloc` — each in a fresh subprocess (mallopt cannot be undone).

    taskset -c 1 python benchmarks/malloc_probe.py --batch 128 --size 128   # SSD-KD's 4 views × 32 at 128 px

Minor faults per step and the kernel's share of CPU time do not depend on how busy the machine is; CPU
seconds per step (user + system) less so; wall time does (report it only from an idle host). Writes
``benchmarks/results/malloc_probe.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from lesionlite.atomic import write_json_atomic
from mobile_benchmarks.hostinfo import cpu_model

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, resource, sys, time
import torch, torch.nn.functional as F
if {tuned}:
    from lesionlite.cpu_malloc import tune_glibc_malloc
    tune_glibc_malloc()
from distill.models import build_model
torch.set_num_threads(1); torch.manual_seed(0)
m = build_model({arch!r}, num_classes=7).train().to(memory_format=torch.channels_last)
opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.05)
def step():
    x = torch.randn({batch}, 3, {size}, {size}).contiguous(memory_format=torch.channels_last)
    loss = F.cross_entropy(m(x), torch.randint(0, 7, ({batch},)))
    opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
for _ in range({warmup}): step()
r0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.perf_counter()
for _ in range({steps}): step()
r1 = resource.getrusage(resource.RUSAGE_SELF); wall = time.perf_counter() - t0
u, s = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
print(json.dumps({{"minor_faults_per_step": (r1.ru_minflt - r0.ru_minflt) / {steps}, "kernel_share": s / (u + s),
                  "cpu_s_per_step": (u + s) / {steps}, "wall_s_per_step": wall / {steps}}}))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="mobilenet_v2")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default=str(HERE / "results" / "malloc_probe.json"))
    args = p.parse_args(argv)
    rows = {}
    for label, tuned in (("glibc default", False), ("tuned (lesionlite.cpu_malloc)", True)):
        code = CHILD.format(tuned=tuned, arch=args.arch, batch=args.batch, size=args.size,
                            steps=args.steps, warmup=args.warmup)
        env = dict(os.environ, OMP_NUM_THREADS="1", LESIONLITE_MALLOC_TUNING="1")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        if out.returncode != 0:
            raise SystemExit(f"probe child failed ({label}):\n{out.stderr[-2000:]}")
        rows[label] = json.loads(out.stdout.strip().splitlines()[-1])
        r = rows[label]
        print(f"{label:28s} minor faults/step {r['minor_faults_per_step']:9.0f}  kernel {r['kernel_share']:6.1%}  "
              f"CPU s/step {r['cpu_s_per_step']:.3f}  wall s/step {r['wall_s_per_step']:.3f}")
    doc = {"benchmark": "malloc_probe", "settings": vars(args), "host": cpu_model(),
           "load_average_at_end": os.getloadavg(), "rows": rows}
    write_json_atomic(Path(args.out), doc)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
