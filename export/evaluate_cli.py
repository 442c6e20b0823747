"""``lesionlite evaluate``: any model (a run folder or an exported artifact) on any data, with 95 % CIs.

Examples::

    lesionlite evaluate runs/student                                   # its own test split
    lesionlite evaluate artifacts/demo --data isic-archive --out eval/ # every artifact, on the external set

MODEL is a run folder written by ``distill`` (needs torch), an artifact folder written by ``export``
(torch-free), or an export folder (every artifact in it). Each model gets ``OUT/<name>/evaluation.{json,md,png}``;
``OUT/evaluation_summary.md`` puts them side by side.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from export.evaluate import evaluate
from export.evaluation_report import figure_rows, write
from lesionlite.atomic import write_text_atomic
from lesionlite.cliparse import OneLineParser
from lesionlite.errors import LesionliteError
from lesionlite.manifest import MANIFEST_NAME


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="lesionlite evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", metavar="MODEL", help="run folder, artifact folder or export folder")
    p.add_argument("--data", default=None, metavar="SPEC",
                   help="data spec (default: the model's training data); e.g. isic-archive for the external set")
    p.add_argument("--data-root", default=None, metavar="DIR", help="where data sets live (default: LESIONLITE_DATA)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="split to evaluate (default: test)")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default: print the summary only)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates of each CI (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default: 0)")
    p.add_argument("--threads", type=int, default=0, help="runtime threads for artifacts (0: the runtime's default)")
    p.add_argument("--tta", choices=("none", "flips"), default="none",
                   help="test-time augmentation: flips averages the 4 flips (4x the inference time; default: none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def expand_models(paths: Sequence[str]) -> list[Path]:
    """A folder with a manifest is one model; a folder of such folders (an export) is each of them."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if (p / MANIFEST_NAME).is_file() or (p.is_file() and p.name == MANIFEST_NAME):
            out.append(p if p.is_dir() else p.parent)
            continue
        found = sorted(d for d in p.iterdir() if (d / MANIFEST_NAME).is_file()) if p.is_dir() else []
        if not found:
            raise LesionliteError(f"{raw}: no {MANIFEST_NAME} here or in its sub-folders: not a run, artifact or export folder")
        out.extend(found)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.n_boot < 0:
        raise LesionliteError(f"--n-boot must be >= 0, got {args.n_boot}")

    docs = []
    for model in expand_models(args.models):
        doc = evaluate(model, args.data, args.data_root, args.split, n_boot=args.n_boot, seed=args.seed,
                       threads=args.threads, progress=not args.no_progress, tta=args.tta)
        docs.append(doc)
        if args.out:
            paths = write(doc, Path(args.out) / doc["model"]["name"])
            print(f"{doc['model']['name']}: {paths['md']}")
    summary = render_summary(docs)
    print(summary)
    if args.out:
        write_text_atomic(Path(args.out) / "evaluation_summary.md", summary)
    return 0


def render_summary(docs: list[dict]) -> str:
    """One row per model: its figures with CIs side by side."""

    if not docs:
        return "no model evaluated"
    labels = [label for label, _ in figure_rows(docs[0]["clinical"])]
    d = docs[0]["data"]
    lines = [f"# {d['name']} ({d['split']}, n={d['n']})" + (" — external set" if d.get("external") else ""), "",
             "| model | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for doc in docs:
        vals = dict(figure_rows(doc["clinical"]))
        name = doc["model"]["name"] + (" (SYNTHETIC training data)" if doc["model"].get("synthetic_training_data") else "")
        lines.append(f"| {name} | " + " | ".join(vals.get(label, "—") for label in labels) + " |")
    return "\n".join(lines) + "\n"
