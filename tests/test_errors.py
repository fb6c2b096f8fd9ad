"""One error tree, two renderings: bot.errors decides the HTTP status and body, admin.cli.main the
CLI message and exit code, both from the error's kind (faq/errors.py). And `faqbot` alone = `serve`."""

from __future__ import annotations

import json

import pytest

from admin.cli.main import main, report_error, with_default_command
from admin.curation.kb_edit import EditConflictError, EditRefusedError, FaqNotFoundError
from admin.errors import CommandError, UsageError
from bot.batcher import OverloadedError
from bot.errors import (
    BadRequestError,
    ForbiddenError,
    MethodNotAllowedError,
    PayloadTooLargeError,
    RateLimitedError,
    RequestTimeoutError,
    UnauthorizedError,
    error_bytes,
    error_parts,
)
from bot.service import MissLogUnavailableError, NotReadyError
from faq import KBError, KBProblem
from faq.errors import ConflictError, FaqbotError, InvalidInputError, NotFoundError
from index.encoders import EncoderError
from index.filelock import LockTimeoutError


@pytest.mark.parametrize(("error", "status", "code", "headers"), [
    (InvalidInputError("message: must contain some text", code="empty_message"), 422, "empty_message", {}),
    (KBError([KBProblem("faq.yaml", 3, "faqs[a].answer", "missing (required)")]), 422, "invalid_kb", {}),
    (EditRefusedError("bad_file", "file: not a usable file name"), 422, "bad_file", {}),
    (NotFoundError("no miss with id 9", code="miss_not_found"), 404, "miss_not_found", {}),
    (FaqNotFoundError("faq_not_found", "no FAQ with id 'x'"), 404, "faq_not_found", {}),
    (ConflictError("already resolved", code="already_resolved"), 409, "already_resolved", {}),
    (EditConflictError("faq_exists", "exists"), 409, "faq_exists", {}),
    (LockTimeoutError("/var/.lock"), 409, "busy", {}),
    (ConflictError("still being answered", code="in_progress", retry_after=1), 409, "in_progress", {"Retry-After": "1"}),
    (NotReadyError("the index is still loading"), 503, "not_ready", {"Retry-After": "2"}),
    (OverloadedError("too many questions waiting"), 503, "overloaded", {"Retry-After": "1"}),
    (MissLogUnavailableError("try again"), 503, "log_unavailable", {"Retry-After": "5"}),
    (RequestTimeoutError("no answer within 15 s"), 503, "timeout", {"Retry-After": "1"}),
    (BadRequestError("not JSON", code="bad_payload"), 400, "bad_payload", {}),
    (UnauthorizedError("wrong token", challenge='Bearer realm="faqbot-admin"'), 401, "unauthorized",
     {"WWW-Authenticate": 'Bearer realm="faqbot-admin"'}),
    (ForbiddenError("replayed", code="replayed_request"), 403, "replayed_request", {}),
    (MethodNotAllowedError("the wecom webhook takes POST"), 405, "method_not_allowed", {}),
    (PayloadTooLargeError("request body over 1024 bytes"), 413, "payload_too_large", {}),
    (RateLimitedError("too many requests; retry in 3 s", retry_after=3), 429, "rate_limited", {"Retry-After": "3"}),
])
def test_the_http_status_and_body_come_from_the_kind(error: FaqbotError, status: int, code: str,
                                                      headers: dict[str, str]) -> None:
    got_status, got_headers, body = error_parts(error)
    assert (got_status, got_headers) == (status, headers)
    assert body["status"] == "error" and body["error"]["code"] == code and body["error"]["message"] == error.message


def test_an_error_of_no_http_kind_is_an_internal_error_that_shows_nothing() -> None:
    status, headers, body = error_parts(EncoderError("cannot load /secret/path/model"))
    assert (status, headers) == (500, {})
    assert body == {"status": "error", "error": {"code": "internal_error", "message": "internal error; it has been logged"}}
    status, raw_headers, payload = error_bytes(RateLimitedError("slow down", retry_after=2))
    assert status == 429 and (b"retry-after", b"2") in raw_headers and json.loads(payload)["error"]["code"] == "rate_limited"


def test_a_broken_kb_keeps_its_one_line_message_and_every_problem() -> None:
    error = KBError([KBProblem("faq.yaml", 3, "faqs[a].answer", "missing (required)")])
    assert error.message == "1 problem(s) in the knowledge base"
    assert error.details == [{"file": "faq.yaml", "line": 3, "field": "faqs[a].answer", "message": "missing (required)"}]
    assert str(error).splitlines() == ["1 problem(s) in the knowledge base:", "faq.yaml:3: faqs[a].answer: missing (required)"]


@pytest.mark.parametrize(("error", "code", "printed"), [
    (KBError([KBProblem("faq.yaml", 3, "faqs[a].answer", "missing (required)")]), 1,
     "faq.yaml:3: faqs[a].answer: missing (required)\nfaqbot: 1 problem(s) in the knowledge base\n"),
    (UsageError("--scale 0: give a positive number"), 2, "faqbot: error: --scale 0: give a positive number\n"),
    (CommandError("nothing to train"), 1, "faqbot: error: nothing to train\n"),
    (NotFoundError("no miss with id 9", code="miss_not_found"), 1, "faqbot: error: miss_not_found: no miss with id 9\n"),
    (EditRefusedError("invalid_edit", "nothing was changed", [{"file": "a.yaml", "line": 2, "field": "id",
                                                               "message": "bad id"}]), 1,
     "a.yaml:2: id: bad id\nfaqbot: error: invalid_edit: nothing was changed\n"),
    (EncoderError("unknown encoder 'x'"), 1, "faqbot: error: unknown encoder 'x'\n"),
])
def test_the_cli_prints_one_message_and_exits_with_the_code_of_the_kind(error: FaqbotError, code: int, printed: str,
                                                                        capsys: pytest.CaptureFixture) -> None:
    assert report_error(error) == code
    assert capsys.readouterr().err == printed


def test_no_command_is_serve() -> None:
    assert with_default_command([]) == ["serve"]
    assert with_default_command(["--port", "9000"]) == ["serve", "--port", "9000"]
    assert with_default_command(["ask", "x"]) == ["ask", "x"]
    assert with_default_command(["--help"]) == ["--help"]


def test_faqbot_with_only_serve_options_runs_serve(capsys: pytest.CaptureFixture) -> None:
    # --host is an option of `serve` alone: without the default command argparse would refuse it (exit 2)
    assert main(["--host", "127.0.0.1", "--encoder", "no-such-encoder"]) == 1
    assert "faqbot: error: unknown encoder 'no-such-encoder'" in capsys.readouterr().err
