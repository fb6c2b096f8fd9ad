"""The public HTTP API on a real uvicorn (loopback, free port), real SQLite, real FAISS, bundled encoder."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx
import pytest
import uvicorn

from admin.web.app import build_app
from tests.conftest import ThreadServer

pytestmark = pytest.mark.slow


def post(base: str, path: str, body: object) -> httpx.Response:
    return httpx.post(base + path, json=body, timeout=30)


def test_paraphrase_is_answered_with_confidence_similarity_and_percent(live_app: str) -> None:
    r = post(live_app, "/chat", {"message": "你们能开发票吗", "session_id": "s1"})
    assert r.status_code == 200
    body = r.json()
    assert body["matched"] is True
    assert body["faq_id"] == "invoice"
    assert body["question"] == "是否支持开具发票？"
    assert body["answer"].startswith("支持")
    assert 0.0 < body["similarity"] <= 1.0
    assert 0.0 <= body["percent"] <= 100.0
    # The shipped calibration has a confidence model: it decides, at its line; no cosine threshold is in force.
    assert body["threshold"] is None and body["min_confidence"] == 50.0
    assert body["min_confidence"] <= body["confidence"] <= 100.0
    assert body["miss_id"] is None
    assert all(alt["faq_id"] != "invoice" for alt in body["alternatives"])


def test_unrelated_question_is_a_logged_miss_with_candidates(live_app: str, tmp_path: Path) -> None:
    r = post(live_app, "/chat", {"message": "明天上海会下雨吗", "session_id": "s2", "channel": "test"})
    body = r.json()
    assert r.status_code == 200
    assert body["matched"] is False and body["faq_id"] is None
    assert body["answer"]  # the configured fallback
    assert body["confidence"] < body["min_confidence"]
    assert len(body["alternatives"]) == 3
    miss_id = body["miss_id"]
    assert isinstance(miss_id, int)
    with sqlite3.connect(tmp_path / "var" / "faqbot.db") as db:
        row = db.execute("SELECT message, channel, session_id, reason, best_faq_id, candidates, status FROM misses "
                         "WHERE id = ?", (miss_id,)).fetchone()
    message, channel, session, reason, best_faq, candidates, status = row
    assert (message, channel, session, reason, status) == ("明天上海会下雨吗", "test", "s2", "below_threshold", "open")
    assert best_faq == body["alternatives"][0]["faq_id"]
    assert '"faq_id"' in candidates and '"percent"' in candidates


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b'{"message": ""}', 422, "empty_message"),
        (b'{"message": "   \\u200b "}', 422, "empty_message"),
        (b'{"message": 42}', 422, "invalid_request"),
        (b'{"session_id": "x"}', 422, "invalid_request"),
        ('{"message": "%s"}' % ("长" * 1001), 422, "message_too_long"),
        (b'{"message": "hi", "top_k": 0}', 422, "invalid_request"),
        (b'["message"]', 422, "invalid_request"),
    ],
)
def test_bad_input_gets_a_json_error(live_app: str, payload: bytes | str, status: int, code: str) -> None:
    data = payload.encode() if isinstance(payload, str) else payload
    r = httpx.post(live_app + "/chat", content=data, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == status
    body = r.json()
    assert body["status"] == "error"
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert "Traceback" not in r.text


def test_oversized_body_and_unknown_route(live_app: str) -> None:
    r = httpx.post(live_app + "/chat", content=b"x" * 2_000_000, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    r = httpx.get(live_app + "/nope")
    assert r.status_code == 404 and r.json()["status"] == "error"


def test_hostile_text_is_answered_not_crashed(live_app: str) -> None:
    for message in ["\ufdfa" * 200, "a\ud800b", "\x00\x01\x02问", "<script>alert(1)</script>", "🇨🇳" * 300]:
        raw = json.dumps({"message": message})  # ASCII escapes: lone surrogates travel as \\ud800
        r = httpx.post(live_app + "/chat", content=raw, headers={"content-type": "application/json"}, timeout=30)
        assert r.status_code in (200, 422), r.text
    assert httpx.get(live_app + "/healthz").json() == {"status": "ok"}


def test_tags_restrict_the_candidates(live_app: str) -> None:
    body = post(live_app, "/chat", {"message": "可以开票吗", "tags": ["account"]}).json()
    assert body["faq_id"] != "invoice"
    assert {a["faq_id"] for a in body["alternatives"]} <= {"change_password"}


def test_similarity_single_and_batch(live_app: str) -> None:
    r = post(live_app, "/similarity", {"sentence_a": "今天天气真不错", "sentence_b": "外面阳光明媚"})
    body = r.json()
    assert body["status"] == "success" and body["sentence_a"] == "今天天气真不错"
    assert 0 < body["similarity"] <= 1 and 0 <= body["percent"] <= 100
    same = post(live_app, "/similarity", {"sentence_a": "可以开票吗", "sentence_b": "可以开票吗"}).json()
    assert same["similarity"] == pytest.approx(1.0, abs=1e-3)
    batch = post(live_app, "/similarity", {"pairs": [["可以开票吗", "能开发票吗"], ["可以开票吗", "明天下雨吗"]]}).json()
    first, second = batch["results"]
    assert first["similarity"] > second["similarity"] and first["percent"] >= second["percent"]
    r = post(live_app, "/similarity", {"sentence_a": "只有一句"})
    assert r.status_code == 422 and r.json()["status"] == "error"


def test_embeddings_openai_shape(live_app: str) -> None:
    body = post(live_app, "/v1/embeddings", {"input": ["你好", "世界"], "input_type": "passage"}).json()
    assert body["object"] == "list" and len(body["data"]) == 2
    assert body["data"][1]["index"] == 1 and len(body["data"][0]["embedding"]) == 384
    single = post(live_app, "/v1/embeddings", {"input": "你好"}).json()
    assert len(single["data"]) == 1
    # Queries take /chat's path: a question asked in /chat is a cache hit here, the same vector.
    post(live_app, "/chat", {"message": "明天上海会下雨吗"})
    before = httpx.get(f"{live_app}/metrics", timeout=10).text
    again = post(live_app, "/v1/embeddings", {"input": "明天上海会下雨吗", "input_type": "query"}).json()
    after = httpx.get(f"{live_app}/metrics", timeout=10).text
    assert len(again["data"][0]["embedding"]) == 384
    assert cache_hits(after) == cache_hits(before) + 1


def cache_hits(metrics: str) -> float:
    """The /metrics count of questions answered from the embedding cache."""
    lines = [line for line in metrics.splitlines() if line.startswith('faqbot_query_vectors_total{source="cache"}')]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def test_thumbs_down_is_logged_as_a_miss(live_app: str, tmp_path: Path) -> None:
    r = post(live_app, "/feedback", {"message": "积分怎么用", "faq_id": "member_points", "helpful": False,
                                     "session_id": "s3"})
    body = r.json()
    assert r.status_code == 200 and isinstance(body["miss_id"], int)
    with sqlite3.connect(tmp_path / "var" / "faqbot.db") as db:
        reason, best = db.execute("SELECT reason, best_faq_id FROM misses WHERE id = ?", (body["miss_id"],)).fetchone()
    assert (reason, best) == ("feedback", "member_points")
    up = post(live_app, "/feedback", {"message": "积分怎么用", "faq_id": "member_points", "helpful": True}).json()
    assert up["miss_id"] is None


def test_readyz_metrics_and_openapi(live_app: str) -> None:
    ready = httpx.get(live_app + "/readyz").json()
    assert ready["status"] == "ready" and ready["faqs"] == 5 and ready["index_version"]
    post(live_app, "/chat", {"message": "可以开票吗"})
    metrics = httpx.get(live_app + "/metrics").text
    assert 'faqbot_chat_answers_total{channel="web",outcome="matched"}' in metrics
    assert f'faqbot_index_info{{version="{ready["index_version"]}"}} 1.0' in metrics
    assert httpx.get(live_app + "/openapi.json").json()["paths"]["/chat"]


def test_cors_preflight_allows_the_widget_from_another_origin(live_app: str) -> None:
    r = httpx.options(live_app + "/chat", headers={"Origin": "https://shop.example.com",
                                                   "Access-Control-Request-Method": "POST",
                                                   "Access-Control-Request-Headers": "content-type"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] in ("*", "https://shop.example.com")


def test_a_worker_that_loads_before_serving_answers_its_first_connection(make_settings, bundled_encoder) -> None:
    """What each worker of `faqbot serve --workers N` does: no customer may land on one still loading."""
    app = build_app(make_settings(), encoder=bundled_encoder, load_before_serving=True)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    with ThreadServer(config).run_in_thread() as base:  # yields as soon as uvicorn listens
        first = post(base, "/chat", {"message": "你们能开发票吗"})
        assert first.status_code == 200, first.text
        assert first.json()["faq_id"] == "invoice"


def test_suggestions_are_the_kbs_questions_most_asked_first(live_app: str) -> None:
    for _ in range(3):
        assert post(live_app, "/chat", {"message": "积分可以抵现吗"}).json()["faq_id"] == "member_points"
    body = httpx.get(f"{live_app}/suggestions", params={"limit": 3}, timeout=30).json()
    top = body["suggestions"]
    assert top[0] == {"faq_id": "member_points", "question": "会员积分有什么用？", "source": "asked"}
    assert len(top) == 3 and len({s["faq_id"] for s in top}) == 3
    bad = httpx.get(f"{live_app}/suggestions", params={"limit": 0}, timeout=30)
    assert bad.status_code == 422 and bad.json()["status"] == "error"
    unknown = httpx.get(f"{live_app}/suggestions", params={"kb": "nope"}, timeout=30)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_kb"
