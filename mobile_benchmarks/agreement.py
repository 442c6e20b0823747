"""ARM-vs-host agreement: does the board's runtime give the answers the export promised?

What emulation *is* good for: the emulated board runs ARM's own kernels (XNNPACK NEON int8, ONNX
Runtime's aarch64 MLAS), so a user shipping int8 to a phone learns whether those kernels give the
outputs the export report measured on the host. For every ONNX and TFLite artifact the same N real
test images (the manifest's data spec and split seed, the export's evaluation split; a seeded subset
when N is smaller) go through the same preprocessing, are run once on the target and once on this
host (``remote_runner.py --predict`` on both sides, one thread), and are compared:

* top-1 agreement and max / mean |Δ| of the outputs (logits), and whether they are bit-identical;
* top-1 accuracy of each side against the labels (real data only);
* against PyTorch, per image: ``lesionlite export`` saves PyTorch's logits on its evaluation images
  with their split and indices (``pytorch_reference.npz`` beside the report); when it is there and
  names the same data and checkpoint, the images are drawn from those indices and the target's and
  the host's outputs are also compared with PyTorch's (bench stays torch-free: it only reads them);
* next to them, the export's own summary parity against PyTorch (``manifest.parity``, on the
  export host and all its evaluation images).

Where no real data is found the inputs are seeded random images and the table says so.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lesionlite.errors import LesionliteError
from mobile_benchmarks.artifacts import Artifact

DEFAULT_IMAGES = 500


REFERENCE_FILE = "pytorch_reference.npz"  # written by export (export.api.REFERENCE_FILE)


def pytorch_reference(art: Artifact) -> dict[str, Any] | None:
    """The export's per-image PyTorch logits for this artifact, when saved and made from the same data
    and checkpoint (else None: an older export, or a reference from another model)."""
    path = art.directory.parent / REFERENCE_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            ref = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise LesionliteError(f"{path}: unreadable PyTorch reference ({exc}); re-run lesionlite export") from None
    want_fp = str((art.manifest.data or {}).get("fingerprint") or "")
    want_sha = str(art.manifest.source_sha256 or "")
    if str(ref.get("data_fingerprint", "")) != want_fp or str(ref.get("checkpoint_sha256", "")) != want_sha:
        return None
    if len(ref.get("indices", [])) != len(ref.get("logits", [])):
        return None  # the evaluation split was not indexable: images cannot be matched
    return {"path": path, "split": str(ref["split"]), "indices": ref["indices"].astype(np.int64),
            "logits": ref["logits"].astype(np.float64)}


def eval_images(art: Artifact, n: int, seed: int = 0,
                reference: dict[str, Any] | None = None) -> tuple[list[Any], np.ndarray | None, str, np.ndarray | None]:
    """(images, labels or None, description, PyTorch logits or None): ``n`` images of the export's
    evaluation split — drawn from the ones PyTorch was measured on when ``reference`` is given."""
    data = art.manifest.data or {}
    spec = data.get("spec") or data.get("name")
    split = art.manifest.evaluation.get("eval_split") or "test"
    if reference is not None:
        split = reference["split"]
    reason = "the manifest names no dataset"
    if spec:
        try:
            from distill.data import load_dataset  # torch-free loader (PIL + numpy)

            bundle = load_dataset(str(spec), None, int(data.get("split_seed") or 0), **(data.get("options") or {}))
            ds = bundle.split(split)
            total = len(ds)
            pool = reference["indices"] if reference is not None else np.arange(total)
            pick = (np.arange(len(pool)) if n >= len(pool)
                    else np.sort(np.random.default_rng(seed).choice(len(pool), size=n, replace=False)))
            pairs = [ds[int(pool[i])] for i in pick]
            kind = "synthetic" if bundle.synthetic else "real"
            torch_logits = reference["logits"][pick] if reference is not None else None
            what = f"{kind} images of the {split} split of {bundle.name}"
            if len(pairs) < len(pool):
                where = f"of the {len(pool)} export evaluated against PyTorch" if reference is not None else f"of {total}"
                source = f"{len(pairs)} {what} ({where}; seed {seed} subset)"
            else:
                source = f"all {len(pool)} {what}" + (" that export evaluated against PyTorch" if reference is not None else "")
            return [p[0] for p in pairs], np.array([int(p[1]) for p in pairs]), source, torch_logits
        except (LesionliteError, ImportError, OSError, ValueError, KeyError) as exc:
            reason = why_no_data(str(spec), exc)
    from PIL import Image

    rng = np.random.default_rng(seed)
    side = max(art.manifest.preprocessing.effective_resize, art.manifest.preprocessing.input_size)
    imgs = [Image.fromarray(rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8), mode="RGB") for _ in range(n)]
    return imgs, None, f"{n} seeded random images (no real test images: {reason})", None


def why_no_data(spec: str, exc: BaseException) -> str:
    """Why the agreement check fell back to random images, in words a user can act on.

    An ImportError means the data layer itself could not be imported (a package missing from this
    environment), not that the data is missing: saying "not available" then would send the user looking
    for a folder that is there. A loader's own error names the folder it looked in (distill.data.paths).
    """
    if isinstance(exc, ImportError):
        missing = f" (module {exc.name!r} is not installed)" if exc.name else ""
        return (f"data {spec!r} was not read: a module the data layer needs is missing here{missing}; "
                f"{type(exc).__name__}: {exc}")
    return f"data {spec!r} not available here: {exc}"


def compare_outputs(target_out: np.ndarray, host_out: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
    """Agreement figures of two [N, C] output arrays (and accuracy of each when labels are known)."""
    diff = np.abs(target_out - host_out)
    row = {
        "n": int(len(host_out)),
        "top1_agreement": float(np.mean(target_out.argmax(1) == host_out.argmax(1))),
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "bit_identical": bool(np.array_equal(target_out, host_out)),
    }
    if labels is not None:
        row["accuracy_target"] = float(np.mean(target_out.argmax(1) == labels))
        row["accuracy_host"] = float(np.mean(host_out.argmax(1) == labels))
    return row


def export_parity(art: Artifact) -> dict[str, Any] | None:
    """The export's host-vs-PyTorch parity of this artifact (summary figures only), if recorded."""
    par = art.manifest.parity
    if not isinstance(par, dict):
        return None
    keep = {k: par.get(k) for k in ("top1_agreement", "max_abs_logits", "mean_abs_logits", "n") if par.get(k) is not None}
    return {**keep, "reference": "PyTorch, measured by export on the export host"} if keep else None


def _vs_pytorch(target_out: np.ndarray, host_out: np.ndarray, torch_logits: np.ndarray | None) -> dict[str, Any] | None:
    """Target and host against PyTorch's logits on the same images (None without a reference)."""
    if torch_logits is None:
        return None
    t, h = compare_outputs(target_out, torch_logits, None), compare_outputs(host_out, torch_logits, None)
    return {"n": t["n"], "target_top1_agreement": t["top1_agreement"], "target_max_abs_diff": t["max_abs_diff"],
            "host_top1_agreement": h["top1_agreement"], "host_max_abs_diff": h["max_abs_diff"]}


def run_agreement(arts: list[Artifact], target: Any, host: Any, n: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Per ONNX/TFLite artifact: outputs on ``target`` vs on ``host`` for ``n`` evaluation images."""
    rows: list[dict[str, Any]] = []
    sources: set[str] = set()
    cache: dict[tuple, tuple] = {}
    with tempfile.TemporaryDirectory(prefix="lesionlite-agree-") as tmp:
        for art in arts:
            if art.kind not in ("onnx", "tflite") or art.info.get("problem") or art.model_path is None:
                continue
            base = {"artifact": art.name, "kind": art.kind, "precision": art.info.get("precision"),
                    "export_vs_pytorch": export_parity(art)}
            reference = pytorch_reference(art)
            key = (str(art.manifest.data.get("spec") or art.manifest.data.get("name")), art.manifest.data.get("split_seed"),
                   None if reference is None else str(reference["path"]))
            if key not in cache:
                cache[key] = eval_images(art, n, reference=reference)
                if cache[key][1] is None:  # no labels: random images stand in, and the user hears why
                    log(f"[agree] {cache[key][2]}")
            images, labels, source, torch_logits = cache[key]
            sources.add(source)
            try:
                from mobile_benchmarks.bench import input_from_image

                batch = np.stack([input_from_image(art, img) for img in images])
            except LesionliteError as exc:
                rows.append({**base, "status": "failed", "reason": str(exc)})
                continue
            npy = Path(tmp) / f"{art.name.replace('/', '_')}_agreement_inputs.npy"
            np.save(npy, batch)
            log(f"[agree] {art.name}: {len(images)} images on {target.name} and on the host ...")
            t_res = target.predict(art.info, art.model_path, npy)
            h_res = host.predict(art.info, art.model_path, npy)
            bad = [(w, r) for w, r in (("target", t_res), ("host", h_res)) if r.get("status") != "ok"]
            if bad:
                rows.append({**base, "status": "failed",
                             "reason": "; ".join(f"{w}: {r.get('reason') or r.get('status')}" for w, r in bad)})
                log(f"[agree]   failed: {rows[-1]['reason']}")
                continue
            t_out = np.asarray(t_res["outputs"], dtype=np.float64)
            h_out = np.asarray(h_res["outputs"], dtype=np.float64)
            row = {**base, "status": "ok", **compare_outputs(t_out, h_out, labels),
                   "target_machine": (t_res.get("platform") or {}).get("machine"),
                   "host_machine": (h_res.get("platform") or {}).get("machine"),
                   "target_runtime": f"{t_res.get('runtime')} {t_res.get('runtime_version')}",
                   "host_runtime": f"{h_res.get('runtime')} {h_res.get('runtime_version')}",
                   "emulated": (t_res.get("platform") or {}).get("emulator"),
                   "target_ms_per_inference": t_res["total_ns"] / 1e6 / max(t_res["n"], 1),
                   "vs_pytorch": _vs_pytorch(t_out, h_out, torch_logits)}
            rows.append(row)
            log(f"[agree]   top-1 agreement {row['top1_agreement']:.4f}, max |Δ| {row['max_abs_diff']:.3g}"
                f"{' (bit-identical)' if row['bit_identical'] else ''}")
    return {
        "images": n,
        "inputs": sorted(sources),
        "method": "the same preprocessed inputs run once per image on the target and on this host "
                  "(remote_runner.py --predict, 1 thread, XNNPACK for TFLite; runtime versions per row, the same "
                  "on the emulated board by construction); outputs are the model's logits (dequantized when the "
                  "output tensor is integer)",
        "rows": rows,
    }
