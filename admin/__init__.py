"""What admins do, in rooms by job; nothing imports `admin` except the entry points and its tests.

    cli/        the `faqbot` command line: parser, flags, one mapping of errors to exit codes
    web/        the admin HTTP API and the served app (`bot`'s app + the admin router)
    curation/   keeping the KB good: misses, KB edits, the gated rebuild, lint, stats
    quality/    measuring an encoder + threshold: evaluation, calibration, reports
    finetune/   teaching the encoder the team's words: data, training, validation, deploy
    loadtest/   `faqbot bench` and `faqbot soak` against a real server on loopback
    errors.py   CommandError / UsageError (the tree is drawn in faq/errors.py)

Who may import whom (tests/test_architecture.py keeps it true): every room may import faq, index
and bot; `cli` may import every room; `web` imports `curation`; `finetune` imports `quality`; no
other room imports another, and none imports `cli` or `web`.
"""
