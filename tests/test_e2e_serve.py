"""`faqbot serve` as a real process: not ready until the index is built, then answers and logs misses."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, faqbot_serve, free_port

pytestmark = pytest.mark.slow


def test_serve_builds_answers_and_logs_misses(tiny_kb: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with faqbot_serve(tiny_kb, data_dir) as (base, _proc):
        ready = httpx.get(base + "/readyz").json()
        assert ready["status"] == "ready" and ready["faqs"] == 5
        hit = httpx.post(base + "/chat", json={"message": "能不能开发票"}).json()
        assert (hit["matched"], hit["faq_id"]) == (True, "invoice")
        miss = httpx.post(base + "/chat", json={"message": "你们老板是谁", "session_id": "e2e"}).json()
        assert miss["matched"] is False
        bad = httpx.post(base + "/chat", json={"message": ""})
        assert bad.status_code == 422 and bad.json()["status"] == "error"
    with sqlite3.connect(data_dir / "faqbot.db") as db:
        rows = db.execute("SELECT id, message, session_id FROM misses").fetchall()
    assert rows == [(miss["miss_id"], "你们老板是谁", "e2e")]
    assert (data_dir / "index" / "CURRENT").read_text() == ready["index_version"]


def test_readyz_is_503_until_the_index_is_loaded(tmp_path: Path) -> None:
    """Serve an app whose index is built at start-up in the background: /healthz at once, /readyz later.

    The shipped sample KB (~300 texts) takes seconds to encode, so the port is open well before the index.
    """
    from bot.settings import SAMPLE_KB

    port = free_port()
    code = (
        "import sys, uvicorn; from admin.web.app import build_app; from bot.settings import Settings;"
        f"uvicorn.run(build_app(Settings(kb={str(SAMPLE_KB)!r}, data_dir={str(tmp_path / 'd')!r})),"
        f" host='127.0.0.1', port={port}, log_level='warning')"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    statuses: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.02)
        while time.monotonic() < deadline:
            r = httpx.get(base + "/readyz", timeout=2)
            statuses.append(r.status_code)
            if r.status_code == 200:
                break
            assert r.json()["error"]["code"] == "not_ready"
            chat = httpx.post(base + "/chat", json={"message": "可以开票吗"}, timeout=5)
            assert chat.status_code in (200, 503)
            time.sleep(0.02)
    finally:
        proc.terminate()
        proc.wait(15)
    assert statuses[0] == 503, statuses  # the index build had not finished when the port opened
    assert statuses[-1] == 200


def test_serve_refuses_a_broken_kb_with_file_line_field(tmp_path: Path) -> None:
    kb = tmp_path / "kb.yaml"
    kb.write_text("version: 1\nfaqs:\n  - id: x\n    question: 问\n", encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "admin.cli", "serve", "--kb", str(kb), "--data-dir",
                             str(tmp_path / "d"), "--port", str(free_port())], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    assert f"{kb}:3: faqs[x].answer: missing (required)" in result.stderr
    assert "Traceback" not in result.stderr
