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


class WorkerApp:
    """The app factory of one worker of `faqbot serve --workers N`, carrying the supervisor's settings.

    uvicorn pickles it into every worker process, so a worker serves exactly what the command was
    given (flags over FAQBOT_*), and nothing passes through the environment. The supervisor has built
    the index already: each worker only loads it, before it takes connections.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __call__(self) -> FastAPI:
        return build_app(self.settings, load_before_serving=True)


def serve_workers(settings: Settings) -> None:
    """Serve `settings.workers` worker processes on one socket (uvicorn's multiprocess supervisor)."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config(WorkerApp(settings), factory=True, host=settings.host, port=settings.port,
                            workers=settings.workers, log_level=settings.log_level, access_log=False)
    Multiprocess(config, sockets=[config.bind_socket()]).run()
