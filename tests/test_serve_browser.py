"""The web page in a real headless Chromium (Playwright + Debian's chromium package).

Install the browser with ``apt-get install -y chromium`` (``make browser`` does it when run as
root); without /usr/bin/chromium this test is skipped with that reason.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_serve_support import CLASS_NAMES, image_variants, model_root, serving

from lesionlite.classes import display_name

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)"),
]


def launch(p):
    """Headless Chromium with no network of its own (the page must need nothing outside the server)."""
    return p.chromium.launch(executable_path=CHROMIUM, headless=True,
                             args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                   "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage"])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("torch")
    with serving(model_root(tmp_path_factory.getbasetemp())) as s:
        yield s


def test_page_classifies_an_uploaded_image(server) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    jpeg = image_variants()["rgb_jpeg"][0]
    requests: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page()
            page.on("request", lambda req: requests.append(req.url))
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server.url + "/", wait_until="domcontentloaded")
            notice = page.locator("#notice").inner_text()
            assert "Research prototype — not a diagnosis" in notice
            # (selector-based waits only: the page's CSP forbids the eval that wait_for_function uses)
            page.wait_for_selector("#model option[value='onnx']", state="attached", timeout=10_000)
            assert page.locator("#model").input_value() == "onnx"

            page.set_input_files("#file", files=[{"name": "lesion.jpg", "mimeType": "image/jpeg", "buffer": jpeg}])
            page.wait_for_selector("#bars li", timeout=15_000)
            rows = page.locator("#bars li")
            assert rows.count() == 5  # the page asks for top_k=5
            labels = [rows.nth(i).locator(".label").inner_text() for i in range(rows.count())]
            # readable names with the code, e.g. "melanoma (mel)" (lesionlite.classes)
            assert set(labels) <= {display_name(c) for c in CLASS_NAMES} and len(set(labels)) == 5
            assert any(label.endswith(")") and "(" in label for label in labels)
            values = [float(rows.nth(i).locator(".value").inner_text().rstrip("%")) for i in range(rows.count())]
            assert values == sorted(values, reverse=True) and 0 < values[0] <= 100
            style = rows.nth(0).locator(".bar > span").get_attribute("style")
            width = style.split("width:")[1].split(";")[0].strip()
            assert width.endswith("%") and float(width[:-1]) == pytest.approx(values[0], abs=0.1)
            assert "Uncertainty:" in page.locator("#uncertainty").inner_text()
            assert "model onnx" in page.locator("#meta").inner_text()
            assert page.locator("#preview").get_attribute("src").startswith("blob:")

            # a non-image shows the server's message instead of bars
            page.set_input_files("#file", files=[{"name": "scan.jpg", "mimeType": "image/jpeg",
                                                  "buffer": b"%PDF-1.7 not really an image"}])
            page.locator("#status", has_text="Error 415").wait_for(timeout=10_000)
            assert "not an accepted image" in page.locator("#status").inner_text()
            assert page.locator("#result").is_hidden()
            assert not errors, errors
        finally:
            browser.close()
    external = [u for u in requests if not (u.startswith(server.url) or u.startswith("blob:") or u.startswith("data:"))]
    assert not external, f"the page fetched outside the server: {external}"


def test_docs_render_with_no_network(server) -> None:
    """/docs (Swagger UI) renders in Chromium with every request outside the server blocked."""
    sync_api = pytest.importorskip("playwright.sync_api")
    blocked: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page()

            def only_local(route) -> None:
                if route.request.url.startswith(server.url):
                    route.continue_()
                else:
                    blocked.append(route.request.url)
                    route.abort()

            page.route("**/*", only_local)
            page.goto(server.url + "/docs", wait_until="domcontentloaded")
            page.wait_for_selector(".swagger-ui .info .title", timeout=20_000)
            assert "lesionlite serve" in page.locator(".swagger-ui .info .title").inner_text()
            page.wait_for_selector(".opblock-summary-path[data-path='/predict']", timeout=20_000)
        finally:
            browser.close()
    assert not blocked, f"/docs asked for assets outside the server: {blocked}"


def test_page_says_synthetic_and_states_referral_and_abstain_reasons(tmp_path_factory: pytest.TempPathFactory) -> None:
    """An exported synthetic-data model: the banner shows, the operating-point decision and every abstain reason
    are written out in words, matching the JSON answer (random noise must not look like a confident class)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    pytest.importorskip("litert_torch")
    import httpx
    import numpy as np
    from PIL import Image
    from test_serve_support import encode, tflite_root

    noise = encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)), "PNG")
    with serving(tflite_root(tmp_path_factory.getbasetemp())) as s:
        with httpx.Client(base_url=s.url, timeout=30) as c:
            body = c.post("/predict", params={"model": "tiny_cnn_onnx_fp32", "top_k": 5},
                          files={"file": ("noise.png", noise, "image/png")}).json()
        assert body["synthetic_training_data"] is True and body["referral"] is not None
        with sync_api.sync_playwright() as p:
            browser = launch(p)
            try:
                page = browser.new_page()
                page.goto(s.url + "/", wait_until="domcontentloaded")
                page.wait_for_selector("#model option[value='tiny_cnn_onnx_fp32']", state="attached", timeout=10_000)
                page.select_option("#model", "tiny_cnn_onnx_fp32")
                assert "SYNTHETIC TRAINING DATA" in page.locator("#synthetic").inner_text()
                assert page.locator("#synthetic").is_visible()
                page.set_input_files("#file", files=[{"name": "noise.png", "mimeType": "image/png", "buffer": noise}])
                page.wait_for_selector("#bars li", timeout=15_000)
                referral = page.locator("#referral").inner_text()
                assert ("REFER" in referral) == body["referral"]["refer"] and "chosen on validation" in referral
                assert page.locator("#abstain").is_visible() == body["abstain"]
                if body["abstain"]:
                    reasons = page.locator("#abstain-reasons li").all_inner_texts()
                    assert reasons == body["abstain_reasons"]
                    head = page.locator("#abstain-head").inner_text()
                    assert ("does not look like" in head) == bool(body["out_of_distribution"])
                assert "(SYNTHETIC data)" in page.locator("#meta").inner_text()
            finally:
                browser.close()
