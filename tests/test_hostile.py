"""Hostile input: a corpus of 200+ bad requests and files against a real server. Every one gets a
clean 4xx (with the JSON error body) or a correct answer; nothing crashes the process, nothing is
executed, nothing is stored or rendered as markup."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, TINY_KB, serve_app

pytestmark = pytest.mark.slow

TOKEN = "hostile-admin-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
XSS = '<img src=x onerror="document.title=\'pwned\'">'


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = (("content-type", "application/json"),)


def j(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def hostile_texts() -> list[tuple[str, str]]:
    """(name, text) pairs that go into every text field."""
    texts = [
        ("control chars", "退货\x00\x01\x02\x07\x08\x1b[31m\x7f怎么弄"),
        ("only controls", "\x00\x01\x02\x03"),
        ("zero width", "退\u200b货\u200c怎\u200d么\ufeff办\u2060"),
        ("only zero width", "\u200b\u200c\u200d\ufeff"),
        ("rtl override", "\u202e货退么怎\u202c"),
        ("rtl isolates", "\u2067退货\u2069\u2066怎么办\u2069"),
        ("bidi mix", "שלום 退货 مرحبا"),
        ("fdfa run", "\ufdfa" * 200),
        ("fdfa long", "\ufdfa" * 5000),
        ("ligatures", "\ufb01\ufb02" * 300),
        ("zalgo", "退" + "\u0301\u0302\u0303\u0304" * 200),
        ("emoji zwj", "👨‍👩‍👧‍👦" * 50),
        ("flags", "🇨🇳🇺🇸" * 100),
        ("noncharacters", "\ufffe\uffff\U0010ffff退货"),
        ("private use", "\ue000\uf8ff\U000f0000"),
        ("fullwidth", "ＳＥＬＥＣＴ＊ＦＲＯＭ"),
        ("sql drop", "'; DROP TABLE misses; --"),
        ("sql union", "1' UNION SELECT id, message FROM misses --"),
        ("sql comment", "退货/**/OR/**/1=1"),
        ("sqlite attach", "'; ATTACH DATABASE '/tmp/x.db' AS x; --"),
        ("html script", "<script>alert(1)</script>"),
        ("html img", XSS),
        ("html svg", "<svg onload=alert(1)>"),
        ("html iframe", '<iframe src="javascript:alert(1)"></iframe>'),
        ("js url", "javascript:alert(document.cookie)"),
        ("template", "{{7*7}} ${7*7} <%= 7*7 %> #{7*7}"),
        ("format string", "%s%s%s%n%x {0} {message!r}"),
        ("log injection", 'ok"}\n{"level":"error","message":"forged'),
        ("crlf", "退货\r\nX-Injected: 1\r\n\r\n"),
        ("path traversal", "../../../../etc/passwd"),
        ("null in middle", "怎么\u0000退货"),
        ("yaml in text", "!!python/object/apply:os.system ['touch /tmp/faqbot-pwned']"),
        ("json in text", '{"message": {"$gt": ""}}'),
        ("long 1000", "退" * 1000),
        ("long 1001", "退" * 1001),
        ("long 100k", "退货怎么办" * 20_000),
        ("long ascii 100k", "a" * 100_000),
        ("spaces", " " * 5000),
        ("newlines", "\n" * 3000),
        ("tabs and vt", "\t\v\f退货"),
        ("line separators", "退货\u2028\u2029怎么办"),
        ("combining only", "\u0301" * 50),
        ("surrogate pair", "𠮷野家" * 10),
        ("cjk ext b", "".join(chr(0x20000 + i) for i in range(300))),
        ("halfwidth katakana", "ｶﾀｶﾅ" * 100),
        ("unicode digits", "١٢٣٤٥٦" * 50),
        ("homoglyph", "退货рaypal"),
        ("emoji only", "😀" * 500),
        ("mixed scripts", "退货 return 返品 반품 возврат"),
        ("backslashes", "\\" * 2000),
    ]
    return texts


def corpus() -> list[Case]:
    cases: list[Case] = []
    texts = hostile_texts()
    for name, text in texts:
        cases.append(Case(f"chat message: {name}", "POST", "/chat", j({"message": text, "session_id": "h"})))
        cases.append(Case(f"chat session: {name}", "POST", "/chat", j({"message": "怎么退货", "session_id": text})))
        cases.append(Case(f"similarity: {name}", "POST", "/similarity", j({"sentence_a": text, "sentence_b": "退货"})))
        cases.append(Case(f"feedback: {name}", "POST", "/feedback",
                          j({"message": text, "faq_id": text[:64], "helpful": False})))
    cases.append(Case("embeddings list of hostile texts", "POST", "/v1/embeddings", j({"input": [t for _, t in texts]})))
    raw_bodies = [
        ("invalid utf-8", b'{"message": "\xff\xfe\xfa\xc3\x28"}'),
        ("overlong utf-8", b'{"message": "\xc0\xaf\xe0\x80\xaf"}'),
        ("utf-16 body", '{"message": "退货"}'.encode("utf-16")),
        ("lone surrogate escape", b'{"message": "\\ud800\\udc00\\ud800 x"}'),
        ("lone low surrogate", b'{"message": "\\udfff"}'),
        ("null escape", b'{"message": "\\u0000"}'),
        ("deep arrays", b"[" * 100_000 + b"]" * 100_000),
        ("deep objects", b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
        ("deep in message", b'{"message": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"),
        ("huge number", b'{"message": "x", "top_k": 1' + b"0" * 5000 + b"}"),
        ("float top_k", b'{"message": "x", "top_k": 1.5}'),
        ("nan", b'{"message": NaN}'),
        ("infinity top_k", b'{"message": "x", "top_k": Infinity}'),
        ("empty body", b""),
        ("whitespace body", b"   \n  "),
        ("null body", b"null"),
        ("array body", b'["message"]'),
        ("string body", b'"message"'),
        ("number body", b"42"),
        ("true body", b"true"),
        ("truncated", '{"message": "退'.encode()),
        ("trailing garbage", b'{"message": "x"} garbage'),
        ("duplicate keys", '{"message": "a", "message": "怎么退货"}'.encode()),
        ("message object", b'{"message": {"$ne": null}}'),
        ("message array", b'{"message": ["a", "b"]}'),
        ("message number", b'{"message": 1e309}'),
        ("message bool", b'{"message": true}'),
        ("tags object", b'{"message": "x", "tags": {"a": 1}}'),
        ("tags huge", j({"message": "x", "tags": ["t"] * 10_000})),
        ("tags hostile", j({"message": "怎么退货", "tags": ["<script>", "' OR 1=1 --", "../.."]})),
        ("top_k negative", j({"message": "x", "top_k": -1})),
        ("top_k huge", j({"message": "x", "top_k": 10**9})),
        ("channel traversal", j({"message": "x", "channel": "../../etc"})),
        ("channel script", j({"message": "x", "channel": "<script>"})),
        ("channel long", j({"message": "x", "channel": "c" * 10_000})),
        ("session long", j({"message": "x", "session_id": "s" * 100_000})),
        ("many keys", j({f"k{i}": i for i in range(50_000)} | {"message": "怎么退货"})),
        ("long key", j({"k" * 500_000: 1, "message": "x"})),
        ("bom prefix", b"\xef\xbb\xbf" + j({"message": "怎么退货"})),
        ("form encoded", b"message=%E9%80%80%E8%B4%A7"),
    ]
    for name, body in raw_bodies:
        cases.append(Case(f"chat raw: {name}", "POST", "/chat", body))
    for name, body in raw_bodies[:14]:
        cases.append(Case(f"similarity raw: {name}", "POST", "/similarity", body))
        cases.append(Case(f"embeddings raw: {name}", "POST", "/v1/embeddings", body))
    cases += [
        Case("oversized 2MB", "POST", "/chat", j({"message": "x" * 2_000_000})),
        Case("oversized similarity", "POST", "/similarity", j({"pairs": [["x" * 1000, "y" * 1000]] * 600})),
        Case("pairs of 3", "POST", "/similarity", j({"pairs": [["a", "b", "c"]]})),
        Case("pairs not strings", "POST", "/similarity", j({"pairs": [[1, 2]]})),
        Case("pairs too many", "POST", "/similarity", j({"pairs": [["a", "b"]] * 257})),
        Case("embeddings too many", "POST", "/v1/embeddings", j({"input": ["a"] * 257})),
        Case("embeddings empty list", "POST", "/v1/embeddings", j({"input": []})),
        Case("embeddings bad type", "POST", "/v1/embeddings", j({"input": "x", "input_type": "../../x"})),
        Case("wrong content type", "POST", "/chat", j({"message": "怎么退货"}), (("content-type", "text/plain"),)),
        Case("xml content type", "POST", "/chat", b"<message>x</message>", (("content-type", "application/xml"),)),
        Case("multipart", "POST", "/chat", b"--b\r\n\r\nx\r\n--b--", (("content-type", "multipart/form-data; boundary=b"),)),
        Case("GET chat", "GET", "/chat"),
        Case("PUT chat", "PUT", "/chat", j({"message": "x"})),
        Case("DELETE similarity", "DELETE", "/similarity"),
    ]
    traversals = [
        "/static/../../../../etc/passwd", "/static/..%2f..%2f..%2fetc%2fpasswd", "/static/%2e%2e/%2e%2e/etc/passwd",
        "/static/....//....//etc/passwd", "/static/..\\..\\etc\\passwd", "/static/%00", "/static/admin.js%00.png",
        "/static//etc/passwd", "/static/%252e%252e/etc/passwd", "/..%2f..%2fetc/passwd", "/ui/../../etc/passwd",
        "/webhooks/../admin/misses", "/webhooks/..%2f..%2fadmin", "/webhooks/%2e%2e", "/webhooks/" + "a" * 5000,
        "/webhooks/<script>", "/admin/misses/..%2f..%2fetc%2fpasswd", "/admin/misses/1%00", "/admin/misses/-1",
        "/admin/misses/99999999999999999999999", "/admin/misses/1;DROP TABLE misses", "/admin/misses/1 OR 1=1",
        "/admin/misses/export?format=../../etc/passwd", "/admin/misses?status=open' OR '1'='1",
        "/admin/misses?since=../../etc", "/admin/stats?tz=../../../../etc/localtime", "/admin/stats?tz=%00",
        "/admin/stats?days=-1", "/admin/misses?limit=999999999", "/docs/../../etc/passwd", "/favicon.ico/../../etc/passwd",
    ]
    for path in traversals:
        cases.append(Case(f"path: {path[:60]}", "GET", path, None, (("authorization", f"Bearer {TOKEN}"),)))
    return cases


def admin_cases(miss_id: int) -> list[Case]:
    """Resolving a miss with hostile ids, file names and texts (the admin API writes YAML files)."""
    auth = (("content-type", "application/json"), ("authorization", f"Bearer {TOKEN}"))
    bodies = [
        {"action": "new", "faq_id": "../../etc/passwd", "answer": "x"},
        {"action": "new", "faq_id": "ok_id", "answer": "x", "file": "../../../tmp/faqbot-evil.yaml"},
        {"action": "new", "faq_id": "ok_id2", "answer": "x", "file": "/tmp/faqbot-evil.yaml"},
        {"action": "new", "faq_id": "ok_id3", "answer": "x", "file": "sub/../../faqbot-evil.yaml"},
        {"action": "new", "faq_id": "ok_id4", "answer": "x", "file": "evil.py"},
        {"action": "new", "faq_id": "ok_id5", "answer": "x", "file": "a\x00b.yaml"},
        {"action": "new", "faq_id": "<script>", "answer": "x"},
        {"action": "new", "faq_id": "a" * 65, "answer": "x"},
        {"action": "new", "faq_id": "ok_id6", "answer": "x", "tags": ["!!python/object/apply:os.system"]},
        {"action": "attach", "faq_id": "../invoice"},
        {"action": "attach", "faq_id": "no_such_faq"},
        {"action": "execute"},
        {"action": "new"},
        {"action": "new", "faq_id": "ok_id7", "answer": "x", "unknown": 1},
    ]
    cases = [Case(f"resolve: {json.dumps(b, ensure_ascii=False)[:70]}", "POST", f"/admin/misses/{miss_id}/resolve",
                  j({**b, "reload": False}), auth) for b in bodies]
    cases.append(Case("resolve: deep json", "POST", f"/admin/misses/{miss_id}/resolve", b"[" * 100_000, auth))
    cases.append(Case("resolve: invalid utf-8", "POST", f"/admin/misses/{miss_id}/resolve", b'{"action": "\xff"}', auth))
    cases.append(Case("reload: junk", "POST", "/admin/reload", b"\x00\x01garbage", auth))
    return cases


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory, bundled_encoder) -> Iterator[tuple[str, Path, Path]]:
    from admin.web.app import build_app
    from bot.settings import Settings

    root = tmp_path_factory.mktemp("hostile")
    kb = root / "kb"
    kb.mkdir()
    (kb / "faq.yaml").write_text(TINY_KB, encoding="utf-8")
    settings = Settings(kb=kb, data_dir=root / "var", admin_token=TOKEN, rate_limit_enabled=False)
    with serve_app(build_app(settings, encoder=bundled_encoder)) as base:
        yield base, root, kb


def _send(client: httpx.Client, base: str, case: Case) -> httpx.Response:
    return client.request(case.method, base + case.path, content=case.body, headers=dict(case.headers))


def _problem(case: Case, response: httpx.Response) -> str | None:
    status = response.status_code
    if status >= 500:
        return f"{case.name}: {status} {response.text[:200]}"
    if "root:x:0:0" in response.text:
        return f"{case.name}: leaked /etc/passwd"
    if status >= 400:
        try:
            body = response.json()
        except ValueError:
            return f"{case.name}: {status} without a JSON body: {response.text[:100]!r}"
        if body.get("status") != "error" or not body.get("error", {}).get("code"):
            return f"{case.name}: {status} not the JSON error format: {body}"
        if "Traceback" in response.text or 'File "/' in response.text:
            return f"{case.name}: stack trace in the response"
    return None


def test_every_hostile_request_gets_a_clean_4xx_or_a_correct_answer(hostile_server) -> None:
    base, root, kb = hostile_server
    cases = corpus()
    problems: list[str] = []
    answered = refused = 0
    with httpx.Client(timeout=120) as client:
        for case in cases:
            response = _send(client, base, case)
            if (p := _problem(case, response)) is not None:
                problems.append(p)
            if response.status_code < 400:
                answered += 1
            else:
                refused += 1
        assert client.get(base + "/healthz").status_code == 200  # still alive
        # Hostile text that was answered is answered correctly: a cleaned question still matches.
        for text in ("退\u200b货\u200c怎\u200d么\ufeff办\u2060", "怎么\u0000退货", "\u202e退货流程是什么\u202c"):
            body = client.post(base + "/chat", json={"message": text}).json()
            assert body["faq_id"] == "return_howto", (text, body)
        miss = client.post(base + "/chat", json={"message": "今天天气怎么样" + XSS}).json()
        admin = admin_cases(miss["miss_id"])
        for case in admin:
            response = _send(client, base, case)
            if (p := _problem(case, response)) is not None:
                problems.append(p)
            elif response.status_code < 400 and not case.name.startswith("resolve: {\"action\": \"new\", \"faq_id\": \"ok_id6\""):
                problems.append(f"{case.name}: accepted ({response.status_code}) {response.text[:150]}")
            refused += response.status_code >= 400
    assert not problems, "\n".join(problems)
    total = len(cases) + len(admin)
    assert total >= 200, total
    assert not Path("/tmp/faqbot-evil.yaml").exists() and not Path("/tmp/faqbot-pwned").exists()
    assert not (root / "faqbot-evil.yaml").exists()
    assert all(p.suffix in (".yaml", ".yml") for p in kb.rglob("*") if p.is_file() and not p.name.startswith("."))
    print(f"\nhostile corpus: {total} requests, {answered} answered, {refused} refused with 4xx, 0 crashes")


def test_markup_is_stored_as_text_and_the_admin_page_never_renders_it_as_html(hostile_server) -> None:
    base, root, _ = hostile_server
    with httpx.Client(timeout=60) as client:
        miss = client.post(base + "/chat", json={"message": "请问" + XSS + "'; DROP TABLE misses; --"}).json()
        assert miss["matched"] is False and miss["miss_id"]
        stored = client.get(f"{base}/admin/misses/{miss['miss_id']}", headers=AUTH).json()["miss"]
        assert stored["message"] == "请问" + XSS + "'; DROP TABLE misses; --"  # data, byte for byte
        listed = client.get(base + "/admin/misses", headers=AUTH)
        assert listed.headers["content-type"].startswith("application/json")
        raw = client.get(base + "/admin/misses/export", params={"format": "jsonl", "kind": "raw"}, headers=AUTH)
        rows = [json.loads(line) for line in raw.text.split("\n") if line.strip()]
        assert any(XSS in (row.get("message") or "") for row in rows)
        page = client.get(base + "/admin")
        assert "script-src" in page.headers.get("content-security-policy", "")
        assert XSS not in page.text  # the page is static; data arrives as JSON only
    import sqlite3

    with sqlite3.connect(root / "var" / "faqbot.db") as db:  # the DROP TABLE did not run
        assert db.execute("SELECT count(*) FROM misses").fetchone()[0] >= 1
    # The admin page puts data into the DOM as text only.
    for script in (ROOT / "bot" / "static").glob("*.js"):
        source = script.read_text(encoding="utf-8")
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in source, f"{script.name} uses {sink}"
    assert "textContent" in (ROOT / "bot" / "static" / "admin.js").read_text(encoding="utf-8")


YAML_BOMBS = {
    "billion laughs": textwrap.dedent("""\
        version: 1
        a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
        b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
        c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
        d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
        e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
        f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
        g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
        h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
        faqs:
          - id: x
            question: *h
            paraphrases: *h
            answer: *h
        """),
    "bomb inside faqs": textwrap.dedent("""\
        version: 1
        faqs: &f
          - id: a
            question: q
            answer: x
            paraphrases: &p [p, p, p, p, p, p, p, p, p, p]
          - id: b
            question: q2
            answer: x
            paraphrases: [*p, *p, *p, *p, *p, *p, *p, *p, *p, *p]
        """),
    "recursive alias": "version: 1\nfaqs: &x [*x]\n",
    "python object apply": textwrap.dedent("""\
        version: 1
        faqs:
          - id: evil
            question: !!python/object/apply:os.system ["touch /tmp/faqbot-pwned"]
            answer: x
        """),
    "python name": "version: 1\nfaqs:\n  - id: evil\n    question: !!python/name:os.system\n    answer: x\n",
    "python module": "version: 1\nfaqs: !!python/module:os\n",
    "python new": "!!python/object/new:subprocess.Popen [[touch, /tmp/faqbot-pwned]]\n",
    "custom tag": "version: 1\nfaqs:\n  - id: t\n    question: !Ref x\n    answer: y\n",
    "merge bomb": "version: 1\nbase: &b {id: x, question: q, answer: a}\nfaqs:\n  - <<: *b\n  - <<: *b\n",
    "deep nesting": "version: 1\nfaqs: " + "[" * 5000 + "]" * 5000 + "\n",
    "huge scalar": "version: 1\nfaqs:\n  - id: big\n    question: " + "问" * 2_000_000 + "\n    answer: x\n",
    "binary": "version: 1\nfaqs:\n  - id: bin\n    question: !!binary aGVsbG8=\n    answer: x\n",
    "tab indent": "version: 1\nfaqs:\n\t- id: x\n",
    "invalid utf-8": "INVALID-UTF8",
    "bad id traversal": "version: 1\nfaqs:\n  - id: ../../etc/passwd\n    question: q\n    answer: a\n",
    "duplicate keys": "version: 1\nfaqs:\n  - id: a\n    id: b\n    question: q\n    answer: a\n",
    "null bytes": "version: 1\nfaqs:\n  - id: a\n    question: \"q\\0\"\n    answer: \"\\0\"\n",
}


def _load_in_subprocess(kb_dir: Path) -> subprocess.CompletedProcess:
    """load_kb in a child with a CPU and memory cap: a bomb must fail there, not hang or eat the test runner."""
    code = textwrap.dedent(f"""\
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (2 * 1024 ** 3, 2 * 1024 ** 3))
        from faq import KBError, load_kb
        try:
            kb = load_kb({str(kb_dir)!r})
        except KBError as exc:
            print("KBError", len(exc.problems), exc.problems[0])
            sys.exit(3)
        print("loaded", len(kb.faqs))
        """)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", sorted(YAML_BOMBS))
def test_a_hostile_kb_file_is_refused_safely(name: str, tmp_path: Path) -> None:
    kb = tmp_path / "kb"
    kb.mkdir()
    target = kb / "faq.yaml"
    if YAML_BOMBS[name] == "INVALID-UTF8":
        target.write_bytes(b"version: 1\nfaqs:\n  - id: a\n    question: \xff\xfe\n    answer: x\n")
    else:
        target.write_text(YAML_BOMBS[name], encoding="utf-8")
    marker = Path("/tmp/faqbot-pwned")
    marker.unlink(missing_ok=True)
    result = _load_in_subprocess(kb)
    assert result.returncode in (0, 3), f"{name}: crashed ({result.returncode}) {result.stderr[-500:]}"
    assert not marker.exists(), f"{name}: executed code"
    if result.returncode == 0:  # accepted only when it is a plain, valid KB after all
        # Plain data after all: a merge key, escaped NULs, a 2M-character question (the encoder truncates it).
        assert name in {"merge bomb", "null bytes", "huge scalar"}, f"{name}: accepted {result.stdout}"
    else:
        assert re.search(r"faq\.yaml", result.stdout), result.stdout


def test_a_hostile_kb_via_reload_keeps_serving(hostile_server) -> None:
    base, _, kb = hostile_server
    target = kb / "faq.yaml"
    original = target.read_text(encoding="utf-8")
    with httpx.Client(timeout=120) as client:
        before = client.get(base + "/readyz").json()["index_version"]
        for name in ("billion laughs", "python object apply", "recursive alias", "deep nesting"):
            target.write_text(YAML_BOMBS[name], encoding="utf-8")
            r = client.post(base + "/admin/reload", json={}, headers=AUTH)
            assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_kb", (name, r.text[:300])
            assert client.get(base + "/readyz").json()["index_version"] == before
        target.write_text(original, encoding="utf-8")
        assert client.post(base + "/chat", json={"message": "可以开票吗"}).json()["faq_id"] == "invoice"
    assert not Path("/tmp/faqbot-pwned").exists()


def test_raw_protocol_abuse_does_not_break_the_server(hostile_server) -> None:
    base, _, _ = hostile_server
    host, port = base.removeprefix("http://").split(":")
    payloads = [
        b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"POST /chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nzzz",
        b"POST /chat HTTP/1.1\r\nHost: x\r\nX-Request-ID: a\rb\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64),  # a TLS hello on the plain port
        b"GARBAGE\r\n\r\n",
        b"POST /chat HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 5000 + b"\r\n",
    ]
    for payload in payloads:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(payload)
            sock.settimeout(5)
            try:
                reply = sock.recv(200)
            except (TimeoutError, ConnectionResetError):
                reply = b""
        assert not reply.startswith(b"HTTP/1.1 5"), (payload[:60], reply)
    assert httpx.get(base + "/healthz", timeout=10).status_code == 200
    ok = httpx.post(base + "/chat", json={"message": "可以开票吗"}, timeout=30).json()
    assert ok["faq_id"] == "invoice"
