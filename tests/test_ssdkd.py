"""SSD-KD: every loss term against a naive float64 reference, the row selection, gradient routing,
a few optimisation steps, export hygiene, the exact memory-bounded Gram loss and term switches."""
from __future__ import annotations

import math
import warnings

import pytest

torch = pytest.importorskip("torch")
from _fixtures_train import train_step
from torch import nn

from distill.methods import ssdkd_losses as L
from distill.methods.base import Batch, MethodContext
from distill.methods.registry import get_method
from distill.methods.ssdkd import SSDKD, SSDKDConfig, rotation_views
from distill.models import LesionClassifier, build_model

NUM_CLASSES = 3
COUNTS = [6, 3, 1]


def _ctx() -> MethodContext:
    return MethodContext(num_classes=NUM_CLASSES, class_counts=COUNTS, num_train=sum(COUNTS),
                         device=torch.device("cpu"), epochs=1, steps_per_epoch=1)


def _method(seed: int = 0, teacher: nn.Module | None = None, **cfg) -> SSDKD:
    torch.manual_seed(seed)
    student = build_model("tiny_cnn", NUM_CLASSES, dropout=0.0)
    teacher = teacher if teacher is not None else build_model("tiny_cnn", NUM_CLASSES, dropout=0.0)
    cfg.setdefault("progress", False)
    return SSDKD(student, teacher, SSDKDConfig(**cfg), _ctx())


def _batch(b: int = 4, size: int = 32, seed: int = 1, dtype=torch.float32) -> Batch:
    g = torch.Generator().manual_seed(seed)
    imgs = torch.randn(b, 4, 3, size, size, generator=g, dtype=dtype)
    labels = torch.arange(b) % NUM_CLASSES
    return Batch(images=imgs, labels=labels, indices=torch.arange(b))


# ---------------------------------------------------------------------------------------------
# Naive references (float64, loops and plain formulas)
# ---------------------------------------------------------------------------------------------
def ref_softmax(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    s = sum(e)
    return [v / s for v in e]


def ref_weighted_ce(logits, labels, weights):
    num = den = 0.0
    for row, y in zip(logits.tolist(), labels.tolist()):
        p = ref_softmax(row)
        num += weights[y] * -math.log(p[y])
        den += weights[y]
    return num / den


def ref_kl(s_logits, t_logits, T):
    rows = s_logits.tolist()
    if not rows:
        return 0.0
    total = 0.0
    for rs, rt in zip(rows, t_logits.tolist()):
        ps = ref_softmax([v / T for v in rs])
        pt = ref_softmax([v / T for v in rt])
        total += sum(a * math.log(a / b) for a, b in zip(pt, ps))
    return T * T * total / len(rows)


def ref_rank(scores, targets):
    out = []
    for row, t in zip(scores.tolist(), targets.tolist()):
        order = sorted(range(len(row)), key=lambda c: -row[c])
        out.append(order.index(t))
    return out


def ref_select(ranks, ratio):
    right = [i for i, r in enumerate(ranks) if r == 0]
    wrong = sorted([i for i, r in enumerate(ranks) if r > 0], key=lambda i: (ranks[i], i))
    return sorted(right + wrong[: int(len(wrong) * ratio)])


def ref_smooth_l1(a, b):
    d = abs(a - b)
    return 0.5 * d * d if d < 1.0 else d - 0.5


def ref_rkd_dist(s, t):
    def dmat(x):
        n = len(x)
        d = [[math.sqrt(sum((x[i][c] - x[j][c]) ** 2 for c in range(len(x[0])))) if i != j else 0.0
              for j in range(n)] for i in range(n)]
        mean = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return [[v / mean for v in r] for r in d]

    ds, dt = dmat(s.tolist()), dmat(t.tolist())
    n = len(ds)
    return sum(ref_smooth_l1(ds[i][j], dt[i][j]) for i in range(n) for j in range(n)) / (n * n)


def ref_rkd_angle(s, t):
    def unit(a, b):
        v = [y - x for x, y in zip(a, b)]
        nrm = math.sqrt(sum(c * c for c in v))
        return [c / nrm for c in v] if nrm > 0 else [0.0] * len(v)

    def angles(x):
        n = len(x)
        out = []
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    eij, eik = unit(x[i], x[j]), unit(x[i], x[k])
                    out.append(sum(a * b for a, b in zip(eij, eik)))
        return out

    a_s, a_t = angles(s.tolist()), angles(t.tolist())
    return sum(ref_smooth_l1(a, b) for a, b in zip(a_s, a_t)) / len(a_s)


def ref_gram_loss(fs, ft, eps):
    n, c, h, w = fs.shape
    total = 0.0
    for i in range(n):
        a = fs[i].reshape(c, h * w)
        b = ft[i].reshape(c, h * w)
        ga = (a @ a.T) / (c * h * w)
        gb = (b @ b.T) / (c * h * w)
        total += float(((ga - gb) ** 2).sum())
    return math.sqrt(total / (n * c * c) + eps)


def ref_similarity(z, b, v):
    rows = z.tolist()
    out = []
    for i in range(b):
        for r in range(1, v):
            za = rows[v * i + r]
            line = []
            for j in range(b):
                zn = rows[v * j]
                dot = sum(p * q for p, q in zip(za, zn))
                line.append(dot / (math.sqrt(sum(p * p for p in za)) * math.sqrt(sum(q * q for q in zn))))
            out.append(line)
    return out


# ---------------------------------------------------------------------------------------------
# Individual terms
# ---------------------------------------------------------------------------------------------
def test_registered_and_class_attributes() -> None:
    cls = get_method("ssdkd")
    assert cls is SSDKD and cls.num_views == 4 and cls.view_mode == "rotations" and cls.needs_teacher
    assert cls.config_cls is SSDKDConfig
    c = SSDKDConfig()
    assert (c.ce_weight, c.kd_weight, c.tf_weight, c.ss_weight, c.hr_weight) == (0.1, 0.9, 2.7, 10.0, 1.0)
    assert (c.rkd_dist_weight, c.rkd_angle_weight, c.gram_weight) == (25.0, 50.0, 1000.0)
    assert (c.kd_T, c.tf_T, c.ss_T, c.tf_ratio, c.ss_ratio) == (4.0, 4.0, 0.5, 1.0, 0.75)
    rec = cls.default_overrides
    assert rec["optim.name"] == "sgd" and rec["optim.lr"] == 1e-3 and rec["optim.batch_size"] == 32


@pytest.mark.parametrize("method", ["ssdkd", "udcd", "udcd-code"])
def test_default_overrides_name_real_config_keys(method: str) -> None:
    from distill.config import TrainConfig
    from distill.methods.registry import get_method

    cfg = TrainConfig()
    for key, value in get_method(method).default_overrides.items():
        current = cfg.get(key)  # raises AttributeError on a key the loop does not have
        assert isinstance(value, type(current)) or (isinstance(current, float) and isinstance(value, int)), key


def test_row_layout() -> None:
    b, v = 3, 4
    imgs = torch.arange(b * v, dtype=torch.float64).reshape(b, v, 1, 1, 1)
    flat = L.flatten_views(imgs).flatten().tolist()
    assert flat == [float(v * i + k) for i in range(b) for k in range(v)]
    nor, aug = L.nor_aug_index(b, v)
    assert nor.tolist() == [0, 4, 8] and aug.tolist() == [1, 2, 3, 5, 6, 7, 9, 10, 11]
    assert L.ss_targets(b, v).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_rotation_views_builds_rotations() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    for given in (x, x.unsqueeze(1)):
        r = rotation_views(given, 4)
        assert r.shape == (2, 4, 3, 4, 4)
        for k in range(4):
            assert torch.equal(r[:, k], torch.rot90(x, k, dims=(-2, -1)))
    already = torch.randn(2, 4, 3, 4, 4)
    assert rotation_views(already, 4) is already


def test_similarity_matches_reference() -> None:
    torch.manual_seed(0)
    b, v = 3, 4
    z = torch.randn(b * v, 5, dtype=torch.float64)
    got = L.rotation_similarity(z, b, v)
    assert got.shape == (3 * b, b)
    assert torch.allclose(got, torch.tensor(ref_similarity(z, b, v), dtype=torch.float64), atol=1e-12)


def test_class_weights_and_weighted_ce() -> None:
    w = L.class_weights_from_counts(COUNTS)
    assert torch.allclose(w.double(), torch.tensor([10 / 6, 10 / 3, 10 / 1], dtype=torch.float64), rtol=1e-6)
    assert L.class_weights_from_counts([4, 0]).tolist() == [1.0, 0.0]
    torch.manual_seed(0)
    logits = torch.randn(7, 3, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 2, 1, 0])
    got = torch.nn.functional.cross_entropy(logits, labels, weight=w.double())
    assert got.item() == pytest.approx(ref_weighted_ce(logits, labels, w.tolist()), rel=1e-10)


@pytest.mark.parametrize("T", [4.0, 0.5, 1.0])
def test_kl_soft_matches_reference(T: float) -> None:
    torch.manual_seed(1)
    s, t = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    assert L.kl_soft(s, t, T).item() == pytest.approx(ref_kl(s, t, T), rel=1e-10)
    assert L.kl_soft(s[:0], t[:0], T).item() == 0.0


def test_target_rank_matches_sorting() -> None:
    torch.manual_seed(2)
    scores = torch.randn(20, 6, dtype=torch.float64)
    targets = torch.randint(0, 6, (20,))
    assert L.target_rank(scores, targets).tolist() == ref_rank(scores, targets)


def test_selection_rule_hand_made() -> None:
    # teacher right on rows 0 and 2; wrong rows 1 (rank 3), 3 (rank 1), 4 (rank 2), 5 (rank 1)
    rank = torch.tensor([0, 3, 0, 1, 2, 1])
    assert L.select_rows(rank, 1.0).tolist() == [0, 1, 2, 3, 4, 5]
    assert L.select_rows(rank, 0.75).tolist() == [0, 2, 3, 4, 5]  # int(0.75·4) = 3 best wrong: 3, 5, 4
    assert L.select_rows(rank, 0.5).tolist() == [0, 2, 3, 5]  # 2 best wrong: rank-1 rows 3 and 5
    assert L.select_rows(rank, 0.0).tolist() == [0, 2]
    # through the rank: class scores of 3 rows, targets 1, 0, 2
    scores = torch.tensor([[0.1, 0.8, 0.1], [0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    r = L.target_rank(scores, torch.tensor([1, 0, 2]))
    assert r.tolist() == [0, 2, 2]
    assert L.select_rows(r, 0.75).tolist() == [0, 1]  # int(0.75·2)=1 wrong row kept; tie → first
    for ratio in (0.0, 0.3, 0.75, 1.0):
        rk = torch.randint(0, 4, (25,), generator=torch.Generator().manual_seed(3))
        assert L.select_rows(rk, ratio).tolist() == ref_select(rk.tolist(), ratio)


def test_rkd_terms_match_reference() -> None:
    torch.manual_seed(3)
    s, t = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 7, dtype=torch.float64) * 3
    assert L.rkd_distance(s, t).item() == pytest.approx(ref_rkd_dist(s, t), rel=1e-9)
    assert L.rkd_angle(s, t).item() == pytest.approx(ref_rkd_angle(s, t), rel=1e-9)


@pytest.mark.parametrize("shape", [(6, 16, 3, 3), (4, 3, 5, 5), (5, 8, 1, 1)])
@pytest.mark.parametrize("mode", ["naive", "spatial", "chunked", "auto"])
def test_gram_loss_exact_value_and_gradient(shape, mode) -> None:
    torch.manual_seed(4)
    fs = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    ft = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    eps = 1e-12
    got = L.gram_loss(fs, ft, eps=eps, mode=mode, chunk=4)  # chunk 4 does not divide N=6/5
    assert got.item() == pytest.approx(ref_gram_loss(fs.detach(), ft.detach(), eps), rel=1e-10)
    gs, gt = torch.autograd.grad(got, (fs, ft))
    # naive form, materialising the [N, C, C] Grams
    fs2, ft2 = fs.detach().clone().requires_grad_(), ft.detach().clone().requires_grad_()
    n, c = shape[:2]
    naive = torch.sqrt(((L.gram_matrix(fs2) - L.gram_matrix(ft2)) ** 2).sum() / (n * c * c) + eps)
    ns, nt = torch.autograd.grad(naive, (fs2, ft2))
    assert torch.allclose(gs, ns, rtol=1e-9, atol=1e-12)
    assert torch.allclose(gt, nt, rtol=1e-9, atol=1e-12)


def test_chunked_gram_gradcheck() -> None:
    torch.manual_seed(5)
    fs = torch.randn(3, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    ft = torch.randn(3, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: L.gram_sqdiff_sum(a, b, mode="chunked", chunk=2), (fs, ft))
    assert torch.autograd.gradcheck(lambda a, b: L.gram_sqdiff_sum(a, b, mode="spatial"), (fs, ft))


def test_match_spatial_pools_larger_map() -> None:
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2)
    pa, pb = L.match_spatial(a, b)
    assert pa.shape == (2, 3, 2, 2) and pb is b
    assert torch.allclose(pa, torch.nn.functional.avg_pool2d(a, 2))


# ---------------------------------------------------------------------------------------------
# The whole method
# ---------------------------------------------------------------------------------------------
def test_total_loss_equals_reference_composition() -> None:
    m = _method(seed=7, ss_epochs=0).double()
    m.teacher.double()
    m.train()
    batch = _batch(b=4, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.prepare(None, None)
    out = m.training_loss(batch, 0, 0)
    cfg = m.cfg
    b, v = 4, 4
    x = batch.images.reshape(b * v, 3, 32, 32)
    with torch.no_grad():
        os_, ot = m.student.forward_all(x), m.teacher.forward_all(x)
        fs = m.regressor(os_.feature_map)
        zs, zt = m.s_proj(os_.pooled), m.t_proj(ot.pooled)
    nor = list(range(0, b * v, v))
    aug = [r for r in range(b * v) if r % v]
    y = batch.labels
    w = [10 / 6, 10 / 3, 10.0]
    ce = ref_weighted_ce(os_.logits[nor], y, w)
    kd = ref_kl(os_.logits[nor], ot.logits[nor], 4.0)
    y_aug = y.repeat_interleave(3)
    keep_tf = ref_select(ref_rank(ot.logits[aug], y_aug), 1.0)
    tf = ref_kl(os_.logits[aug][keep_tf], ot.logits[aug][keep_tf], 4.0)
    st = torch.tensor(ref_similarity(zt, b, v), dtype=torch.float64)
    ss_ = torch.tensor(ref_similarity(zs, b, v), dtype=torch.float64)
    keep_ss = ref_select(ref_rank(st, torch.arange(b).repeat_interleave(3)), 0.75)
    ss = ref_kl(ss_[keep_ss], st[keep_ss], 0.5)
    rd = ref_rkd_dist(os_.pooled, ot.pooled)
    ra = ref_rkd_angle(os_.pooled, ot.pooled)
    gr = ref_gram_loss(fs, ot.feature_map, cfg.gram_eps)
    for key, ref in [("ce", ce), ("kd", kd), ("tf", tf), ("ss", ss), ("rkd_dist", rd), ("rkd_angle", ra),
                     ("gram", gr)]:
        assert out.logs[key] == pytest.approx(ref, rel=1e-6, abs=1e-9), key  # logs are float32
    total = 0.1 * ce + 0.9 * kd + 2.7 * tf + 10 * ss + 1.0 * (25 * rd + 50 * ra + 1000 * gr)
    assert out.loss.item() == pytest.approx(total, rel=1e-9)
    assert out.logits.shape == (b, NUM_CLASSES)
    assert out.logs["ss_kept"] == pytest.approx(len(keep_ss) / 12)


def test_gradients_reach_student_side_only() -> None:
    m = _method(ss_epochs=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.prepare(None, None)
    trainable = {id(p) for p in m.trainable_parameters()}
    assert all(id(p) not in trainable for p in m.teacher.parameters())
    assert all(id(p) not in trainable for p in m.t_proj.parameters())
    for mod in (m.student, m.s_proj, m.regressor):
        assert all(id(p) in trainable for p in mod.parameters())
    m.train()
    m.training_loss(_batch(), 0, 0).loss.backward()
    assert all(p.grad is None for p in m.teacher.parameters())
    assert all(p.grad is None for p in m.t_proj.parameters())
    assert not m.teacher.training
    for mod in (m.student, m.s_proj, m.regressor):
        grads = [p.grad for p in mod.parameters()]
        assert all(g is not None for g in grads)
        assert any(float(g.abs().sum()) > 0 for g in grads)


def test_few_steps_lower_the_loss() -> None:
    m = _method(seed=3, ss_epochs=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.prepare(None, None)
    m.train()
    opt = torch.optim.SGD(list(m.trainable_parameters()), lr=0.01, momentum=0.9)
    batch = _batch(b=4, seed=11)
    losses = []
    for step in range(8):
        losses.append(train_step(m, opt, batch, 0, step).loss.item())
    assert losses[-1] < 0.7 * losses[0], losses  # ~0.2-0.3 over seeds 0-5


def test_exported_student_is_a_plain_student() -> None:
    m = _method(ss_epochs=0)
    plain = build_model("tiny_cnn", NUM_CLASSES)
    sd, ref = m.student.state_dict(), plain.state_dict()
    assert list(sd) == list(ref)
    assert all(sd[k].shape == ref[k].shape for k in ref)
    extra = m.extra_state_dict()
    assert extra and not any(k.startswith("student.") for k in extra)
    assert {k.split(".")[0] for k in extra} == {"t_proj", "s_proj", "regressor", "ss_prepared"}


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_stage_a_trains_head_and_keeps_best(monkeypatch) -> None:
    m = _method(ss_epochs=2, ss_max_batches=2)
    before = {id(p) for p in m.trainable_parameters()}
    b = _batch(b=4)
    w0 = m.t_proj[0].weight.detach().clone()
    m.prepare([b, b, b], [Batch(b.images[:, :1], b.labels, b.indices)])  # val: one view → rotations built
    assert len(m.ss_history) == 2 and bool(m.ss_prepared)
    assert not torch.equal(w0, m.t_proj[0].weight)
    assert all(not p.requires_grad for p in m.t_proj.parameters())
    assert {id(p) for p in m.trainable_parameters()} == before
    m.prepare([b], [b])  # already prepared: no second stage A
    assert len(m.ss_history) == 2

    # best-validation selection: epoch k writes k into the head; validation losses 3, 1, 2 → keep epoch 2
    m2 = _method(ss_epochs=3)
    val_losses = iter([3.0, 1.0, 2.0])
    state = {"ep": 0}

    def fake_epoch(loader, device, opt, desc):
        if opt is not None:
            state["ep"] += 1
            with torch.no_grad():
                m2.t_proj[0].weight.fill_(state["ep"])
            return 0.5, 0.5
        return next(val_losses), 0.5

    monkeypatch.setattr(m2, "_ss_epoch", fake_epoch)
    m2.prepare([b], [b])
    assert float(m2.t_proj[0].weight.flatten()[0]) == 2.0


def test_stage_a_skipped_warns_loudly() -> None:
    m = _method(ss_epochs=0)
    with pytest.warns(UserWarning, match="NOT trained"):
        m.prepare(None, None)
    assert bool(m.ss_prepared)


@pytest.mark.parametrize("off, gone", [
    ("ce_weight", ["ce"]), ("kd_weight", ["kd"]), ("tf_weight", ["tf", "tf_kept"]),
    ("ss_weight", ["ss", "ss_kept", "ss_acc"]), ("rkd_dist_weight", ["rkd_dist"]),
    ("rkd_angle_weight", ["rkd_angle"]), ("gram_weight", ["gram"]),
    ("hr_weight", ["rkd_dist", "rkd_angle", "gram", "hr"]),
])
def test_switching_a_term_off_removes_it(monkeypatch, off, gone) -> None:
    calls: list[str] = []
    for fn in ("kl_soft", "rkd_distance", "rkd_angle", "gram_loss", "rotation_similarity", "select_rows"):
        orig = getattr(L, fn)
        monkeypatch.setattr(L, fn, lambda *a, _o=orig, _n=fn, **k: (calls.append(_n), _o(*a, **k))[1])
    m = _method(ss_epochs=0, **{off: 0.0})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.prepare(None, None)
    out = m.training_loss(_batch(), 0, 0)
    for key in gone:
        assert key not in out.logs
    expected_calls = {
        "kd_weight": ("kl_soft", 2), "tf_weight": ("kl_soft", 2), "ss_weight": ("rotation_similarity", 0),
        "rkd_dist_weight": ("rkd_distance", 0), "rkd_angle_weight": ("rkd_angle", 0),
        "gram_weight": ("gram_loss", 0), "hr_weight": ("gram_loss", 0),
    }
    if off in expected_calls:
        fn, n = expected_calls[off]
        assert calls.count(fn) == n, calls
    if off == "ss_weight":
        assert m.s_proj is None and m.t_proj is None and "select_rows" in calls  # tf still selects
    if off in ("gram_weight", "hr_weight"):
        assert m.regressor is None
    if off == "hr_weight":
        assert calls.count("rkd_distance") == 0 and calls.count("rkd_angle") == 0
    out.loss.backward()


def test_only_ce_needs_no_teacher_forward(monkeypatch) -> None:
    m = _method(ss_epochs=0, kd_weight=0, tf_weight=0, ss_weight=0, hr_weight=0)

    def boom(*a, **k):
        raise AssertionError("teacher forward should be skipped")

    monkeypatch.setattr(m.teacher, "forward_all", boom)
    m.prepare(None, None)
    out = m.training_loss(_batch(), 0, 0)
    assert set(out.logs) == {"ce"}
    assert out.loss.item() == pytest.approx(0.1 * out.logs["ce"], rel=1e-6)
    with pytest.raises(Exception, match="switched off"):
        _method(ss_epochs=0, ce_weight=0, kd_weight=0, tf_weight=0, ss_weight=0,
                hr_weight=0).training_loss(_batch(), 0, 0)


def test_spatial_mismatch_teacher_is_pooled() -> None:
    torch.manual_seed(0)
    features = nn.Sequential(nn.Conv2d(3, 24, 3, stride=4, padding=1), nn.ReLU(),
                             nn.Conv2d(24, 48, 3, stride=8, padding=1), nn.ReLU())  # 32 px → 1×1
    teacher = LesionClassifier(features, 48, NUM_CLASSES, dropout=0.0, arch="odd")
    m = _method(teacher=teacher, ss_epochs=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.prepare(None, None)
    out = m.training_loss(_batch(), 0, 0)
    assert math.isfinite(out.loss.item()) and "gram" in out.logs
    out.loss.backward()


def test_rkd_angles_from_the_gram_matrix_equal_the_direct_formula() -> None:
    """The O(N²D + N³) Gram identity gives the paper's direct O(N³D) angles and their gradients."""
    torch.manual_seed(5)
    x = torch.randn(12, 9, dtype=torch.float64) * 4 + 1
    a, b = L._angles(x), L._angles_direct(x)
    assert torch.allclose(a, b, rtol=0, atol=1e-12)
    # gradients against finite differences (the direct formula's own autograd gradient is no reference:
    # F.normalize of the zero diagonal differences adds and cancels 1/eps-sized terms, ~1e-3 noise)
    assert torch.autograd.gradcheck(L._angles, (torch.randn(6, 4, dtype=torch.float64, requires_grad=True),))
    w = torch.linspace(-1, 1, a.numel(), dtype=a.dtype)
    # a duplicate row: its difference is the zero vector (angle 0), and the gradient stays finite
    # (the direct formula's F.normalize has a 1/eps gradient there; ours is 0)
    x[7] = x[3]
    xd = x.clone().requires_grad_(True)
    ad = L._angles(xd)
    assert torch.allclose(ad, L._angles_direct(x), rtol=0, atol=1e-12)
    (ad * w).sum().backward()
    assert torch.isfinite(xd.grad).all()
    f32 = torch.randn(64, 32)
    assert L._angles(f32).dtype == torch.float32
    assert torch.allclose(L._angles(f32), L._angles_direct(f32), atol=2e-5)
