"""Load test for ``lesionlite serve``: served vs raw in-process throughput, and a soak test.

What it does (loopback only, every loop bounded by a request count AND a duration):

1. Takes ``--model-dir`` (an exported artifact dir or a parent of several) or builds a fixture:
   ``--arch`` (default mobilenet_v2, random weights, 224 px, 7 classes) exported to ONNX with torch.
2. Raw in-process throughput of the same serve runtime (``serve.models.load_models``): the runtime
   alone on preprocessed tensors at batch 1 and at the micro-batch sizes (2, 4, …, --max-batch), and
   the full single-thread pipeline (decode + preprocess + runtime, batch 1).
   The raw runtime runs with the runtime's own defaults (onnxruntime: idle threads spin-wait), its
   fastest single-stream setting; the server turns spinning off (``serve --runtime-spin`` to keep it).
3. Starts a real server (``python -m serve``, a separate process) on a free 127.0.0.1 port and drives
   ``POST /predict`` with the lean keep-alive client of ``benchmarks/loadgen.py`` at each
   ``--concurrency`` level (default 1 and 8), a 600×450 JPEG (the size of a HAM10000 image) per
   request; reports throughput, p50/p90/p99 latency, errors, the CPU time the server and the client
   spent per request, and the server's RSS before/after.
4. The headline: served throughput at the highest concurrency ÷ raw batch-1 runtime throughput
   (target ≥ 80 %), measured ``--rounds`` times as back-to-back pairs (raw, then served) so that a
   shared host's drifting speed affects both sides of each ratio alike; the median pair is the
   headline and every pair is kept. Also reported against the raw full pipeline.
5. ``--soak SECONDS``: mixed valid and malformed requests at concurrency 8; every response must have
   its expected status (200 for valid, the documented 4xx for each malformed kind, 503 allowed as
   back-pressure); reports unexpected responses and RSS drift.

Writes ``benchmarks/results/serve_load.json`` (``--out``). The load generator runs on the same
machine as the server, so on a small host they compete for CPU; the JSON records the CPU count.

    python benchmarks/serve_load.py                      # fixture model, c=1 and c=8
    python benchmarks/serve_load.py --model-dir artifacts/demo --soak 30
    python benchmarks/serve_load.py --threads 1 --max-batch 1 --soak 600   # RESULTS.md, section 3
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.loadgen import drive_fast, latency_percentiles, multipart_request
from lesionlite.preprocessing import load_image_bytes, preprocess
from serve.models import load_models

REPO = Path(__file__).resolve().parents[1]

CLASS_NAMES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


# ------------------------------------------------------------------------------------------ fixture


def build_fixture(out_dir: Path, arch: str, input_size: int) -> Path:
    """Random-weight ``arch`` → ONNX (dynamic batch) + manifest; needs torch (the server does not)."""
    import torch

    from distill.models.registry import build_model
    from lesionlite.manifest import Manifest
    from lesionlite.preprocessing import PreprocessConfig

    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_model(arch, len(CLASS_NAMES)).eval()
    x = torch.zeros(1, 3, input_size, input_size)
    torch.onnx.export(model, (x,), str(out_dir / "model.onnx"), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    Manifest(kind="onnx", architecture=arch, class_names=CLASS_NAMES,
             preprocessing=PreprocessConfig(input_size=input_size),
             input={"layout": "NCHW", "dtype": "float32", "shape": [1, 3, input_size, input_size], "quantization": None},
             calibration={"temperature": 1.0}, files={"model": "model.onnx"},
             precision="fp32", extra={"fixture": "benchmarks/serve_load.py (random weights)"}).write(out_dir)
    return out_dir


def sample_jpeg(w: int = 600, h: int = 450, seed: int = 0) -> bytes:
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(xx - w / 2, (yy - h / 2) * 1.2)
    base = np.stack([200 - r / 6, 150 - r / 5, 130 - r / 6], -1) + rng.normal(0, 12, (h, w, 3))
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.2))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ raw


def load_raw_entry(model_dir: Path, model: str | None, threads: int):
    """The model as ``serve`` loads it, but with the runtime's own thread defaults (spin-waiting on)."""
    models = load_models(model_dir, threads=threads, spin_wait=True).models
    return models[model or sorted(models)[0]]


def timed(fn, items_per_call: int, seconds: float, max_iters: int) -> dict[str, float]:
    """Calls ``fn`` (3 warm-up calls, then until ``seconds`` or ``max_iters``): images/s and p50 per call."""
    for _ in range(3):
        fn()
    lat = []
    t_end = time.perf_counter() + seconds
    while len(lat) < max_iters and time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - t0)
    total = sum(lat)
    return {"calls": len(lat), "images_per_s": items_per_call * len(lat) / total,
            "ms_per_call_p50": float(np.percentile(lat, 50) * 1e3)}


def raw_throughput(entry, jpeg: bytes, batch_sizes: list[int], seconds: float, max_iters: int) -> dict[str, Any]:

    rt = entry.runtime
    x1 = preprocess(load_image_bytes(jpeg), entry.manifest.preprocessing, layout=rt.layout)  # type: ignore[arg-type]
    out: dict[str, Any] = {"model": entry.name, "runtime": rt.platform, "runtime_settings": rt.describe(),
                           "runtime_only": {}}
    for b in batch_sizes:
        xb = np.stack([x1] * b)
        out["runtime_only"][str(b)] = timed(lambda xb=xb: rt.predict(xb), b, seconds, max_iters)
    out["pipeline_b1"] = timed(
        lambda: rt.predict(preprocess(load_image_bytes(jpeg), entry.manifest.preprocessing, layout=rt.layout)[None]),  # type: ignore[arg-type]
        1, seconds, max_iters)
    return out


# ------------------------------------------------------------------------------------------ server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model_dir: Path, args: argparse.Namespace) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(self.port),
               "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
               "--queue-size", str(args.queue_size), "--log-level", "warning", "--max-upload-mb", "2"]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if args.runtime_spin:
            cmd += ["--runtime-spin"]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def wait_ready(self, timeout: float = 120) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited: " + self.proc.stderr.read().decode()[-2000:])
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not become ready")

    def rss_mb(self) -> float:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def served_level(server: Server, payload: bytes, concurrency: int, n_requests: int, duration: float) -> dict[str, Any]:
    """One load level with the lean client, plus the CPU time server and client spent per request."""
    import psutil

    srv, me = psutil.Process(server.proc.pid), psutil.Process()
    s0, c0 = srv.cpu_times(), me.cpu_times()
    res = asyncio.run(drive_fast(server.url, payload, concurrency, n_requests, duration))
    s1, c1 = srv.cpu_times(), me.cpu_times()
    n = max(1, res["requests"])
    res["server_cpu_ms_per_request"] = (s1.user + s1.system - s0.user - s0.system) / n * 1e3
    res["client_cpu_ms_per_request"] = (c1.user + c1.system - c0.user - c0.system) / n * 1e3
    return res


async def drive(url: str, concurrency: int, n_requests: int, duration: float,
                make_request, expect=None) -> dict[str, Any]:
    """``concurrency`` workers share ``n_requests``; each stops at the deadline too."""
    import httpx

    counter = {"next": 0}
    lat: list[float] = []
    statuses: dict[str, int] = {}
    unexpected: list[str] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        t_start = time.perf_counter()
        deadline = t_start + duration

        async def worker() -> None:
            while counter["next"] < n_requests and time.perf_counter() < deadline:
                i = counter["next"]
                counter["next"] += 1
                kind, req = make_request(i)
                t0 = time.perf_counter()
                try:
                    r = await client.request(**req)
                    code = r.status_code
                    ok_json = True
                    if code >= 400:
                        body = r.json()
                        ok_json = isinstance(body, dict) and "error" in body and "detail" in body
                except Exception as exc:  # transport errors count as unexpected
                    code, ok_json = -1, False
                    unexpected.append(f"{kind}: {type(exc).__name__}: {exc}")
                dt = time.perf_counter() - t0
                statuses[str(code)] = statuses.get(str(code), 0) + 1
                if code == 200:
                    lat.append(dt)
                if expect is not None and code != -1:
                    allowed = expect[kind]
                    if code not in allowed or not ok_json:
                        unexpected.append(f"{kind}: got {code}")

        await asyncio.gather(*[worker() for _ in range(concurrency)])
        wall = time.perf_counter() - t_start
    ok = statuses.get("200", 0)
    return {"concurrency": concurrency, "requests": sum(statuses.values()), "ok": ok,
            "errors": sum(v for k, v in statuses.items() if k != "200"), "statuses": statuses,
            "wall_s": wall, "throughput_rps": ok / wall if wall > 0 else 0.0, **latency_percentiles(lat),
            "unexpected": unexpected[:20], "unexpected_count": len(unexpected)}


def _png_bomb(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")


def build_soak_mix(jpeg: bytes, max_upload: int) -> tuple[list[tuple[str, dict]], dict[str, set[int]]]:
    from PIL import Image

    def enc(img, fmt, **kw) -> bytes:
        b = io.BytesIO()
        img.save(b, fmt, **kw)
        return b.getvalue()

    rgb = Image.open(io.BytesIO(jpeg)).convert("RGB").resize((300, 225))
    f = lambda name, data, ct="image/jpeg": {"method": "POST", "url": "/predict",  # noqa: E731
                                              "files": {"file": (name, data, ct)}}
    mix: list[tuple[str, dict]] = [
        ("valid_jpeg", f("a.jpg", jpeg)),
        ("valid_png_rgba", f("b.png", enc(rgb.convert("RGBA"), "PNG"), "image/png")),
        ("valid_png_l", f("c.png", enc(rgb.convert("L"), "PNG"), "image/png")),
        ("valid_webp", f("d.webp", enc(rgb, "WEBP"), "image/webp")),
        ("valid_jpeg", f("a.jpg", jpeg)),
        ("valid_batch", {"method": "POST", "url": "/predict/batch",
                         "files": [("files", ("a.jpg", jpeg, "image/jpeg")), ("files", ("x.pdf", b"%PDF-1.4", "a/b"))]}),
        ("valid_jpeg", f("a.jpg", jpeg)),
        ("empty", f("e.jpg", b"")),
        ("truncated", f("t.jpg", jpeg[: len(jpeg) // 2])),
        ("pdf", f("p.jpg", b"%PDF-1.7\n1 0 obj<<>>endobj\n")),
        ("bomb", f("bomb.png", _png_bomb(9000, 9000), "image/png")),
        ("too_large", f("big.jpg", b"\xff\xd8\xff" + os.urandom(max_upload + 100_000))),
        ("unknown_model", {**f("a.jpg", jpeg), "params": {"model": "nope"}}),
        ("missing_field", {"method": "POST", "url": "/predict", "files": {"image": ("a.jpg", jpeg, "image/jpeg")}}),
        ("bad_query", {**f("a.jpg", jpeg), "params": {"top_k": "zero"}}),
    ]
    busy = {503}
    expect = {
        "valid_jpeg": {200} | busy, "valid_png_rgba": {200} | busy, "valid_png_l": {200} | busy,
        "valid_webp": {200} | busy, "valid_batch": {200} | busy, "empty": {400}, "truncated": {400},
        "pdf": {415}, "bomb": {413}, "too_large": {413}, "unknown_model": {404}, "missing_field": {422},
        "bad_query": {422},
    }
    return mix, expect


# ------------------------------------------------------------------------------------------ main


def fmt_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, help="exported model dir (default: build a fixture)")
    p.add_argument("--model", help="model name within --model-dir (default: the server's default)")
    p.add_argument("--arch", default="mobilenet_v2", help="fixture architecture (default %(default)s)")
    p.add_argument("--input-size", type=int, default=224, help="fixture input size (default %(default)s)")
    p.add_argument("--concurrency", default="1,8", help="comma-separated client concurrency levels")
    p.add_argument("--requests", type=int, default=2000, help="requests per concurrency level (upper bound)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per concurrency level (upper bound)")
    p.add_argument("--raw-seconds", type=float, default=5.0, help="seconds per raw measurement (upper bound)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--queue-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="runtime threads (0 = runtime default), raw and served")
    p.add_argument("--rounds", type=int, default=3,
                   help="back-to-back (raw b1, served) pairs for the headline ratio (default %(default)s)")
    p.add_argument("--runtime-spin", action="store_true", help="pass --runtime-spin to the server")
    p.add_argument("--soak", type=float, default=0.0, metavar="SECONDS", help="also run a mixed soak test")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serve_load.json")
    return p


def served_levels(server: Server, args: argparse.Namespace, jpeg: bytes, entry: Any, x1: np.ndarray,
                  levels: list[int]) -> dict[str, Any]:
    """Warm-up, each concurrency level, then ``--rounds`` back-to-back (raw batch 1, served) pairs; RSS around."""
    params = {"model": args.model} if args.model else None

    def make(i: int) -> tuple[str, dict[str, Any]]:
        return "valid", {"method": "POST", "url": "/predict", "params": params,
                         "files": {"file": ("lesion.jpg", jpeg, "image/jpeg")}}

    out: dict[str, Any] = {"rss_start": server.rss_mb()}
    payload = multipart_request(server.url, "/predict", "file", "lesion.jpg", jpeg, params=params)
    asyncio.run(drive(server.url, 2, 20, 10, make))  # warm-up
    out["rss_before"] = server.rss_mb()
    out["served"] = []
    for c in levels:
        print(f"serving at concurrency {c} …", flush=True)
        out["served"].append(served_level(server, payload, c, args.requests, args.duration))
    top_c = levels[-1]
    out["pairs"] = []
    for r in range(args.rounds):
        print(f"pair {r + 1}/{args.rounds}: raw batch 1, then served at concurrency {top_c} …", flush=True)
        raw_b1 = timed(lambda: entry.runtime.predict(x1), 1, args.raw_seconds, 5000)["images_per_s"]
        srv = served_level(server, payload, top_c, args.requests, args.duration)
        out["pairs"].append({"raw_b1_images_per_s": raw_b1, "served_rps": srv["throughput_rps"],
                             "ratio": srv["throughput_rps"] / raw_b1, "served": srv})
    out["rss_after"] = server.rss_mb()
    return out


def soak_test(server: Server, seconds: float, jpeg: bytes) -> dict[str, Any]:
    """``seconds`` of mixed valid / malformed requests at concurrency 8, the server's RSS sampled once a second."""
    print(f"soak: {seconds:.0f} s of mixed valid/malformed requests at concurrency 8 …", flush=True)
    mix, expect = build_soak_mix(jpeg, 2 * 2**20)
    rss_soak_start = server.rss_mb()
    samples: list[float] = []

    async def sampler() -> None:
        while True:
            samples.append(server.rss_mb())
            await asyncio.sleep(1.0)

    async def soak_run() -> dict[str, Any]:
        task = asyncio.create_task(sampler())
        try:
            return await drive(server.url, 8, 10**7, seconds, lambda i: mix[i % len(mix)], expect)
        finally:
            task.cancel()

    soak = asyncio.run(soak_run())
    rss_soak_end = server.rss_mb()
    n = len(samples)
    soak.update({
        "seconds": seconds, "rss_start_mb": rss_soak_start, "rss_end_mb": rss_soak_end,
        "rss_drift_mb": rss_soak_end - rss_soak_start, "rss_peak_mb": max(samples or [rss_soak_end]),
        # drift between the means of the first and last thirds (robust to one-off spikes)
        "rss_trend_mb": (float(np.mean(samples[-(n // 3):]) - np.mean(samples[: n // 3])) if n >= 6 else None),
        # one sample a second, to see whether memory grows or levels off
        "rss_samples_mb": [round(s, 2) for s in samples],
        "server_alive": server.proc.poll() is None,
    })
    return soak


def measure(args: argparse.Namespace, levels: list[int]) -> tuple[dict[str, Any], dict[str, Any], dict | None, int]:
    """(raw in-process figures, served figures, soak or None, JPEG size) on the model or a fixture."""
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        model_dir = args.model_dir
        if model_dir is None:
            print(f"building fixture: {args.arch} ({args.input_size} px, random weights) → ONNX …", flush=True)
            model_dir = build_fixture(Path(tmp) / "model", args.arch, args.input_size)
        jpeg = sample_jpeg()
        batch_sizes = sorted({1, *[b for b in (2, 4, 8, 16, 32) if b <= args.max_batch], args.max_batch})
        print("raw in-process throughput …", flush=True)
        entry = load_raw_entry(model_dir, args.model, args.threads)
        raw = raw_throughput(entry, jpeg, batch_sizes, args.raw_seconds, 5000)
        x1 = preprocess(load_image_bytes(jpeg), entry.manifest.preprocessing, layout=entry.runtime.layout)[None]  # type: ignore[arg-type]
        server = Server(model_dir, args)
        try:
            server.wait_ready()
            served = served_levels(server, args, jpeg, entry, x1, levels)
            soak = soak_test(server, args.soak, jpeg) if args.soak > 0 else None
        finally:
            server.stop()
    return raw, served, soak, len(jpeg)


def build_result(args: argparse.Namespace, raw: dict[str, Any], m: dict[str, Any], soak: dict | None,
                 image_bytes: int) -> dict[str, Any]:
    """The result document: settings, raw and served figures, the served / raw ratios (median of the pairs)."""
    top = m["served"][-1]
    raw_b1 = raw["runtime_only"]["1"]["images_per_s"]
    best_raw = max(v["images_per_s"] for v in raw["runtime_only"].values())
    ratios = sorted(pr["ratio"] for pr in m["pairs"])
    headline = float(np.median(ratios)) if ratios else top["throughput_rps"] / raw_b1
    return {
        "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()},
        "model_dir": str(args.model_dir) if args.model_dir else f"fixture:{args.arch}@{args.input_size}",
        "settings": {"max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "queue_size": args.queue_size,
                     "threads": args.threads, "runtime_spin": args.runtime_spin, "rounds": args.rounds,
                     "image": "600x450 JPEG", "image_bytes": image_bytes},
        "raw": raw, "served": m["served"], "pairs": m["pairs"],
        "rss_mb": {"after_start": m["rss_start"], "before_load": m["rss_before"], "after_load": m["rss_after"]},
        "ratio_served_to_raw_b1": headline,
        "ratio_served_to_raw_b1_range": [ratios[0], ratios[-1]] if ratios else None,
        "ratio_served_to_raw_best_batch": top["throughput_rps"] / best_raw,
        "ratio_served_to_raw_pipeline": top["throughput_rps"] / raw["pipeline_b1"]["images_per_s"],
        "target_ratio": 0.8, "soak": soak,
    }


def report_rows(result: dict[str, Any]) -> list[list[str]]:
    raw, served = result["raw"], result["served"]
    rows = [["measurement", "img/s", "p50 ms", "p90 ms", "p99 ms", "errors"]]
    for b, v in raw["runtime_only"].items():
        rows.append([f"raw runtime, batch {b}", f"{v['images_per_s']:.1f}", f"{v['ms_per_call_p50']:.2f}", "", "", "0"])
    v = raw["pipeline_b1"]
    rows.append(["raw decode+preprocess+runtime, b1", f"{v['images_per_s']:.1f}", f"{v['ms_per_call_p50']:.2f}", "", "",
                 "0"])
    for s in served:
        rows.append([f"served HTTP, concurrency {s['concurrency']}", f"{s['throughput_rps']:.1f}", f"{s['p50_ms']:.2f}",
                     f"{s['p90_ms']:.2f}", f"{s['p99_ms']:.2f}", str(s["errors"])])
    for i, pr in enumerate(result["pairs"], 1):
        s = pr["served"]
        rows.append([f"pair {i}: raw b1 / served c={s['concurrency']}",
                     f"{pr['raw_b1_images_per_s']:.0f} / {s['throughput_rps']:.0f}", f"{s['p50_ms']:.2f}",
                     f"{s['p90_ms']:.2f}", f"{s['p99_ms']:.2f}", str(s["errors"])])
    return rows


def print_report(args: argparse.Namespace, result: dict[str, Any]) -> None:
    raw, served, soak, rss = result["raw"], result["served"], result["soak"], result["rss_mb"]
    top = served[-1]
    print()
    print(f"model {raw['model']} ({raw['runtime']}), {os.cpu_count()} CPUs, max_batch {args.max_batch}, "
          f"max_wait {args.max_wait_ms} ms")
    print(fmt_table(report_rows(result)))
    print(f"server RSS: {rss['after_start']:.0f} MB after start, {rss['before_load']:.0f} MB before load, "
          f"{rss['after_load']:.0f} MB after load")
    for s in served:
        print(f"c={s['concurrency']}: CPU per request: server {s['server_cpu_ms_per_request']:.2f} ms, "
              f"load generator {s['client_cpu_ms_per_request']:.2f} ms")
    rng = result["ratio_served_to_raw_b1_range"]
    print(f"served (c={top['concurrency']}) / raw runtime batch 1   = {result['ratio_served_to_raw_b1']:.0%} "
          "(target ≥ 80%)"
          + (f", median of {len(result['pairs'])} back-to-back pairs, range {rng[0]:.0%}–{rng[1]:.0%}" if rng else ""))
    print(f"served (c={top['concurrency']}) / raw runtime best batch = {result['ratio_served_to_raw_best_batch']:.0%}")
    print(f"served (c={top['concurrency']}) / raw full pipeline b1   = {result['ratio_served_to_raw_pipeline']:.0%}")
    if soak:
        print(f"soak {soak['seconds']:.0f} s: {soak['requests']} requests, statuses {soak['statuses']}, "
              f"unexpected {soak['unexpected_count']}, RSS {soak['rss_start_mb']:.0f} → {soak['rss_end_mb']:.0f} MB "
              f"(drift {soak['rss_drift_mb']:+.1f} MB, peak {soak['rss_peak_mb']:.0f} MB), "
              f"server alive: {soak['server_alive']}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",") if c]
    raw, served, soak, image_bytes = measure(args, levels)
    result = build_result(args, raw, served, soak, image_bytes)
    print_report(args, result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    bad = (soak is not None and (soak["unexpected_count"] or not soak["server_alive"])) or any(
        s["ok"] == 0 for s in result["served"])
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
