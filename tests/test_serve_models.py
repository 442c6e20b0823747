"""Which artifacts serve loads and which it answers with by default."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
from test_serve_support import ServerThread, build_onnx

from lesionlite.errors import LesionliteError
from lesionlite.manifest import MANIFEST_NAME


def _edit(d: Path, **fields) -> None:
    """Set declared manifest fields (as export writes them) in an artifact's manifest."""
    m = json.loads((d / MANIFEST_NAME).read_text())
    m.update(fields)
    (d / MANIFEST_NAME).write_text(json.dumps(m))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """a_weak (verified, bal-acc 0.60), b_strong (verified, 0.70), c_refused (written with --force, 0.90)."""
    root = tmp_path_factory.mktemp("choice")
    base = build_onnx(root / "a_weak")
    for name in ("b_strong", "c_refused"):
        shutil.copytree(base, root / name)
    verified = {"verified": True, "accepted": True, "top1_agreement": 0.99, "threshold": 0.9}
    _edit(root / "a_weak", parity=verified, metrics={"balanced_accuracy": 0.60})
    _edit(root / "b_strong", parity=verified, metrics={"balanced_accuracy": 0.70})
    _edit(root / "c_refused", parity={"verified": True, "accepted": False, "top1_agreement": 0.71, "threshold": 0.9},
          metrics={"balanced_accuracy": 0.90})
    return root


def test_a_refused_artifact_is_not_served_unless_allowed(folder: Path) -> None:
    from serve.models import load_model_set

    found = load_model_set(folder)
    assert set(found.models) == {"a_weak", "b_strong"}
    (broken,) = found.broken
    assert broken.name == "c_refused"
    assert "top-1 agreement with PyTorch 0.7100 < threshold 0.9" in broken.reason
    assert "--allow-unverified" in broken.reason
    allowed = load_model_set(folder, allow_unverified=True)
    assert set(allowed.models) == {"a_weak", "b_strong", "c_refused"} and not allowed.broken
    assert allowed.models["c_refused"].metadata()["parity"]["accepted"] is False


def test_default_is_the_most_accurate_verified_model(folder: Path) -> None:
    from serve.models import default_model_name, load_model_set

    assert default_model_name(load_model_set(folder).models) == "b_strong"
    # an unverified model never wins on accuracy alone
    assert default_model_name(load_model_set(folder, allow_unverified=True).models) == "b_strong"


def test_metadata_names_classes_readably_and_reports_parity(folder: Path) -> None:
    from serve.app import create_app

    with ServerThread(create_app(folder)) as srv:
        listing = httpx.get(srv.url + "/v2/models", timeout=10).json()
        assert listing["default"] == "b_strong"
        meta = httpx.get(srv.url + "/v2/models/b_strong", timeout=10).json()
        assert meta["class_labels"]["mel"] == "melanoma (mel)"
        assert meta["class_labels"]["nv"] == "melanocytic nevus (nv)"
        assert meta["parity"] == {"verified": True, "accepted": True, "top1_agreement": 0.99, "threshold": 0.9,
                                  "max_abs_probs": None}
        assert meta["metrics"]["balanced_accuracy"] == 0.70
        assert [u["name"] for u in listing["unavailable"]] == ["c_refused"]


def test_strict_refuses_a_folder_with_a_refused_artifact(folder: Path) -> None:
    from serve.models import load_models

    with pytest.raises(LesionliteError, match="c_refused"):
        load_models(folder, strict=True)


def test_openapi_declares_security_only_with_a_key_and_a_non_empty_batch(folder: Path) -> None:
    """The schema matches the server: no API-key/Bearer scheme on an open server (schemathesis ST401),
    and /predict/batch's files need 1..max images (an empty batch is refused with 422)."""
    from fastapi.testclient import TestClient

    from serve.app import create_app
    from serve.settings import Settings

    def schema(settings: Settings) -> dict:
        with TestClient(create_app(folder, settings)) as client:
            return client.get("/openapi.json").json()

    open_schema = schema(Settings(max_batch_files=5))
    assert "securitySchemes" not in open_schema.get("components", {})
    assert all("security" not in op for path in open_schema["paths"].values() for op in path.values())
    files = (open_schema["paths"]["/predict/batch"]["post"]["requestBody"]["content"]["multipart/form-data"]
             ["schema"]["properties"]["files"])
    assert files["minItems"] == 1 and files["maxItems"] == 5
    keyed = schema(Settings(api_key="k"))
    assert set(keyed["components"]["securitySchemes"]) == {"APIKeyHeader", "HTTPBearer"}
    assert keyed["paths"]["/predict"]["post"]["security"]


def test_favicon_is_served(folder: Path) -> None:
    from fastapi.testclient import TestClient

    from serve.app import create_app

    with TestClient(create_app(folder)) as client:
        r = client.get("/favicon.ico")
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml") and b"<svg" in r.content
