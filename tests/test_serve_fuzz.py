"""Property-based tests of serve: schemathesis against the live OpenAPI schema, and unit properties.

Bounded: a fixed number of examples per operation, no shrinking deadline surprises.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from test_serve_support import model_root, serving

pytest.importorskip("fastapi")

from serve.batching import MicroBatcher, Overloaded
from serve.postprocess import calibrated_probabilities, normalized_entropy, summarize

pytestmark = pytest.mark.slow  # Hypothesis-driven requests against a live server


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("torch")
    with serving(model_root(tmp_path_factory.getbasetemp()), max_upload_mb=1) as s:
        yield s


schemathesis = pytest.importorskip("schemathesis")
EXAMPLES_PER_OPERATION = 8


def test_api_never_answers_5xx(live_server) -> None:
    """Every operation of the live OpenAPI schema, positive and negative examples: no 5xx, JSON errors.

    (Driven through Hypothesis directly: schemathesis' pytest plugin does not run under pytest 9.)
    """
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_url(live_server.url + "/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /predict", "POST /predict/batch", "GET /v2/models/{name}", "POST /v2/models/{name}/infer"} <= labels, labels
    seen: list[int] = []
    timings: dict[str, float] = {}
    for op in operations:
        has_input = bool(op.definition.raw.get("parameters") or op.definition.raw.get("requestBody"))
        modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if has_input else (GenerationMode.POSITIVE,)
        for mode in modes:
            @given(case=op.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES_PER_OPERATION if has_input else 2, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def run(case) -> None:
                response = case.call(base_url=live_server.url, timeout=30)
                case.validate_response(response, checks=[not_a_server_error])
                seen.append(response.status_code)
                if response.status_code >= 400:
                    body = response.json()
                    # /infer answers in the Open Inference Protocol's shape, every other route in serve's own
                    expected = ("error", "code") if op.label.endswith("/infer") else ("error", "detail")  # noqa: B023
                    assert all(k in body for k in expected), (op.label, body)  # noqa: B023 - run() runs in this pass

            t0 = time.perf_counter()
            try:
                run()
            except Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE, op.label  # nothing to break in a parameterless GET
            timings[f"{op.label} {mode.value}"] = time.perf_counter() - t0
    print(sorted(timings.items(), key=lambda kv: -kv[1])[:6])
    assert seen and max(seen) < 500


def _valid_images() -> list[bytes]:
    from test_serve_support import image_variants

    v = image_variants()
    return [v[k][0] for k in ("rgb_jpeg", "l_png", "i16_tiff", "bmp", "webp")]


@given(data=st.data())
@settings(max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
def test_mutated_images_never_5xx(live_server, data) -> None:
    """Bit flips, truncation and splices of valid images: 200 or a clear 4xx, never a 5xx."""
    import httpx

    images = _valid_images()
    raw = bytearray(data.draw(st.sampled_from(images)))
    for _ in range(data.draw(st.integers(0, 8))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(raw)))
    blob = bytes(raw[:cut]) + data.draw(st.binary(max_size=64))
    r = httpx.post(live_server.url + "/predict", files={"file": ("x.jpg", blob, "image/jpeg")}, timeout=30)
    assert r.status_code in (200, 400, 413, 415), (r.status_code, r.text)
    if r.status_code != 200:
        assert set(r.json()) == {"error", "detail"}


# ----------------------------------------------------------------------------- unit properties


logit_vectors = st.lists(st.floats(-60, 60, allow_nan=False), min_size=2, max_size=12)


@given(logit_vectors, st.floats(0.05, 20.0))
@settings(max_examples=200, deadline=None)
def test_calibrated_probabilities_properties(logits, temperature) -> None:
    p = calibrated_probabilities(np.array(logits), temperature)
    assert np.all(p >= 0) and abs(p.sum() - 1.0) < 1e-9
    assert 0.0 <= normalized_entropy(p) <= 1.0
    names = [f"c{i}" for i in range(len(logits))]
    out = summarize(np.array(logits), names, temperature, top_k=3, abstain_threshold=0.6)
    assert out["abstain"] == (max(out["probabilities"].values()) < 0.6)
    tops = [t["probability"] for t in out["top_k"]]
    assert tops == sorted(tops, reverse=True) and tops[0] == max(out["probabilities"].values())


def test_entropy_extremes() -> None:
    assert normalized_entropy(np.full(7, 1 / 7)) == pytest.approx(1.0)
    assert normalized_entropy(np.eye(7)[2]) == 0.0
    # a higher temperature never lowers the uncertainty
    z = np.array([3.0, 1.0, 0.2, -1.0])
    assert normalized_entropy(calibrated_probabilities(z, 2.0)) > normalized_entropy(calibrated_probabilities(z, 1.0))


def test_micro_batcher_groups_and_bounds() -> None:
    sizes: list[int] = []

    def predict(batch: np.ndarray) -> np.ndarray:
        import time

        time.sleep(0.02)
        return batch.reshape(batch.shape[0], -1)[:, :2] * 2

    async def run() -> None:
        b = MicroBatcher("m", predict, max_batch=4, max_wait_ms=20, queue_size=6,
                         on_batch=lambda n, s: sizes.append(n))
        await b.start()
        try:
            xs = [np.full((1, 1, 2), i, np.float32) for i in range(6)]
            outs = await asyncio.gather(*[b.submit(x) for x in xs])
            for i, o in enumerate(outs):  # every caller gets its own row back
                assert np.allclose(o, [2 * i, 2 * i])
            assert sum(sizes) == 6 and max(sizes) <= 4 and len(sizes) < 6  # grouped, not one by one
            # full queue → Overloaded immediately (no waiting, no unbounded pile-up)
            pending = [asyncio.ensure_future(b.submit(xs[0])) for _ in range(6)]
            await asyncio.sleep(0)
            with pytest.raises(Overloaded):
                await b.submit_many(xs)  # needs 6 free slots at once
            await asyncio.gather(*pending, return_exceptions=True)
            # a failing runtime fails that batch only
            b.predict_fn = lambda batch: (_ for _ in ()).throw(RuntimeError("boom"))
            with pytest.raises(RuntimeError):
                await b.submit(xs[0])
            b.predict_fn = predict
            assert np.allclose(await b.submit(xs[3]), [6, 6])
        finally:
            await b.stop()

    asyncio.run(run())


def test_micro_batcher_hands_over_the_next_batch_while_one_runs() -> None:
    """At most max_in_flight batches are handed to the worker; every caller still gets its own row,
    and stopping with batches in flight fails their callers cleanly instead of hanging."""
    import threading
    import time

    running = threading.Event()

    def predict(batch: np.ndarray) -> np.ndarray:
        running.set()
        time.sleep(0.03)
        return batch.reshape(batch.shape[0], -1)[:, :1] + 1

    async def run() -> None:
        b = MicroBatcher("m", predict, max_batch=2, max_wait_ms=0, queue_size=32, max_in_flight=2)
        await b.start()
        peak = 0
        try:
            async def watch() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, len(b._in_flight))
                    await asyncio.sleep(0.002)

            w = asyncio.create_task(watch())
            xs = [np.full((1, 1, 1), i, np.float32) for i in range(12)]
            outs = await asyncio.gather(*[b.submit(x) for x in xs])
            w.cancel()
            assert [float(o[0]) for o in outs] == [i + 1.0 for i in range(12)]
            assert peak == 2  # the next batch waited in the worker's queue while one ran, never more
            # stop while batches are in flight: their callers get Overloaded, nothing hangs
            pending = [asyncio.ensure_future(b.submit(x)) for x in xs[:6]]
            await asyncio.sleep(0.01)
            assert running.is_set()
        finally:
            await b.stop()
        results = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 5)
        assert all(isinstance(r, (np.ndarray, Overloaded)) for r in results)
        assert any(isinstance(r, Overloaded) for r in results)
        with pytest.raises(ValueError):
            MicroBatcher("m", predict, max_batch=1, max_wait_ms=0, queue_size=1, max_in_flight=0)

    asyncio.run(run())


def test_micro_batcher_stop_fails_images_it_was_still_collecting() -> None:
    """An image the batcher took from the queue while waiting for more must fail on stop, not hang."""
    import time

    async def run() -> None:
        b = MicroBatcher("m", lambda x: (time.sleep(0.3), x)[1], max_batch=4, max_wait_ms=5000, queue_size=4)
        await b.start()
        first = asyncio.ensure_future(b.submit(np.zeros((1, 1, 1), np.float32)))
        await asyncio.sleep(0.05)  # the first image runs (an idle model starts at once) …
        waiting = asyncio.ensure_future(b.submit(np.ones((1, 1, 1), np.float32)))
        await asyncio.sleep(0.05)  # … so the batcher holds the second and waits up to 5 s for three more
        assert b.depth == 0 and not waiting.done() and not first.done()
        await b.stop()
        with pytest.raises(Overloaded):
            await asyncio.wait_for(waiting, 2)
        await asyncio.gather(first, return_exceptions=True)

    asyncio.run(run())


def test_micro_batcher_does_not_wait_while_the_model_is_idle() -> None:
    """max_wait applies only while a batch runs: a lone request is not delayed by it."""
    import time

    async def run() -> None:
        b = MicroBatcher("m", lambda x: x, max_batch=8, max_wait_ms=2000, queue_size=8)
        await b.start()
        try:
            t0 = time.perf_counter()
            await b.submit(np.zeros((1, 1, 1), np.float32))
            assert time.perf_counter() - t0 < 1.0  # would be >= 2 s if it waited for companions
        finally:
            await b.stop()

    asyncio.run(run())


def test_quantized_tflite_io(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """int8 in / uint8 out, NHWC, fixed batch 1: (de)quantised with the tensor details' parameters."""
    import types

    import serve.runtimes.tflite as tfl
    from lesionlite.manifest import Manifest
    from lesionlite.preprocessing import PreprocessConfig

    in_q, out_q = (0.02, -5), (0.1, 120)
    calls: list[tuple] = []

    class FakeInterpreter:
        def __init__(self, model_path: str, num_threads=None) -> None:
            self.x = None

        def allocate_tensors(self) -> None:
            pass

        def get_input_details(self):
            return [{"name": "in", "index": 0, "shape": np.array([1, 4, 4, 3]), "shape_signature": np.array([1, 4, 4, 3]),
                     "dtype": np.int8, "quantization": in_q}]

        def get_output_details(self):
            return [{"name": "out", "index": 1, "shape": np.array([1, 3]), "shape_signature": np.array([1, 3]),
                     "dtype": np.uint8, "quantization": out_q}]

        def set_tensor(self, index: int, x: np.ndarray) -> None:
            assert x.dtype == np.int8 and x.shape == (1, 4, 4, 3)
            calls.append(x.shape)
            self.x = x

        def invoke(self) -> None:
            pass

        def get_tensor(self, index: int) -> np.ndarray:
            # "model": per-channel mean of the int8 input, shifted into uint8 range
            m = self.x.astype(np.int32).mean(axis=(1, 2))
            return np.clip(np.rint(m) + 128, 0, 255).astype(np.uint8)

    fake_mod = types.SimpleNamespace(Interpreter=FakeInterpreter)
    monkeypatch.setattr(tfl, "require", lambda *a, **k: fake_mod)
    (tmp_path / "m.tflite").write_bytes(b"fake")
    manifest = Manifest(kind="tflite", architecture="fake", class_names=["a", "b", "c"],
                        preprocessing=PreprocessConfig(input_size=4), input={"layout": "NHWC"},
                        files={"model": "m.tflite"})
    rt = tfl.TFLiteRuntime(tmp_path / "m.tflite", manifest)
    assert rt.layout == "NHWC" and rt.max_batch == 1 and rt.input_datatype == "INT8" and rt.output_datatype == "UINT8"
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, (3, 4, 4, 3)).astype(np.float32)
    y = rt.predict(x)
    assert len(calls) == 3  # fixed batch of 1 → one invoke per image
    q = np.clip(np.rint(x / in_q[0]) + in_q[1], -128, 127)
    expected_q = np.clip(np.rint(q.mean(axis=(1, 2))) + 128, 0, 255)
    np.testing.assert_allclose(y, (expected_q - out_q[1]) * out_q[0], rtol=1e-6, atol=1e-6)
