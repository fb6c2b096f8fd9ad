"""The encoder worker: micro-batches concurrent questions, bounds its queue, one FAISS call per group.

Unit tests use `CountingEncoder` (deterministic vectors, records every call, can be slowed down or
held) so batching is provable; the HTTP tests run the real app on uvicorn with the bundled encoder.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from bot.batcher import MicroBatcher, OverloadedError, SearchSpec
from bot.errors import http_headers, http_status
from bot.matcher import Matcher
from bot.service import FaqService
from faq import load_kb
from index.faq_index import build_index, load_index


class CountingEncoder:
    """Deterministic char-bigram vectors; records batch sizes; `delay` per call, `gate` to hold calls."""

    name = "counting"
    fingerprint = "counting:v1"
    dim = 64

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[list[str]] = []
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def vector(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float32)
        padded = f"^{text}$"
        for a, b in itertools.pairwise(padded):
            v[(ord(a) * 31 + ord(b)) % self.dim] += 1.0
        return v / max(float(np.linalg.norm(v)), 1e-12)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        self.gate.wait(30)
        with self._lock:
            self.calls.append(list(texts))
            self.threads.add(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)
        return np.stack([self.vector(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)

    encode_passages = encode_queries

    @property
    def texts_encoded(self) -> int:
        return sum(len(c) for c in self.calls)


def _batcher(encoder: CountingEncoder, **options: object) -> MicroBatcher:
    batcher = MicroBatcher(lambda texts: encoder.encode_queries(texts), **options)  # type: ignore[arg-type]
    batcher.start()
    return batcher


def test_concurrent_questions_share_encoder_calls_and_get_their_own_vectors() -> None:
    encoder = CountingEncoder(delay=0.03)
    batcher = _batcher(encoder, max_batch=8, max_wait_ms=5, queue_size=64)
    try:
        texts = [f"第{i}个问题" for i in range(24)]
        with ThreadPoolExecutor(24) as pool:
            results = list(pool.map(lambda t: batcher.submit([t]).result(10), texts))
    finally:
        batcher.stop()
    for text, encoded in zip(texts, results, strict=True):
        np.testing.assert_allclose(encoded.vectors[0], encoder.vector(text), rtol=1e-6)
    sizes = [len(c) for c in encoder.calls]
    assert sum(sizes) == 24
    assert max(sizes) <= 8  # never more than max_batch texts per call
    assert len(sizes) <= 12  # 24 questions arriving together did not each pay an encoder call


def test_a_lone_question_does_not_wait_for_company() -> None:
    encoder = CountingEncoder()
    batcher = _batcher(encoder, max_batch=16, max_wait_ms=500, queue_size=16)
    try:
        batcher.submit(["预热"]).result(10)
        started = time.perf_counter()
        batcher.submit(["只有我一个"]).result(10)
        elapsed = time.perf_counter() - started
    finally:
        batcher.stop()
    assert elapsed < 0.25  # the previous batch held one text: no 500 ms wait for more


def test_full_queue_answers_overloaded_at_once_and_recovers() -> None:
    encoder = CountingEncoder()
    encoder.gate.clear()  # the worker blocks inside its first encoder call
    batcher = _batcher(encoder, max_batch=4, max_wait_ms=0, queue_size=3)
    try:
        first = batcher.submit(["被处理中"])
        deadline = time.monotonic() + 5
        while batcher.queue_depth and time.monotonic() < deadline:  # wait until the worker took it
            time.sleep(0.005)
        queued = [batcher.submit([f"排队{i}"]) for i in range(3)]
        started = time.perf_counter()
        with pytest.raises(OverloadedError) as refused:
            batcher.submit(["满了"])
        assert time.perf_counter() - started < 0.05
        assert http_status(refused.value) == 503 and http_headers(refused.value) == {"Retry-After": "1"}
        assert batcher.queue_depth == 3
        encoder.gate.set()
        assert first.result(10).vectors.shape == (1, encoder.dim)
        assert all(f.result(10).vectors.shape == (1, encoder.dim) for f in queued)
        assert batcher.submit(["又有空位了"]).result(10).vectors.shape == (1, encoder.dim)
    finally:
        encoder.gate.set()
        batcher.stop()


def test_blocking_submit_waits_for_room_instead_of_refusing() -> None:
    encoder = CountingEncoder(delay=0.02)
    batcher = _batcher(encoder, max_batch=2, max_wait_ms=0, queue_size=2)
    try:
        futures = [batcher.submit([f"批量{i}"], block=True, timeout=10) for i in range(10)]
        assert [len(f.result(10).vectors) for f in futures] == [1] * 10
    finally:
        batcher.stop()


def test_same_text_asked_at_once_is_encoded_once() -> None:
    encoder = CountingEncoder()
    encoder.gate.clear()
    batcher = _batcher(encoder, max_batch=16, max_wait_ms=0, queue_size=16)
    try:
        head = batcher.submit(["先占住编码器"])
        deadline = time.monotonic() + 5
        while batcher.queue_depth and time.monotonic() < deadline:
            time.sleep(0.005)
        same = [batcher.submit(["怎么退货"]) for _ in range(5)]
        encoder.gate.set()
        head.result(10)
        vectors = [f.result(10).vectors[0] for f in same]
    finally:
        encoder.gate.set()
        batcher.stop()
    assert encoder.calls[-1] == ["怎么退货"]
    assert all(np.array_equal(v, vectors[0]) for v in vectors)


def test_a_cancelled_request_is_skipped_and_the_worker_lives_on() -> None:
    """`asyncio.wrap_future` cancels the job when its request times out or its client leaves."""
    encoder = CountingEncoder()
    encoder.gate.clear()
    batcher = _batcher(encoder, max_batch=4, max_wait_ms=0, queue_size=8)
    try:
        head = batcher.submit(["编码中"])
        deadline = time.monotonic() + 5
        while batcher.queue_depth and time.monotonic() < deadline:
            time.sleep(0.005)
        gone = batcher.submit(["客户已离开"])
        assert gone.cancel()
        kept = batcher.submit(["还在等"])
        encoder.gate.set()
        assert head.result(10).vectors.shape == kept.result(10).vectors.shape == (1, encoder.dim)
        assert batcher.submit(["之后"]).result(10).vectors.shape == (1, encoder.dim)
    finally:
        encoder.gate.set()
        batcher.stop()
    assert ["客户已离开"] not in encoder.calls and all("客户已离开" not in c for c in encoder.calls)


def test_encoder_failure_fails_that_batch_only() -> None:
    calls = {"n": 0}

    def flaky(texts: list[str]) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("engine hiccup")
        return np.ones((len(texts), 4), dtype=np.float32)

    batcher = MicroBatcher(flaky, max_batch=4, max_wait_ms=0, queue_size=8)
    batcher.start()
    try:
        with pytest.raises(RuntimeError, match="engine hiccup"):
            batcher.submit(["一"]).result(10)
        assert batcher.submit(["二"]).result(10).vectors.shape == (1, 4)
    finally:
        batcher.stop()


def test_stop_finishes_queued_questions_then_refuses_new_ones() -> None:
    encoder = CountingEncoder(delay=0.02)
    batcher = _batcher(encoder, max_batch=2, max_wait_ms=0, queue_size=16)
    futures = [batcher.submit([f"关机前{i}"]) for i in range(6)]
    batcher.stop()
    assert all(f.result(0).vectors.shape == (1, encoder.dim) for f in futures)
    with pytest.raises(OverloadedError):
        batcher.submit(["关机后"])


def test_worker_limits_faiss_to_one_thread_on_itself() -> None:
    import faiss

    seen: list[int] = []

    def encode(texts: list[str]) -> np.ndarray:
        seen.append(faiss.omp_get_max_threads())
        return np.ones((len(texts), 4), dtype=np.float32)

    batcher = MicroBatcher(encode, max_batch=2, max_wait_ms=0, queue_size=4)
    batcher.start()
    try:
        batcher.submit(["线程"]).result(10)
    finally:
        batcher.stop()
    assert seen == [1]


class CountingMatcher(Matcher):
    searches: int = 0

    def match_vectors(self, vectors: np.ndarray, texts: Sequence[str], *, top_k: int = 3,
                      tags: Sequence[str] | None = None) -> list:
        type(self).searches += 1
        return super().match_vectors(vectors, texts, top_k=top_k, tags=tags)


def test_a_batch_is_searched_in_one_faiss_call_per_group(tiny_kb: Path) -> None:
    encoder = CountingEncoder()
    index = build_index(load_kb(tiny_kb), encoder)
    matcher = CountingMatcher(index, threshold=0.5)
    reference = Matcher(index, threshold=0.5)
    encoder.gate.clear()
    batcher = _batcher(encoder, max_batch=16, max_wait_ms=0, queue_size=16)
    questions = ["可以开票吗", "怎么退货", "什么时候发货", "如何重置密码", "积分怎么使用", "今天天气"]
    try:
        head = batcher.submit(["占位"])
        deadline = time.monotonic() + 5
        while batcher.queue_depth and time.monotonic() < deadline:
            time.sleep(0.005)
        CountingMatcher.searches = 0
        plain = [batcher.submit([q], SearchSpec(matcher, 3)) for q in questions]
        tagged = batcher.submit(["怎么退货"], SearchSpec(matcher, 3, ("billing",)))
        encoder.gate.set()
        head.result(10)
        decisions = [f.result(10).decisions[0] for f in plain]
        tagged_decision = tagged.result(10).decisions[0]
    finally:
        encoder.gate.set()
        batcher.stop()
    assert CountingMatcher.searches == 2  # one for the untagged group, one for tags=("billing",)
    for question, decision in zip(questions, decisions, strict=True):
        expected = reference.match_vectors(encoder.vector(question)[None, :], [question], top_k=3)[0]
        assert decision == expected
    assert all(c.faq_id == "invoice" for c in tagged_decision.candidates)


# --- over HTTP: the real app, real uvicorn, the bundled encoder ---------------------------------------
class SlowEncoder:
    """The bundled encoder plus a fixed delay per call, so concurrent requests must queue up."""

    def __init__(self, inner: object, delay: float) -> None:
        self.inner, self.delay = inner, delay
        self.name, self.dim, self.fingerprint = inner.name, inner.dim, inner.fingerprint  # type: ignore[attr-defined]
        self.batch_sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # set once a call is inside the encoder (perhaps held at the gate)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        self.entered.set()
        self.gate.wait(30)
        self.batch_sizes.append(len(texts))
        time.sleep(self.delay)
        return self.inner.encode_queries(texts)  # type: ignore[attr-defined]

    def encode_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.encode_passages(texts)  # type: ignore[attr-defined]


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.slow
def test_concurrent_chat_is_batched_over_http_with_the_same_answers(make_settings, bundled_encoder) -> None:
    from admin.web.app import build_app
    from tests.conftest import serve_app

    slow = SlowEncoder(bundled_encoder, delay=0.05)
    settings = make_settings(cache_size=0, rate_limit_enabled=False)
    questions = [f"请问订单{i}能开发票吗" for i in range(12)] + [f"我想退货，订单{i}" for i in range(12)]
    with serve_app(build_app(settings, encoder=slow)) as base:
        slow.batch_sizes.clear()
        with ThreadPoolExecutor(len(questions)) as pool:
            replies = list(pool.map(lambda q: httpx.post(base + "/chat", json={"message": q}, timeout=60), questions))
        metrics = httpx.get(base + "/metrics").text
    assert [r.status_code for r in replies] == [200] * len(questions)
    assert [r.json()["faq_id"] for r in replies] == ["invoice"] * 12 + ["return_howto"] * 12
    assert sum(slow.batch_sizes) == len(questions) and max(slow.batch_sizes) > 1
    assert _metric(metrics, "faqbot_encoder_batch_texts_sum") == len(questions)
    assert _metric(metrics, "faqbot_encoder_batch_texts_count") == len(slow.batch_sizes)
    # Batched answers are the answers of encoding each question on its own (no worker, no cache).
    alone = FaqService(settings, encoder=bundled_encoder)
    alone.use_index(load_index(settings.data_dir))
    for question, reply in zip(questions, replies, strict=True):
        assert reply.json()["similarity"] == pytest.approx(alone.decide(question).best.similarity, abs=1e-3)


@pytest.mark.slow
def test_a_full_queue_is_a_fast_503_over_http(make_settings, bundled_encoder) -> None:
    from admin.web.app import build_app
    from tests.conftest import serve_app

    slow = SlowEncoder(bundled_encoder, delay=0.0)
    settings = make_settings(max_batch=2, queue_size=2, cache_size=0, exact_match=False, rate_limit_enabled=False)
    with serve_app(build_app(settings, encoder=slow)) as base:
        slow.gate.clear()  # hold the encoder: the first question sits in it, the next two fill the queue
        slow.entered.clear()
        with ThreadPoolExecutor(8) as pool:
            ask = functools.partial(httpx.post, base + "/chat", timeout=60)
            # One question first, held inside the encoder; sent together, the worker could take two as one batch.
            held = [pool.submit(ask, json={"message": "占住0"})]
            assert slow.entered.wait(30), "the first question never reached the encoder"
            held += [pool.submit(ask, json={"message": f"占住{i}"}) for i in (1, 2)]
            deadline = time.monotonic() + 30
            while _metric(httpx.get(base + "/metrics").text, "faqbot_encoder_queue_depth") < 2:
                assert time.monotonic() < deadline, "the queue never filled"
                time.sleep(0.05)
            started = time.perf_counter()
            refused = httpx.post(base + "/chat", json={"message": "还能排上吗"}, timeout=10)
            refused_after = time.perf_counter() - started
            slow.gate.set()
            held_status = [f.result().status_code for f in held]
        metrics = httpx.get(base + "/metrics").text
    assert refused.status_code == 503 and refused_after < 1.0
    assert refused.headers["retry-after"] == "1"
    assert refused.json() == {"status": "error", "error": {"code": "overloaded", "message": refused.json()["error"]["message"]}}
    assert held_status == [200, 200, 200]
    assert _metric(metrics, "faqbot_encoder_overloaded_total") == 1


class ParallelEncoder(CountingEncoder):
    """Calls run in parallel (as onnxruntime's do); each call waits for a partner at a barrier, so a
    second call running at the same time is the only way any call returns."""

    parallel_calls = True

    def __init__(self, partners: int) -> None:
        super().__init__()
        self.barrier = threading.Barrier(partners, timeout=10)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        self.barrier.wait()
        return super().encode_queries(texts)


def test_several_workers_encode_at_the_same_time_and_all_stop() -> None:
    encoder = ParallelEncoder(partners=2)
    batcher = _batcher(encoder, max_batch=1, max_wait_ms=0, queue_size=8, workers=2)
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda t: batcher.submit([t]).result(15), ["一", "二", "三", "四"]))
    finally:
        batcher.stop(timeout=10)
    assert [r.vectors.shape for r in results] == [(1, 64)] * 4
    assert len(encoder.threads) == 2  # both workers encoded, two calls at a time (one alone would block)
    assert not batcher.running and not [t for t in threading.enumerate() if t.name.startswith("faqbot-encoder")]
    with pytest.raises(OverloadedError):
        batcher.submit(["五"])


def test_the_service_gives_a_parallel_encoder_one_worker_per_core_and_others_one(make_settings) -> None:
    settings = make_settings(encoder_workers=0, workers=1, encoder_threads=1)
    cores = settings.resolved_encoder_workers
    assert cores >= 1
    assert make_settings(encoder_workers=3).resolved_encoder_workers == 3
    assert make_settings(encoder_workers=0, workers=64).resolved_encoder_workers == 1
    for encoder, expected in ((ParallelEncoder(partners=1), cores), (CountingEncoder(), 1)):
        service = FaqService(settings, encoder=encoder)
        service.start_pipeline()
        try:
            assert service.batcher is not None and service.batcher.workers == expected
        finally:
            service.stop_pipeline()
