"""Loss terms of SSD-KD (Wang et al., Medical Image Analysis 84:102693, 2023) as pure functions.

Row layout used everywhere in this module and in :mod:`distill.methods.ssdkd`: a batch of ``B``
images with ``V = 4`` rotation views ``[B, V, C, H, W]`` is flattened *sample-major* to ``B·V``
rows, row ``V·i + k`` = image ``i`` rotated by ``k·90°`` (then independently augmented).

* ``nor`` rows: ``k == 0`` (rows ``0, V, 2V, …``), ``B`` of them, in sample order ``i``.
* ``aug`` rows: ``k != 0``, ``(V-1)·B`` of them, ordered ``(i, k)`` = ``(0,1), (0,2), (0,3), (1,1), …``,
  so aug row ``r`` belongs to image ``r // (V-1)``.

Everything here is differentiable with respect to the student-side inputs and treats the teacher
side as constants (callers pass detached teacher tensors).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

GramMode = Literal["auto", "spatial", "chunked", "naive"]


# --------------------------------------------------------------------------------------------------
# Row layout
# --------------------------------------------------------------------------------------------------
def flatten_views(images: torch.Tensor) -> torch.Tensor:
    """``[B, V, C, H, W]`` → ``[B·V, C, H, W]`` (sample-major: row ``V·i + k``)."""
    if images.dim() != 5:
        raise ValueError(f"expected images [B, V, C, H, W], got shape {tuple(images.shape)}")
    b, v = images.shape[:2]
    return images.reshape(b * v, *images.shape[2:])


def nor_aug_index(batch: int, views: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Index tensors of the ``nor`` rows (``[B]``) and ``aug`` rows (``[(V-1)·B]``) in the flat layout."""
    rows = torch.arange(batch * views, device=device)
    return rows[rows % views == 0], rows[rows % views != 0]


def ss_targets(batch: int, views: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Target of each aug row in the similarity matrix: the index ``i`` of its source image."""
    return torch.arange(batch, device=device).repeat_interleave(views - 1)


def rotation_similarity(z: torch.Tensor, batch: int, views: int, eps: float = 1e-8) -> torch.Tensor:
    """``S[(i,r), j] = cos(z_aug(i,r), z_nor(j))``: ``[(V-1)·B, B]`` from projected features ``[B·V, d]``."""
    nor_idx, aug_idx = nor_aug_index(batch, views, z.device)
    zn = F.normalize(z, dim=1, eps=eps)
    return zn[aug_idx] @ zn[nor_idx].t()


# --------------------------------------------------------------------------------------------------
# Classification / distribution terms
# --------------------------------------------------------------------------------------------------
def class_weights_from_counts(counts: list[int] | tuple[int, ...]) -> torch.Tensor:
    """``w_c = N / N_c`` (the authors' "frequency" weights); classes with no sample get weight 0."""
    c = torch.as_tensor(list(counts), dtype=torch.float64)
    n = c.sum()
    w = torch.where(c > 0, n / c.clamp_min(1), torch.zeros_like(c))
    return w.float()


def kl_soft(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """``T² · KL(softmax(t/T) ‖ softmax(s/T))`` averaged over rows (``batchmean``)."""
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0
    log_p_s = F.log_softmax(student_logits / T, dim=1)
    p_t = F.softmax(teacher_logits / T, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * (T * T)


# --------------------------------------------------------------------------------------------------
# Error-level ranking (row selection for L3 / L4)
# --------------------------------------------------------------------------------------------------
def target_rank(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Rank of the correct target in each row of ``scores`` sorted descending (0 = teacher is right).

    Computed as the number of entries strictly greater than the target's score, so ties with the
    target count in its favour (the authors' ``argsort`` breaks ties arbitrarily).
    """
    tgt = scores.gather(1, target.view(-1, 1))
    return (scores > tgt).sum(dim=1)


def select_rows(rank: torch.Tensor, ratio: float) -> torch.Tensor:
    """Keep every row with rank 0 plus the best ``int(ratio · n_wrong)`` of the others.

    "Best" = lowest rank of the correct target; ties are broken by row order (stable sort).
    Returns the kept row indices in increasing order.
    """
    n_wrong = int((rank > 0).sum().item())
    n_keep = (rank.numel() - n_wrong) + int(n_wrong * ratio)
    order = torch.sort(rank, stable=True).indices
    return torch.sort(order[:n_keep]).values


# --------------------------------------------------------------------------------------------------
# Relational knowledge distillation (Park et al., 2019) on pooled features
# --------------------------------------------------------------------------------------------------
def pdist(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Pairwise Euclidean distances with a zero diagonal (squared distances clamped at ``eps``)."""
    sq = x.pow(2).sum(dim=1)
    d2 = (sq.unsqueeze(0) + sq.unsqueeze(1) - 2.0 * (x @ x.t())).clamp(min=eps)
    d = d2.sqrt()
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return d.masked_fill(eye, 0.0)


def _mean_normalised_dist(x: torch.Tensor) -> torch.Tensor:
    d = pdist(x)
    pos = d[d > 0]
    return d / pos.mean() if pos.numel() else d


def rkd_distance(feat_s: torch.Tensor, feat_t: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 between mean-normalised pairwise distance matrices (teacher side constant)."""
    with torch.no_grad():
        dt = _mean_normalised_dist(feat_t)
    ds = _mean_normalised_dist(feat_s)
    return F.smooth_l1_loss(ds, dt)


def _angles_direct(x: torch.Tensor) -> torch.Tensor:
    """The RKD paper's formula as written: e[i, j] = normalise(x_j − x_i), angle[i, j, k] = <e[i, j], e[i, k]>.

    Materialises [N, N, D] and costs O(N³·D); kept as the reference :func:`_angles` is tested against.
    """
    e = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)
    return torch.bmm(e, e.transpose(1, 2)).reshape(-1)


def _angles(x: torch.Tensor) -> torch.Tensor:
    """All triplet angle cosines ``<normalise(x_j − x_i), normalise(x_k − x_i)>``, flattened over (i, j, k).

    Computed from the Gram matrix G = x·xᵀ: <x_j − x_i, x_k − x_i> = G_jk − G_ij − G_ik + G_ii and
    ‖x_j − x_i‖² = G_jj − 2·G_ij + G_ii, which costs O(N²·D + N³) instead of the direct formula's
    O(N³·D). For SSD-KD's 4B = 128 rows of D = 1280 pooled features the direct formula (a batched
    [N, N, D]×[N, D, N] product, for student and teacher, plus its backward) cost about as much as the
    student's own forward and backward. The identity subtracts large Gram entries, so it runs in
    float64 (agrees with the direct formula to float64 round-off, tested). A zero difference (j = i,
    or duplicate rows) gives 0, as ``F.normalize``'s zero vector does; the result has ``x``'s dtype.
    """
    x64 = x.double()
    g = x64 @ x64.T
    diag = g.diagonal()
    sq = diag[:, None] + diag[None, :] - 2.0 * g  # ‖x_i − x_j‖²
    nonzero = sq > 1e-12 * diag.max().clamp_min(1e-300)  # below: round-off of a zero difference
    inv = torch.where(nonzero, torch.rsqrt(torch.where(nonzero, sq, torch.ones_like(sq))), torch.zeros_like(sq))
    num = g.unsqueeze(0) - g.unsqueeze(2) - g.unsqueeze(1) + diag.view(-1, 1, 1)  # [i, j, k]
    return (num * inv.unsqueeze(2) * inv.unsqueeze(1)).reshape(-1).to(x.dtype)


def rkd_angle(feat_s: torch.Tensor, feat_t: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 between the cosines of all triplet angles (teacher side constant)."""
    with torch.no_grad():
        at = _angles(feat_t)
    return F.smooth_l1_loss(_angles(feat_s), at)


# --------------------------------------------------------------------------------------------------
# Channel-Gram ("correlation") distillation on feature maps
# --------------------------------------------------------------------------------------------------
def gram_matrix(fmap: torch.Tensor) -> torch.Tensor:
    """Per-sample channel Gram ``F·Fᵀ / (C·H·W)``: ``[N, C, H, W]`` → ``[N, C, C]`` (naive, memory-heavy)."""
    n, c, h, w = fmap.shape
    f = fmap.reshape(n, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


def _gram_sqdiff_spatial(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """``Σ_n ‖G_s,n − G_t,n‖²_F`` via the HW×HW Grams (exact identity, float64 against cancellation).

    ‖AAᵀ − BBᵀ‖² = ‖AᵀA‖² − 2‖AᵀB‖² + ‖BᵀB‖²  (A, B: [C, HW]); memory O(N·HW²) instead of O(N·C²).
    """
    n, c, h, w = fs.shape
    a = fs.reshape(n, c, h * w).double()
    b = ft.reshape(n, c, h * w).double()
    ata = torch.bmm(a.transpose(1, 2), a)
    atb = torch.bmm(a.transpose(1, 2), b)
    btb = torch.bmm(b.transpose(1, 2), b)
    sq = ata.pow(2).sum() - 2.0 * atb.pow(2).sum() + btb.pow(2).sum()
    return (sq / float(c * h * w) ** 2).clamp_min(0.0)


class _GramSqDiffChunked(torch.autograd.Function):
    """``Σ_n ‖G_s,n − G_t,n‖²_F`` computed ``chunk`` samples at a time, recomputed in backward.

    Peak extra memory is one chunk of ``[chunk, C, C]`` Grams, in forward and backward alike.
    """

    @staticmethod
    def forward(ctx, fs: torch.Tensor, ft: torch.Tensor, chunk: int) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(fs, ft)
        ctx.chunk = chunk
        total = fs.new_zeros((), dtype=torch.float64)
        for lo in range(0, fs.shape[0], chunk):
            d = gram_matrix(fs[lo:lo + chunk]) - gram_matrix(ft[lo:lo + chunk])
            total = total + d.double().pow(2).sum()
        return total.to(fs.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        fs, ft = ctx.saved_tensors
        n, c, h, w = fs.shape
        scale = 4.0 / (c * h * w)
        gs = torch.empty_like(fs) if ctx.needs_input_grad[0] else None
        gt = torch.empty_like(ft) if ctx.needs_input_grad[1] else None
        for lo in range(0, n, ctx.chunk):
            a = fs[lo:lo + ctx.chunk].reshape(-1, c, h * w)
            b = ft[lo:lo + ctx.chunk].reshape(-1, c, h * w)
            d = gram_matrix(fs[lo:lo + ctx.chunk]) - gram_matrix(ft[lo:lo + ctx.chunk])  # symmetric
            if gs is not None:
                gs[lo:lo + ctx.chunk] = (torch.bmm(d, a) * (scale * grad_out)).reshape(-1, c, h, w)
            if gt is not None:
                gt[lo:lo + ctx.chunk] = (torch.bmm(d, b) * (-scale * grad_out)).reshape(-1, c, h, w)
        return gs, gt, None


def gram_sqdiff_sum(fs: torch.Tensor, ft: torch.Tensor, mode: GramMode = "auto", chunk: int = 16) -> torch.Tensor:
    """``Σ_n ‖G_s,n − G_t,n‖²_F`` for feature maps of equal shape ``[N, C, H, W]``."""
    if fs.shape != ft.shape:
        raise ValueError(f"gram: feature maps differ in shape: {tuple(fs.shape)} vs {tuple(ft.shape)}")
    n, c, h, w = fs.shape
    if mode == "auto":
        # spatial identity costs ~3·N·C·(HW)², the channel Grams ~2·N·C²·HW
        mode = "spatial" if 3 * h * w <= 2 * c else "chunked"
    if mode == "spatial":
        return _gram_sqdiff_spatial(fs, ft).to(fs.dtype)
    if mode == "chunked":
        return _GramSqDiffChunked.apply(fs, ft, max(1, int(chunk)))
    if mode == "naive":
        return (gram_matrix(fs) - gram_matrix(ft)).pow(2).sum()
    raise ValueError(f"unknown gram mode {mode!r} (auto, spatial, chunked, naive)")


def gram_loss(fs: torch.Tensor, ft: torch.Tensor, eps: float = 1e-12, mode: GramMode = "auto",
              chunk: int = 16) -> torch.Tensor:
    """``sqrt(MSE(G_s, G_t) + eps)``, the MSE averaged over all ``N·C·C`` Gram entries."""
    n, c = fs.shape[:2]
    mse = gram_sqdiff_sum(fs, ft, mode=mode, chunk=chunk) / (n * c * c)
    return torch.sqrt(mse + eps)


def match_spatial(fs: torch.Tensor, ft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-average-pool the larger map(s) down to the common ``(min h, min w)`` size."""
    if fs.shape[-2:] == ft.shape[-2:]:
        return fs, ft
    size = (min(fs.shape[-2], ft.shape[-2]), min(fs.shape[-1], ft.shape[-1]))
    if tuple(fs.shape[-2:]) != size:
        fs = F.adaptive_avg_pool2d(fs, size)
    if tuple(ft.shape[-2:]) != size:
        ft = F.adaptive_avg_pool2d(ft, size)
    return fs, ft


def naive_gram_bytes(n: int, c: int, dtype_bytes: int = 4) -> int:
    """Memory of the two naive ``[N, C, C]`` Grams (for docs/logs): 2·N·C²·bytes."""
    return 2 * n * c * c * dtype_bytes


__all__ = [
    "flatten_views", "nor_aug_index", "ss_targets", "rotation_similarity", "class_weights_from_counts",
    "kl_soft", "target_rank", "select_rows", "pdist", "rkd_distance", "rkd_angle", "gram_matrix",
    "gram_sqdiff_sum", "gram_loss", "match_spatial", "naive_gram_bytes",
]
