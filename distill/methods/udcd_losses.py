"""Loss terms and memory-bank helpers shared by the ``udcd`` and ``udcd-code`` methods.

Every function here is pure (no module state) and works in the dtype of its inputs, so the
tests can check each one against a float64 reference written inline. The methods call them
in float32 with autocast disabled: ``exp(z·m/τ)`` with τ = 0.07 reaches ~1.6e6, which overflows
float16.

Notation: B = batch size, C = number of classes, N = training-set size (memory-bank rows),
D = embedding size, τ = temperature. Bank rows whose label is not known yet carry label -1 and
are ignored by every function that looks at bank labels.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

# Numerical guard of CRD's NCE loss (same constant as the CRD/UDCD reference code).
NCE_EPS = 1e-7


# ----------------------------------------------------------------------------------------------
# Supervised part
# ----------------------------------------------------------------------------------------------
def inverse_frequency_weights(class_counts: Sequence[int]) -> torch.Tensor:
    """w_c = N / N_c (∝ 1/N_c). A class with no training sample gets weight 0 (it is never a target).

    The scale matters or not depending on the reduction of :func:`weighted_ce`: with
    ``denominator="weights"`` (PyTorch's weighted mean, ``udcd``) it cancels; with
    ``denominator="batch"`` (the authors' code, ``udcd-code``) it does not: E_y[w_y] = C when the
    batch follows the training distribution, so that CE is about C times the unweighted CE.
    """
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
    total = counts.sum()
    w = torch.where(counts > 0, total / counts.clamp_min(1.0), torch.zeros_like(counts))
    return w.float()


def weighted_ce(logits: torch.Tensor, labels: torch.Tensor, class_weight: torch.Tensor,
                sample_weight: torch.Tensor | None = None,
                denominator: Literal["weights", "batch"] = "weights") -> torch.Tensor:
    """Class-weighted cross-entropy, optionally with an extra per-sample factor s_i.

    ``denominator="weights"``: L = Σ_i s_i · w_{y_i} · CE_i / Σ_i w_{y_i}.  With s ≡ 1 this is
    exactly ``F.cross_entropy(logits, labels, weight=class_weight)`` (PyTorch's weighted mean with
    class-index targets).

    ``denominator="batch"``: L = Σ_i s_i · w_{y_i} · CE_i / B.  With s ≡ 1 this is exactly
    ``nn.CrossEntropyLoss(weight=class_weight)`` called with ONE-HOT (probability) targets, as the
    authors' code does (its loader returns one-hot labels): for probability targets PyTorch's
    "mean" divides by the batch size, not by the sum of the weights.
    """
    ce = F.cross_entropy(logits, labels, reduction="none")
    w = class_weight.to(logits.dtype)[labels]
    num = w * ce if sample_weight is None else sample_weight * w * ce
    if denominator == "batch":
        return num.sum() / max(int(labels.shape[0]), 1)
    if denominator != "weights":
        raise ValueError(f"unknown weighted-CE denominator {denominator!r}")
    return num.sum() / w.sum().clamp_min(torch.finfo(logits.dtype).tiny)


def normalized_entropy(logits: torch.Tensor) -> torch.Tensor:
    """ψ1 = u/U ∈ [0, 1]: entropy of softmax(logits) divided by U = log C; no gradient.

    Uniform logits give 1, a (near) one-hot distribution gives (near) 0. ψ2 = 1 - ψ1.
    Computed exactly from log_softmax (the reference code adds 1e-6 inside the log, which
    changes ψ by < 1e-5).
    """
    with torch.no_grad():
        logp = F.log_softmax(logits, dim=-1)
        ent = -(logp.exp() * logp).sum(-1)
        return (ent / math.log(logits.shape[-1])).clamp(0.0, 1.0)


def kl_per_sample(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) = Σ_c p_c (log p_c - log q_c) per row, p = softmax(p_logits), q = softmax(q_logits).

    Gradients flow into whichever argument requires them (both are allowed).
    """
    logp = F.log_softmax(p_logits, dim=-1)
    logq = F.log_softmax(q_logits, dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


# ----------------------------------------------------------------------------------------------
# Memory banks, anchors, relations
# ----------------------------------------------------------------------------------------------
def random_unit_bank(n: int, dim: int, seed: int) -> torch.Tensor:
    """[n, dim] random unit vectors (Gaussian then L2-normalised), reproducible from ``seed``."""
    g = torch.Generator().manual_seed(int(seed))
    return F.normalize(torch.randn(n, dim, generator=g), dim=1)


def uniform_bank(n: int, dim: int, seed: int) -> torch.Tensor:
    """[n, dim] i.i.d. uniform entries in [-a, a), a = 1/√(dim/3), reproducible from ``seed``.

    CRD's ``ContrastMemory`` initialisation, kept by the UDCD code. Rows are NOT unit vectors
    (E‖row‖² = dim·a²/3 = 1, but each norm varies) until a momentum update renormalises them.
    """
    g = torch.Generator().manual_seed(int(seed))
    a = 1.0 / math.sqrt(dim / 3.0)
    return torch.rand(n, dim, generator=g) * (2.0 * a) - a


def momentum_update_rows(bank: torch.Tensor, indices: torch.Tensor, z: torch.Tensor,
                         momentum: float) -> torch.Tensor:
    """Return a NEW bank with rows ``indices`` set to normalize(m·M[i] + (1-m)·z_i).

    Out-of-place on purpose: the old bank may be saved by autograd for the current backward.
    """
    rows = F.normalize(bank[indices] * momentum + z.detach().to(bank.dtype) * (1.0 - momentum), dim=1)
    return bank.index_copy(0, indices, rows)


def class_anchors(bank: torch.Tensor, bank_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """a_c = normalize(mean_{k: label_k = c} ReLU(M[k])), detached, shape [C, D].

    A class with no labelled row (or whose mean is all zeros) gets the zero vector, so its
    column of the relation matrix is 0 (never NaN).
    """
    with torch.no_grad():
        valid = bank_labels >= 0
        lab = bank_labels.clamp_min(0)
        one_hot = F.one_hot(lab, num_classes).to(bank.dtype) * valid.unsqueeze(1).to(bank.dtype)  # [N, C]
        sums = one_hot.t() @ F.relu(bank)  # [C, D]
        counts = one_hot.sum(0).unsqueeze(1)  # [C, 1]
        means = sums / counts.clamp_min(1.0)
        return F.normalize(means, dim=1, eps=1e-12)


def relation_matrix(z: torch.Tensor, anchors: torch.Tensor, tau: float) -> torch.Tensor:
    """R = z · Aᵀ / τ, shape [B, C] (anchors are treated as constants)."""
    return z @ anchors.detach().t() / tau


# ----------------------------------------------------------------------------------------------
# Paper (Eq. 8) terms: supervised contrastive vs. the teacher memory, categorical relational alignment
# ----------------------------------------------------------------------------------------------
def supcon_vs_bank(z: torch.Tensor, labels: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor,
                   tau: float) -> torch.Tensor:
    """Per-sample supervised contrastive loss (Khosla et al., "L_out") of embeddings against a bank.

    For anchor i with candidate set A = all labelled bank rows and positives P(i) = rows of the
    same class:  L_i = -1/|P(i)| Σ_{p∈P(i)} log( exp(z_i·m_p/τ) / Σ_{a∈A} exp(z_i·m_a/τ) ).
    The sample's own bank row is a legitimate positive (it holds the teacher's embedding of the
    same image from an earlier visit). Samples without any positive get L_i = 0. Returns [B].
    """
    valid = bank_labels >= 0  # [N]
    logits = z @ bank.detach().t() / tau  # [B, N]
    logits = logits.masked_fill(~valid.unsqueeze(0), float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (labels.unsqueeze(1) == bank_labels.unsqueeze(0)) & valid.unsqueeze(0)  # [B, N]
    n_pos = pos.sum(1)
    summed = torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(1)
    return torch.where(n_pos > 0, -summed / n_pos.clamp_min(1).to(z.dtype), torch.zeros_like(summed))


def sample_triplets(batch_size: int, max_triplets: int, generator: torch.Generator | None,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """Ordered triplets (p, q, r) of distinct batch positions, shape [T, 3].

    All B(B-1)(B-2) ordered triplets when that is ≤ max_triplets (deterministic), otherwise
    exactly ``max_triplets`` triplets drawn uniformly (each row = first three entries of a
    random permutation of the batch). Fewer than 3 samples → an empty [0, 3] tensor.
    """
    if batch_size < 3 or max_triplets <= 0:
        return torch.zeros(0, 3, dtype=torch.long, device=device)
    total = batch_size * (batch_size - 1) * (batch_size - 2)
    if total <= max_triplets:
        r = torch.arange(batch_size, device=device)
        p, q, s = torch.meshgrid(r, r, r, indexing="ij")
        keep = (p != q) & (p != s) & (q != s)
        return torch.stack([p[keep], q[keep], s[keep]], dim=1)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    scores = torch.rand(max_triplets, batch_size, generator=generator, device=gen_device)
    return scores.argsort(dim=1)[:, :3].to(device)


def triplet_angles(rel: torch.Tensor, triplets: torch.Tensor) -> torch.Tensor:
    """cos ϕ_pqr = <R_pq, R_pr> with R_pq = (R(p) - R(q)) / ‖R(p) - R(q)‖ (vertex p). Returns [T].

    Identical rows give a zero difference vector and cos = 0 (no NaN).
    """
    p, q, r = triplets.unbind(1)
    e_pq = F.normalize(rel[p] - rel[q], dim=1, eps=1e-12)
    e_pr = F.normalize(rel[p] - rel[r], dim=1, eps=1e-12)
    return (e_pq * e_pr).sum(1)


def cra_loss(rel_s: torch.Tensor, rel_t: torch.Tensor, triplets: torch.Tensor,
             sample_weight: torch.Tensor | None = None, huber_delta: float = 1.0) -> torch.Tensor:
    """Categorical relational alignment: mean_j  s_{p_j} · Huber_δ(cos ϕ^s_j, cos ϕ^t_j).

    ``triplets`` [T, 3]; ``sample_weight`` [B] is indexed by each triplet's vertex p (UDCD uses
    ψ1 of the teacher there). Huber_δ(a, b) = 0.5 d²/δ if |d| < δ else |d| - 0.5 δ (``smooth_l1``).
    The teacher side is treated as a constant. No triplet → 0.
    """
    if triplets.shape[0] == 0:
        return rel_s.sum() * 0.0
    cos_s = triplet_angles(rel_s, triplets)
    with torch.no_grad():
        cos_t = triplet_angles(rel_t.detach(), triplets)
    h = F.smooth_l1_loss(cos_s, cos_t, reduction="none", beta=huber_delta)
    if sample_weight is not None:
        h = h * sample_weight[triplets[:, 0]]
    return h.mean()


# ----------------------------------------------------------------------------------------------
# Public-code terms: CRD-style NCE with class-aware negatives, uncertainty-weighted relation KL
# ----------------------------------------------------------------------------------------------
NegativePolicy = Literal["clip", "replace_if_short"]


def sample_negative_indices(labels: torch.Tensor, bank_labels: torch.Tensor, k: int,
                            generator: torch.Generator | None, policy: NegativePolicy = "clip",
                            min_candidates: int | None = None) -> torch.Tensor | None:
    """Bank rows of OTHER classes for each sample: [B, K'] long, every index in [0, N).

    Candidates of row i = labelled bank rows whose label ≠ y_i.
    - ``clip``: K' = min(k, M) with M = ``min_candidates`` (a lower bound on every row's candidate
      count known on the host, e.g. the min over classes; one device sync to compute the batch's
      smallest count when None); drawn without replacement.
    - ``replace_if_short`` (what the public code's data loader does): K' = k; rows with ≥ k
      candidates draw without replacement, rows with fewer draw with replacement.
    Returns None when some row has no candidate at all (only one class labelled so far) or k ≤ 0.
    """
    n = bank_labels.shape[0]
    if k <= 0 or n == 0:
        return None
    device = bank_labels.device
    cand = (bank_labels.unsqueeze(0) != labels.unsqueeze(1)) & (bank_labels >= 0).unsqueeze(0)  # [B, N]
    n_cand = cand.sum(1)
    min_cand = int(n_cand.min().item()) if min_candidates is None else int(min_candidates)
    if min_cand <= 0:
        return None
    gen_device = generator.device if generator is not None else device
    scores = torch.rand(labels.shape[0], n, generator=generator, device=gen_device).to(device)
    scores = scores.masked_fill(~cand, -1.0)  # candidates (scores in [0,1)) rank first
    if policy == "clip":
        k_eff = min(k, min_cand)
        return scores.topk(k_eff, dim=1).indices
    if policy != "replace_if_short":
        raise ValueError(f"unknown negative-sampling policy {policy!r}")
    top = scores.topk(min(k, n), dim=1).indices  # first n_cand_i entries of row i are its candidates
    short = n_cand < k
    if min_cand >= k:
        return top[:, :k]
    u = torch.rand(labels.shape[0], k, generator=generator, device=gen_device).to(device)
    draw = (u * n_cand.unsqueeze(1)).long().clamp_max(n_cand.unsqueeze(1) - 1)  # with replacement
    straight = torch.arange(k, device=device).clamp_max(top.shape[1] - 1).expand_as(draw)
    pos = torch.where(short.unsqueeze(1), draw, straight)
    return top.gather(1, pos)


def nce_scores(z: torch.Tensor, bank: torch.Tensor, contrast_idx: torch.Tensor, tau: float) -> torch.Tensor:
    """CRD's un-normalised scores exp(m_j · z_i / τ) for the bank rows ``contrast_idx`` [B, 1+K]."""
    w = bank.detach()[contrast_idx]  # [B, 1+K, D]
    return torch.exp(torch.bmm(w, z.unsqueeze(2)).squeeze(2) / tau)


def nce_loss(scores: torch.Tensor, n_data: int) -> torch.Tensor:
    """CRD's NCE loss on normalised scores P [B, 1+K] (column 0 = the positive).

    With m = K noise samples and noise probability Pn = 1/N:
    L = -(1/B) Σ_i [ log(P_i0 / (P_i0 + m·Pn + ε)) + Σ_k log(m·Pn / (P_ik + m·Pn + ε)) ].

    Not bounded by a normaliser. With P_ik = exp(s_ik/τ)/Z, Z = N·μ0 frozen (μ0 = mean score of
    the first batch), each sample contributes (ε dropped)
        log(1 + K·μ0·e^{-s_i0/τ})  +  Σ_k log(1 + e^{s_ik/τ} / (K·μ0)),
    and while e^{s/τ} ≪ K·μ0 the negative sum is ≈ mean_k e^{s_ik/τ} / μ0: today's mean
    exponentiated similarity to the negatives divided by the first batch's. A rise c of the
    typical cosine to the negatives multiplies it by ~e^{c/τ} (τ = 0.07: ×e^{14.3c}); a common
    shift of all similarities does not cancel as it would in a softmax. Bounded only through
    |s| ≤ ‖m‖ ≈ 1: ≤ log(1 + Kμ0e^{1/τ}) + K·log(1 + e^{1/τ}/(Kμ0)) per sample. See ``udcd-code``.
    """
    bsz = scores.shape[0]
    m = scores.shape[1] - 1
    mpn = m / float(n_data)
    pos = scores[:, 0]
    neg = scores[:, 1:]
    log_d1 = torch.log(pos / (pos + mpn + NCE_EPS))
    log_d0 = torch.log(mpn / (neg + mpn + NCE_EPS))
    return -(log_d1.sum() + log_d0.sum()) / bsz


def uncertainty_weighted_kl(weight_logits: torch.Tensor, p_logits: torch.Tensor,
                            q_logits: torch.Tensor) -> torch.Tensor:
    """mean_i ψ1(weight_logits_i) · KL(softmax p_i ‖ softmax q_i), ψ1 without gradient."""
    return (normalized_entropy(weight_logits) * kl_per_sample(p_logits, q_logits)).mean()


def sigmoid_rampup(epoch: float, length: float) -> float:
    """r(e) = exp(-5 (1 - min(e, L)/L)²) (Laine & Aila); 1 when L ≤ 0."""
    if length <= 0:
        return 1.0
    phase = 1.0 - min(max(float(epoch), 0.0), float(length)) / float(length)
    return float(math.exp(-5.0 * phase * phase))
