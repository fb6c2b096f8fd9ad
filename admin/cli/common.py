"""What every command shares: the common flags, settings from flags over FAQBOT_*, the encoder and
the service it works on, progress bars, JSON printing."""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
from pathlib import Path

from admin.errors import UsageError
from bot.service import FaqService, encoder_spec, ensure_index
from bot.settings import Settings
from index.encoders import Encoder, load_encoder
from index.faq_index import IndexUnavailableError, StaleIndexError
from index.progress import progress_bar

ENCODER_HELP = "auto (default) | bundled | bundled:FILE | sentence-transformers:PATH | onnx:PATH (FAQBOT_ENCODER)"
SETTINGS_FLAGS = ("kb", "data_dir", "host", "port", "workers", "encoder")


def add_common(p: argparse.ArgumentParser, *, server: bool = False) -> None:
    """--kb, --data-dir, --encoder (and --host/--port/--workers for a server)."""
    p.add_argument("--kb", type=Path, help="FAQ YAML file or directory (FAQBOT_KB)")
    p.add_argument("--data-dir", dest="data_dir", type=Path, help="runtime data directory (FAQBOT_DATA_DIR)")
    p.add_argument("--encoder", help=ENCODER_HELP)
    if server:
        p.add_argument("--host", help="bind address (FAQBOT_HOST, default 127.0.0.1)")
        p.add_argument("--port", type=int, help="port (FAQBOT_PORT, default 8000)")
        p.add_argument("--workers", type=int, help="worker processes (FAQBOT_WORKERS, default 1)")


def settings_from(args: argparse.Namespace) -> Settings:
    """FAQBOT_* environment first, command-line flags over it."""
    overrides = {name: value for name in SETTINGS_FLAGS if (value := getattr(args, name, None)) is not None}
    try:
        return Settings(**overrides)
    except ValueError as exc:
        raise UsageError(f"bad settings: {exc}") from exc


def configured_encoder(settings: Settings) -> Encoder:
    """The encoder the settings name (a deployed fine-tune included), as `faqbot serve` would load it."""
    return load_encoder(encoder_spec(settings))


def open_service(settings: Settings, *, published_first: bool = False) -> FaqService:
    """A service with its index loaded, built first if there is none for this encoder (or it is stale).

    `published_first`: serve the published index as the server's workers do, even if the KB on disk
    changed or is broken meanwhile (reviewing misses and reporting must not stop on a broken KB).
    """
    encoder = configured_encoder(settings)
    service = FaqService(settings, encoder=encoder)
    if published_first:
        with contextlib.suppress(IndexUnavailableError, StaleIndexError):
            if service.refresh_if_published():
                return service
    service.use_index(ensure_index(settings, encoder, progress_factory=progress_bar("encoding the KB")))
    return service


def print_json(data: object) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2))


def command_line() -> str:
    """This command as typed (for reports and provenance)."""
    return "faqbot " + " ".join(shlex.quote(a) for a in sys.argv[1:])
