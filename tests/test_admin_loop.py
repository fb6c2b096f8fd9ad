"""The improvement loop in-process: clustering misses, resolving them, the golden gate, the rebuild
lock, the KB watcher, lint, stats and the `faqbot misses|reload|lint|stats` commands."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from admin.cli.main import main
from admin.curation.lint import lint_kb
from admin.curation.misses import (
    MissFilter,
    Resolution,
    cluster_misses,
    export,
    fetch_misses,
    parse_when,
    resolve,
    training_pairs,
)
from admin.curation.rebuild import KbWatcher, Rebuilder, rebuild_lock
from admin.curation.stats import compute_stats
from bot.errors import http_status
from bot.service import FaqService, ensure_index
from faq import KBError, load_kb
from faq.errors import FaqbotError
from faq.golden import load_golden
from index.filelock import FileLock
from tests.conftest import TINY_GOLDEN, TINY_KB

GOLDEN = TINY_GOLDEN
SHIPPING = ["我买的东西啥时候能寄出来", "我买的东西啥时候能寄出来", "我买的东西啥时候能寄出来？", "买的东西什么时候能寄出"]
SERVICE_HOURS = ["你们周末有客服吗", "周末客服上班吗"]
WEATHER = ["今天天气怎么样"]


@pytest.fixture
def kb_dir(tiny_kb: Path) -> Path:
    (tiny_kb / "tests.yaml").write_text(GOLDEN, encoding="utf-8")
    return tiny_kb


@pytest.fixture
def service(make_settings, kb_dir, bundled_encoder) -> FaqService:
    # The answer threshold is pinned so the test does not depend on a shipped calibration.
    settings = make_settings(threshold=0.93)
    svc = FaqService(settings, encoder=bundled_encoder)
    svc.use_index(ensure_index(settings, bundled_encoder))
    return svc


def ask_all(service: FaqService, questions: list[str], channel: str = "web") -> list[int]:
    ids = []
    for q in questions:
        result = service.chat(q, channel=channel)
        assert result.miss_id is not None, f"{q!r} was answered by {result.decision.faq}"
        ids.append(result.miss_id)
    return ids


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_misses_are_grouped_by_text_then_by_meaning_most_frequent_first(service):
    shipping_ids = ask_all(service, SHIPPING)
    hours_ids = ask_all(service, SERVICE_HOURS, channel="wecom")
    weather_ids = ask_all(service, WEATHER)
    result = cluster_misses(service, fetch_misses(service, MissFilter()))
    assert result["total_misses"] == 7 and result["threshold"] == 0.93
    clusters = result["clusters"]
    assert [c["count"] for c in clusters] == [4, 2, 1]
    shipping, hours, weather = clusters
    assert shipping["representative"] == "我买的东西啥时候能寄出来?"  # the latest wording, sanitised
    assert sorted(shipping["miss_ids"]) == sorted(shipping_ids)
    assert [v["count"] for v in shipping["variants"]] == [3, 1]
    assert shipping["variants"][1]["text"] == "买的东西什么时候能寄出" and shipping["variants"][1]["similarity"] >= 0.93
    assert shipping["candidates"][0]["faq_id"] == "shipping_time" and 0 < shipping["candidates"][0]["percent"] <= 100
    assert shipping["answered_now"] is None
    assert sorted(hours["miss_ids"]) == sorted(hours_ids) and hours["channels"] == {"wecom": 2}
    assert weather["miss_ids"] == weather_ids

    only_wecom = cluster_misses(service, fetch_misses(service, MissFilter(channel="wecom")))
    assert [c["count"] for c in only_wecom["clusters"]] == [2]
    today = MissFilter(since=parse_when(datetime.now(UTC).date().isoformat()),
                       until=parse_when(datetime.now(UTC).date().isoformat(), end=True))
    assert cluster_misses(service, fetch_misses(service, today))["total_misses"] == 7
    future = MissFilter(since=parse_when("2999-01-01"))
    assert cluster_misses(service, fetch_misses(service, future))["total_misses"] == 0
    with pytest.raises(FaqbotError):
        MissFilter(status="closed")


@pytest.mark.slow
def test_resolve_attach_new_ignore_and_training_pairs(service, kb_dir):
    rebuilder = Rebuilder(service)
    shipping_ids = ask_all(service, SHIPPING)
    hours_ids = ask_all(service, SERVICE_HOURS)
    weather_ids = ask_all(service, WEATHER)
    old_version = service.index.version

    attached = resolve(service, rebuilder, shipping_ids[0],
                       Resolution("attach", faq_id="shipping_time", miss_ids=tuple(shipping_ids[1:])))
    assert sorted(attached["miss_ids"]) == sorted(shipping_ids)
    assert attached["edit"]["added"] == ["我买的东西啥时候能寄出来", "买的东西什么时候能寄出"]
    assert attached["reload"]["status"] == "published" and service.index.version != old_version
    assert service.chat("买的东西什么时候能寄出").decision.faq.id == "shipping_time"

    with pytest.raises(FaqbotError) as again:
        resolve(service, rebuilder, shipping_ids[0], Resolution("attach", faq_id="shipping_time"))
    assert http_status(again.value) == 409 and again.value.code == "already_resolved"

    created = resolve(service, rebuilder, hours_ids[0],
                      Resolution("new", faq_id="service_hours", answer="周末 9:00–18:00 有人工客服。",
                                 miss_ids=(hours_ids[1],), tags=("aftersales",)))
    assert created["edit"]["created"] is True and created["reload"]["status"] == "published"
    faq = load_kb(kb_dir).by_id()["service_hours"]
    assert faq.question == "你们周末有客服吗" and faq.paraphrases == ("周末客服上班吗",) and faq.tags == ("aftersales",)
    assert service.chat("周末客服上班吗").decision.faq.id == "service_hours"

    ignored = resolve(service, rebuilder, weather_ids[0], Resolution("ignore"))
    assert ignored["miss_ids"] == weather_ids and service.store.get_miss(weather_ids[0])["status"] == "ignored"
    reopened = resolve(service, rebuilder, weather_ids[0], Resolution("reopen"))
    assert reopened["miss_ids"] == weather_ids and service.store.get_miss(weather_ids[0])["status"] == "open"

    with pytest.raises(FaqbotError) as unknown:
        resolve(service, rebuilder, 99999, Resolution("ignore"))
    assert http_status(unknown.value) == 404
    with pytest.raises(FaqbotError) as no_faq:
        resolve(service, rebuilder, weather_ids[0], Resolution("attach", faq_id="no_such_faq"))
    assert http_status(no_faq.value) == 404 and service.store.get_miss(weather_ids[0])["status"] == "open"

    pairs = training_pairs(service)
    # One pair per distinct wording; a new FAQ's own question is not a pair with itself.
    assert sorted((p["query"], p["positive"]) for p in pairs) == sorted([
        ("我买的东西啥时候能寄出来", "下单后多久发货？"), ("买的东西什么时候能寄出", "下单后多久发货？"),
        ("周末客服上班吗", "你们周末有客服吗"),
    ])
    body, media = export(service, MissFilter(), fmt="jsonl", kind="training")
    assert media.startswith("application/x-ndjson")
    assert all(set(json.loads(line)) == {"query", "positive", "faq_id"} for line in body.splitlines())
    csv_body, csv_media = export(service, MissFilter(status=None), fmt="csv", kind="raw")
    assert csv_body.startswith("\ufeffid,created_at,message") and csv_media.startswith("text/csv")
    assert len(csv_body.strip().splitlines()) == 1 + 7


def test_golden_file_problems_are_located(tmp_path: Path):
    path = tmp_path / "tests.yaml"
    path.write_text("version: 1\ntests:\n  - query: 你好\n  - expected: invoice\n  - query: 再见\n    expected: [a]\n",
                    encoding="utf-8")
    with pytest.raises(KBError) as broken:
        load_golden(path)
    assert [(p.line, p.field) for p in broken.value.problems] == [
        (3, "tests[0].expected"), (4, "tests[1].query"), (5, "tests[2].expected")]
    sample = load_golden(Path(__file__).resolve().parent.parent / "faq" / "sample" / "tests.yaml")
    assert len(sample) > 40 and any(c.expected is None for c in sample)


@pytest.mark.slow
def test_golden_gate_blocks_a_regression_unless_forced(service, kb_dir):
    rebuilder = Rebuilder(service)
    live = service.index.version
    kb_file = kb_dir / "faq.yaml"
    kb_file.write_text(TINY_KB.replace("id: shipping_time", "id: shipping_eta"), encoding="utf-8")
    outcome = rebuilder.rebuild()
    assert outcome.status == "gate_failed" and outcome.live_version == live == service.index.version
    gate = outcome.gate
    assert gate is not None and gate.live_correct == 4 and gate.new_correct == 3 and not gate.passed
    assert [c["query"] for c in gate.broke] == ["下单之后多长时间发货"]
    assert gate.broke[0]["live_got"] == "shipping_time" and gate.broke[0]["got"] == "shipping_eta"
    assert gate.unknown_expected == ["shipping_time"]

    forced = rebuilder.rebuild(force=True)
    assert forced.status == "published" and forced.gate.forced and service.index.version == forced.live_version
    assert rebuilder.rebuild().status == "unchanged"


@pytest.mark.slow
def test_a_rebuild_running_in_another_process_makes_others_wait_or_back_off(service, kb_dir):
    rebuilder = Rebuilder(service)
    lock_path = rebuild_lock(service.settings.data_dir).path
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl,sys,time; f=open(sys.argv[1],'a'); fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True);"
         " time.sleep(float(sys.argv[2]))", str(lock_path), "1.5"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert rebuilder.running
        assert rebuilder.rebuild(wait=False).status == "busy"
        assert rebuilder.rebuild(timeout=0.2).status == "busy"
        (kb_dir / "faq.yaml").write_text(TINY_KB.replace("      - 积分怎么使用\n", "      - 积分怎么使用\n      - 积分能当钱花吗\n"),
                                         encoding="utf-8")
        started = time.monotonic()
        outcome = rebuilder.rebuild(timeout=30)
        assert outcome.status == "published" and time.monotonic() - started >= 0.5
    finally:
        holder.wait(10)
    assert not rebuilder.running


def test_file_lock_is_exclusive_between_threads(tmp_path: Path):
    lock = FileLock(tmp_path / "x.lock")
    inside: list[int] = []
    overlaps: list[int] = []

    def work(i: int) -> None:
        with FileLock(tmp_path / "x.lock").hold(10):
            inside.append(i)
            if len(inside) > 1:
                overlaps.append(i)
            time.sleep(0.02)
            inside.remove(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == [] and not lock.held_elsewhere


@pytest.mark.slow
def test_kb_watcher_rebuilds_on_change_and_ignores_a_broken_save(service, kb_dir):
    rebuilder = Rebuilder(service)
    stop = threading.Event()
    KbWatcher(rebuilder, interval=0.1).start(stop)
    try:
        first = service.index.version
        time.sleep(0.3)
        (kb_dir / "faq.yaml").write_text(TINY_KB + "  - broken\n", encoding="utf-8")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (rebuilder.last is None or rebuilder.last.status != "invalid_kb"):
            time.sleep(0.05)
        assert rebuilder.last.status == "invalid_kb" and service.index.version == first
        (kb_dir / "faq.yaml").write_text(TINY_KB.replace("      - 如何重置密码\n", "      - 如何重置密码\n      - 登录密码想换一个\n"),
                                         encoding="utf-8")
        while time.monotonic() < deadline and service.index.version == first:
            time.sleep(0.05)
        assert rebuilder.last.status == "published" and service.index.version != first
        assert service.chat("登录密码想换一个").decision.faq.id == "change_password"
    finally:
        stop.set()


@pytest.mark.slow
def test_lint_finds_duplicates_confusable_pairs_and_misplaced_paraphrases(tmp_path: Path, bundled_encoder):
    kb_file = tmp_path / "faq.yaml"
    kb_file.write_text(TINY_KB.replace("      - 什么时候发货\n", "      - 什么时候发货\n      - 我想退货怎么操作啊\n      - 积分可以抵现吗？\n")
                       + "  - id: change_password_2\n    question: 如何修改登录密码\n    answer: 同上。\n",
                       encoding="utf-8")
    kb = load_kb(kb_file)
    report = lint_kb(kb, bundled_encoder, answer_threshold=0.9)
    assert not report["ok"]
    (dup,) = report["duplicates"]
    assert {o["faq_id"] for o in dup["occurrences"]} == {"shipping_time", "member_points"} and not dup["same_faq"]
    assert all(o["line"] > 0 and o["file"] == str(kb_file) for o in dup["occurrences"])
    pairs = {(c["faq_a"], c["faq_b"]): c for c in report["confusable"]}
    assert ("return_howto", "shipping_time") in pairs and ("change_password", "change_password_2") in pairs
    twin = pairs[("change_password", "change_password_2")]
    assert twin["similarity"] >= report["min_similarity"] >= 0.9 and 0 < twin["percent"] <= 100
    assert report["confusable"] == sorted(report["confusable"], key=lambda c: -c["similarity"])
    misplaced = {m["text"]: m for m in report["misplaced"]}
    assert misplaced["我想退货怎么操作啊"]["closer"]["faq_id"] == "return_howto"
    assert misplaced["我想退货怎么操作啊"]["faq_id"] == "shipping_time"
    clean_file = tmp_path / "clean.yaml"
    clean_file.write_text(TINY_KB, encoding="utf-8")
    clean = lint_kb(load_kb(clean_file), bundled_encoder, answer_threshold=0.9, min_similarity=0.99)
    assert clean["duplicates"] == [] and clean["confusable"] == []


@pytest.mark.slow
def test_stats_count_questions_answers_top_faqs_misses_and_thumbs_down(service):
    for q in ["可以开票吗", "可以开票吗", "怎么退货？"]:
        assert service.chat(q).decision.matched
    ask_all(service, SHIPPING[:2] + WEATHER)
    service.store.log_feedback(session_id=None, message="可以开票吗", faq_id="invoice", helpful=False, miss_id=None)
    service.store.log_feedback(session_id=None, message="可以开票吗", faq_id="invoice", helpful=True, miss_id=None)
    data = compute_stats(service, days=3, tz="Asia/Shanghai")
    assert len(data["days"]) == 3 and data["days"][-1]["questions"] == 6
    assert data["totals"] == {"questions": 6, "answered": 3, "misses": 3, "answer_rate": 0.5, "thumbs_up": 1,
                              "thumbs_down": 1, "handoffs": 0}
    assert data["top_faqs"][0] == {"faq_id": "invoice", "question": "是否支持开具发票？", "count": 2}
    assert data["top_misses"][0]["count"] == 2 and data["top_misses"][0]["best"]["faq_id"] == "shipping_time"
    assert data["thumbs_down"] == [{"faq_id": "invoice", "question": "是否支持开具发票？", "thumbs_down": 1,
                                    "thumbs_up": 1}]
    assert data["miss_status"] == {"open": 3, "resolved": 0, "ignored": 0}
    with pytest.raises(FaqbotError):
        compute_stats(service, tz="Mars/Olympus")


@pytest.mark.slow
def test_cli_misses_list_resolve_export_lint_stats_reload(service, kb_dir, capsys, tmp_path):
    ids = ask_all(service, SHIPPING + WEATHER)
    common = ["--kb", str(kb_dir), "--data-dir", str(service.settings.data_dir)]
    code, out, _ = cli(capsys, "misses", "list", *common)
    assert code == 0 and "5 miss(es) in 2 cluster(s)" in out and "×4" in out and "shipping_time" in out

    code, out, _ = cli(capsys, "misses", "resolve", str(ids[0]), "--attach", "shipping_time", "--cluster", *common)
    assert code == 0 and "+ 我买的东西啥时候能寄出来  ->  shipping_time" in out and "reload: published" in out
    assert "4 miss(es) marked attach" in out

    out_file = tmp_path / "pairs.jsonl"
    code, _, err = cli(capsys, "misses", "export", "--training", "-o", str(out_file), *common)
    assert code == 0 and "wrote 2 row(s)" in err
    assert {json.loads(line)["positive"] for line in out_file.read_text(encoding="utf-8").splitlines()} == {"下单后多久发货？"}

    code, out, _ = cli(capsys, "misses", "export", "--format", "csv", "--raw", "--status", "all", *common)
    assert code == 0 and out.splitlines()[0].startswith("id,created_at,message") and len(out.splitlines()) == 6

    code, out, _ = cli(capsys, "stats", "--days", "2", *common)
    assert code == 0 and "5 question(s)" in out and "misses: 1 open, 4 resolved, 0 ignored" in out

    code, out, _ = cli(capsys, "lint", "--min-similarity", "0.999", *common)
    assert code == 0 and "0 duplicate(s), 0 confusable pair(s)" in out

    (kb_dir / "faq.yaml").write_text(TINY_KB.replace("    answer: 现货商品 48 小时内发货。\n", ""), encoding="utf-8")
    code, out, err = cli(capsys, "reload", *common)
    assert code == 1 and "reload: invalid_kb" in out and "faqs[shipping_time].answer" in out
