"""The one way this project makes a rich console: on a terminal it wraps at the terminal's
width; into a file or a pipe it never wraps a line or cuts a table (rich would assume 80); and
when the reader of a pipe goes away (`acdc run ... | head`) it falls silent instead of exiting,
so a training run goes on writing its files."""

from __future__ import annotations

import os
import sys

from rich.console import Console

UNWRAPPED_WIDTH = 10_000


class QuietOnBrokenPipe(Console):
    """A rich console that stops printing, rather than raising SystemExit(1) as rich does,
    when its output pipe is closed."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        silence_stdout()


def make_console(stderr: bool = False) -> Console:
    console = QuietOnBrokenPipe(stderr=stderr, soft_wrap=True)
    if not console.is_terminal:
        console = QuietOnBrokenPipe(stderr=stderr, soft_wrap=True, width=UNWRAPPED_WIDTH)
    return console


def silence_stdout() -> None:
    """Point file descriptor 1 at /dev/null, so later writes (and the flush at exit) succeed
    quietly once the reader of a pipe has gone."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)
