"""The served app: `bot`'s app plus the admin router and page (the composition `faqbot serve` runs)."""

from __future__ import annotations

from fastapi import FastAPI

from admin.web.routes import install_admin
from bot.app import create_app
from bot.settings import Settings
from index.encoders import Encoder


def build_app(settings: Settings | None = None, *, encoder: Encoder | None = None,
              load_before_serving: bool = False) -> FastAPI:
    settings = settings or Settings()
    app = create_app(settings, encoder=encoder, load_before_serving=load_before_serving)
    install_admin(app)
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory for `faqbot serve --workers N` (settings come from FAQBOT_* set by the CLI), one per worker.

    The supervisor has built the index already, so each worker only loads it, before it takes connections.
    """
    return build_app(Settings(), load_before_serving=True)
