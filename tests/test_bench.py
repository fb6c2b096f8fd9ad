"""`faqbot bench` end to end, in a tiny bounded run: it starts both servers and prints every figure.

This checks that the command works and reports what issue #8 asks for; it asserts no speed (the
figures of a 1-second phase on a shared box mean nothing; docs/performance.md has real runs).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from admin.loadtest.bench import QuestionStreams, process_tree
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_tiny_bench_run_prints_every_figure(tiny_kb: Path, tmp_path: Path, tiny_st_model: Path) -> None:
    report = tmp_path / "bench.json"
    questions = tmp_path / "queries.jsonl"
    questions.write_text("".join(json.dumps({"query": q, "expected": None}, ensure_ascii=False) + "\n"
                                 for q in ("怎么退货", "多久发货？", "可以开发票吗", "会员积分有什么用")), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAQBOT_")}
    proc = subprocess.run(
        # the bundled engine: the default `auto` would first export ONNX (tests/test_default_encoder.py covers that);
        # the reference from a tiny model: the real one exports 470 MB of weights with torch first (~1 min)
        [sys.executable, "-m", "admin.cli", "bench", "--kb", str(tiny_kb), "--data-dir", str(tmp_path / "var"),
         # 2 s phases: in 1 s a loaded box's c64 phase can finish no request that started after the warm-up
         "--encoder", "bundled", "--seconds", "2", "--soak-seconds", "1", "--json", str(report),
         "--questions", str(questions), "--reference-model", str(tiny_st_model)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert re.search(r"bare encoder bundled \(threads=1\): single query p50 [\d.]+ ms", out)
    assert re.search(r"texts/s by batch size: b1: \d+ .* b32: \d+ +-> best \d+ texts/s at batch \d+", out)
    for server in ("batched", "naive (no batch/cache)"):
        for stream in ("unique", "zipf"):
            for concurrency in (1, 16, 64):
                row = re.search(rf"^{re.escape(server)} *{stream} +{concurrency} +([\d.]+) +([\d.]+) +([\d.]+) +([\d.]+) +(\d+)",
                                out, re.MULTILINE)
                assert row, f"no row for {server} {stream} c{concurrency}:\n{out}"
                rps, p50, _p95, p99, errors = (float(x) for x in row.groups())
                assert rps > 0 and 0 < p50 <= p99 and errors == 0, f"{server} {stream} c{concurrency}:\n{out}"
    assert re.search(r"^batched *soak-zipf +64 ", out, re.MULTILINE)
    exact = re.search(r"^batched *exact +1 +([\d.]+) +([\d.]+) .* cache hits 100%", out, re.MULTILINE)
    assert exact and float(exact.group(1)) > 0, out  # FAQ texts verbatim: the exact-match path, no encoder
    assert re.search(r"^where /chat c1 goes: p50 [\d.]+ ms = encoder in the server [\d.]+ ms .* verbatim\) [\d.]+ ms$",
                     out, re.MULTILINE), out
    assert re.search(r"reference single question: [\d.]+ ms back to back, [\d.]+ ms after 5 ms idle .* paced [\d.]+$",
                     out, re.MULTILINE), out
    assert re.search(r"RSS batched: \d+ MB with 1 worker", out) and re.search(r"RSS naive .*: \d+ MB", out)
    assert "questions from" in out and "(4 distinct)" in out
    assert re.search(r"^reference \(issue #21: .*\): single question p50 [\d.]+ ms, batch 16: \d+ texts/s", out,
                     re.MULTILINE), out
    targets = re.findall(r"^  (.+?) +(-?[\d.]+)  (<=|>=|==|<) ?[\d.]+ +(met|NOT MET)$", out, re.MULTILINE)
    assert len(targets) == 7 + 4, out
    issue21 = out.split("targets (issue #21), ratios to the hand-made reference from this run:\n", 1)[1]
    for what, target in (("/chat p50 c1 / reference single question", "<= 1.25"),
                         ("req/s c16 unique / reference batch-16 texts/s", ">= 0.8"),
                         ("p99 c64 unique / p50 c1", "<= 10"), ("errors in the soak (c64 soak-zipf 1 s)", "== 0")):
        assert re.search(rf"^  {re.escape(what)} +[\d.]+  {re.escape(target)} +(met|NOT MET)$", issue21, re.MULTILINE), what
    assert [r["target"] for r in json.loads(report.read_text())["reference_targets"]] == ["<= 1.25", ">= 0.8", "<= 10", "== 0"]
    data = json.loads(report.read_text())
    assert data["bare"]["bundled"]["single_ms_p50"] > 0
    assert {r["server"] for r in data["runs"]["batched"]["phases"]} == {"batched"}
    assert len(data["runs"]["naive"]["phases"]) == 7  # unique and zipf at c1/16/64, exact at c1
    assert data["reference"]["paced_single_ms_p50"] > 0
    # The batched server really batched and cached: its own /metrics, read per phase.
    zipf16 = next(p for p in data["runs"]["batched"]["phases"] if p["stream"] == "zipf" and p["concurrency"] == 16)
    assert zipf16["server_profile"]["cache_hit_ratio"] > 0
    unique64 = next(p for p in data["runs"]["batched"]["phases"] if p["stream"] == "unique" and p["concurrency"] == 64)
    assert unique64["server_profile"]["mean_batch"] > 1


def test_unique_stream_never_repeats_a_match_key_and_zipf_is_skewed() -> None:
    from index.text import match_key

    streams = QuestionStreams(["怎么退货？", "可以开发票吗", "多久发货"])
    unique = [streams.unique() for _ in range(5000)]
    assert len({match_key(q) for q in unique}) == 5000
    draws = [streams.zipf() for _ in range(20_000)]
    counts = sorted((draws.count(q) for q in set(draws)), reverse=True)
    assert counts[0] > 10 * counts[len(counts) // 2]  # a few questions dominate, a long tail follows


def test_bench_questions_are_asked_once_as_written_then_made_distinct() -> None:
    from index.text import match_key

    streams = QuestionStreams(["怎么退货？"], questions=["电脑启不开机", "电脑启不开机？", "如何带好一个团队"])
    assert streams.questions == ["电脑启不开机", "如何带好一个团队"]  # the first of each match key
    asked = [streams.unique() for _ in range(50)]
    assert asked[:2] == streams.questions and len({match_key(q) for q in asked}) == 50
    assert set(streams.zipf_pool) >= set(streams.questions)


def test_reference_is_skipped_with_a_reason_when_it_cannot_be_built(tmp_path: Path) -> None:
    from admin.loadtest.reference import run_reference

    ref = run_reference(tmp_path / "var", ["怎么退货"], 0.1, source=tmp_path / "no-such-model", timeout=120)
    assert "skipped" in ref and "cannot build the reference" in str(ref["skipped"])


def test_process_tree_finds_children() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in process_tree(os.getpid())
    finally:
        child.kill()
        child.wait()
