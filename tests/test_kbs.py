"""Several knowledge bases in one process (issue #23): `--kb NAME=PATH`, per-KB index, misses and
admin tokens, on a real uvicorn with real SQLite and FAISS (a bag-of-characters encoder stands in)."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from admin.cli.main import main
from admin.web.app import build_app
from bot import migrations
from bot.settings import Settings
from bot.store import MissRecord, Store
from index.datadir import DataDir
from tests.conftest import serve_app
from tests.test_pages import CharEncoder

ADMIN = "admin-token-0123456789"
COURSES_TOKEN = "courses-token-0123456789"

COURSES_KB = textwrap.dedent(
    """\
    version: 1
    faqs:
      - id: enroll
        question: 课程怎么报名？
        paraphrases: [如何报名课程]
        answer: 在课程页点击“立即报名”即可。
      - id: certificate
        question: 结课后有证书吗？
        answer: 通过考试后可下载电子证书。
    """
)


@pytest.fixture
def kb_dirs(tmp_path: Path, tiny_kb: Path) -> dict[str, Path]:
    """Three KBs: the tiny shop KB, a courses KB, and one whose YAML is broken."""
    courses = tmp_path / "courses"
    courses.mkdir()
    (courses / "faq.yaml").write_text(COURSES_KB, encoding="utf-8")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "faq.yaml").write_text("version: 1\nfaqs:\n  - id: x\n", encoding="utf-8")
    return {"shop": tiny_kb, "courses": courses, "broken": broken}


def _kb_value(kbs: dict[str, Path]) -> str:
    return ",".join(f"{name}={path}" for name, path in kbs.items())


def test_a_plain_path_is_one_kb_named_default_with_the_old_index_dir(tiny_kb: Path, tmp_path: Path) -> None:
    settings = Settings(kb=tiny_kb, data_dir=tmp_path)
    assert settings.kb == tiny_kb and settings.kb_paths == {"default": tiny_kb} and settings.kb_name == "default"
    assert settings.layout.index == tmp_path / "index"  # existing data dirs keep working
    assert DataDir(tmp_path).for_kb("courses").index == tmp_path / "kbs" / "courses" / "index"


def test_named_kbs_keep_their_order_and_the_first_is_the_default(kb_dirs: dict[str, Path], tmp_path: Path) -> None:
    settings = Settings(kb=_kb_value(kb_dirs), data_dir=tmp_path)
    assert list(settings.kb_paths) == ["shop", "courses", "broken"]
    assert settings.kb_name == "shop" and settings.kb == kb_dirs["shop"].resolve()
    courses = settings.for_kb("courses")
    assert courses.kb == kb_dirs["courses"].resolve() and courses.layout.index == tmp_path / "kbs" / "courses" / "index"


def test_two_hundred_kbs_fit_in_one_faqbot_kb(tmp_path: Path, tiny_kb: Path) -> None:
    """A value far longer than a file name may be (the OS refuses to even look it up) is still parsed."""
    folders = {}
    for i in range(200):
        folders[f"kb{i:03d}"] = tmp_path / f"some-long-directory-name-for-kb-{i:03d}"
        folders[f"kb{i:03d}"].mkdir()
    settings = Settings(kb=_kb_value(folders), data_dir=tmp_path)
    assert list(settings.kb_paths) == list(folders) and settings.kb_name == "kb000"


@pytest.mark.parametrize(("kbs", "expected"), [
    (["a={shop}", "a={courses}"], "KB name 'a' is given twice"),
    (["a/b={shop}"], "KB name 'a/b'"),
    (["..={shop}", "b={courses}"], "KB name '..'"),
    (["a={shop}/nope", "b={courses}"], "does not exist"),
    (["a={shop}", "b={shop}/"], "is already the KB 'a'"),
    (["{shop}", "{courses}"], "KB name 'default' is given twice"),
], ids=["duplicate-name", "slash", "dotdot", "missing-path", "same-path", "two-plain-paths"])
def test_bad_kb_flags_are_one_error_line_before_anything_starts(kb_dirs: dict[str, Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str], kbs: list[str],
                                                               expected: str) -> None:
    argv = ["serve", "--data-dir", str(tmp_path / "var")]
    for kb in kbs:
        argv += ["--kb", kb.format(**kb_dirs)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("faqbot: error: bad settings: kb: ") and expected in err[0], err
    assert not (tmp_path / "var").exists()  # nothing started, nothing written


def test_faqbot_kb_env_takes_the_same_form(kb_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAQBOT_KB", f"shop={kb_dirs['shop']},courses={kb_dirs['courses']}")
    assert list(Settings().kb_paths) == ["shop", "courses"]
    monkeypatch.setenv("FAQBOT_KB_ADMIN_TOKENS", '{"nosuch": "0123456789abcdef"}')
    with pytest.raises(ValueError, match="no KB named 'nosuch'"):
        Settings()


def test_existing_misses_get_the_first_kbs_name_from_the_migration(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = Store(url)
    migrations.downgrade(store.engine, "0002_chat_log_handoff")  # the schema before several KBs
    with store.engine.begin() as conn:
        conn.execute(text("INSERT INTO misses (created_at, message, match_key, channel, reason, candidates, status) "
                          "VALUES ('2026-01-01 00:00:00', '旧的问题', '旧的问题', 'web', 'below_threshold', '[]', 'open')"))
    store.close()
    store = Store(url, first_kb="shop")
    assert migrations.current_revision(store.engine) == migrations.head_revision()
    assert [m["kb"] for m in store.list_misses()] == ["shop"]
    new = store.log_miss(MissRecord("新", "新", "web", None, "below_threshold", None, None, None, [], "v", kb="courses"))
    assert store.get_miss(new)["kb"] == "courses"
    assert [m["message"] for m in store.list_misses(kb="shop")] == ["旧的问题"]
    store.close()


@pytest.fixture
def multi_server(kb_dirs: dict[str, Path], tmp_path: Path):
    """A real uvicorn serving the three KBs (one broken) with a global and a courses-only admin token."""
    settings = Settings(kb=_kb_value(kb_dirs), data_dir=tmp_path / "var", threshold=0.95, admin_token=ADMIN,
                        kb_admin_tokens={"courses": COURSES_TOKEN}, rate_limit_enabled=False)
    with serve_app(build_app(settings, encoder=CharEncoder())) as base:
        yield base, tmp_path / "var"


def _chat(base: str, message: str, kb: str | None = None) -> httpx.Response:
    body = {"message": message, **({"kb": kb} if kb else {})}
    return httpx.post(base + "/chat", json=body, timeout=30)


def test_each_kb_answers_from_its_own_index_and_a_broken_one_is_named(multi_server) -> None:
    base, data_dir = multi_server
    ready = httpx.get(base + "/readyz", timeout=10)
    assert ready.status_code == 200
    state = ready.json()
    assert state["kbs"]["shop"]["ready"] and state["kbs"]["courses"]["ready"]
    assert state["kbs_failed"] == ["broken"] and state["kbs"]["broken"]["error"]
    assert (data_dir / "kbs" / "shop" / "index" / "CURRENT").is_file()
    assert (data_dir / "kbs" / "courses" / "index" / "CURRENT").is_file()

    assert _chat(base, "会员积分有什么用？").json()["faq_id"] == "member_points"  # no kb: the first
    assert _chat(base, "课程怎么报名？", "courses").json()["faq_id"] == "enroll"
    assert _chat(base, "课程怎么报名？", "shop").json()["matched"] is False  # not the shop's FAQ

    unknown = _chat(base, "你好", "nosuch")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_kb"
    broken = _chat(base, "你好", "broken")
    assert broken.status_code == 503 and broken.json()["error"]["code"] == "kb_unavailable"
    feedback = httpx.post(base + "/feedback", json={"message": "你好", "helpful": False, "kb": "nosuch"}, timeout=10)
    assert feedback.status_code == 404 and feedback.json()["error"]["code"] == "unknown_kb"


def _admin(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_misses_and_admin_tokens_are_per_kb(multi_server) -> None:
    base, _ = multi_server
    shop_miss = _chat(base, "今天天气怎么样").json()["miss_id"]
    courses_miss = _chat(base, "老师是谁呀", "courses").json()["miss_id"]
    thumbs = httpx.post(base + "/feedback", json={"message": "证书是纸质的吗", "helpful": False, "kb": "courses"},
                        timeout=10).json()["miss_id"]
    assert shop_miss and courses_miss and thumbs

    def kb_of(miss_id: int, token: str = ADMIN) -> httpx.Response:
        return httpx.get(f"{base}/admin/misses/{miss_id}", headers=_admin(token), timeout=10)

    assert kb_of(shop_miss, ADMIN).json()["miss"]["kb"] == "shop"  # the global token asks the first KB by default
    assert kb_of(courses_miss, ADMIN).status_code == 404
    assert httpx.get(f"{base}/admin/misses/{shop_miss}", params={"kb": "shop"}, headers=_admin(ADMIN),
                     timeout=10).json()["miss"]["kb"] == "shop"
    assert kb_of(courses_miss, COURSES_TOKEN).json()["miss"]["kb"] == "courses"

    listed = httpx.get(base + "/admin/misses", params={"kb": "courses", "status": "all"}, headers=_admin(ADMIN),
                       timeout=30).json()
    ids = {i for c in listed["clusters"] for i in c["miss_ids"]}
    assert ids == {courses_miss, thumbs}
    own = httpx.get(base + "/admin/misses", params={"status": "all"}, headers=_admin(COURSES_TOKEN), timeout=30).json()
    assert {i for c in own["clusters"] for i in c["miss_ids"]} == ids  # a KB token: its own KB by default

    # A KB token cannot see or change another KB's data.
    other = httpx.get(base + "/admin/misses", params={"kb": "shop"}, headers=_admin(COURSES_TOKEN), timeout=10)
    assert other.status_code == 403 and other.json()["error"]["code"] == "kb_forbidden"
    assert kb_of(shop_miss, COURSES_TOKEN).status_code == 404
    resolve = httpx.post(f"{base}/admin/misses/{shop_miss}/resolve", json={"action": "ignore"},
                         headers=_admin(COURSES_TOKEN), timeout=10)
    assert resolve.status_code == 404
    reload = httpx.post(base + "/admin/reload", json={"kb": "shop"}, headers=_admin(COURSES_TOKEN), timeout=30)
    assert reload.status_code == 403
    assert httpx.get(base + "/admin/stats", params={"kb": "shop"}, headers=_admin(COURSES_TOKEN),
                     timeout=10).status_code == 403
    # Stats are per KB too (chat_log.kb): each KB counts its own question.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # chat-log rows are committed in batches, a moment after the answer
        mine_stats = httpx.get(base + "/admin/stats", headers=_admin(COURSES_TOKEN), timeout=30).json()
        shop_stats = httpx.get(base + "/admin/stats", params={"kb": "shop"}, headers=_admin(ADMIN), timeout=30).json()
        if mine_stats["totals"]["questions"] and shop_stats["totals"]["questions"]:
            break
        time.sleep(0.1)
    assert mine_stats["totals"]["questions"] == 1 and shop_stats["totals"]["questions"] == 1
    shop_row = httpx.get(f"{base}/admin/misses/{shop_miss}", params={"kb": "shop"}, headers=_admin(ADMIN), timeout=10)
    assert shop_row.json()["miss"]["status"] == "open"  # nothing changed

    # Reload one KB: its own token for its own KB, the global token for any.
    mine = httpx.post(base + "/admin/reload", json={"kb": "courses"}, headers=_admin(COURSES_TOKEN), timeout=60)
    assert mine.status_code == 200 and mine.json()["kb"] == "courses" and mine.json()["status"] == "unchanged"
    shop = httpx.post(base + "/admin/reload", json={"kb": "shop"}, headers=_admin(ADMIN), timeout=60)
    assert shop.status_code == 200 and shop.json()["kb"] == "shop"
    missing = httpx.post(base + "/admin/reload", json={"kb": "nosuch"}, headers=_admin(ADMIN), timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_kb"


def test_faqbot_build_builds_every_kb_and_reload_kb_rebuilds_only_that_one(
        kb_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import admin.cli.common
    import admin.cli.core

    encoder = CharEncoder()
    monkeypatch.setattr(admin.cli.common, "configured_encoder", lambda _settings: encoder)
    monkeypatch.setattr(admin.cli.core, "configured_encoder", lambda _settings: encoder)
    monkeypatch.setenv("FAQBOT_KB", f"shop={kb_dirs['shop']},courses={kb_dirs['courses']}")
    data_dir = tmp_path / "var"
    assert main(["build", "--data-dir", str(data_dir)]) == 0
    shop = DataDir(data_dir).for_kb("shop")
    courses = DataDir(data_dir).for_kb("courses")
    shop_version = shop.current_pointer.read_text()
    courses_version = courses.current_pointer.read_text()

    (kb_dirs["courses"] / "faq.yaml").write_text(COURSES_KB + textwrap.indent(textwrap.dedent("""\
        - id: refund
          question: 课程可以退款吗？
          answer: 开课 7 天内可全额退款。
        """), "  "), encoding="utf-8")
    capsys.readouterr()
    assert main(["reload", "--kb", "courses", "--data-dir", str(data_dir)]) == 0
    assert "published" in capsys.readouterr().out
    assert courses.current_pointer.read_text() != courses_version
    assert shop.current_pointer.read_text() == shop_version  # the other KB untouched
    assert not (data_dir / "index").exists()  # no `default` KB here


def test_two_shipped_kbs_answer_their_own_paraphrases_with_the_real_encoder(bundled_encoder, tiny_kb: Path,
                                                                           tmp_path: Path) -> None:
    """End to end on the bundled encoder: one model, two KBs, each answering a reworded question of its own."""
    root = Path(__file__).resolve().parents[1]
    settings = Settings(kb=f"shop={tiny_kb},courses={root / 'faq' / 'examples' / 'courses'}",
                        data_dir=tmp_path / "var", rate_limit_enabled=False)
    app = build_app(settings, encoder=bundled_encoder)
    with serve_app(app) as base:
        services = list(app.state.kbs)
        assert [s.kb_name for s in services] == ["shop", "courses"]
        assert services[0].encoder is services[1].encoder  # one model for both
        shop = _chat(base, "我忘记密码了该怎么办").json()
        assert shop["matched"] and shop["faq_id"] == "change_password"
        question = services[1].index.faqs[0].question
        courses = _chat(base, "请问" + question.rstrip("？?") + "呢", "courses").json()
        assert courses["matched"] and courses["faq_id"] == services[1].index.faqs[0].id


def test_a_channel_answers_from_the_kb_its_settings_name(kb_dirs: dict[str, Path], tmp_path: Path) -> None:
    import json

    from tests.channels_platforms import GENERIC_SECRET, generic_headers

    kbs = {"shop": kb_dirs["shop"], "courses": kb_dirs["courses"]}
    settings = Settings(kb=_kb_value(kbs), data_dir=tmp_path / "var", threshold=0.95, rate_limit_enabled=False,
                        webhook_secret=GENERIC_SECRET, channel_kbs={"generic": "courses"})
    with serve_app(build_app(settings, encoder=CharEncoder())) as base:
        body = json.dumps({"message": "课程怎么报名？", "session_id": "u1"}, ensure_ascii=False).encode()
        reply = httpx.post(base + "/webhooks/generic", content=body, headers=generic_headers(GENERIC_SECRET, body),
                           timeout=30).json()
        assert reply["matched"] is True and reply["faq_id"] == "enroll"  # the courses KB, not the first (shop)
        assert _chat(base, "课程怎么报名？").json()["matched"] is False  # /chat without kb: still the first KB
    with pytest.raises(ValueError, match="FAQBOT_CHANNEL_KBS"):
        Settings(kb=_kb_value(kbs), data_dir=tmp_path / "var", channel_kbs={"generic": "nosuch"})
