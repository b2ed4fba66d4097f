"""Optional TensorBoard logging (`cifarlab train --tensorboard`): each finished epoch's record,
handed over by the training loop's per-epoch callback, written as scalars to RUNDIR/tensorboard/
(`tensorboard --logdir RUNDIR`). The run directory's metrics.jsonl stays the source of truth.
Needs the `tensorboard` package (`pip install "cifarlab[tensorboard]"`), used through
torch.utils.tensorboard.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cifarlab.common.rundir import RunDir
from cifarlab.errors import CifarlabError

if TYPE_CHECKING:  # imported when used: tensorboard is an optional extra
    from torch.utils.tensorboard import SummaryWriter

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
    """`add` is the training's on_epoch callback; a resumed run appends to the same event folder."""

    def __init__(self, run: Path | str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise TensorBoardError(
                f"--tensorboard needs the tensorboard package ({e}); install it with pip install 'cifarlab[tensorboard]'"
            ) from None
        self._writer_class = SummaryWriter
        self.run = RunDir(run)
        self.writer: SummaryWriter | None = None  # created with the first epoch: a training that fails to start leaves no folder

    def add(self, record: dict) -> None:
        if self.writer is None:
            self.writer = self._writer_class(log_dir=str(self.run.tensorboard_dir()))
        for tag, key in SCALARS.items():
            if record.get(key) is not None:
                self.writer.add_scalar(tag, record[key], global_step=record["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
