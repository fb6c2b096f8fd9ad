"""What every command shares: the common flags, settings from flags over FAQBOT_*, the encoder and
the service it works on, progress bars, JSON printing."""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
from pathlib import Path

from pydantic import ValidationError

from admin.errors import UsageError
from bot.service import FaqService, encoder_spec, ensure_index
from bot.settings import KB_NAME, Settings
from index.encoders import Encoder, load_encoder
from index.faq_index import IndexUnavailableError, StaleIndexError
from index.progress import progress_bar

ENCODER_HELP = "auto (default) | bundled | bundled:FILE | sentence-transformers:PATH | onnx:PATH (FAQBOT_ENCODER)"
SETTINGS_FLAGS = ("data_dir", "host", "port", "workers", "encoder")
KB_HELP = ("FAQ YAML file or directory; NAME=PATH, repeated, for several KBs; a command on one KB also takes "
           "the NAME of one of FAQBOT_KB's (FAQBOT_KB)")


def add_common(p: argparse.ArgumentParser, *, server: bool = False) -> None:
    """--kb, --data-dir, --encoder (and --host/--port/--workers for a server)."""
    p.add_argument("--kb", action="append", metavar="[NAME=]PATH", help=KB_HELP)
    p.add_argument("--data-dir", dest="data_dir", type=Path, help="runtime data directory (FAQBOT_DATA_DIR)")
    p.add_argument("--encoder", help=ENCODER_HELP)
    if server:
        p.add_argument("--host", help="bind address (FAQBOT_HOST, default 127.0.0.1)")
        p.add_argument("--port", type=int, help="port (FAQBOT_PORT, default 8000)")
        p.add_argument("--workers", type=int, help="worker processes (FAQBOT_WORKERS, default 1)")


def settings_from(args: argparse.Namespace) -> Settings:
    """FAQBOT_* environment first, command-line flags over it; `--kb NAME` narrows FAQBOT_KB's KBs to one."""
    overrides: dict[str, object] = {name: value for name in SETTINGS_FLAGS if (value := getattr(args, name, None)) is not None}
    given = getattr(args, "kb", None)
    kb_args = [str(given)] if isinstance(given, Path) else list(given or [])
    if kb_args:
        overrides["kb"] = ",".join(kb_args)
    try:
        if len(kb_args) == 1 and KB_NAME.fullmatch(kb_args[0]) and not Path(kb_args[0]).exists():
            configured = Settings(**{k: v for k, v in overrides.items() if k != "kb"})
            if kb_args[0] in configured.kb_paths:
                return configured.only(kb_args[0])
        return Settings(**overrides)
    except ValidationError as exc:
        raise UsageError(f"bad settings: {one_line(exc)}") from exc
    except ValueError as exc:
        raise UsageError(f"bad settings: {exc}") from exc


def one_line(exc: ValidationError) -> str:
    """A settings error as one line: `field: problem; …` (pydantic's own text spans several)."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "kb"
        parts.append(f"{where}: {str(error['msg']).removeprefix('Value error, ')}")
    return "; ".join(parts)


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
