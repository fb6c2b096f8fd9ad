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


def test_tiny_bench_run_prints_every_figure(tiny_kb: Path, tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAQBOT_")}
    proc = subprocess.run(
        # the bundled engine: the default `auto` would first export ONNX (tests/test_default_encoder.py covers that)
        [sys.executable, "-m", "admin.cli", "bench", "--kb", str(tiny_kb), "--data-dir", str(tmp_path / "var"),
         "--encoder", "bundled", "--seconds", "1", "--soak-seconds", "1", "--json", str(report)],
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
                assert rps > 0 and 0 < p50 <= p99 and errors == 0
    assert re.search(r"^batched *soak-zipf +64 ", out, re.MULTILINE)
    assert re.search(r"RSS batched: \d+ MB with 1 worker", out) and re.search(r"RSS naive .*: \d+ MB", out)
    targets = re.findall(r"^  (.+?) +(-?[\d.]+)  (<=|>=|==|<) ?[\d.]+ +(met|NOT MET)$", out, re.MULTILINE)
    assert len(targets) == 7, out
    data = json.loads(report.read_text())
    assert data["bare"]["bundled"]["single_ms_p50"] > 0
    assert {r["server"] for r in data["runs"]["batched"]["phases"]} == {"batched"}
    assert len(data["runs"]["naive"]["phases"]) == 6
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


def test_process_tree_finds_children() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in process_tree(os.getpid())
    finally:
        child.kill()
        child.wait()
