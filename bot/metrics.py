"""Prometheus metrics of one process (its own registry, so tests and several apps do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


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

    def render(self) -> bytes:
        return generate_latest(self.registry)
