"""The one root of every faqbot error, and the kinds of failure callers tell apart.

Domain code raises domain errors: a stable machine `code`, a human `message`, optional JSON-ready
`details` (e.g. every problem of a broken KB, located) and, when trying again later can help,
`retry_after` seconds. It never says how a transport shows them: `bot.errors` is the one place
that turns an error into an HTTP status and the JSON body, `admin.cli.main` the one place that
turns it into a CLI exit code. The kind (a class below) is what both of them read:

    FaqbotError                      code                 HTTP   CLI exit
    ├── InvalidInputError            invalid_request      422    1    the caller can fix what it sent
    │   ├── KBError (faq)            invalid_kb                       a KB that does not load
    │   └── EditRefusedError (admin.curation.kb_edit)
    ├── NotFoundError                not_found            404    1
    │   └── FaqNotFoundError (admin.curation.kb_edit)
    ├── ConflictError                conflict             409    1    the state says otherwise: reload, retry
    │   ├── LockTimeoutError (index.filelock)
    │   └── EditConflictError (admin.curation.kb_edit)
    ├── UnavailableError             unavailable          503    1    try again in `retry_after` seconds
    │   ├── NotReadyError (bot.service)       the index is not loaded yet
    │   ├── MissLogUnavailableError (bot.service)
    │   ├── OverloadedError (bot.batcher)     the encoder queue is full
    │   └── RequestTimeoutError (bot.errors)
    ├── the HTTP surface's own (bot.errors): BadRequestError 400, UnauthorizedError 401,
    │   ForbiddenError 403, MethodNotAllowedError 405, PayloadTooLargeError 413, RateLimitedError 429
    ├── CommandError (admin.errors)                                1    a command that cannot run as asked
    │   └── UsageError                                             2    its options contradict each other
    └── operational errors (no HTTP meaning: 500 if one ever escapes a request; CLI exit 1):
        EncoderError, IndexUnavailableError > StaleIndexError, CalibrationError, PackError (index);
        CryptoError, DeliveryError (bot.channels); EvalDataError, CalibrationDataError (admin.quality);
        TrainingDataError, TrainingInterruptedError (admin.finetune)

`faq` imports nothing from the other faqbot packages, so every package can derive from these.
"""

from __future__ import annotations


class FaqbotError(Exception):
    """Any error faqbot raises on purpose: a stable `code`, a `message` for people, optional `details`."""

    code: str = "error"
    retry_after: float | None = None

    def __init__(self, message: str, *, code: str | None = None, details: object | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details
        if retry_after is not None:
            self.retry_after = retry_after


class InvalidInputError(FaqbotError):
    """What the caller sent cannot be used as it is (a bad field, an empty text, a broken KB)."""

    code = "invalid_request"


class NotFoundError(FaqbotError):
    """The thing asked for does not exist (a miss id, an FAQ id)."""

    code = "not_found"


class ConflictError(FaqbotError):
    """The request is fine, but the current state refuses it (already resolved, busy, changed meanwhile)."""

    code = "conflict"


class UnavailableError(FaqbotError):
    """Cannot answer right now; the same request can succeed `retry_after` seconds later."""

    code = "unavailable"
    retry_after: float | None = 1.0
