"""``POST /predict`` past FastAPI's router (:mod:`serve.fast_predict`) answers as the FastAPI route does.

The same requests — good images, bad uploads, malformed forms — go to a server with the fast path and to
one without it (``fast_predict.install`` replaced by a no-op); status, the headers a client acts on, the body
(but ``latency_ms``) and the ``/metrics`` labels must be the same. Requests the fast path must leave to
FastAPI (a query string, another method, a server with an API key) are checked to reach FastAPI's router.
"""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")

from fastapi.testclient import TestClient

import serve.fast_predict as fast_predict
from serve.app import create_app
from serve.settings import Settings

#: what a client acts on besides the body
HEADERS = ("content-type", "retry-after", "www-authenticate", "allow")


def _jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (96, 72)) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", size, colour)
    img.paste((colour[0] // 2, colour[1] // 3, colour[2] // 2), (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _requests() -> dict[str, dict]:
    """name → keyword arguments of ``TestClient.post('/predict', ...)``."""
    good = _jpeg((200, 140, 120))
    return {
        "good": {"files": {"file": ("a.jpg", good, "image/jpeg")}},
        "good_other": {"files": {"file": ("b.jpg", _jpeg((120, 90, 160)), "image/jpeg")}},
        "empty_file": {"files": {"file": ("e.jpg", b"", "image/jpeg")}},
        "not_an_image": {"files": {"file": ("t.jpg", b"hello, world", "image/jpeg")}},
        "truncated": {"files": {"file": ("t.jpg", good[:200], "image/jpeg")}},
        "tiny": {"files": {"file": ("s.jpg", _jpeg((90, 60, 50), (8, 8)), "image/jpeg")}},
        "text_field": {"data": {"file": "123"}},
        "missing_field": {"files": {"other": ("a.jpg", good, "image/jpeg")}},
        "two_files": {"files": [("file", ("a.jpg", good, "image/jpeg")), ("file", ("b.jpg", good, "image/jpeg"))]},
        "not_multipart": {"content": good, "headers": {"content-type": "image/jpeg"}},
        "no_body": {},
    }


def _answer(client: TestClient, kwargs: dict) -> tuple[int, dict, object]:
    r = client.post("/predict", **kwargs)
    body = r.json()
    if isinstance(body, dict):
        body.pop("latency_ms", None)
    return r.status_code, {h: r.headers.get(h) for h in HEADERS}, body


def _predict_metrics(client: TestClient) -> list[str]:
    text = client.get("/metrics").text
    return sorted(line.split(" ")[0] for line in text.splitlines()
                  if line.startswith("lesionlite_requests_total") and 'endpoint="/predict"' in line)


def _router_calls(app) -> list[str]:
    """Paths that reached FastAPI's router past the fast path (recorded from now on)."""
    stack = app.router.middleware_stack
    assert isinstance(stack, fast_predict.PredictFastPath), "the fast path is not installed"
    calls: list[str] = []
    inner = stack.router_app

    async def recording(scope, receive, send):
        calls.append(scope["path"] + ("?" + scope["query_string"].decode() if scope.get("query_string") else ""))
        await inner(scope, receive, send)

    stack.router_app = recording
    return calls


@pytest.fixture(scope="module")
def both(models_dir: Path):
    """(with the fast path, without it): two apps on the same models and settings."""
    settings = Settings(max_upload_mb=1)
    fast = create_app(models_dir, settings)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fast_predict, "install", lambda app, state: False)
        plain = create_app(models_dir, settings)
    assert not isinstance(plain.router.middleware_stack, fast_predict.PredictFastPath)
    with TestClient(fast) as f, TestClient(plain) as p:
        yield fast, f, p


def test_the_fast_path_answers_every_request_as_fastapi_does(both) -> None:
    app, fast, plain = both
    calls = _router_calls(app)
    for name, kwargs in _requests().items():
        got, want = _answer(fast, kwargs), _answer(plain, kwargs)
        assert got == want, name
    assert calls == [], "a plain POST /predict went through FastAPI's router"
    # the metrics middleware labels the requests alike (route template and status)
    assert _predict_metrics(fast) == _predict_metrics(plain)
    statuses = {re.search(r'status="(\d+)"', m).group(1) for m in _predict_metrics(fast)}
    assert {"200", "400", "415", "422"} <= statuses


def test_requests_with_something_to_validate_still_go_through_fastapi(both) -> None:
    app, fast, plain = both
    calls = _router_calls(app)
    image = {"files": {"file": ("a.jpg", _jpeg((200, 140, 120)), "image/jpeg")}}
    for query in ("?top_k=2", "?top_k=0", "?model=nope", "?top_k=x"):
        r_fast, r_plain = fast.post("/predict" + query, **image), plain.post("/predict" + query, **image)
        assert r_fast.status_code == r_plain.status_code
        b_fast, b_plain = r_fast.json(), r_plain.json()
        b_fast.pop("latency_ms", None), b_plain.pop("latency_ms", None)
        assert b_fast == b_plain, query
    assert fast.get("/predict").status_code == plain.get("/predict").status_code == 405
    assert fast.post("/predict/batch", files=[("files", image["files"]["file"])]).status_code == 200
    assert calls == ["/predict?top_k=2", "/predict?top_k=0", "/predict?model=nope", "/predict?top_k=x", "/predict",
                     "/predict/batch"]
    assert json.loads(fast.get("/openapi.json").text)["paths"]["/predict"]["post"]  # the route is still documented


def test_a_server_with_an_api_key_keeps_fastapi_for_predict(models_dir: Path) -> None:
    app = create_app(models_dir, Settings(api_key="secret"))
    assert not isinstance(app.router.middleware_stack, fast_predict.PredictFastPath)
    image = {"files": {"file": ("a.jpg", _jpeg((200, 140, 120)), "image/jpeg")}}
    with TestClient(app) as c:
        assert c.post("/predict", **image).status_code == 401
        assert c.post("/predict", headers={"X-API-Key": "secret"}, **image).status_code == 200


def test_a_router_with_middleware_of_its_own_keeps_fastapi(models_dir: Path) -> None:
    """The fast path would sit outside router-level middleware and skip it: then it is not installed."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fast_predict, "install", lambda app, state: False)
        app = create_app(models_dir, Settings())
    inner = app.router.middleware_stack

    async def router_middleware(scope, receive, send):  # stands for e.g. Starlette's router body-size limit
        await inner(scope, receive, send)

    app.router.middleware_stack = router_middleware
    assert fast_predict.install(app, app.state.server) is False
    assert app.router.middleware_stack is router_middleware
