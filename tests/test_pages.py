"""Quick checks of the page routes (no browser, no model): files, headers, config, the admin switch.

The app is driven without its lifespan, so the index never loads: these tests are about serving
the pages, the browser tests (test_pages_browser.py) about what the pages do.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from bot.app import create_app
from bot.settings import Settings

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
