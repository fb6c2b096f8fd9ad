"""Prometheus metrics of one process (its own registry, so tests and several apps do not collide)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
ENCODE_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("faqbot_http_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("faqbot_http_request_seconds", "HTTP latency by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.answers = Counter("faqbot_chat_answers", "Chat decisions by outcome", ["outcome", "channel"],
                               registry=self.registry)
        self.index_info = Gauge("faqbot_index_info", "The live index (value 1)", ["version"], registry=self.registry)
        self.ready = Gauge("faqbot_ready", "1 when the index is loaded", registry=self.registry)
        # --- the hot path (bot/batcher.py, bot/cache.py, bot/misswriter.py) ---
        self.query_vectors = Counter("faqbot_query_vectors", "Query vectors by where they came from: exact (an FAQ "
                                     "text), cache (LRU) or encoder", ["source"], registry=self.registry)
        self.cache_hit_ratio = Gauge("faqbot_query_cache_hit_ratio", "Share of query vectors not computed by the "
                                     "encoder (exact match or LRU hit) since start", registry=self.registry)
        self.cache_entries = Gauge("faqbot_query_cache_entries", "Query vectors held in the LRU cache",
                                   registry=self.registry)
        self.queue_depth = Gauge("faqbot_encoder_queue_depth", "Texts waiting for the encoder worker",
                                 registry=self.registry)
        self.batch_size = Histogram("faqbot_encoder_batch_texts", "Texts per encoder call", buckets=BATCH_SIZE_BUCKETS,
                                    registry=self.registry)
        self.encode_seconds = Histogram("faqbot_encoder_batch_seconds", "Seconds per encoder call",
                                        buckets=ENCODE_BUCKETS, registry=self.registry)
        self.queue_seconds = Histogram("faqbot_encoder_queue_seconds", "Seconds the oldest text of a batch waited",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.overloaded = Counter("faqbot_encoder_overloaded", "Requests refused (503) because the encoder queue was "
                                  "full", registry=self.registry)
        self.log_rows = Counter("faqbot_log_rows_committed", "Chat-log turns committed by the miss writer",
                                registry=self.registry)
        self.log_commits = Histogram("faqbot_log_commit_rows", "Turns per miss-writer commit",
                                     buckets=BATCH_SIZE_BUCKETS, registry=self.registry)
        self.log_pending = Gauge("faqbot_log_rows_pending", "Turns handed to the miss writer, not yet committed",
                                 registry=self.registry)
        # --- limits, faults, shared state, rebuilds (bot/limits.py, bot/shared_state.py; docs/reliability.md) ---
        self.rate_limited = Counter("faqbot_rate_limited", "Requests refused with 429 by route family",
                                    ["family"], registry=self.registry)
        self.timeouts = Counter("faqbot_request_timeouts", "Requests answered 503 timeout by route family",
                                ["family"], registry=self.registry)
        self.miss_log_failures = Counter("faqbot_miss_log_failures", "Misses the database refused; the answer said "
                                         "`miss_logged: false`", registry=self.registry)
        self.shared_state_degraded = Gauge("faqbot_shared_state_degraded", "1 while Redis is configured but not "
                                           "answering (local limits and cache in use)", registry=self.registry)
        self.shared_state_redis = Gauge("faqbot_shared_state_redis", "1 while shared state lives in Redis",
                                        registry=self.registry)
        self.rebuilds = Counter("faqbot_rebuilds", "Index rebuilds by outcome (published, unchanged, invalid_kb, "
                                "gate_failed, error)", ["status"], registry=self.registry)
        self.rebuild_seconds = Histogram("faqbot_rebuild_seconds", "Seconds per index rebuild",
                                         buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600), registry=self.registry)
        self.index_loads_failed = Counter("faqbot_index_load_failures", "Published index versions this process "
                                          "could not load (it kept serving the previous one)", registry=self.registry)

    def observe_batch(self, texts: int, queued_seconds: float, encode_seconds: float) -> None:
        self.batch_size.observe(texts)
        self.queue_seconds.observe(queued_seconds)
        self.encode_seconds.observe(encode_seconds)

    def observe_commit(self, rows: int) -> None:
        self.log_rows.inc(rows)
        self.log_commits.observe(rows)

    def track(self, *, queue_depth: Callable[[], float], cache_hit_ratio: Callable[[], float],
              cache_entries: Callable[[], float], log_pending: Callable[[], float]) -> None:
        """Gauges read at scrape time from the running pipeline."""
        self.queue_depth.set_function(queue_depth)
        self.cache_hit_ratio.set_function(cache_hit_ratio)
        self.cache_entries.set_function(cache_entries)
        self.log_pending.set_function(log_pending)

    def observe_rebuild(self, status: str, seconds: float) -> None:
        """One rebuild's outcome and duration (failures are the statuses other than published/unchanged)."""
        self.rebuilds.labels(status).inc()
        self.rebuild_seconds.observe(seconds)

    def track_shared_state(self, *, degraded: Callable[[], float], redis: Callable[[], float]) -> None:
        self.shared_state_degraded.set_function(degraded)
        self.shared_state_redis.set_function(redis)

    def render(self) -> bytes:
        return generate_latest(self.registry)
