"""``lesionlite adapt``: fit a trained student to a new clinic's images before export (see :mod:`distill.adapt`).

Examples::

    lesionlite adapt --checkpoint runs/student --site isic-archive --out runs/student-site            # unlabelled
    lesionlite adapt --checkpoint runs/student --site isic-archive --method finetune --labelled 300 \\
        --out runs/student-site300                                                                     # K labelled

The adapted run exports like any other; measure it with ``lesionlite evaluate RUN --data SITE``, which
leaves out the images it was adapted on.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence

from distill.adapt import METHODS, AdaptConfig, adapt
from lesionlite.cliparse import OneLineParser


def build_parser() -> argparse.ArgumentParser:
    d = AdaptConfig()
    p = OneLineParser(prog="lesionlite adapt", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, metavar="RUN_DIR", help="run folder written by 'lesionlite distill'")
    p.add_argument("--site", required=True, metavar="SPEC", help="the new site's images, e.g. isic-archive[:PATH]")
    p.add_argument("--out", required=True, metavar="DIR", help="folder of the adapted run")
    p.add_argument("--method", choices=METHODS, default=d.method,
                   help="bn: re-estimate BatchNorm on unlabelled site images; finetune: then KD-anchored fine-tune "
                        "on K labelled site images (default: bn)")
    p.add_argument("--labelled", type=int, default=d.labelled, help="K labelled site images for finetune (0: the whole pool)")
    p.add_argument("--holdout", type=float, default=d.holdout, help="share of site lesions held out for measuring (default 0.5)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="fine-tuning epochs over the K images (default 4)")
    p.add_argument("--lr", type=float, default=d.lr, help="fine-tuning learning rate (default 1e-4)")
    p.add_argument("--kd-weight", type=float, default=d.kd_weight, help="weight of KD from the source model (default 0.5)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the site split and the sampling (default 0)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads (default 1)")
    p.add_argument("--data-root", default=None, metavar="DIR", help="where data sets live (default: LESIONLITE_DATA)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    cfg = AdaptConfig(method=args.method, labelled=args.labelled, holdout=args.holdout, epochs=args.epochs, lr=args.lr,
                      kd_weight=args.kd_weight, seed=args.seed, threads=args.threads)
    info = adapt(args.checkpoint, args.site, args.out, cfg, args.data_root, progress=not args.no_progress)
    print(f"adapted to {info['site']} ({info['method']}): BatchNorm of {info['batchnorm_layers']} layers re-estimated on "
          f"{info['pool_images']} unlabelled site images" + (f", fine-tuned on {info['labelled_images']} labelled"
                                                             if info["labelled_images"] else "")
          + f"; {len(info['held_out_ids'])} site images held out for measuring; {info['seconds']:.0f} s")
    print(f"adapted run: {args.out}  (measure: lesionlite evaluate {args.out} --data {args.site})")
    return 0
