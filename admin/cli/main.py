"""`faqbot`: the parser of every command, and the one place errors become messages and exit codes.

`faqbot` with no command (or with only options, `faqbot --port 9000`) runs `serve`, as datasette does.

A domain error never ends in a traceback: it is printed as one readable message and exits with the
code of its kind (faq/errors.py draws the tree):

    KBError            every problem `file:line: field: message`, then the summary      exit 1
    UsageError         `faqbot: error: …` (options that cannot work together)           exit 2
    an API kind        `faqbot: error: <code>: …` (invalid input, not found, conflict,   exit 1
                       unavailable: the code the HTTP API would answer with)
    any other error    `faqbot: error: …`                                               exit 1
    Ctrl-C 130, a closed pipe (`faqbot … | head`) 0.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from admin.cli import core, curation, finetune, loadtest, models, quality
from admin.errors import UsageError
from faq import KBError
from faq.errors import ConflictError, FaqbotError, InvalidInputError, NotFoundError, UnavailableError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
DEFAULT_COMMAND = "serve"
# The kinds whose code the HTTP API answers with: the CLI shows the same code.
API_KINDS = (InvalidInputError, NotFoundError, ConflictError, UnavailableError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faqbot", description="Chinese-first FAQ intent-matching chatbot. "
                                     f"With no command, `{DEFAULT_COMMAND}`.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in (core, quality, curation, models, finetune, loadtest):
        group.register(sub)
    return parser


def with_default_command(argv: Sequence[str]) -> list[str]:
    """`serve` in front when no command is named: nothing at all, or options only (not -h/--help)."""
    argv = list(argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        return [DEFAULT_COMMAND, *argv]
    return argv


def report_error(exc: FaqbotError) -> int:
    """Print one domain error for a person on stderr; its exit code."""
    if isinstance(exc, KBError):
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"faqbot: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
    for line in _located(exc.details):
        print(line, file=sys.stderr)
    shown = f"{exc.code}: {exc.message}" if isinstance(exc, API_KINDS) else exc.message
    print(f"faqbot: error: {shown}", file=sys.stderr)
    return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_ERROR


def _located(details: object) -> list[str]:
    """`file:line: field: message` of every located problem among an error's details."""
    if not isinstance(details, list):
        return []
    return [f"{p['file']}:{p['line']}: {p['field']}: {p['message']}" for p in details
            if isinstance(p, dict) and {"file", "line", "field", "message"} <= p.keys()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(with_default_command(sys.argv[1:] if argv is None else argv))
    try:
        return int(args.func(args) or EXIT_OK)
    except FaqbotError as exc:
        return report_error(exc)
    except KeyboardInterrupt:
        print("faqbot: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `faqbot … | head`: the reader left, nothing to report
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
