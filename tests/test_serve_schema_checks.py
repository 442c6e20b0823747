"""The published OpenAPI schema matches the server: schemathesis `--checks all` against a live server.

Runs the schemathesis command line (as a user would: ``st --config-file serve/schemathesis.toml run
URL/openapi.json --checks all``) against a real uvicorn server on loopback, once open and once with an
API key, and expects exit status 0: no server error, no undocumented status, no response that breaks
its schema, no schema-violating request accepted, no auth mismatch. The config file only says which
answers to schema-valid requests depend on content the schema cannot describe (an upload's bytes, a
tensor that does not fit the model); every check runs.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from test_serve_support import image_variants, model_root, serving

pytestmark = pytest.mark.slow  # the schemathesis CLI against two live servers (~80 s)

pytest.importorskip("fastapi")
pytest.importorskip("schemathesis")

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "serve" / "schemathesis.toml"
API_KEY = "test-key-5f2c"


@pytest.fixture(scope="module", params=["open", "keyed"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("torch")  # the fixture model is exported with torch
    key = API_KEY if request.param == "keyed" else None
    with serving(model_root(tmp_path_factory.getbasetemp()), max_upload_mb=1, api_key=key) as s:
        yield s, key


def _schemathesis(url: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
           "--config-file", str(CONFIG), "run", url + "/openapi.json", "--checks", "all",
           "--max-examples", "5", "--generation-deterministic", "--no-color", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)


def test_schemathesis_all_checks_pass(server) -> None:
    s, key = server
    extra = ("--header", f"X-API-Key: {key}") if key else ()
    proc = _schemathesis(s.url, *extra)
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-80:])
    assert proc.returncode == 0, tail
    assert "passed" in proc.stdout and "Server error" not in proc.stdout, tail


def _headers(key: str | None) -> dict[str, str]:
    return {"X-API-Key": key} if key else {}


def test_non_string_datatype_is_a_400_not_a_500(server) -> None:
    """schemathesis found it: ``"datatype": {}`` crashed the parser (unhashable dict) into a 500."""
    s, key = server
    body = {"inputs": [{"name": "input", "shape": [1], "datatype": {}, "data": [0.0]}]}
    r = httpx.post(f"{s.url}/v2/models/onnx/infer", json=body, headers=_headers(key), timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "bad_datatype"


def test_text_field_in_place_of_an_image_is_a_422(server) -> None:
    """A form text value where a file belongs (``-F files=-276``) is refused as a whole, not answered
    200 with a per-item 'not an image' (schemathesis ST201 on /predict/batch)."""
    s, key = server
    for route, field in (("/predict", "file"), ("/predict/batch", "files")):
        r = httpx.post(s.url + route, data={field: "-276"}, files={"unrelated": ("x.txt", b"x", "text/plain")},
                       headers=_headers(key), timeout=30)
        assert r.status_code == 422, (route, r.text)
        assert r.json()["error"] == "not_a_file", r.text
    jpeg = image_variants()["rgb_jpeg"][0]
    ok = httpx.post(s.url + "/predict/batch", files=[("files", ("a.jpg", jpeg, "image/jpeg"))],
                    headers=_headers(key), timeout=30)
    assert ok.status_code == 200, ok.text


def test_schema_lists_the_served_model_names(server) -> None:
    s, key = server
    doc = httpx.get(s.url + "/openapi.json", headers=_headers(key), timeout=30).json()
    (name,) = doc["paths"]["/v2/models/{name}/infer"]["post"]["parameters"]
    assert name["schema"]["enum"] == ["onnx"]
    model = next(p for p in doc["paths"]["/predict"]["post"]["parameters"] if p["name"] == "model")
    assert {"type": "string", "enum": ["onnx"]} in model["schema"]["anyOf"]
    item = doc["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "data" in item["properties"]["inputs"]["items"]["required"]
