"""Quick checks of the page routes (no browser, no model): files, headers, config, the admin switch.

The app is driven without its lifespan, so the index never loads unless a test swaps one in (built
by a stand-in character encoder): these tests are about serving the pages and what they are told,
the browser tests (test_pages_browser.py) about what the pages do.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from admin.web.app import build_app
from bot.app import create_app
from bot.settings import Settings
from faq import load_kb
from index.calibration import Calibration
from index.confidence import ConfidenceModel
from index.faq_index import build_index

STATIC = Path(__file__).resolve().parent.parent / "bot" / "static"
TOKEN = "pages-test-token-0123"


@pytest.fixture
def client(make_settings) -> TestClient:
    return TestClient(create_app(make_settings(admin_token=TOKEN, handoff_url="https://kefu.example.com/chat",
                                               widget_title="悦家客服")))


@pytest.mark.parametrize(("path", "marker"), [
    ("/", "悦家优选"),
    ("/ui/similarity", "语义相似度计算器"),
    ("/admin", "管理后台"),
])
def test_pages_are_served_as_html_with_a_strict_policy(client: TestClient, path: str, marker: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert marker in response.text
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert client.head(path).status_code == 200


def test_every_local_asset_a_page_references_exists(client: TestClient) -> None:
    for page in ("/", "/ui/similarity", "/admin"):
        html = client.get(page).text
        assets = re.findall(r'(?:src|href)="(/(?:static/[^"]+|widget\.js|favicon\.ico))"', html)
        assert assets, page
        for asset in assets:
            response = client.get(asset)
            assert response.status_code == 200, f"{page} -> {asset}"
            assert len(response.content) > 50


def test_pages_load_nothing_from_other_hosts() -> None:
    """Works offline: no CDN, no web fonts, no remote scripts in any page or stylesheet."""
    for file in STATIC.rglob("*"):
        if file.suffix in {".html", ".css"}:
            text = file.read_text(encoding="utf-8")
            assert not re.search(r'(?:src|href)="(?:https?:)?//', text), file
            assert not re.search(r"url\((?:['\"])?(?:https?:)?//", text), file
            assert "@import" not in text, file


def test_scripts_never_parse_data_as_html() -> None:
    """Customer messages are hostile input: the scripts build DOM nodes and set textContent only."""
    for file in STATIC.glob("*.js"):
        source = file.read_text(encoding="utf-8")
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in source, f"{file.name} uses {sink}"


def test_widget_script_is_served_for_other_sites(client: TestClient) -> None:
    response = client.get("/widget.js", headers={"Origin": "https://shop.example.com"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert response.headers["cross-origin-resource-policy"] == "cross-origin"
    assert "attachShadow" in response.text


def test_widget_config_carries_the_display_settings(client: TestClient) -> None:
    response = client.get("/widget-config.json", headers={"Origin": "https://shop.example.com"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    config = response.json()
    settings = Settings()
    assert config["title"] == "悦家客服"
    assert config["fallback_answer"] == settings.fallback_answer
    assert config["handoff_url"] == "https://kefu.example.com/chat"
    assert config["admin_enabled"] is True
    assert config["threshold_percent"] is None  # index not loaded in this test
    assert config["min_confidence"] is None


def test_chat_preflight_from_another_origin_is_allowed(client: TestClient) -> None:
    response = client.options("/chat", headers={
        "Origin": "https://shop.example.com",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    })
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] in ("*", "https://shop.example.com")


def test_admin_page_is_off_without_a_token(make_settings) -> None:
    client = TestClient(create_app(make_settings()))
    response = client.get("/admin")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert client.get("/widget-config.json").json()["admin_enabled"] is False
    assert client.get("/").status_code == 200


def test_static_directory_does_not_list_or_escape(client: TestClient) -> None:
    assert client.get("/static/").status_code == 404
    assert client.get("/static/../pages.py").status_code == 404
    assert client.get("/static/%2e%2e/pages.py").status_code == 404


class CharEncoder:
    """A stand-in encoder (a bag of characters): enough to build an index and read its answer line."""

    name = "chars"
    fingerprint = "chars:v1"
    dim = 64

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        rows = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in zip(rows, texts, strict=True):
            for char in text:
                row[ord(char) % self.dim] += 1.0
        return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-9)

    encode_passages = encode_queries


# A cosine calibration with and without a confidence model (made-up numbers: only the lines matter here).
COSINE_CALIBRATION = Calibration(knots_cosine=(0.5, 0.9, 1.0), knots_percent=(0.0, 80.0, 100.0), threshold=0.85)
CONFIDENCE_CALIBRATION = dataclasses.replace(COSINE_CALIBRATION, confidence=ConfidenceModel(
    features=("s1", "gap2"), coef=(1.0, 1.0), intercept=0.0, mean=(0.9, 0.03), scale=(0.03, 0.02)))


def live_client(settings: Settings, calibration: Calibration) -> TestClient:
    """The app and admin API with an index of the tiny KB swapped in (no lifespan, so nothing else loads it)."""
    encoder = CharEncoder()
    app = build_app(settings, encoder=encoder)
    app.state.service.use_index(build_index(load_kb(settings.kb), encoder, calibration=calibration))
    return TestClient(app)


@pytest.mark.parametrize(("calibration", "overrides", "min_confidence", "threshold_percent"), [
    (CONFIDENCE_CALIBRATION, {}, 50.0, None),  # the model's own line
    (CONFIDENCE_CALIBRATION, {"min_confidence": 70.0}, 70.0, None),  # FAQBOT_MIN_CONFIDENCE
    (CONFIDENCE_CALIBRATION, {"threshold": 0.9}, None, 80.0),  # FAQBOT_THRESHOLD: a cosine decides
    (COSINE_CALIBRATION, {}, None, 70.0),  # no model: the calibration's cosine threshold (0.85 -> 70%)
], ids=["model", "min-confidence-setting", "threshold-setting", "no-model"])
def test_widget_config_names_the_line_the_bot_answers_at(make_settings, calibration: Calibration,
                                                         overrides: dict[str, float], min_confidence: float | None,
                                                         threshold_percent: float | None) -> None:
    """Either a confidence or a cosine decides; the pages are told which (the other is null)."""
    client = live_client(make_settings(admin_token=TOKEN, **overrides), calibration)
    config = client.get("/widget-config.json").json()
    assert config["min_confidence"] == min_confidence
    assert config["threshold_percent"] == threshold_percent
    index = client.get("/admin/index", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert index["min_confidence"] == min_confidence
    assert index["threshold"] == (overrides.get("threshold") or calibration.threshold)
