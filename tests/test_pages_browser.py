"""The pages in a real Chromium (Debian's /usr/bin/chromium driven by Playwright; never a downloaded browser).

One faqbot server (real uvicorn, tiny KB copied to a temp dir, real SQLite, the bundled encoder) and
one browser per module. A second loopback server on another port plays the shop that embeds the
widget, so every widget request is cross-origin. Screenshots go to test-artifacts/pages/.

`site` decides the way the shipped calibration says (a confidence model or a cosine threshold; its
tests accept either). How the pages show each line is tested on two more servers that set their
situation up explicitly: `confidence_site` (an index published beforehand with a test confidence
model) and `cosine_site` (FAQBOT_THRESHOLD set, so a cosine decides whatever the calibration holds).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import http.server
import io
import math
import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ARTIFACTS, TINY_KB, serve_app
from tests.desk_kb import DESK_KB

pytestmark = [pytest.mark.slow, pytest.mark.browser]
sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need the playwright package")
expect = sync_api.expect

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
ADMIN_TOKEN = "browser-test-token-42"
HANDOFF_URL = "https://kefu.example.com/im"
SHOTS = ARTIFACTS / "pages"
WIDGET = "#faqbot-widget"  # Playwright's CSS engine pierces the widget's open shadow root


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("browser tests need Debian's chromium at /usr/bin/chromium (make browser-deps)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@contextlib.contextmanager
def start_site(root: Path, encoder, *, confidence=None, kb_text: str = TINY_KB,
               **overrides: object) -> Iterator[dict[str, object]]:
    """faqbot on a loopback port: base URL, settings (admin on, 转人工 link set), the SQLite path.

    With `confidence`, an index of the KB whose calibration carries that model is published before
    the server starts; marked local, it is what the server loads and what its rebuilds keep.
    """
    from admin.web.app import build_app
    from bot.settings import Settings
    from faq import load_kb
    from index.calibration import SCOPE_LOCAL, default_calibration
    from index.faq_index import build_index, publish_index

    kb = root / "kb"
    kb.mkdir()
    (kb / "faq.yaml").write_text(kb_text, encoding="utf-8")
    settings = Settings(kb=kb, data_dir=root / "var", admin_token=ADMIN_TOKEN, handoff_url=HANDOFF_URL,
                        **overrides)
    if confidence is not None:
        shipped = default_calibration(encoder.fingerprint)
        calibration = dataclasses.replace(shipped, confidence=confidence, extra={**shipped.extra, "scope": SCOPE_LOCAL})
        publish_index(build_index(load_kb(kb), encoder, kb_path=str(kb.resolve()), calibration=calibration),
                      settings.data_dir)
    SHOTS.mkdir(parents=True, exist_ok=True)
    with serve_app(build_app(settings, encoder=encoder)) as base:
        yield {"base": base, "settings": settings, "db": settings.resolved_database_url.removeprefix("sqlite:///")}


@pytest.fixture(scope="module")
def site(tmp_path_factory, bundled_encoder) -> Iterator[dict[str, object]]:
    """faqbot deciding as the shipped calibration says."""
    with start_site(tmp_path_factory.mktemp("pages"), bundled_encoder) as running:
        yield running


def made_up_confidence_model():
    """A made-up model over the top cosine and its gap to the runner-up: on the tiny KB it reads the
    right answers at >= 97 and the unknown questions at <= 27 (not a fitted model; only the display
    is under test)."""
    from index.confidence import ConfidenceModel

    return ConfidenceModel(features=("s1", "gap2"), coef=(1.0, 1.0), intercept=0.0, mean=(0.9, 0.03),
                           scale=(0.03, 0.02))


@pytest.fixture(scope="module")
def confidence_site(tmp_path_factory, bundled_encoder) -> Iterator[dict[str, object]]:
    """faqbot deciding by confidence (the test model, line 50), whatever the shipped calibration holds."""
    with start_site(tmp_path_factory.mktemp("pages-confidence"), bundled_encoder,
                    confidence=made_up_confidence_model()) as running:
        yield running


@pytest.fixture(scope="module")
def cosine_site(tmp_path_factory, bundled_encoder) -> Iterator[dict[str, object]]:
    """faqbot deciding by a cosine threshold (FAQBOT_THRESHOLD), whatever the shipped calibration holds."""
    with start_site(tmp_path_factory.mktemp("pages-cosine"), bundled_encoder, threshold=0.916) as running:
        yield running


HOST_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Another shop</title>
<style>
  /* a hostile host stylesheet: none of it may reach the widget */
  * { font-family: "DejaVu Serif", serif !important; color: rgb(200, 0, 0) !important; }
  div, section, button, textarea, span { all: unset; padding: 30px !important; border: 3px solid lime !important; }
  .fbw-panel, .fbw-bubble { display: none !important; }
</style></head>
<body><h1>Another shop on another origin</h1>
<script src="{base}/widget.js" data-title="客服小悦" data-color="#0f9d58" defer></script>
</body></html>
"""


@pytest.fixture(scope="module")
def host_page(site) -> Iterator[str]:
    """A page on a second loopback server (another origin) embedding the widget from faqbot."""
    body = HOST_PAGE.replace("{base}", str(site["base"])).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            """Keep the test output quiet."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/shop.html"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def new_page(browser, **options: object):
    context = browser.new_context(locale="zh-CN", **options)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
        assert not errors, f"JavaScript errors on the page: {errors}"
    finally:
        context.close()


def api_chat(base: str, message: str) -> dict:
    response = httpx.post(f"{base}/chat", json={"message": message, "channel": "test"}, timeout=30)
    response.raise_for_status()
    return response.json()


def badge_text(reply: dict) -> str:
    """What the widget's badge says for a /chat answer: the confidence when there is one, else the percent."""
    if reply["confidence"] is not None:
        return f"置信度 {math.floor(reply['confidence'])}%"
    return f"{math.floor(reply['percent'])}%"


def ask(page, message: str) -> object:
    """Type a question into the widget, press Enter, and return the new bot reply row."""
    before = page.locator(f"{WIDGET} .fbw-row-bot:not(.fbw-typing-row)").count()
    page.locator(f"{WIDGET} textarea").fill(message)
    page.locator(f"{WIDGET} textarea").press("Enter")
    reply = page.locator(f"{WIDGET} .fbw-row-bot:not(.fbw-typing-row)").nth(before)
    reply.wait_for()
    return reply


def test_widget_answers_cross_origin_with_question_and_percent(browser, site, host_page) -> None:
    base = str(site["base"])
    question = "我想把买的东西退掉，怎么弄"
    expected = api_chat(base, question)
    assert expected["matched"] and expected["faq_id"] == "return_howto"
    with new_page(browser, viewport={"width": 1280, "height": 800}) as page:
        page.add_init_script("window.__globalsBefore = Object.getOwnPropertyNames(window);")
        page.goto(host_page)
        assert not page.url.startswith(base)
        launcher = page.locator(f"{WIDGET} .fbw-launcher")
        launcher.wait_for()
        assert launcher.inner_text().strip() == "客服小悦"  # data-title wins over the server's title
        launcher.click()
        page.locator(f"{WIDGET} .fbw-panel").wait_for(state="visible")

        reply = ask(page, question)
        assert reply.locator(".fbw-bubble .fbw-p").first.inner_text() == expected["answer"]
        assert reply.locator(".fbw-match-question").inner_text() == f"匹配问题：{expected['question']}"
        assert reply.locator(".fbw-percent").inner_text() == badge_text(expected)

        # The host page's CSS does not reach into the widget (shadow DOM + :host reset).
        style = reply.locator(".fbw-bubble").evaluate(
            "el => { const s = getComputedStyle(el); return [s.fontFamily, s.color, s.display, s.paddingTop]; }")
        assert "Noto Sans CJK SC" in style[0] and "DejaVu Serif" not in style[0]
        assert style[1] != "rgb(200, 0, 0)" and style[2] == "block" and style[3] == "10px"
        # ...and the widget leaks no globals into the page.
        leaked = page.evaluate("Object.getOwnPropertyNames(window).filter(n => !window.__globalsBefore.includes(n))")
        assert set(leaked) <= {"__globalsBefore"}

        # Unknown question: the configured fallback and the 转人工 link.
        fallback = ask(page, "你们老板是哪里人")
        assert fallback.locator(".fbw-p").first.inner_text() == site["settings"].fallback_answer
        assert fallback.locator("a.fbw-handoff").get_attribute("href") == HANDOFF_URL
        assert fallback.locator(".fbw-thumb").count() == 0

        # Hostile text is shown as text, never run.
        hostile = '<img src=x onerror="window.__pwned=1">**粗体**'
        ask(page, hostile)
        assert page.locator(f"{WIDGET} .fbw-user").last.inner_text() == hostile
        assert page.locator(f"{WIDGET} img").count() == 0
        assert page.evaluate("window.__pwned") is None
        page.screenshot(path=str(SHOTS / "widget-cross-origin.png"))

        # History is kept for the session: a reload shows the same conversation.
        page.reload()
        page.locator(f"{WIDGET} .fbw-panel").wait_for(state="visible")
        assert page.locator(f"{WIDGET} .fbw-user").all_inner_texts() == [question, "你们老板是哪里人", hostile]


def test_ime_composition_never_sends_half_typed_text(browser, site) -> None:
    base = str(site["base"])
    with new_page(browser, viewport={"width": 1280, "height": 800}) as page:
        sent: list[str] = []
        page.on("request", lambda r: sent.append(r.post_data or "") if r.url.endswith("/chat") else None)
        page.goto(base + "/")
        page.locator(f"{WIDGET} .fbw-launcher").click()
        textarea = page.locator(f"{WIDGET} textarea")
        textarea.focus()
        cdp = page.context.new_cdp_session(page)
        # Pinyin IME: "tuihuo" is being composed; Enter picks the candidate (keyCode 229, isComposing).
        cdp.send("Input.imeSetComposition", {"text": "tui", "selectionStart": 3, "selectionEnd": 3})
        cdp.send("Input.imeSetComposition", {"text": "tuihuo", "selectionStart": 6, "selectionEnd": 6})
        for kind in ("rawKeyDown", "keyUp"):
            cdp.send("Input.dispatchKeyEvent", {"type": kind, "key": "Enter", "code": "Enter",
                                                "windowsVirtualKeyCode": 229, "nativeVirtualKeyCode": 229})
        cdp.send("Input.insertText", {"text": "怎么退货"})  # commits the composition
        # Safari's order: compositionend first, then a keydown that still carries keyCode 229.
        textarea.evaluate("""el => {
            el.dispatchEvent(new CompositionEvent('compositionstart', {data: ''}));
            el.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', keyCode: 13, bubbles: true, cancelable: true}));
            el.dispatchEvent(new CompositionEvent('compositionend', {data: ''}));
            el.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', keyCode: 229, bubbles: true, cancelable: true}));
        }""")
        page.wait_for_timeout(300)
        assert sent == []
        assert page.locator(f"{WIDGET} .fbw-user").count() == 0
        assert textarea.input_value() == "怎么退货"

        textarea.press("Shift+Enter")  # a newline, not a send
        assert textarea.input_value() == "怎么退货\n"
        assert sent == []
        textarea.press("Enter")
        page.locator(f"{WIDGET} .fbw-match-question").wait_for()
        assert len(sent) == 1 and '"怎么退货\\n"' in sent[0]
        assert textarea.input_value() == ""


def test_thumbs_down_lands_in_the_miss_log(browser, site) -> None:
    base = str(site["base"])
    question = "积分能干嘛"
    with new_page(browser, viewport={"width": 1280, "height": 800}) as page:
        page.goto(base + "/")
        page.locator(f"{WIDGET} .fbw-launcher").click()
        reply = ask(page, question)
        faq_question = reply.locator(".fbw-match-question").inner_text()
        reply.get_by_role("button", name="没帮助").click()
        reply.locator(".fbw-feedback-done").wait_for()
        assert "已记录" in reply.locator(".fbw-feedback-done").inner_text()
        session_id = page.evaluate(
            "() => JSON.parse(sessionStorage.getItem(Object.keys(sessionStorage).find(k => k.startsWith('faqbot-widget:')))).sessionId")
    with sqlite3.connect(str(site["db"])) as db:
        miss = db.execute("SELECT reason, best_faq_id, session_id, status FROM misses WHERE message = ? "
                          "ORDER BY id DESC LIMIT 1", (question,)).fetchone()
        vote = db.execute("SELECT helpful, faq_id FROM feedback WHERE message = ?", (question,)).fetchone()
    assert miss == ("feedback", "member_points", session_id, "open")
    assert vote == (0, "member_points")
    assert faq_question == "匹配问题：会员积分有什么用？"


def test_network_errors_are_polite_and_retryable(browser, site) -> None:
    base = str(site["base"])
    with new_page(browser, viewport={"width": 1280, "height": 800}) as page:
        page.goto(base + "/")
        page.locator(f"{WIDGET} .fbw-launcher").click()
        page.route("**/chat", lambda route: route.abort("connectionfailed"))
        page.locator(f"{WIDGET} textarea").fill("什么时候发货")
        page.locator(f"{WIDGET} textarea").press("Enter")
        notice = page.locator(f"{WIDGET} .fbw-notice")
        notice.wait_for()
        assert "网络连接失败" in notice.inner_text()
        assert page.locator(f"{WIDGET} .fbw-send").is_enabled()
        page.unroute("**/chat")
        notice.get_by_role("button", name="重试").click()
        page.locator(f"{WIDGET} .fbw-match-question").wait_for()
        assert page.locator(f"{WIDGET} .fbw-notice").count() == 0
        assert page.locator(f"{WIDGET} .fbw-user").all_inner_texts() == ["什么时候发货"]
        assert page.locator(f"{WIDGET} .fbw-match-question").inner_text() == "匹配问题：下单后多久发货？"

        # An ambiguous question: the choices are buttons; picking one asks it.
        clarify = {"matched": False, "answer": "您是想问以下哪个问题？\n1. 怎么退货？\n2. <b>x</b>", "faq_id": None,
                   "question": None, "similarity": 0.93, "percent": 93.0, "threshold": 0.9, "alternatives": [],
                   "miss_id": 7, "clarify": [{"faq_id": "return_howto", "question": "怎么退货？", "percent": 93.0},
                                             {"faq_id": "evil", "question": "<b>x</b>", "percent": 92.5}]}
        page.route("**/chat", lambda route: route.fulfill(json=clarify))
        reply = ask(page, "退")
        page.unroute("**/chat")
        assert reply.locator(".fbw-p").inner_text() == "您是想问以下哪个问题？"
        assert reply.locator(".fbw-choice-text").all_inner_texts() == ["怎么退货？", "<b>x</b>"]
        assert reply.locator(".fbw-choice").all_inner_texts() == ["怎么退货？", "<b>x</b>"]  # no percent beside them
        assert reply.locator("b").count() == 0
        reply.locator(".fbw-choice", has_text="怎么退货？").click()
        expect(page.locator(f"{WIDGET} .fbw-match-question").last).to_have_text("匹配问题：怎么退货？")


def test_widget_on_a_phone_takes_the_whole_screen(browser, site) -> None:
    with new_page(browser, viewport={"width": 390, "height": 780}, device_scale_factor=2, is_mobile=True,
                  has_touch=True) as page:
        page.goto(str(site["base"]) + "/")
        page.screenshot(path=str(SHOTS / "shop-mobile.png"))
        page.locator(f"{WIDGET} .fbw-launcher").tap()
        panel = page.locator(f"{WIDGET} .fbw-panel")
        panel.wait_for(state="visible")
        page.wait_for_timeout(250)  # the opening transition
        box = panel.bounding_box()
        assert box == {"x": 0, "y": 0, "width": 390, "height": 780}
        ask(page, "可以开发票吗")
        page.screenshot(path=str(SHOTS / "widget-mobile.png"))


def test_demo_shop_page(browser, site) -> None:
    with new_page(browser, viewport={"width": 1280, "height": 800}) as page:
        page.goto(str(site["base"]) + "/")
        code = page.locator("[data-embed-code]").inner_text()
        assert code.startswith(f'<script src="{site["base"]}/widget.js"')
        page.screenshot(path=str(SHOTS / "shop.png"))
        page.locator(f"{WIDGET} .fbw-launcher").click()
        page.locator(f"{WIDGET} .fbw-chip").first.click()  # 猜你想问
        page.locator(f"{WIDGET} .fbw-match-question").wait_for()
        page.wait_for_timeout(250)
        page.screenshot(path=str(SHOTS / "shop-widget-open.png"))


def test_similarity_gauge_single_and_batch(browser, site) -> None:
    base = str(site["base"])
    a, b = "忘记密码怎么办", "怎么重置登录密码"
    expected = httpx.post(f"{base}/similarity", json={"sentence_a": a, "sentence_b": b}, timeout=30).json()
    with new_page(browser, viewport={"width": 1280, "height": 860}, accept_downloads=True) as page:
        page.goto(base + "/ui/similarity")
        page.fill("#sentence-a", a)
        page.fill("#sentence-b", b)
        page.get_by_role("button", name="计算相似度").click()
        page.locator("#gauge[data-state=done]").wait_for()
        assert page.locator("#gauge-value").inner_text() == f"{expected['percent']:.1f}"
        assert float(page.locator("#gauge").get_attribute("aria-valuenow")) == expected["percent"]
        assert page.locator("#cosine-value").inner_text() == f"{expected['similarity']:.4f}"
        needle = page.locator(".gauge-needle").get_attribute("transform")
        assert needle.startswith(f"rotate({expected['percent'] * 1.8:.2f} ")
        page.screenshot(path=str(SHOTS / "similarity.png"), full_page=True)

        # An example chip fills both sentences and computes again.
        page.locator("#examples .chip").last.click()
        page.locator("#gauge[data-state=done]").wait_for()
        assert page.input_value("#sentence-b") == "今天天气怎么样"

        page.get_by_role("tab", name="批量计算").click()
        pairs = [("怎么退货", "我想退货怎么操作"), ("可以开发票吗", "能开票吗"), ('=HYPERLINK("x")', "积分怎么用，")]
        page.fill("#batch-input", "\n".join(f"{x}\t{y}" for x, y in pairs) + "\n\n")
        page.get_by_role("button", name="批量计算").click()
        page.locator("#batch-download:not([disabled])").wait_for()
        rows = page.locator("#batch-table tbody tr")
        assert rows.count() == 3
        expected_batch = httpx.post(f"{base}/similarity", json={"pairs": [list(p) for p in pairs]}, timeout=30).json()
        shown = [rows.nth(i).locator(".bar-text").inner_text() for i in range(3)]
        assert shown == [f"{r['percent']:.1f}%" for r in expected_batch["results"]]
        with page.expect_download() as download_info:
            page.get_by_role("button", name="下载 CSV").click()
        content = Path(download_info.value.path()).read_text(encoding="utf-8")
        assert content.startswith("\ufeff")
        table = list(csv.reader(io.StringIO(content.lstrip("\ufeff"))))
        assert table[0] == ["sentence_a", "sentence_b", "percent", "similarity"]
        assert [row[:2] for row in table[1:]] == [["怎么退货", "我想退货怎么操作"], ["可以开发票吗", "能开票吗"],
                                                  ["'=HYPERLINK(\"x\")", "积分怎么用，"]]
        assert [float(row[2]) for row in table[1:]] == [r["percent"] for r in expected_batch["results"]]
        page.screenshot(path=str(SHOTS / "similarity-batch.png"), full_page=True)

        page.fill("#batch-input", "没有制表符的一行")
        page.get_by_role("button", name="批量计算").click()
        assert "没有 Tab 分隔" in page.locator("#batch-error").inner_text()


def test_admin_resolves_misses_and_the_widget_then_answers(browser, site) -> None:
    base = str(site["base"])
    attach_me, new_faq_me, ignore_me = "商品有质量问题怎么办", "七天无理由吗", "<script>window.__pwned=1</script>你好"
    with new_page(browser, viewport={"width": 1280, "height": 900}, timezone_id="Asia/Shanghai") as page:
        page.goto(base + "/")
        page.locator(f"{WIDGET} .fbw-launcher").click()
        for question in (attach_me, new_faq_me, ignore_me):
            assert ask(page, question).locator(".fbw-match").count() == 0  # the bot does not know yet

        admin = page.context.new_page()
        admin.goto(base + "/admin")
        admin.fill("#token", "not-the-token-at-all")
        admin.get_by_role("button", name="进入后台").click()
        expect(admin.locator("#login-error")).to_contain_text("令牌不正确")
        admin.fill("#token", ADMIN_TOKEN)
        admin.get_by_role("button", name="进入后台").click()
        version = httpx.get(f"{base}/admin/index", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()["version"]
        expect(admin.locator("#index-version")).to_have_text(version)
        admin.reload()  # the token is kept for this tab (sessionStorage)
        admin.locator("#admin-view").wait_for()
        # "其他 FAQ" offers every FAQ of the live index (GET /admin/faqs), not only those seen in candidates:
        # in a tab where misses, lint and stats cannot load, the list is still complete.
        probe = page.context.new_page()
        probe.route(re.compile(r".*/admin/(misses|lint|stats).*"), lambda route: route.abort())
        probe.goto(base + "/admin")
        probe.fill("#token", ADMIN_TOKEN)  # sessionStorage is per tab: this one logs in again
        probe.get_by_role("button", name="进入后台").click()
        expect(probe.locator("#faq-ids option")).to_have_count(5)
        probe.close()

        hostile = admin.locator(".miss", has_text="window.__pwned")
        hostile.wait_for()
        assert hostile.locator(".miss-text").inner_text() == ignore_me
        assert admin.evaluate("window.__pwned") is None
        admin.screenshot(path=str(SHOTS / "admin-misses.png"), full_page=True)

        card = admin.locator(".miss", has=admin.locator(".miss-text", has_text=attach_me))
        card.get_by_role("button", name="归入 FAQ ▾").click()
        card.locator(".menu-item[data-faq-id=return_howto]").click()
        card.locator(".miss-status.is-ok").wait_for(timeout=60_000)
        assert "已归入「怎么退货？」" in card.locator(".miss-status").inner_text()

        card = admin.locator(".miss", has=admin.locator(".miss-text", has_text=new_faq_me))
        card.get_by_role("button", name="新建 FAQ").click()
        card.locator("input[name=faq_id]").fill("seven_day_return")
        card.locator("textarea[name=answer]").fill("支持。签收后 7 天内，商品完好即可申请无理由退货。")
        card.get_by_role("button", name="保存并上线").click()
        card.locator(".miss-status.is-ok").wait_for(timeout=60_000)

        card = admin.locator(".miss", has_text="window.__pwned")
        card.get_by_role("button", name="忽略").click()
        card.locator(".miss-status.is-ok").wait_for()
        admin.locator(".miss", has_text=attach_me).wait_for(state="detached")

        live = httpx.get(f"{base}/admin/index", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()["version"]
        assert live != version
        admin.get_by_role("button", name="重新加载知识库").click()
        expect(admin.locator("#reload-result")).to_contain_text("知识库没有变化")
        expect(admin.locator("#index-version")).to_have_text(live)

        admin.get_by_role("tab", name="数据统计").click()
        admin.locator(".chart .day rect").first.wait_for()
        stats = httpx.get(f"{base}/admin/stats", params={"tz": "Asia/Shanghai"},
                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
        assert admin.locator(".kpi-value").first.inner_text() == str(stats["totals"]["questions"])
        admin.screenshot(path=str(SHOTS / "admin-stats.png"), full_page=True)
        admin.get_by_role("tab", name="知识库体检").click()
        admin.locator("#lint-body .card").first.wait_for()
        admin.screenshot(path=str(SHOTS / "admin-lint.png"), full_page=True)

        # Back in the shop: both questions are answered now.
        page.bring_to_front()
        reply = ask(page, attach_me)
        assert reply.locator(".fbw-match-question").inner_text() == "匹配问题：怎么退货？"
        reply = ask(page, new_faq_me)
        assert reply.locator(".fbw-p").first.inner_text() == "支持。签收后 7 天内，商品完好即可申请无理由退货。"

    with sqlite3.connect(str(site["db"])) as db:
        rows = dict(db.execute("SELECT message, status FROM misses WHERE message IN (?, ?, ?)",
                               (attach_me, new_faq_me, ignore_me)).fetchall())
    assert rows == {attach_me: "resolved", new_faq_me: "resolved", ignore_me: "ignored"}
    kb_text = (Path(site["settings"].kb) / "faq.yaml").read_text(encoding="utf-8")
    assert attach_me in kb_text and "seven_day_return" in kb_text


def test_no_page_requests_anything_from_another_host(browser, site) -> None:
    base = str(site["base"])
    with new_page(browser, viewport={"width": 1280, "height": 800}) as page:
        foreign: list[str] = []
        page.on("request", lambda r: foreign.append(r.url) if not r.url.startswith((base, "data:", "blob:")) else None)
        for path in ("/", "/ui/similarity", "/admin"):
            page.goto(base + path, wait_until="networkidle")
        assert foreign == []


def test_widget_badge_shows_the_confidence(browser, confidence_site) -> None:
    """An answer's badge is the chance that it is right, not the pair similarity that once read "45%"."""
    base = str(confidence_site["base"])
    question = "可以开发票吗"
    expected = api_chat(base, question)
    assert expected["matched"] and expected["faq_id"] == "invoice"
    assert expected["min_confidence"] == 50.0 and expected["threshold"] is None
    assert expected["confidence"] >= 90 > expected["percent"]  # the case of the issue: right, yet under 50%
    with new_page(browser, viewport={"width": 1280, "height": 800}) as page:
        page.goto(base + "/")
        page.locator(f"{WIDGET} .fbw-launcher").click()
        badge = ask(page, question).locator(".fbw-percent")
        assert badge.inner_text() == f"置信度 {math.floor(expected['confidence'])}%"
        assert "置信度" in badge.get_attribute("title")
        page.screenshot(path=str(SHOTS / "widget-confidence.png"))

        # An encoder without a confidence model: the badge falls back to the matched question's percent.
        no_model = {**expected, "confidence": None, "min_confidence": None, "threshold": 0.916}
        page.route("**/chat", lambda route: route.fulfill(json=no_model))
        fallback_badge = ask(page, question).locator(".fbw-percent")
        page.unroute("**/chat")
        assert fallback_badge.inner_text() == f"{math.floor(expected['percent'])}%"
        assert fallback_badge.get_attribute("title") == "语义相似度"

        page.reload()  # the session's history keeps what each badge said
        page.locator(f"{WIDGET} .fbw-panel").wait_for(state="visible")
        assert page.locator(f"{WIDGET} .fbw-percent").all_inner_texts() == [
            f"置信度 {math.floor(expected['confidence'])}%", f"{math.floor(expected['percent'])}%"]


def test_similarity_page_by_confidence_draws_no_answer_line(browser, confidence_site) -> None:
    base = str(confidence_site["base"])
    config = httpx.get(f"{base}/widget-config.json", timeout=10).json()
    assert config["min_confidence"] == 50.0 and config["threshold_percent"] is None
    with new_page(browser, viewport={"width": 1280, "height": 860}) as page:
        page.goto(base + "/ui/similarity")
        note = page.locator("#decision-note")
        expect(note).to_be_visible()
        assert "置信度" in note.inner_text() and "50" in note.inner_text()
        assert "相似度" in note.inner_text()  # ...and that the pair similarity is not it
        assert page.locator("#threshold-value").inner_text() == "置信度 ≥ 50"
        page.fill("#sentence-a", "可以开发票吗")
        page.fill("#sentence-b", "是否支持开具发票？")
        page.get_by_role("button", name="计算相似度").click()
        page.locator("#gauge[data-state=done]").wait_for()
        assert page.locator(".gauge-threshold, .gauge-threshold-label").count() == 0
        assert "作答线" not in page.locator("#verdict").inner_text()
        page.screenshot(path=str(SHOTS / "similarity-confidence.png"), full_page=True)


def test_similarity_page_by_cosine_keeps_the_answer_line(browser, cosine_site) -> None:
    base = str(cosine_site["base"])
    config = httpx.get(f"{base}/widget-config.json", timeout=10).json()
    assert config["min_confidence"] is None and isinstance(config["threshold_percent"], float)
    with new_page(browser, viewport={"width": 1280, "height": 860}) as page:
        page.goto(base + "/ui/similarity")
        expect(page.locator("#threshold-value")).to_have_text(f"{config['threshold_percent']:.1f}%")
        assert page.locator(".gauge-threshold").count() == 1
        assert page.locator(".gauge-threshold-label").text_content() == "作答线"  # an SVG <text>: no inner_text
        expect(page.locator("#decision-note")).to_be_hidden()


@pytest.mark.parametrize(("site_name", "line"), [("confidence_site", "置信度 ≥ 50"), ("cosine_site", "余弦 0.92")])
def test_admin_shows_the_line_the_bot_answers_at(browser, request, site_name: str, line: str) -> None:
    base = str(request.getfixturevalue(site_name)["base"])
    with new_page(browser, viewport={"width": 1280, "height": 900}) as page:
        page.goto(base + "/admin")
        page.fill("#token", ADMIN_TOKEN)
        page.get_by_role("button", name="进入后台").click()
        expect(page.locator("#answer-line")).to_have_text(line)
        label = page.locator(".fact", has=page.locator("#answer-line")).locator(".fact-label").inner_text()
        assert label == ("作答线" if site_name == "confidence_site" else "作答阈值")


def test_widget_offers_a_person_when_asked_and_after_two_misses(browser, site) -> None:
    base = str(site["base"])
    with new_page(browser, viewport={"width": 1280, "height": 800}) as page:
        page.goto(base + "/")
        page.locator(f"{WIDGET} .fbw-launcher").click()
        asked = ask(page, "我要投诉找人工")
        assert asked.locator(".fbw-p").first.inner_text() == site["settings"].handoff_answer
        link = asked.locator("a.fbw-handoff")
        assert link.get_attribute("href") == HANDOFF_URL and link.get_attribute("data-reason") == "asked"
        assert link.inner_text().strip() == "转人工客服"

        first = ask(page, "你们老板是哪里人")
        assert first.locator("a.fbw-handoff").get_attribute("data-reason") == "fallback"
        second = ask(page, "火星上能收快递吗")
        assert second.locator("a.fbw-handoff").get_attribute("data-reason") == "offered"
        page.screenshot(path=str(SHOTS / "widget-handoff.png"))


    # No link configured: the button tells the host page, which may open its own live chat.
    with new_page(browser, viewport={"width": 1280, "height": 800}) as page:
        config = httpx.get(f"{base}/widget-config.json", timeout=10).json()
        page.route("**/widget-config.json", lambda route: route.fulfill(json={**config, "handoff_url": None}))
        page.route("**/chat", lambda route: route.fulfill(json={
            "matched": False, "answer": "好的，正在为您转接人工客服，请稍候。", "faq_id": None, "question": None,
            "similarity": None, "percent": None, "threshold": None, "alternatives": [], "miss_id": None,
            "handoff": True, "handoff_reason": "asked"}))
        page.goto(base + "/")
        page.locator(f"{WIDGET} .fbw-launcher").click()
        page.evaluate("document.addEventListener('faqbot:handoff', e => { window.__handoff = e.detail; })")
        ask(page, "转人工").locator("button.fbw-handoff").click()
        detail = page.evaluate("window.__handoff")
        assert detail["reason"] == "asked" and detail["message"] == "转人工" and detail["session_id"]


@pytest.fixture(scope="module")
def desk_site(tmp_path_factory, bundled_encoder) -> Iterator[dict[str, object]]:
    """faqbot on the desk KB (FAQs with `related` lists, and near neighbours)."""
    with start_site(tmp_path_factory.mktemp("pages-desk"), bundled_encoder, kb_text=DESK_KB) as running:
        yield running


def test_related_questions_are_chips_that_ask_them(browser, desk_site) -> None:
    base = str(desk_site["base"])
    with new_page(browser, viewport={"width": 1280, "height": 800}) as page:
        page.goto(base + "/")
        page.locator(f"{WIDGET} .fbw-launcher").click()
        reply = ask(page, "可以开票吗")
        related = reply.locator(".fbw-related")
        assert related.get_attribute("data-source") == "kb"
        assert related.locator(".fbw-related-title").inner_text() == "相关问题"
        assert related.locator(".fbw-chip").all_inner_texts() == ["会员积分有什么用？", "下单后多久发货？"]
        page.screenshot(path=str(SHOTS / "widget-related.png"))
        related.locator(".fbw-chip").nth(1).click()
        asked = page.locator(f"{WIDGET} .fbw-row-bot:not(.fbw-typing-row)").nth(2)
        asked.wait_for()
        assert page.locator(f"{WIDGET} .fbw-user").all_inner_texts() == ["可以开票吗", "下单后多久发货？"]
        assert asked.locator(".fbw-match-question").inner_text() == "匹配问题：下单后多久发货？"
        # The nearest FAQs fill in for an FAQ that names none.
        nearest = ask(page, "怎么退货")
        assert nearest.locator(".fbw-related").get_attribute("data-source") == "nearest"
        assert nearest.locator(".fbw-chip").all_inner_texts() == ["怎么换货？", "退款多久能到账？"]


def test_widget_without_data_suggestions_shows_the_servers(browser, site, host_page) -> None:
    base = str(site["base"])
    served = httpx.get(f"{base}/suggestions", params={"limit": 6}, timeout=30).json()["suggestions"]
    assert served and len(served) <= 6
    with new_page(browser, viewport={"width": 1280, "height": 800}) as page:
        page.goto(host_page)  # its script tag sets no data-suggestions
        page.locator(f"{WIDGET} .fbw-launcher").click()
        chips = page.locator(f"{WIDGET} .fbw-suggestions .fbw-chip")
        chips.first.wait_for()
        assert page.locator(f"{WIDGET} .fbw-suggestions-title").inner_text() == "猜你想问"
        assert chips.all_inner_texts() == [s["question"] for s in served]
        chips.first.click()
        page.locator(f"{WIDGET} .fbw-match-question").wait_for()
        assert page.locator(f"{WIDGET} .fbw-user").all_inner_texts() == [served[0]["question"]]


@contextlib.contextmanager
def two_kb_site(root: Path) -> Iterator[str]:
    """faqbot serving a shop KB (first) and a courses KB, with a global and a courses-only admin token."""
    from admin.web.app import build_app
    from bot.settings import Settings
    from tests.test_kbs import ADMIN, COURSES_KB, COURSES_TOKEN
    from tests.test_pages import CharEncoder

    shop, courses = root / "shop", root / "courses"
    for folder, text in ((shop, TINY_KB), (courses, COURSES_KB)):
        folder.mkdir()
        (folder / "faq.yaml").write_text(text, encoding="utf-8")
    settings = Settings(kb=f"shop={shop},courses={courses}", data_dir=root / "var", admin_token=ADMIN, threshold=0.95,
                        kb_admin_tokens={"courses": COURSES_TOKEN}, rate_limit_enabled=False)
    with serve_app(build_app(settings, encoder=CharEncoder())) as base:
        yield base


def test_widget_data_kb_asks_that_kb(browser, tmp_path) -> None:
    with two_kb_site(tmp_path) as base, new_page(browser, viewport={"width": 1280, "height": 900}) as page:
        page.goto(base + "/")  # the demo page: its widget asks the first KB
        page.set_content(f'<!doctype html><html><body><script src="{base}/widget.js" data-kb="courses" '
                         f'data-suggestions="课程怎么报名？"></script></body></html>')
        page.locator(f"{WIDGET} .fbw-launcher").click()
        reply = ask(page, "课程怎么报名？")
        assert reply.locator(".fbw-match-question").inner_text() == "匹配问题：课程怎么报名？"


def test_admin_picks_among_the_kbs_its_token_may_see(browser, tmp_path) -> None:
    from tests.test_kbs import ADMIN, COURSES_TOKEN

    with two_kb_site(tmp_path) as base, new_page(browser, viewport={"width": 1280, "height": 900}) as page:
        page.goto(base + "/admin")
        page.fill("#token", ADMIN)
        page.get_by_role("button", name="进入后台").click()
        picker = page.locator("#kb-picker")
        picker.wait_for()
        assert picker.locator("option").all_inner_texts() == ["shop", "courses"]
        page.locator("#index-facts", has_text="5 条").wait_for()  # the shop KB
        picker.select_option("courses")
        page.locator("#index-facts", has_text="2 条").wait_for()
        assert page.locator("#kb-picker").input_value() == "courses"
        page.get_by_role("button", name="退出").click()
        # A courses token sees its KB only: no picker, the courses index.
        page.fill("#token", COURSES_TOKEN)
        page.get_by_role("button", name="进入后台").click()
        page.locator("#index-facts", has_text="2 条").wait_for()
        assert page.locator("#kb-picker").count() == 0
        own = httpx.get(f"{base}/admin/index", headers={"Authorization": f"Bearer {COURSES_TOKEN}"}, timeout=30).json()
        assert own["kb"] == "courses" and own["kbs"] == ["courses"]
