"""The pages people see, served from `bot/static/` as plain files (no build step, no CDN).

- `/`               a demo shop page with the chat widget on it
- `/widget.js`      the embeddable widget (`<script src=".../widget.js" data-title="在线客服">`)
- `/widget-config.json`  what the pages need from the settings (title, fallback, 转人工 link, the answer line)
- `/ui/similarity`  the two-sentence similarity gauge (+ batch mode)
- `/admin`          the miss review page (only when an admin token is configured; it talks to /admin/... by fetch)
- `/static/...`     their CSS/JS

The pages only call the public JSON API, so they stay adapters around the service (DESIGN: bot never
imports admin; the admin page is a static file whose API lives in admin/).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from bot.service import FaqService
from bot.settings import Settings
from faq.errors import NotFoundError

# Our own pages load nothing from elsewhere; styles are allowed inline because the widget builds its
# <style> inside a shadow root at run time (no data is ever put into markup: everything is textContent).
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'self'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-cache",
}
HANDOFF_TEXT = "转人工客服"


def mount_pages(app: FastAPI, static_dir: Path) -> None:
    """Add the page routes and `/static` to `app` (called by `create_app` when `bot/static/` exists)."""
    static_dir = static_dir.resolve()

    def page(name: str) -> FileResponse:
        return FileResponse(static_dir / name, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def demo_shop() -> FileResponse:
        """A demo shop page with the chat widget embedded, as a customer would see it."""
        return page("index.html")

    @app.api_route("/ui/similarity", methods=["GET", "HEAD"], include_in_schema=False)
    def similarity_gauge() -> FileResponse:
        return page("similarity.html")

    @app.api_route("/admin", methods=["GET", "HEAD"], include_in_schema=False)
    def admin_page(request: Request) -> FileResponse:
        settings: Settings = request.app.state.settings
        if settings.admin_token is None:  # same rule as the admin API: no token, no admin surface
            raise NotFoundError("the admin page is off: set FAQBOT_ADMIN_TOKEN to enable it")
        return page("admin.html")

    @app.api_route("/widget.js", methods=["GET", "HEAD"], include_in_schema=False)
    def widget_js() -> FileResponse:
        """The embeddable widget; other sites load it cross-origin, so no page CSP here, just a short cache."""
        return FileResponse(static_dir / "widget.js", media_type="text/javascript; charset=utf-8",
                            headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff",
                                     "Cross-Origin-Resource-Policy": "cross-origin"})

    @app.api_route("/favicon.ico", methods=["GET", "HEAD"], include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(static_dir / "favicon.svg", media_type="image/svg+xml",
                            headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/widget-config.json", tags=["pages"])
    def widget_config(request: Request) -> Response:
        """Display settings for the widget and the gauge (public: nothing secret in here)."""
        return JSONResponse(page_config(request.app.state.settings, request.app.state.service),
                            headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=static_dir), name="static")


def page_config(settings: Settings, service: FaqService) -> dict[str, Any]:
    """What the pages show that comes from settings and the live index.

    The bot's line is one of two things: `min_confidence` (0-100, the measured chance that an answer
    is right) when the confidence decides, or `threshold_percent` (the cosine threshold as a display
    percent) when a cosine threshold does; the other is None. A pair percent is not a confidence, so
    the gauge draws its 作答线 only in the cosine case.
    """
    threshold_percent = min_confidence = None
    if service.ready:
        matcher = service.matcher
        min_confidence = matcher.min_confidence
        if min_confidence is None:
            threshold_percent = round(float(matcher.index.calibration.percent(matcher.default_threshold)), 1)
    return {
        "title": settings.widget_title,
        "greeting": settings.widget_greeting,
        "fallback_answer": settings.fallback_answer,
        "handoff_url": settings.handoff_url,
        "handoff_text": HANDOFF_TEXT,
        "max_message_chars": settings.max_message_chars,
        "threshold_percent": threshold_percent,
        "min_confidence": min_confidence,
        "admin_enabled": settings.admin_token is not None,
    }
