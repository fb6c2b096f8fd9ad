"""The errors of admin's own work (the whole tree is drawn in faq/errors.py).

A command that cannot run as asked raises `CommandError` (the CLI exits 1), or `UsageError` when
its options contradict each other or cannot work together (exit 2, as for argparse's own errors).
Both are domain errors of the admin rooms: the CLI decides the exit code (admin.cli.main), so a
room never imports the command line.
"""

from __future__ import annotations

from faq.errors import FaqbotError


class CommandError(FaqbotError):
    """The work asked for cannot be done (a missing model, nothing to train on)."""

    code = "command_failed"


class UsageError(CommandError):
    """The options asked for contradict each other or cannot work (checked before anything heavy starts)."""

    code = "usage"
