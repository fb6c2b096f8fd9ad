"""The app factory: `create_app(settings)` builds a FastAPI app around one `FaqService`.

Nothing heavy happens at import time; the index is loaded (or built) in a background thread at
start-up, so /healthz answers at once and /readyz says when questions can be answered.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware

from bot.api import router as api_router
from bot.errors import FaqbotError, error_body, install_error_handlers
from bot.metrics import Metrics
from bot.service import FaqService
from bot.settings import Settings
from bot.store import Store
from index.encoders import Encoder

log = logging.getLogger("faqbot")

MAX_BODY_BYTES = 1_000_000
PUBLISHED_INDEX_POLL_SECONDS = 2.0


def create_app(settings: Settings | None = None, *, encoder: Encoder | None = None, store: Store | None = None,
               service: FaqService | None = None) -> FastAPI:
    """A ready-to-serve app; pass `encoder`/`store`/`service` to share them (tests, CLI)."""
    settings = settings or Settings()
    service = service or FaqService(settings, encoder=encoder, store=store)
    stop = threading.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=_start_and_watch, args=(service, stop), name="faqbot-index", daemon=True).start()
        for start_task in app.state.background_tasks:  # e.g. admin's KB watcher; each stops with `stop`
            start_task(stop)
        try:
            yield
        finally:
            stop.set()

    app = FastAPI(
        title="faqbot",
        description="中文 FAQ 意图匹配机器人 — Chinese-first FAQ intent matching. See README.md.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.settings = settings
    # Callables `start(stop_event)` run at start-up by the lifespan (so layers above bot can add threads).
    app.state.background_tasks = []
    app.state.metrics = Metrics()
    install_error_handlers(app)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Content-Type", "Authorization"],
        max_age=600,
    )
    app.middleware("http")(_body_limit_and_metrics)
    app.include_router(api_router)
    from bot.channels import install_channels

    install_channels(app)
    static = Path(__file__).with_name("static")
    if static.is_dir():
        from bot.pages import mount_pages

        mount_pages(app, static)
    return app


async def _body_limit_and_metrics(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Refuse oversized bodies before reading them, and count every request by route and status."""
    started = time.perf_counter()
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        from fastapi.responses import JSONResponse

        return JSONResponse(error_body("payload_too_large", f"request body over {MAX_BODY_BYTES} bytes"), status_code=413)
    response = await call_next(request)
    route = request.scope.get("route")
    path = getattr(route, "path", "unmatched")
    metrics: Metrics = request.app.state.metrics
    metrics.requests.labels(path, str(response.status_code)).inc()
    metrics.latency.labels(path).observe(time.perf_counter() - started)
    return response


def _start_and_watch(service: FaqService, stop: threading.Event) -> None:
    """Load the index, then follow the published version so every worker swaps to a new one."""
    service.start()
    while not stop.wait(PUBLISHED_INDEX_POLL_SECONDS):
        try:
            if service.refresh_if_published():
                log.info("now serving index %s", service.index.version)
        except Exception as exc:  # a bad published version must not stop the watcher; keep serving the old one
            log.error("could not load the published index: %s", exc)


def not_ready(service: FaqService) -> FaqbotError:
    message = service.load_error or "the index is still loading"
    return FaqbotError(503, "not_ready", message, headers={"Retry-After": "2"})
