"""The improvement loop against a real server: miss -> resolve via the admin API -> YAML on disk ->
reload -> answered, while customers keep chatting; broken reloads; unauthorised calls."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TINY_GOLDEN, TINY_KB, faqbot_serve, serve_app

TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# With the answer threshold pinned (independent of any shipped calibration) this paraphrase of
# `shipping_time` scores ~0.91 against the tiny KB: a miss.
MISSED = "我买的东西啥时候能寄出来"
STABLE = "可以开票吗"  # a KB text: always answered by `invoice`
GOLDEN = TINY_GOLDEN


def write_kb(tmp_path: Path) -> Path:
    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "faq.yaml").write_text(TINY_KB, encoding="utf-8")
    (kb / "tests.yaml").write_text(GOLDEN, encoding="utf-8")
    return kb


@contextlib.contextmanager
def admin_server(tmp_path: Path, encoder, **overrides: object) -> Iterator[tuple[str, Path]]:
    from admin.web.app import build_app
    from bot.settings import Settings

    kb = write_kb(tmp_path)
    values: dict[str, object] = {"kb": kb, "data_dir": tmp_path / "var", "threshold": 0.93, "admin_token": TOKEN}
    values.update(overrides)
    with serve_app(build_app(Settings(**values), encoder=encoder)) as base:
        yield base, kb


class ChatHammer:
    """A customer that keeps asking during the test (bounded), recording every status."""

    def __init__(self, base: str, max_requests: int = 400) -> None:
        self.base = base
        self.max_requests = max_requests
        self.statuses: list[int] = []
        self.finished_at: list[float] = []
        self.wrong: list[object] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as client:
            while not self._stop.is_set() and len(self.statuses) < self.max_requests:
                try:
                    response = client.post("/chat", json={"message": STABLE, "channel": "loadtest"})
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                    continue
                self.statuses.append(response.status_code)
                self.finished_at.append(time.monotonic())
                if response.status_code == 200 and response.json()["faq_id"] != "invoice":
                    self.wrong.append(response.json())
                time.sleep(0.01)

    def __enter__(self) -> ChatHammer:
        self._thread.start()
        return self

    def wait_for(self, n: int) -> None:
        """Block until `n` more answers came back (so the client really overlaps what follows)."""
        target = len(self.statuses) + n
        deadline = time.monotonic() + 30
        while len(self.statuses) < target and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.01)

    def during(self, start: float, end: float) -> int:
        return sum(start <= t <= end for t in self.finished_at)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def chat(base: str, message: str) -> dict:
    response = httpx.post(base + "/chat", json={"message": message}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.slow
def test_miss_resolved_over_the_admin_api_is_answered_after_reload_without_downtime(tmp_path, bundled_encoder):
    with admin_server(tmp_path, bundled_encoder) as (base, kb), ChatHammer(base) as hammer:
        before = chat(base, MISSED)
        assert before["matched"] is False and before["miss_id"]
        version_before = httpx.get(base + "/admin/index", headers=AUTH).json()["version"]

        listing = httpx.get(base + "/admin/misses", headers=AUTH).json()
        cluster = next(c for c in listing["clusters"] if c["representative"] == MISSED)
        assert cluster["count"] == 1 and cluster["candidates"][0]["faq_id"] == "shipping_time"

        hammer.wait_for(10)
        started = time.monotonic()
        response = httpx.post(base + f"/admin/misses/{cluster['id']}/resolve", headers=AUTH, timeout=120,
                              json={"action": "attach", "faq_id": "shipping_time", "miss_ids": cluster["miss_ids"]})
        ended = time.monotonic()
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["edit"]["added"] == [MISSED]
        assert result["reload"]["status"] == "published"
        assert result["reload"]["gate"]["passed"] is True and result["reload"]["gate"]["total"] == 4

        on_disk = (kb / "faq.yaml").read_text(encoding="utf-8")
        assert f"      - {MISSED}\n" in on_disk
        assert on_disk.startswith("# A tiny shop FAQ for tests\n")
        assert on_disk.replace(f"      - {MISSED}\n", "") == TINY_KB  # nothing else moved

        index = httpx.get(base + "/admin/index", headers=AUTH).json()
        assert index["version"] == result["reload"]["version"] != version_before
        assert index["published_version"] == index["version"]
        faqs = {f["faq_id"]: f for f in httpx.get(base + "/admin/faqs", headers=AUTH).json()["faqs"]}
        assert faqs["shipping_time"]["question"] == "下单后多久发货？" and faqs["shipping_time"]["file"].endswith("faq.yaml")
        assert len(faqs) == 5
        after = chat(base, MISSED)
        assert after["matched"] is True and after["faq_id"] == "shipping_time"
        assert after["index_version"] == index["version"]

        resolved = httpx.get(base + "/admin/misses", params={"status": "resolved"}, headers=AUTH).json()
        assert [c["representative"] for c in resolved["clusters"]] == [MISSED]
        training = httpx.get(base + "/admin/misses/export", params={"kind": "training", "format": "jsonl"},
                             headers=AUTH)
        assert training.status_code == 200
        assert '"query": "我买的东西啥时候能寄出来", "positive": "下单后多久发货？"' in training.text
        hammer.wait_for(10)
    assert hammer.during(started, ended) >= 1, "no customer question was answered while the index was rebuilt"
    assert set(hammer.statuses) == {200} and not hammer.errors and not hammer.wrong


@pytest.mark.slow
def test_reload_with_broken_yaml_lists_problems_and_keeps_answering(tmp_path, bundled_encoder):
    with admin_server(tmp_path, bundled_encoder) as (base, kb), ChatHammer(base, max_requests=200) as hammer:
        live = httpx.get(base + "/admin/index", headers=AUTH).json()["version"]
        broken = TINY_KB.replace("    answer: 现货商品 48 小时内发货。\n", "").replace("  - id: member_points",
                                                                                   "  - id: member points")
        (kb / "faq.yaml").write_text(broken, encoding="utf-8")
        hammer.wait_for(5)
        response = httpx.post(base + "/admin/reload", headers=AUTH, json={}, timeout=120)
        assert response.status_code == 422
        error = response.json()["error"]
        assert error["code"] == "invalid_kb"
        details = error["details"]
        assert details["version"] == live and details["status"] == "invalid_kb"
        fields = {(Path(p["file"]).name, p["field"]) for p in details["problems"]}
        assert ("faq.yaml", "faqs[shipping_time].answer") in fields
        assert any(p["field"].endswith(".id") and p["line"] > 0 for p in details["problems"])
        assert chat(base, "下单后多久发货？")["faq_id"] == "shipping_time"
        index = httpx.get(base + "/admin/index", headers=AUTH).json()
        assert index["version"] == live and index["kb_problems"] == len(details["problems"])
        assert index["rebuild"]["last"]["status"] == "invalid_kb"
        lint = httpx.get(base + "/admin/lint", headers=AUTH)
        assert lint.status_code == 422 and lint.json()["error"]["details"][0]["line"] > 0
        hammer.wait_for(5)
    assert set(hammer.statuses) == {200} and not hammer.errors and not hammer.wrong


@pytest.mark.slow
def test_concurrent_reloads_do_not_collide(tmp_path, bundled_encoder):
    with admin_server(tmp_path, bundled_encoder) as (base, kb):
        text = (kb / "faq.yaml").read_text(encoding="utf-8")
        edited = text.replace("      - 积分怎么使用\n", "      - 积分怎么使用\n      - 积分能当钱花吗\n")
        assert edited != text
        (kb / "faq.yaml").write_text(edited, encoding="utf-8")
        results: list[httpx.Response] = []

        def reload() -> None:
            results.append(httpx.post(base + "/admin/reload", headers=AUTH, json={"wait": True}, timeout=120))

        threads = [threading.Thread(target=reload) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert [r.status_code for r in results] == [200, 200, 200]
        statuses = sorted(r.json()["status"] for r in results)
        assert statuses == ["published", "unchanged", "unchanged"]
        versions = {r.json()["version"] for r in results}
        assert len(versions) == 1
        assert chat(base, "积分能当钱花吗")["faq_id"] == "member_points"

        busy = []
        (kb / "faq.yaml").write_text(text, encoding="utf-8")
        first = threading.Thread(target=lambda: busy.append(
            httpx.post(base + "/admin/reload", headers=AUTH, json={}, timeout=120)))
        first.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not httpx.get(base + "/admin/index", headers=AUTH).json()["rebuild"]["running"]:
            time.sleep(0.01)
        no_wait = httpx.post(base + "/admin/reload", headers=AUTH, json={"wait": False}, timeout=120)
        first.join(120)
        assert busy[0].status_code == 200
        assert no_wait.status_code == 409 and no_wait.json()["error"]["code"] == "rebuild_running"


@pytest.mark.slow
def test_unauthorised_admin_calls_change_nothing(tmp_path, bundled_encoder):
    with admin_server(tmp_path, bundled_encoder) as (base, kb):
        miss_id = chat(base, MISSED)["miss_id"]
        before = (kb / "faq.yaml").read_bytes()
        attach = {"action": "attach", "faq_id": "shipping_time"}
        for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}):
            response = httpx.post(base + f"/admin/misses/{miss_id}/resolve", headers=headers, json=attach)
            assert response.status_code == 401, (headers, response.text)
            assert response.json()["error"]["code"] == "unauthorized"
            assert response.headers["www-authenticate"].startswith("Bearer")
            garbage = httpx.post(base + "/admin/reload", headers={**headers, "Content-Type": "application/json"},
                                 content=b"{not json")
            assert garbage.status_code == 401
            for path in ("/admin/misses", "/admin/index", "/admin/lint", "/admin/stats", "/admin/misses/export",
                         "/admin/faqs"):
                assert httpx.get(base + path, headers=headers).status_code == 401
        assert (kb / "faq.yaml").read_bytes() == before
        miss = httpx.get(base + f"/admin/misses/{miss_id}", headers=AUTH).json()["miss"]
        assert miss["status"] == "open"
        assert chat(base, MISSED)["matched"] is False
        # The same calls with the token work.
        stats = httpx.get(base + "/admin/stats", params={"tz": "Asia/Shanghai"}, headers=AUTH).json()
        assert stats["totals"]["questions"] == 2 and stats["top_misses"][0]["count"] == 2
        lint = httpx.get(base + "/admin/lint", headers=AUTH).json()
        assert lint["faqs"] == 5
        assert set(lint["counts"]) == {"duplicates", "confusable", "misplaced", "expired", "expiring"}
        exported = httpx.get(base + "/admin/misses/export", params={"format": "csv"}, headers=AUTH)
        assert exported.headers["content-disposition"].endswith('.csv"') and MISSED in exported.text
        bad = httpx.post(base + f"/admin/misses/{miss_id}/resolve", headers=AUTH, json={"action": "explode"})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"


@pytest.mark.slow
def test_admin_api_is_off_without_a_token(tmp_path, bundled_encoder):
    with admin_server(tmp_path, bundled_encoder, admin_token=None) as (base, kb):
        before = (kb / "faq.yaml").read_bytes()
        unknown = httpx.get(base + "/no-such-page")
        for method, path in (("GET", "/admin/misses"), ("POST", "/admin/reload"), ("GET", "/admin/index"),
                             ("POST", "/admin/misses/1/resolve"), ("GET", "/admin/stats")):
            response = httpx.request(method, base + path, headers=AUTH, json={"action": "ignore"})
            assert response.status_code == 404
            assert response.json() == unknown.json()
        assert (kb / "faq.yaml").read_bytes() == before


@pytest.mark.slow
def test_every_worker_of_a_multi_worker_server_serves_the_reloaded_index(tmp_path):
    kb = write_kb(tmp_path)
    env = {"FAQBOT_ADMIN_TOKEN": TOKEN, "FAQBOT_THRESHOLD": "0.93"}
    log = tmp_path / "serve.log"
    with faqbot_serve(kb, tmp_path / "var", env=env, extra_args=("--workers", "2"), log_file=log) as (base, _proc), \
            httpx.Client(base_url=base, timeout=30) as client:
        # Ready means every worker answers: each loads the index before it takes connections.
        for _ in range(20):
            with httpx.Client(base_url=base, timeout=30) as fresh:
                reply = fresh.post("/chat", json={"message": MISSED})
            assert reply.status_code == 200, (reply.text, log.read_text(encoding="utf-8")[-4000:])
        miss_id = reply.json()["miss_id"]
        assert miss_id
        response = client.post(f"/admin/misses/{miss_id}/resolve", headers=AUTH, timeout=180,
                               json={"action": "attach", "faq_id": "shipping_time"})
        assert response.status_code == 200, response.text
        version = response.json()["reload"]["version"]
        # Both workers poll CURRENT every 2 s; fresh connections spread over them.
        deadline = time.monotonic() + 20
        streak = 0
        while time.monotonic() < deadline and streak < 20:
            with httpx.Client(base_url=base, timeout=30) as fresh:
                reply = fresh.post("/chat", json={"message": MISSED})
            body = reply.json()
            assert reply.status_code == 200, (body, log.read_text(encoding="utf-8")[-4000:])
            streak = streak + 1 if body["index_version"] == version and body["faq_id"] == "shipping_time" else 0
        assert streak >= 20, body
