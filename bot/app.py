"""The app factory: `create_app(settings)` builds a FastAPI app around one `FaqService`.

Nothing heavy happens at import time; the index is loaded (or built) in a background thread at
start-up, so /healthz answers at once and /readyz says when questions can be answered. A worker of a
multi-worker server loads it before it takes connections instead (`load_before_serving`): its
siblings may already be serving, and a customer must not land on one that is still loading.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from bot.api import router as api_router
from bot.channels import drain_outbound, install_channels
from bot.errors import install_error_handlers
from bot.kbs import KnowledgeBases
from bot.limits import Limits, ProtectionMiddleware
from bot.logging_setup import configure_logging
from bot.metrics import Metrics
from bot.service import FaqService
from bot.settings import Settings
from bot.shared_state import SharedEmbeddingCache, SharedState, shared_event_log
from bot.store import Store
from index.encoders import Encoder

log = logging.getLogger("faqbot")

PUBLISHED_INDEX_POLL_SECONDS = 2.0


def create_app(settings: Settings | None = None, *, encoder: Encoder | None = None, store: Store | None = None,
               service: FaqService | None = None, load_before_serving: bool = False) -> FastAPI:
    """A ready-to-serve app; pass `encoder`/`store`/`service` to share them (tests, CLI)."""
    settings = settings or Settings()
    kbs = KnowledgeBases.from_settings(settings, encoder=encoder, store=store, service=service)
    service = kbs.first
    stop = threading.Event()
    # Rate buckets, the query-embedding cache and webhook event ids: Redis when configured (shared by
    # replicas), else in-process; a Redis outage degrades to local state, never to errors.
    shared = SharedState(settings.redis_url, timeout=settings.redis_timeout_seconds,
                         retry_seconds=settings.redis_retry_seconds)
    if shared.configured:
        cache = SharedEmbeddingCache(settings.cache_size, shared, lambda: service.encoder.fingerprint,
                                     settings.redis_cache_ttl_seconds)
        for kb_service in kbs:  # one encoder, one query cache for every KB
            kb_service.cache = cache
            kb_service.context.shared = shared  # a follow-up may land on another replica

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level, settings.log_format)
        # The encoder worker and the batched miss writer first, so the first question finds them.
        for kb_service in kbs:  # the first KB's service starts them, the others share them
            kb_service.start_pipeline(app.state.metrics)
        if load_before_serving:  # uvicorn listens only after the lifespan's start-up has returned
            await asyncio.to_thread(kbs.start_all)
        threading.Thread(target=_start_and_watch, args=(kbs, stop, app.state.metrics, not load_before_serving),
                         name="faqbot-index", daemon=True).start()
        for start_task in app.state.background_tasks:  # e.g. admin's KB watcher; each stops with `stop`
            start_task(stop)
        try:
            yield
        finally:
            stop.set()
            await drain_outbound(app)
            # uvicorn has finished the in-flight requests by now: commit every chat-log row and miss they logged.
            for kb_service in reversed(list(kbs)):  # the sharing ones let go first, the owner stops last
                await asyncio.to_thread(kb_service.stop_pipeline)
            shared.close()

    app = FastAPI(
        title="faqbot",
        description="中文 FAQ 意图匹配机器人 — Chinese-first FAQ intent matching. See README.md.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.service = service  # the first KB's: webhooks, /similarity, /v1/embeddings
    app.state.kbs = kbs
    app.state.settings = settings
    # Callables `start(stop_event)` run at start-up by the lifespan (so layers above bot can add threads).
    app.state.background_tasks = []
    app.state.metrics = Metrics()
    app.state.shared_state = shared
    app.state.metrics.track_shared_state(degraded=lambda: float(shared.degraded),
                                         redis=lambda: float(shared.backend == "redis"))
    install_error_handlers(app)
    # Inside CORS, so a 429/413 still carries the CORS headers a browser needs to read it.
    app.add_middleware(ProtectionMiddleware, limits=Limits.from_settings(settings), shared=shared,
                       metrics=app.state.metrics)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Content-Type", "Authorization"],
        max_age=600,
    )
    app.include_router(api_router)
    install_channels(app)
    channels = getattr(app.state, "channels", {})
    if shared.configured and channels:
        context = next(iter(channels.values())).context
        context.events = shared_event_log(context.events, shared)
    static = Path(__file__).with_name("static")
    if static.is_dir():
        from bot.pages import mount_pages

        mount_pages(app, static)
    return app


def _start_and_watch(kbs: KnowledgeBases, stop: threading.Event, metrics: Metrics, load: bool) -> None:
    """Load every KB's index (unless the lifespan did), then follow the published versions so every worker swaps to a new one."""
    if load:
        kbs.start_all()
    while not stop.wait(PUBLISHED_INDEX_POLL_SECONDS):
        try:
            for name in kbs.refresh_all():
                log.info("now serving index %s of KB %s", kbs.get(name).index.version, name)
        except Exception as exc:  # a bad published version must not stop the watcher; keep serving the old one
            metrics.index_loads_failed.inc()
            log.error("could not load the published index: %s", exc)

