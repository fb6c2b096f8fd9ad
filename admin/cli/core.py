"""`faqbot serve | build | validate | ask | similarity | settings`: the commands over the service itself."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from pathlib import Path

from admin.cli.common import add_common, configured_encoder, open_service, settings_from
from admin.errors import UsageError
from bot.api import chat_response
from bot.matcher import Decision
from bot.service import FaqService, build_and_publish, ensure_index, previous_calibration
from bot.settings import Settings
from faq import load_kb
from faq.errors import FaqbotError
from index.encoders import Encoder
from index.faq_index import FaqIndex
from index.progress import progress_bar


def cmd_validate(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    kb = load_kb(settings.kb)
    print(f"OK: {len(kb.faqs)} FAQs, {len(kb.texts())} questions and paraphrases in {len(kb.files)} file(s)")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    every = settings_from(args)
    encoder = configured_encoder(every)
    for name in every.kb_paths:  # every KB given (`--kb NAME` narrows to one)
        settings = every.for_kb(name)
        kb = load_kb(settings.kb)
        advance = progress_bar("encoding the KB")(len(kb.texts()))
        index = build_and_publish(settings, encoder, kb=kb, calibration=previous_calibration(settings, encoder),
                                  progress=advance)
        print(f"built index {index.version} of KB {name}: {index.meta.n_faqs} FAQs, {index.meta.n_vectors} vectors, "
              f"{index.meta.build_seconds:.1f}s, in {settings.layout.index.resolve()}")
    return 0


def _reading(decision: Decision) -> str:
    """The number the decision was taken on, against its line: confidence, or cosine for a threshold rule."""
    assert decision.best is not None
    cosine = f"cosine {decision.best.similarity:.4f}"
    if decision.threshold is not None:
        return f"{decision.best.percent:.1f}% ({cosine}, threshold {decision.threshold:.4f})"
    return f"confidence {decision.confidence:.1f} (answers at >= {decision.min_confidence:g}; {cosine})"


def cmd_ask(args: argparse.Namespace) -> int:
    service = open_service(settings_from(args))
    # The path /chat and the webhooks take (the turn is logged only with --log).
    result = asyncio.run(service.achat(args.question, channel="cli", log_turn=args.log))
    body = chat_response(result, service)
    if args.json:
        print(json.dumps(body, ensure_ascii=False, indent=2))
        return 0
    decision = result.decision
    if decision.matched and decision.faq and decision.best:
        print(f"✔ {decision.faq.question}  [{decision.faq.id}]  {_reading(decision)}")
        print(decision.faq.answer)
    else:
        print(f"✘ {body['answer']}")
        if decision.best:
            print(f"  closest: {decision.best.question} [{decision.best.faq_id}] {_reading(decision)}")
    for alt in body["alternatives"][: args.top_k]:
        if decision.matched:
            print(f"  also: {alt['question']} [{alt['faq_id']}] {alt['percent']:.1f}%")
    return 0


def cmd_similarity(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    service = FaqService(settings, encoder=configured_encoder(settings))
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

    from admin.web.app import build_app, serve_workers
    from bot.logging_setup import configure_logging

    settings = settings_from(args)
    configure_logging(settings.log_level, settings.log_format)  # the encoder's first-start export reports here
    encoder = configured_encoder(settings)
    index = _ensure_every_index(settings, encoder)
    print(f"index {index.version}: {index.meta.n_faqs} FAQs; serving on http://{settings.host}:{settings.port}",
          file=sys.stderr)
    # Workers are separate processes: each gets these effective settings (paths made absolute).
    settings = settings.model_copy(update={"kb": Path(settings.kb).resolve(),
                                           "data_dir": Path(settings.data_dir).resolve()})
    if settings.workers > 1:
        del encoder, index  # each worker loads its own; the supervisor should not hold a model's memory too
        serve_workers(settings)
    else:
        uvicorn.run(build_app(settings, encoder=encoder), host=settings.host, port=settings.port,
                    log_level=settings.log_level, access_log=False)
    return 0


def _ensure_every_index(settings: Settings, encoder: Encoder) -> FaqIndex:
    """Build what is missing before serving; with several KBs one that cannot load is reported and
    skipped (the server names it on /readyz), so it does not stop the others. The first loaded index."""
    if len(settings.kb_paths) == 1:
        return ensure_index(settings, encoder, progress_factory=progress_bar("encoding the KB"))
    loaded: list[FaqIndex] = []
    for name in settings.kb_paths:
        try:
            loaded.append(ensure_index(settings.for_kb(name), encoder, progress_factory=progress_bar(f"encoding KB {name}")))
        except FaqbotError as exc:
            print(f"faqbot: warning: KB {name} not loaded: {exc.message}", file=sys.stderr)
    if not loaded:
        raise UsageError("no KB could be loaded (see the warnings above)")
    return loaded[0]


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


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the HTTP API (builds the index first if missing); the default command")
    add_common(p, server=True)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("build", help="build and publish the index for the KB")
    add_common(p)
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("validate", help="check the KB; every problem with file, line and field")
    add_common(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("ask", help="answer one question in-process")
    add_common(p)
    p.add_argument("question")
    p.add_argument("--json", action="store_true", help="print the /chat JSON")
    p.add_argument("--top-k", dest="top_k", type=int, default=3)
    p.add_argument("--log", action="store_true", help="log a miss like the server would")
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("similarity", help="similarity of two sentences (cosine and percent)")
    add_common(p)
    p.add_argument("sentence_a")
    p.add_argument("sentence_b")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_similarity)

    p = sub.add_parser("settings", help="print the effective settings (secrets hidden), or --markdown for the docs")
    add_common(p)
    p.add_argument("--markdown", action="store_true", help="the settings table for README.md")
    p.set_defaults(func=cmd_settings)
