"""`faqbot`: a thin command line over the same objects the server uses.

Domain errors (a bad KB, a missing model, an unreachable server) end as one readable message and
a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bot.settings import Settings
from faq import KBError, load_kb
from index.encoders import EncoderError
from index.faq_index import IndexUnavailableError

EXIT_USAGE = 2
EXIT_INVALID = 1


ENCODER_HELP = "auto (default) | bundled | bundled:FILE | sentence-transformers:PATH | onnx:PATH (FAQBOT_ENCODER)"


class CliError(Exception):
    """A problem to print as `faqbot: error: …` with an exit code."""

    def __init__(self, message: str, code: int = EXIT_INVALID) -> None:
        super().__init__(message)
        self.code = code


def settings_from(args: argparse.Namespace) -> Settings:
    """FAQBOT_* environment first, command-line flags over it."""
    overrides = {}
    for name in ("kb", "data_dir", "host", "port", "workers", "encoder"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    try:
        return Settings(**overrides)
    except ValueError as exc:
        raise CliError(f"bad settings: {exc}", EXIT_USAGE) from exc


def progress_bar(description: str) -> Callable[[int], Callable[[int], None]]:
    """A factory: given the total, return an `advance(n)` that moves a tqdm bar on stderr."""

    def factory(total: int) -> Callable[[int], None]:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=description, unit="text", file=sys.stderr, disable=None)

        def advance(n: int) -> None:
            bar.update(n)
            if bar.n >= total:
                bar.close()

        return advance

    return factory


def _encoder(settings: Settings):  # noqa: ANN202 - returns the Encoder protocol
    from bot.service import encoder_spec
    from index.encoders import load_encoder

    return load_encoder(encoder_spec(settings))


def cmd_validate(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    kb = load_kb(settings.kb)
    print(f"OK: {len(kb.faqs)} FAQs, {len(kb.texts())} questions and paraphrases in {len(kb.files)} file(s)")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from bot.service import _previous_calibration, build_and_publish

    settings = settings_from(args)
    kb = load_kb(settings.kb)
    encoder = _encoder(settings)
    advance = progress_bar("encoding the KB")(len(kb.texts()))
    index = build_and_publish(settings, encoder, kb=kb, calibration=_previous_calibration(settings, encoder),
                              progress=advance)
    print(f"built index {index.version}: {index.meta.n_faqs} FAQs, {index.meta.n_vectors} vectors, "
          f"{index.meta.build_seconds:.1f}s, in {Path(settings.data_dir).resolve() / 'index'}")
    return 0


def _service(args: argparse.Namespace):  # noqa: ANN202
    from bot.service import FaqService, ensure_index

    settings = settings_from(args)
    encoder = _encoder(settings)
    service = FaqService(settings, encoder=encoder)
    service.use_index(ensure_index(settings, encoder, progress_factory=progress_bar("encoding the KB")))
    return service


def cmd_ask(args: argparse.Namespace) -> int:
    from bot.api import chat_response

    service = _service(args)
    result = service.chat(args.question, channel="cli", log_turn=args.log)
    body = chat_response(result, service)
    if args.json:
        print(json.dumps(body, ensure_ascii=False, indent=2))
        return 0
    decision = result.decision
    if decision.matched and decision.faq and decision.best:
        print(f"✔ {decision.faq.question}  [{decision.faq.id}]  {decision.best.percent:.1f}% "
              f"(cosine {decision.best.similarity:.4f}, threshold {decision.threshold:.4f})")
        print(decision.faq.answer)
    else:
        print(f"✘ {body['answer']}")
        if decision.best:
            print(f"  closest: {decision.best.question} [{decision.best.faq_id}] {decision.best.percent:.1f}% "
                  f"(cosine {decision.best.similarity:.4f} < threshold {decision.threshold:.4f})")
    for alt in body["alternatives"][: args.top_k]:
        if decision.matched:
            print(f"  also: {alt['question']} [{alt['faq_id']}] {alt['percent']:.1f}%")
    return 0


def cmd_similarity(args: argparse.Namespace) -> int:
    from bot.service import FaqService

    settings = settings_from(args)
    service = FaqService(settings, encoder=_encoder(settings))
    # Use the live index's calibration when there is one; without a usable index, the shipped one.
    with contextlib.suppress(Exception):
        service.refresh_if_published()
    ((cosine, percent),) = service.similarity([(args.sentence_a, args.sentence_b)])
    if args.json:
        print(json.dumps({"sentence_a": args.sentence_a, "sentence_b": args.sentence_b, "similarity": round(cosine, 4),
                          "percent": percent, "status": "success"}, ensure_ascii=False))
    else:
        print(f"{percent:.1f}%  (cosine {cosine:.4f})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from bot.logging_setup import configure_logging
    from bot.service import ensure_index

    settings = settings_from(args)
    configure_logging(settings.log_level, settings.log_format)  # the encoder's first-start export reports here
    encoder = _encoder(settings)
    index = ensure_index(settings, encoder, progress_factory=progress_bar("encoding the KB"))
    print(f"index {index.version}: {index.meta.n_faqs} FAQs; serving on http://{settings.host}:{settings.port}",
          file=sys.stderr)
    # Workers are separate processes: hand them the effective settings through the environment.
    os.environ["FAQBOT_KB"] = str(Path(settings.kb).resolve())
    os.environ["FAQBOT_DATA_DIR"] = str(Path(settings.data_dir).resolve())
    os.environ["FAQBOT_ENCODER"] = settings.encoder
    os.environ["FAQBOT_WORKERS"] = str(settings.workers)  # each worker's share of the cores (encoder workers)
    if settings.workers > 1:
        del encoder, index  # each worker loads its own; the supervisor should not hold a model's memory too
        uvicorn.run("admin.web.app:app_from_env", factory=True, host=settings.host, port=settings.port,
                    workers=settings.workers, log_level=settings.log_level, access_log=False)
    else:
        from admin.web.app import build_app

        uvicorn.run(build_app(settings, encoder=encoder), host=settings.host, port=settings.port,
                    log_level=settings.log_level, access_log=False)
    return 0


def settings_markdown() -> str:
    """The README's settings table, generated from the one Settings class (tests/test_docs.py keeps them equal)."""
    rows = ["| 环境变量 (env) | 默认值 (default) | 说明 |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, Path) and default.is_absolute():
            default = "faq/sample (shipped)"
        shown = "" if default is None else str(default).replace("|", "\\|")
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `FAQBOT_{name.upper()}` | `{shown}` | {description} |" if shown else
                    f"| `FAQBOT_{name.upper()}` | | {description} |")
    return "\n".join(rows)


def cmd_settings(args: argparse.Namespace) -> int:
    if args.markdown:
        print(settings_markdown())
        return 0
    settings = settings_from(args)
    for name, value in settings.model_dump().items():
        shown = "***" if name == "admin_token" and value else value
        if "secret" in name or "token" in name or name.endswith("aes_key") or "encrypt_key" in name:
            shown = "***" if value else None
        print(f"FAQBOT_{name.upper()}={'' if shown is None else shown}")
    return 0


def _add_common(p: argparse.ArgumentParser, *, server: bool = False) -> None:
    p.add_argument("--kb", type=Path, help="FAQ YAML file or directory (FAQBOT_KB)")
    p.add_argument("--data-dir", dest="data_dir", type=Path, help="runtime data directory (FAQBOT_DATA_DIR)")
    p.add_argument("--encoder", help=ENCODER_HELP)
    if server:
        p.add_argument("--host", help="bind address (FAQBOT_HOST, default 127.0.0.1)")
        p.add_argument("--port", type=int, help="port (FAQBOT_PORT, default 8000)")
        p.add_argument("--workers", type=int, help="worker processes (FAQBOT_WORKERS, default 1)")


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faqbot", description="Chinese-first FAQ intent-matching chatbot.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("serve", help="serve the HTTP API (builds the index first if missing)")
    _add_common(p, server=True)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("build", help="build and publish the index for the KB")
    _add_common(p)
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("validate", help="check the KB; every problem with file, line and field")
    _add_common(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("ask", help="answer one question in-process")
    _add_common(p)
    p.add_argument("question")
    p.add_argument("--json", action="store_true", help="print the /chat JSON")
    p.add_argument("--top-k", dest="top_k", type=int, default=3)
    p.add_argument("--log", action="store_true", help="log a miss like the server would")
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("similarity", help="similarity of two sentences (cosine and percent)")
    _add_common(p)
    p.add_argument("sentence_a")
    p.add_argument("sentence_b")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_similarity)

    p = sub.add_parser("settings", help="print the effective settings (secrets hidden), or --markdown for the docs")
    _add_common(p)
    p.add_argument("--markdown", action="store_true", help="the settings table for README.md")
    p.set_defaults(func=cmd_settings)

    for register in _extensions():
        register(sub)
    return parser


# Command groups defined next to their code; each module has `register(subparsers)`.
COMMAND_MODULES = ("admin.cli.quality", "admin.cli.curation", "admin.cli.models", "admin.finetune.run",
                   "admin.loadtest.bench", "admin.loadtest.soak")


def _extensions() -> list[Callable[[argparse._SubParsersAction], None]]:
    found = []
    for module_name in COMMAND_MODULES:
        if importlib.util.find_spec(module_name) is None:
            continue
        found.append(importlib.import_module(module_name).register)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except KBError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"faqbot: {len(exc.problems)} problem(s) in the knowledge base", file=sys.stderr)
        return EXIT_INVALID
    except (CliError, EncoderError, IndexUnavailableError) as exc:
        print(f"faqbot: error: {exc}", file=sys.stderr)
        return getattr(exc, "code", EXIT_INVALID)
    except KeyboardInterrupt:
        print("faqbot: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `faqbot … | head`: the reader left, nothing to report
        return 0


if __name__ == "__main__":
    sys.exit(main())
