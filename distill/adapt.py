"""Fit a trained student to a new clinic before export: ``lesionlite adapt``.

A student trained on HAM10000 loses most of its melanoma AUC on another institution's dermoscopy
(``benchmarks/RESULTS.md`` section 8). Two remedies a site can run with what it has:

* **unlabelled images** (``--method bn``): re-estimate every BatchNorm layer's statistics on the site's
  images (AdaBN, Li et al. 2016) — the weights stay, the normalisation follows the new camera and
  illumination;
* **K labelled images** (``--method finetune``): after the BatchNorm step, fine-tune with a loss that does
  not forget the source: cross-entropy on the K site images, mixed batch by batch with an equal number of
  class-balanced source (training) images, plus knowledge distillation from the unadapted source model on
  both (so the source's answers anchor the student), with the early feature layers frozen.

The site's images are split once, by lesion where known, into an **adaptation pool** and a **held-out
part** (``--holdout``, default half): adaptation only ever sees the pool (K of them for fine-tuning), and
the held-out images are the only ones the adapted model may be measured on. The adapted run's manifest
records the site, its fingerprint, the method and the exact image ids used (``adaptation``), and the
model card of its export says so. Temperature and operating point stay the source's (validation-fitted):
nothing is fitted on site images beyond the adaptation itself.
"""
from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from distill.data import load_dataset
from distill.data.base import DatasetBundle
from lesionlite.classes import class_mapping
from lesionlite.errors import LesionliteError
from lesionlite.preprocessing import preprocess_batch

METHODS = ("bn", "finetune")


@dataclass
class AdaptConfig:
    method: str = "bn"
    labelled: int = 0  # K labelled site images for "finetune" (0 = every image of the pool)
    holdout: float = 0.5  # share of the site's lesions held out for measuring (never adapted on)
    epochs: int = 4
    lr: float = 1e-4
    batch_size: int = 32
    kd_weight: float = 0.5
    kd_temperature: float = 2.0
    freeze_fraction: float = 0.5  # share of the feature blocks kept frozen while fine-tuning
    seed: int = 0
    threads: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        if self.method not in METHODS:
            raise LesionliteError(f"unknown adaptation method {self.method!r}; choose from {', '.join(METHODS)}")
        if not 0.0 < self.holdout < 1.0:
            raise LesionliteError(f"--holdout must be in (0, 1), got {self.holdout}")
        if self.labelled < 0 or self.epochs < 1 or self.lr <= 0:
            raise LesionliteError("--labelled must be >= 0, --epochs >= 1 and --lr > 0")


def site_split(ids: list[str], groups: list[str] | None, holdout: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(pool, held-out) indices: each lesion (or image) goes wholly to one side, by a seeded hash of its id.

    A hash, not a shuffle: the same image lands on the same side whatever else the folder holds, so a
    site adding images later never moves one that was measured on into the pool.
    """
    keys = groups if groups is not None else ids
    u = np.asarray([int(hashlib.sha256(f"{seed}:{k}".encode()).hexdigest()[:12], 16) / 16 ** 12 for k in keys])
    held = u < holdout
    return np.flatnonzero(~held), np.flatnonzero(held)


def _labelled_subset(pool: np.ndarray, labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """K images of the pool, stratified by class (every class present keeps at least one)."""
    if k <= 0 or k >= pool.size:
        return pool
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels[pool], return_counts=True)
    share = np.maximum(1, np.round(counts / counts.sum() * k).astype(int))
    picked = [rng.choice(pool[labels[pool] == c], size=min(n, int((labels[pool] == c).sum())), replace=False)
              for c, n in zip(classes, share)]
    return np.sort(np.concatenate(picked))


def reestimate_batchnorm(model: Any, batches: list[Any]) -> int:
    """AdaBN: every BatchNorm's running statistics become the cumulative ones of ``batches`` (no labels)."""
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over every batch
    model.train()
    with torch.no_grad():
        for xb in batches:
            model(xb)
    for m in bns:
        m.momentum = 0.1
    model.eval()
    return len(bns)


def _tensors(dataset: Any, idx: np.ndarray, cfg: Any) -> Any:
    import torch

    return torch.from_numpy(np.concatenate([preprocess_batch([dataset.load_image(int(j)) for j in idx[i:i + 64]], cfg, "NCHW")
                                            for i in range(0, idx.size, 64)]))


def _finetune(model: Any, source_model: Any, site_x: Any, site_y: Any, src_x: Any, src_y: Any,
              cfg: AdaptConfig, progress: bool) -> list[dict[str, float]]:
    """KD-anchored fine-tune: site CE + class-balanced source CE, KD from the source model on both, early layers frozen."""
    import torch
    import torch.nn.functional as F

    blocks = list(getattr(model, "features", []))
    for b in blocks[: int(len(blocks) * cfg.freeze_fraction)]:
        for p in b.parameters():
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(cfg.seed)
    # class-balanced source sampling: each class equally likely (the source's rare melanomas are not drowned)
    counts = torch.bincount(src_y, minlength=int(src_y.max()) + 1).float()
    src_w = (1.0 / counts.clamp_min(1))[src_y]
    history = []
    steps = max(1, int(np.ceil(site_x.shape[0] / (cfg.batch_size // 2))))
    t = cfg.kd_temperature
    for epoch in range(cfg.epochs):
        model.train()
        for m in model.modules():  # BatchNorm statistics stay those of the BN step: fine-tune the weights only
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
        perm = torch.randperm(site_x.shape[0], generator=g)
        total = 0.0
        for s in tqdm(range(steps), desc=f"adapt epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False):
            si = perm[s * (cfg.batch_size // 2):(s + 1) * (cfg.batch_size // 2)]
            if si.numel() == 0:
                continue
            sj = torch.multinomial(src_w, si.numel(), replacement=True, generator=g)
            x = torch.cat([site_x[si], src_x[sj]])
            y = torch.cat([site_y[si], src_y[sj]])
            logits = model(x)
            with torch.no_grad():
                teacher = source_model(x)
            ce = F.cross_entropy(logits, y)
            kd = F.kl_div(F.log_softmax(logits / t, 1), F.softmax(teacher / t, 1), reduction="batchmean") * t * t
            loss = (1 - cfg.kd_weight) * ce + cfg.kd_weight * kd
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
        history.append({"epoch": epoch + 1, "loss": total / steps})
    model.eval()
    return history


def adapt(checkpoint: str | Path, site_spec: str, out: str | Path, cfg: AdaptConfig, data_root: str | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Adapt the student of ``checkpoint`` to the site ``site_spec``; write the adapted run into ``out``."""

    import torch

    from distill.artifacts import load_student, save_student  # torch (finetune only); adapt imports without it

    cfg.check()
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model, manifest = load_student(checkpoint)
    source = copy.deepcopy(model).eval()
    site = load_dataset(site_spec, root=data_root)
    test = site.test  # an external set keeps every image in test; adaptation reads it only here, split by lesion
    mapping = class_mapping(list(site.class_names), list(manifest.class_names))
    ids = list(test.ids or [str(i) for i in range(len(test))])
    pool, held = site_split(ids, test.groups, cfg.holdout, cfg.seed)
    labels = np.asarray([mapping.get(int(c), -1) for c in test.labels])
    pool = pool[labels[pool] >= 0]
    if pool.size == 0:
        raise LesionliteError(f"{site.name}: no image of the adaptation pool has a class the model knows")
    t0 = time.perf_counter()
    cfg_pre = manifest.preprocessing
    pool_x = _tensors(test, pool, cfg_pre)
    n_bn = reestimate_batchnorm(model, list(torch.split(pool_x, 64)))
    used = pool
    history: list[dict[str, float]] = []
    if cfg.method == "finetune":
        used = _labelled_subset(pool, labels, cfg.labelled, cfg.seed)
        mdata = manifest.data or {}
        src = load_dataset(str(mdata.get("spec") or mdata.get("name")), root=data_root,
                           seed=int(mdata.get("split_seed", 0)), **dict(mdata.get("options") or {}))
        src_idx = np.random.default_rng(cfg.seed).choice(len(src.train), size=min(len(src.train), 2000), replace=False)
        src_x = _tensors(src.train, np.sort(src_idx), cfg_pre)
        src_y = torch.as_tensor(np.asarray(src.train.labels)[np.sort(src_idx)], dtype=torch.long)
        site_x = _tensors(test, used, cfg_pre)
        site_y = torch.as_tensor(labels[used], dtype=torch.long)
        history = _finetune(model, source, site_x, site_y, src_x, src_y, cfg, progress)
    manifest.extra = {**(manifest.extra or {}), "adaptation": {
        "site": site.name, "site_spec": site_spec, "site_fingerprint": site.fingerprint, "method": cfg.method,
        "config": asdict(cfg), "batchnorm_layers": n_bn, "pool_images": int(pool.size),
        "labelled_images": int(used.size) if cfg.method == "finetune" else 0,
        # the BatchNorm step saw the whole pool (unlabelled); fine-tuning its labelled subset
        "adapted_on_ids": [ids[i] for i in pool], "labelled_ids": [ids[i] for i in used] if cfg.method == "finetune" else [],
        "held_out_ids": [ids[i] for i in held],
        "source_checkpoint": str(Path(checkpoint).name), "seconds": round(time.perf_counter() - t0, 1),
        "history": history,
        "rule": "measure this model only on held_out_ids of this site (never on adapted_on_ids)"}}
    save_student(out, model, manifest)
    return manifest.extra["adaptation"]


def adapted_ids(manifest: Any, bundle: DatasetBundle) -> set[str]:
    """Ids of ``bundle``'s images that adapted ``manifest``'s model (empty unless it was adapted to this very set).

    Every evaluation of an adapted model on its site leaves these out: a model is never measured on the
    images it was fitted to.
    """
    info = ((getattr(manifest, "extra", None) or {}).get("adaptation") or {})
    if not info or info.get("site_fingerprint") != getattr(bundle, "fingerprint", None):
        return set()
    return set(info.get("adapted_on_ids") or [])
