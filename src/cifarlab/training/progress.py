"""Progress within an epoch: a tqdm bar on a terminal; in a log file (`nohup cifarlab train ... >
log`), where a bar cannot be drawn, a line every PROGRESS_SECONDS with the step and the time the
epoch has left, so that a long epoch is not minutes of silence."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

PROGRESS_SECONDS = 60.0  # off a terminal: one line a minute at most, and none for epochs shorter than that


def log_line(line: str) -> None:
    """print, flushed: a log file (stdout not a terminal) is block-buffered, and would show an
    epoch's line only when several kilobytes of them had gathered."""
    print(line, flush=True)


def duration(seconds: float) -> str:
    """ "45s", "3m05s", "2h04m": how long, to a reader."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class StepProgress:
    """`with StepProgress(steps, "epoch 3/8", enabled, log) as bar: ... bar.update()` per step."""

    def __init__(
        self,
        total: int,
        desc: str,
        enabled: bool,
        log: Callable[[str], None] | None = None,
        every: float = PROGRESS_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        terminal: bool | None = None,
    ):
        terminal = sys.stderr.isatty() if terminal is None else terminal
        self.total, self.desc, self.clock, self.every = total, desc, clock, every
        self.bar = None
        self.log = log if enabled and not terminal else None
        if enabled and terminal:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=False)
        self.done = 0
        self.started = self.last = clock()

    def __enter__(self) -> StepProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

    def update(self, steps: int = 1) -> None:
        self.done += steps
        if self.bar is not None:
            self.bar.update(steps)
        if self.log is None or self.done >= self.total:
            return
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            left = (now - self.started) / self.done * (self.total - self.done)
            self.log(f"{self.desc}: step {self.done:,}/{self.total:,}, about {duration(left)} left in this epoch")
