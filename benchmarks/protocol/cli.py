"""Reproduce the two papers' table on real data: teachers, MobileNetV2 students, int8 exports, one table.

For every seed this script trains, on the same data split (``data.split_seed`` is fixed; only the
run seed changes):

* the teacher (``scratch`` on ``--teacher-arch``: ResNet-50 from scratch unless ``--teacher-weights``;
  EfficientNet-Lite from the shared ImageNet weights in the CPU protocol);
* MobileNetV2 students by ``scratch``, Hinton ``kd``, ``ssdkd``, ``udcd`` and ``udcd-code``
  (``kd``/``ssdkd`` distil the teacher above; UDCD is self-distillation with an EMA teacher);
* ``udcd-densenet121``: UDCD on DenseNet-121, its own student and teacher, as in the UDCD paper;
* ablation rows defined by the recipe (``ablations:``; ``--ablations`` picks or ``none``): a method's
  settings with some terms switched off, e.g. SSD-KD without L5, to show which term helps or hurts;

exports every student to int8 TFLite and int8 ONNX (:func:`export.api.export_model`), and writes
``benchmarks/results/paper_table[_<protocol>].{json,md}``: test accuracy, balanced accuracy, macro-F1,
macro AUC, ECE, parameters, MACs, int8 size and int8 accuracy as mean ± std over the seeds, the
wall time and training images/s of every run (and images/s relative to scratch training of the same
student), the machine, and pass/fail verdicts on the papers' claims computed from the numbers.

Protocols (``--protocol``; a recipe YAML under ``benchmarks/recipes/`` each, flags override it):

* ``gpu`` (default when CUDA is available): HAM10000, 224 px, 3 seeds, the authors' recipes
  (each method's ``default_overrides``), bf16 autocast + channels_last (the loop's defaults on CUDA),
  8 loader workers, GPU utilisation sampled during every run.
* ``cpu``: the converged CPU protocol (issue 13): HAM10000 at 64 px, 3 seeds, every run trained to
  convergence on 2 CPU cores, one 128 px MobileNetV2 teacher shared by every seed (``teacher.shared``,
  distilled at its native input: ``model.teacher_input=native``),
  runs ordered method-major (scratch and KD for every seed before the costly methods), each finished
  run written to ``benchmarks/results/paper_table_cpu_runs/`` with its test predictions, and the
  differences to scratch per seed with a paired bootstrap 95 % CI on the test images.
* ``cpu-reduced`` (default without CUDA): HAM10000 at 64 px, 1 seed, 2 epochs of 30 steps, one short
  uniform recipe, EfficientNet-Lite0 teacher; labelled as reduced in the title, the JSON and every row.
* ``smoke``: synthetic data, tiny_cnn, 1 epoch, exports included; what ``tests/test_reproduce.py`` runs.

Resumable across calls (a device lends 10 minutes per call): each run directory is a normal
``distill`` run directory; finished runs (``metrics.json``) are skipped, unfinished ones continue from
``last.pt`` with the loop's ``--resume``, finished exports (``export_report.json``) are skipped.
``--time-budget SECONDS`` stops cleanly after the epoch that would otherwise end past the deadline
(the checkpoint is already written), writes the table of what is done, and exits with status 3
("call again to continue"); 0 means the protocol is complete.

    python benchmarks/reproduce.py --protocol cpu-reduced --time-budget 2700
    python benchmarks/reproduce.py --protocol gpu --time-budget 560     # repeat until exit status 0
    python benchmarks/reproduce.py --protocol smoke --out /tmp/r --results /tmp/r
    python -m benchmarks.reproduce --protocol smoke --out /tmp/r --results /tmp/r   # the same

The protocol itself is :mod:`benchmarks.protocol` (settings, plan, run, collect, aggregate, verdicts, render).
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.protocol.aggregate import build_doc, data_description
from benchmarks.protocol.collect import collect, committed_record, run_state
from benchmarks.protocol.plan import RunSpec, build_plan
from benchmarks.protocol.render import plot_protocol, render_markdown, short_table
from benchmarks.protocol.run import EXIT_INCOMPLETE, Runner, machine_info
from benchmarks.protocol.settings import METHODS, PROTOCOLS, RESULTS, Settings, load_recipe, results_stem
from distill.data import load_dataset
from lesionlite.atomic import write_json_atomic, write_text_atomic
from lesionlite.errors import LesionliteError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reproduce.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", choices=PROTOCOLS, help="gpu | cpu-reduced | smoke (default: gpu when CUDA is available)")
    p.add_argument("--recipe-file", help="recipe YAML (default benchmarks/recipes/<protocol>.yaml)")
    p.add_argument("--recipe", choices=["authors", "uniform"], help="authors: each method's own optimizer/schedule; "
                   "uniform: the recipe's common optim/schedule keys for all")
    p.add_argument("--seeds", help="comma-separated run seeds, e.g. 0,1,2")
    p.add_argument("--methods", help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--data", help="dataset spec (ham10000, ham10000-isic8, dermamnist:PATH, synthetic, ...)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--epochs", type=int, help="student epochs")
    p.add_argument("--teacher-epochs", type=int)
    p.add_argument("--teacher-arch", help="teacher architecture (e.g. resnet50, efficientnet_lite2)")
    p.add_argument("--teacher-weights", help="ImageNet weights file for the teacher ('none' = from scratch)")
    p.add_argument("--student-weights", help="ImageNet weights file for the students ('none' = from scratch)")
    p.add_argument("--max-steps", type=int, help="cap on optimizer steps per epoch (0 = whole training split)")
    p.add_argument("--threads", type=int, help="torch CPU threads per run (run.threads)")
    p.add_argument("--workers", type=int, help="data loader workers (data.workers)")
    p.add_argument("--ablations", help="comma-separated subset of the recipe's ablation rows, or 'none' "
                                       "(default: the recipe's ablations of the methods being run)")
    p.add_argument("--no-export", action="store_true", help="skip the int8 exports")
    p.add_argument("--out", default="runs/reproduce", help="root of the run directories (default runs/reproduce)")
    p.add_argument("--results", default=str(RESULTS), help="where paper_table*.{json,md} go (default benchmarks/results)")
    p.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="stop cleanly before this many seconds from the start (exit status 3 when unfinished)")
    return p


class TableWriter:
    """Writes the table of what is known so far (every run of the plan, pending ones as such): JSON, markdown,
    figure, after each run that finished something and once at the end."""

    def __init__(self, settings: Settings, plan: list[RunSpec], machine: dict[str, Any], data: dict[str, Any],
                 results: Path, t_start: float) -> None:
        self.settings, self.plan, self.machine, self.data = settings, plan, machine, data
        self.results, self.t_start = results, t_start
        self.stem = results_stem(settings.protocol)

    def write(self, runs: list[dict[str, Any]], final: bool) -> dict[str, Any]:
        seen = {(r["key"], r["seed"]) for r in runs}
        pending = [] if final else [collect(sp, self.settings, {}, {"status": "pending"}) for sp in self.plan
                                    if (sp.key, sp.seed) not in seen]
        allr = runs + pending
        complete = final and all(r["status"] == "done" for r in allr) and all(
            str(r["export_status"]).startswith(("done", "skipped")) for r in allr if r["status"] == "done")
        doc = build_doc(self.settings, allr, self.machine, self.data, time.time() - self.t_start, complete)
        write_json_atomic(self.results / f"{self.stem}.json", doc)
        write_text_atomic(self.results / f"{self.stem}.md", render_markdown(doc))
        try:
            plot_protocol(doc, self.results / f"{self.stem}.png")
        except Exception as exc:  # a plot is a convenience; the table is written already
            print(f"[reproduce] could not draw {self.stem}.png: {type(exc).__name__}: {exc}", flush=True)
        return doc


def default_protocol(args: argparse.Namespace) -> None:
    """``gpu`` when CUDA is available, else ``cpu-reduced``; a warning for the GPU recipe on a CPU."""
    if args.protocol is None:
        args.protocol = "gpu" if torch.cuda.is_available() else "cpu-reduced"
    if args.protocol == "gpu" and not torch.cuda.is_available():
        print("[reproduce] WARNING: --protocol gpu without CUDA: running the GPU recipe on the CPU", flush=True)


def prepare(args: argparse.Namespace) -> tuple[Settings, list[RunSpec], dict[str, Any], Any, dict[str, Any]]:
    """Settings, plan, machine, data bundle and its description; a LesionliteError before anything runs."""
    settings, plan = build_plan(args, load_recipe(args.protocol, args.recipe_file))
    machine = machine_info()
    opts = dict(settings.common_overrides.get("data.options") or {})
    bundle = load_dataset(settings.data, seed=0, synthetic_size=settings.image_size, **opts)
    return settings, plan, machine, bundle, data_description(bundle, settings.data, settings.image_size)


def run_plan(runner: Runner, plan: list[RunSpec], settings: Settings, bundle: Any,
             writer: TableWriter) -> dict[str, Any]:
    """Train, export and collect every run in order (a table after each that finished something); the final doc."""
    runs: list[dict[str, Any]] = []
    for spec in plan:
        trec = runner.train(spec)
        erec = runner.export(spec) if run_state(spec) == "done" else {"status": trec.get("status", "pending")}
        runs.append(collect(spec, settings, trec, erec, bundle))
        if trec.get("status") == "done" or erec.get("status") == "done":
            writer.write(runs, final=False)
    return writer.write(runs, final=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t_start = time.time()
    default_protocol(args)
    try:
        settings, plan, machine, bundle, data = prepare(args)
    except LesionliteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    deadline = None if args.time_budget is None else t_start + float(args.time_budget)
    # a teacher whose students are not all finished must be on disk (its weights), whatever its record says
    needed = {sp.teacher_dir for sp in plan if sp.teacher_dir is not None and run_state(sp) != "done"
              and committed_record(settings, sp) is None}
    runner = Runner(settings, deadline, bundle, needed)
    print(f"[reproduce] {args.protocol}: {len(plan)} runs under {settings.out} ({data['description'][:120]}…)",
          flush=True)
    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    writer = TableWriter(settings, plan, machine, data, res, t_start)
    doc = run_plan(runner, plan, settings, bundle, writer)
    print(f"[reproduce] wrote {res / (writer.stem + '.json')} and {res / (writer.stem + '.md')}", flush=True)
    print(short_table(doc), flush=True)
    return 0 if doc["complete"] else EXIT_INCOMPLETE
