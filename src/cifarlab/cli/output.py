"""What the commands share about writing: progress to stderr, so that stdout holds only the result."""

from __future__ import annotations

import sys
from collections.abc import Callable


def progress_log(quiet: bool) -> Callable[[str], None]:
    """A log function for progress messages: each line to stderr at once, or (quiet) nowhere."""
    if quiet:
        return lambda message: None
    return lambda message: print(message, file=sys.stderr, flush=True)
