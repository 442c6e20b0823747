"""``lesionlite serve`` against a minimal endpoint doing the same work, side by side in one run.

The minimal endpoint is a bare Starlette app under the same uvicorn (same defaults as ``lesionlite
serve``: h11, asyncio, access log at ``info``) with one route, ``POST /predict``: Starlette's own form
parsing, then in a worker thread ``lesionlite.preprocessing.load_image_bytes`` + ``preprocess`` + the
same serve runtime (``serve.models.load_models``, same ``--threads``) on a batch of one, and a JSON of
the calibrated probabilities. It has none of serve's checks, limits, metrics, micro-batching, OOD
check, referral or schema — it is the floor of "decode + preprocess + model + JSON" over HTTP. It runs
with the glibc allocator settings serve applies (``lesionlite.cpu_malloc``; ``LESIONLITE_MALLOC_TUNING=0``
turns them off for both).

Both servers run at once (separate processes, one idle while the other is measured) and are driven
alternately by the same lean keep-alive client (``benchmarks/loadgen.py``) with real HAM10000 JPEGs,
one image per request: per round, warm-up, then ``--requests`` at ``--concurrency`` (throughput),
then ``--latency-requests`` one at a time (p50/p99); the order of the two servers alternates between
rounds. The headline is the median over rounds of serve ÷ minimal throughput, and the p99 difference
at concurrency 1. Before measuring, it checks that both servers give the same probabilities.

    .venv/bin/python -m benchmarks.serve_vs_minimal --artifact artifacts/h31_64/mobilenet_v2_tflite_int8
    .venv/bin/python -m benchmarks.serve_vs_minimal --artifact DIR --out benchmarks/results/serve_overhead_64.json

Run from the repository root (``-m``: no path tricks). ``minimal-server`` is the subcommand the
benchmark starts for the minimal endpoint.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.loadgen import KeepAliveConnection, ResponseError, latency_percentiles, multipart_request
from lesionlite.cpu_malloc import tune_glibc_malloc
from lesionlite.preprocessing import load_image_bytes, preprocess
from mobile_benchmarks.hostinfo import cpu_model
from serve.models import load_models
from serve.postprocess import calibrated_probabilities

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = Path("/work/shared/data/ham10000_200x150/images")


# ------------------------------------------------------------------------------ the minimal endpoint


def minimal_app(artifact: Path, threads: int):
    """The minimal Starlette app: form → decode + preprocess + runtime (worker thread) → JSON."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    (entry,) = load_models(artifact, threads=threads).models.values()
    rt, cfg, names, temp = entry.runtime, entry.manifest.preprocessing, entry.class_names, entry.temperature

    def work(data: bytes) -> dict[str, float]:
        x = preprocess(load_image_bytes(data), cfg, layout=rt.layout)
        p = calibrated_probabilities(rt.predict(x[None])[0], temp)
        return {c: float(v) for c, v in zip(names, p)}

    async def predict(request: Request) -> JSONResponse:
        form = await request.form()
        data = await form["file"].read()  # type: ignore[union-attr]
        await form.close()
        return JSONResponse({"probabilities": await run_in_threadpool(work, data)})

    return Starlette(routes=[Route("/predict", predict, methods=["POST"])])


def run_minimal_server(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="serve_vs_minimal minimal-server")
    p.add_argument("--artifact", type=Path, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--log-level", default="info")
    a = p.parse_args(argv)
    import uvicorn

    tune_glibc_malloc()  # the allocator settings serve's create_app applies: the same work costs the same here

    uvicorn.run(minimal_app(a.artifact, a.threads), host="127.0.0.1", port=a.port, log_level=a.log_level,
                proxy_headers=False, server_header=False)
    return 0


# ------------------------------------------------------------------------------------------- driving


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    def __init__(self, name: str, cmd: list[str], port: int, log: Path, cwd: Path = REPO) -> None:
        self.name, self.cmd, self.port = name, cmd, port
        self.url = f"http://127.0.0.1:{port}"
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, probe: bytes, timeout: float = 120) -> None:
        t_end = time.time() + timeout
        while time.time() < t_end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {' '.join(self.cmd)}")
            try:
                status, _ = asyncio.run(_one(self.url, probe))
                if status == 200:
                    return
            except (OSError, ResponseError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.name} did not answer within {timeout} s")

    def cpu_s(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


async def _one(url: str, payload: bytes) -> tuple[int, bytes]:
    conn = KeepAliveConnection(url)
    try:
        return await conn.request(payload)
    finally:
        await conn.close()


async def drive(url: str, payloads: list[bytes], concurrency: int, n_requests: int, start: int = 0) -> dict[str, Any]:
    """``concurrency`` keep-alive connections send ``n_requests`` requests, cycling through ``payloads``."""
    statuses: dict[str, int] = {}
    lat: list[float] = []
    counter = 0
    t_start = time.perf_counter()

    async def worker() -> None:
        nonlocal counter
        conn = KeepAliveConnection(url)
        try:
            while counter < n_requests:
                i = counter
                counter += 1
                t0 = time.perf_counter()
                try:
                    status, body = await conn.request(payloads[(start + i) % len(payloads)])
                except ResponseError:
                    statuses["-1"] = statuses.get("-1", 0) + 1
                    continue
                dt = time.perf_counter() - t0
                ok = status == 200 and b'"probabilities"' in body
                statuses[str(status)] = statuses.get(str(status), 0) + 1
                if ok:
                    lat.append(dt)
        finally:
            await conn.close()

    await asyncio.gather(*[worker() for _ in range(concurrency)])
    wall = time.perf_counter() - t_start
    return {"concurrency": concurrency, "requests": n_requests, "ok": len(lat), "statuses": statuses,
            "wall_s": wall, "throughput_rps": len(lat) / wall, **latency_percentiles(lat)}


def load_payloads(images: Path, n: int, url: str) -> tuple[list[bytes], list[str]]:
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]
    if not files:
        raise SystemExit(f"no images under {images}")
    return ([multipart_request(url, "/predict", "file", f.name, f.read_bytes()) for f in files], [f.name for f in files])


def same_answers(a_url: str, b_url: str, payloads: list[bytes]) -> float:
    """Largest |p_a - p_b| over the payloads' probabilities (both servers must answer 200)."""
    worst = 0.0
    for pl in payloads:
        (sa, ba), (sb, bb) = asyncio.run(_one(a_url, pl)), asyncio.run(_one(b_url, pl))
        if sa != 200 or sb != 200:
            raise RuntimeError(f"status {sa} / {sb} while comparing answers")
        pa, pb = json.loads(ba)["probabilities"], json.loads(bb)["probabilities"]
        if pa.keys() != pb.keys():
            raise RuntimeError(f"class names differ: {list(pa)} vs {list(pb)}")
        worst = max(worst, max(abs(pa[k] - pb[k]) for k in pa))
    return worst


def fmt_table(rows: list[list[str]]) -> str:
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows)


def load1() -> float:
    return os.getloadavg()[0]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--artifact", type=Path, required=True, help="one exported artifact directory")
    p.add_argument("--images", type=Path, default=Path(os.environ.get("LESIONLITE_BENCH_IMAGES", DEFAULT_IMAGES)))
    p.add_argument("--n-images", type=int, default=400, help="distinct request images (default %(default)s)")
    p.add_argument("--warmup", type=int, default=40)
    p.add_argument("--requests", type=int, default=400, help="requests per throughput run (default %(default)s)")
    p.add_argument("--latency-requests", type=int, default=300, help="requests per concurrency-1 run")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="runtime threads for both (0: runtime default)")
    p.add_argument("--serve-args", default="", help="extra arguments for lesionlite serve (quoted)")
    p.add_argument("--serve-repo", type=Path, default=REPO,
                   help="run lesionlite serve from this checkout (e.g. a git worktree of an older commit)")
    p.add_argument("--out", type=Path, help="write the JSON here (e.g. benchmarks/results/serve_overhead_64.json)")
    return p


def one_round(r: int, servers: dict[str, Proc], payloads: dict[str, list[bytes]], a: argparse.Namespace,
              rows: list[list[str]]) -> dict[str, Any]:
    """Both servers driven in turn (order swapped each round): throughput at --concurrency, latency at 1."""
    order = ["minimal", "serve"] if r % 2 == 0 else ["serve", "minimal"]
    rec: dict[str, Any] = {"round": r, "order": order, "load1_before": load1()}
    for n in order:
        s = servers[n]
        asyncio.run(drive(s.url, payloads[n], a.concurrency, a.warmup, start=r * 7))
        c0 = s.cpu_s()
        thr = asyncio.run(drive(s.url, payloads[n], a.concurrency, a.requests, start=r * 7))
        thr["server_cpu_ms_per_request"] = (s.cpu_s() - c0) * 1000 / max(1, thr["ok"])
        one = asyncio.run(drive(s.url, payloads[n], 1, a.latency_requests, start=r * 11))
        rec[n] = {"throughput": thr, "latency_c1": one}
        rows.append([str(r), n, f"{thr['throughput_rps']:.1f}", f"{thr['p50_ms']:.2f}", f"{thr['p99_ms']:.2f}",
                     f"{one['p50_ms']:.2f}", f"{one['p99_ms']:.2f}",
                     f"{thr['server_cpu_ms_per_request']:.2f}", f"{load1():.2f}"])
    rec["ratio"] = rec["serve"]["throughput"]["throughput_rps"] / rec["minimal"]["throughput"]["throughput_rps"]
    rec["p99_c1_diff_ms"] = rec["serve"]["latency_c1"]["p99_ms"] - rec["minimal"]["latency_c1"]["p99_ms"]
    rec["p50_c1_diff_ms"] = rec["serve"]["latency_c1"]["p50_ms"] - rec["minimal"]["latency_c1"]["p50_ms"]
    rec["load1_after"] = load1()
    return rec


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds: serve / minimal throughput, latency differences at concurrency 1."""
    ratios = [x["ratio"] for x in rounds]
    return {
        "throughput_ratio_median": float(np.median(ratios)), "throughput_ratios": ratios,
        "p99_c1_diff_ms_median": float(np.median([x["p99_c1_diff_ms"] for x in rounds])),
        "p50_c1_diff_ms_median": float(np.median([x["p50_c1_diff_ms"] for x in rounds])),
        "minimal_rps_median": float(np.median([x["minimal"]["throughput"]["throughput_rps"] for x in rounds])),
        "serve_rps_median": float(np.median([x["serve"]["throughput"]["throughput_rps"] for x in rounds])),
        "load1_range": [min(x["load1_before"] for x in rounds), max(x["load1_after"] for x in rounds)],
    }


def compare_servers(servers: dict[str, Proc], a: argparse.Namespace, result: dict[str, Any]) -> None:
    """Same answers first (else no comparison), then the rounds and their summary, into ``result``."""
    payloads = {n: load_payloads(a.images, a.n_images, s.url)[0] for n, s in servers.items()}
    for n, s in servers.items():
        s.wait_ready(payloads[n][0])
    result["max_abs_probability_difference"] = same_answers(servers["minimal"].url, servers["serve"].url,
                                                            payloads["minimal"][:20])
    if result["max_abs_probability_difference"] > 1e-6:
        raise RuntimeError(f"the servers disagree: {result['max_abs_probability_difference']}")
    rows = [["round", "server", f"c={a.concurrency} img/s", "p50 ms", "p99 ms", "c=1 p50 ms", "c=1 p99 ms",
             "CPU ms/req", "load1"]]
    for r in range(a.rounds):
        result["rounds"].append(one_round(r, servers, payloads, a, rows))
    print(fmt_table(rows), flush=True)
    result["summary"] = s = summarize(result["rounds"])
    print(f"\nserve / minimal throughput at c={a.concurrency}: median {s['throughput_ratio_median']:.3f} "
          f"({', '.join(f'{x:.3f}' for x in s['throughput_ratios'])}); p99 at c=1: serve - minimal = "
          f"{s['p99_c1_diff_ms_median']:+.2f} ms (median); p50 {s['p50_c1_diff_ms_median']:+.2f} ms; "
          f"same probabilities (max |diff| {result['max_abs_probability_difference']:.1e})")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["minimal-server"]:
        return run_minimal_server(argv[1:])
    a = build_parser().parse_args(argv)
    py = sys.executable
    tmp = Path(tempfile.mkdtemp(prefix="serve_vs_minimal_"))
    mp, sp = free_port(), free_port()
    servers = {
        "minimal": Proc("minimal", [py, "-m", "benchmarks.serve_vs_minimal", "minimal-server", "--artifact",
                                    str(a.artifact), "--port", str(mp), "--threads", str(a.threads)],
                        mp, tmp / "minimal.log"),
        "serve": Proc("serve", [py, "-m", "serve", str(a.artifact.resolve()), "--port", str(sp), "--threads",
                                str(a.threads), *shlex.split(a.serve_args)], sp, tmp / "serve.log", cwd=a.serve_repo),
    }
    result: dict[str, Any] = {
        "artifact": str(a.artifact), "host": {"cpus": os.cpu_count(), "machine": platform.machine(),
                                              "processor": cpu_model() or platform.processor(),
                                              "python": platform.python_version()},
        "command": "python -m benchmarks.serve_vs_minimal " + " ".join(shlex.quote(x) for x in argv),
        "serve_cmd": " ".join(servers["serve"].cmd[1:]), "serve_repo": str(a.serve_repo),
        "client": "benchmarks/loadgen.py keep-alive, one JPEG per request",
        "images": str(a.images), "n_images": a.n_images, "rounds": []}
    try:
        compare_servers(servers, a, result)
    finally:
        for s in servers.values():
            s.stop()
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
