"""The progress bar of long work (encoding a KB, calibrating): a tqdm bar on stderr, off when not a terminal.

Long functions take a `progress(n)` callback (`index.encoders.ProgressFn`); `progress_bar(description)`
makes the factory that, given the total, returns one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

ProgressFactory = Callable[[int], Callable[[int], None]]


def progress_bar(description: str) -> ProgressFactory:
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
