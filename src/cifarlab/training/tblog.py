"""Optional TensorBoard logging (`cifarlab train --tensorboard`): a mirror of metrics.jsonl.

The run directory stays the source of truth: after each epoch line the training loop logs,
the epochs newly appended to RUNDIR/metrics.jsonl are written as scalars to RUNDIR/tensorboard/
(`tensorboard --logdir RUNDIR`). Needs the `tensorboard` package (`pip install "cifarlab[tensorboard]"`),
used through torch.utils.tensorboard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from cifarlab.common.rundir import METRICS, read_metrics
from cifarlab.errors import CifarlabError

LOGDIR = "tensorboard"
SCALARS = {
    "loss/train": "train_loss",
    "loss/validation": "val_loss",
    "accuracy/train": "train_accuracy",
    "accuracy/validation": "val_accuracy",
    "learning_rate": "lr",
    "seconds/epoch": "epoch_seconds",
}


class TensorBoardError(CifarlabError, RuntimeError):
    """TensorBoard logging was asked for but cannot work here; one line."""


class TensorBoardMirror:
    def __init__(self, run: Path | str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise TensorBoardError(
                f"--tensorboard needs the tensorboard package ({e}); install it with pip install 'cifarlab[tensorboard]'"
            ) from None
        self._writer_class = SummaryWriter
        self.run = Path(run)
        self.writer = None
        records, _ = read_metrics(self.run / METRICS)
        self.written = {r["epoch"] for r in records}  # a resumed run: those are in the event files already

    def sync(self) -> int:
        """Write the epochs not yet mirrored; returns how many."""
        records, _ = read_metrics(self.run / METRICS)
        new = [r for r in records if r.get("epoch") not in self.written]
        if not new:
            return 0
        if self.writer is None:
            self.writer = self._writer_class(log_dir=str(self.run / LOGDIR))
        for record in new:
            for tag, key in SCALARS.items():
                if record.get(key) is not None:
                    self.writer.add_scalar(tag, record[key], global_step=record["epoch"])
            self.written.add(record["epoch"])
        self.writer.flush()
        return len(new)

    def logger(self, log: Callable[[str], None]) -> Callable[[str], None]:
        """`log`, followed by a sync (the training loop logs right after appending an epoch)."""

        def log_and_sync(line: str) -> None:
            log(line)
            self.sync()

        return log_and_sync

    def close(self) -> None:
        if self.writer is not None:
            self.sync()
            self.writer.close()
